"""Realistic calibration / evaluation sets for quantizing the real-model corpus (tests/corpus.py).

Every sample is built from real data shipped offline: scikit-image's photographs (the astronaut's
face, the cameraman, coffee, the cat, a rocket), the 100 real face crops of its LFW subset, text
rendered with Pillow, scikit-learn's handwritten digits, harmonic tones of known pitch. The few
real images are augmented (crops, shifts, flips, brightness, contrast) to reach >= 32 samples,
which the accuracy search needs (it refuses fewer than 16).

``calibration(model_id)`` returns {array key: [N, ...]} for a .npz, keyed by the model's input
names as tests/corpus.py feeds them (a ``labels`` array where the task has class labels).
"""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from corpus import OCR_TEXTS, TONES_MIDI, face_crop, ocr_det_page, photo, rendered_text, resized, tone

SAMPLES = 40
SCENES = ("coffee", "chelsea", "rocket", "camera", "immunohistochemistry")  # no human face in any but 'camera'
WORDS = ("shipyard", "2026", "Hello", "World", "ONNX", "TFLite", "Keras", "quantize", "int8", "SavedModel",
         "max", "abs", "error", "TorchScript", "calibration", "budget", "cosine", "0.99", "agreement",
         "float32", "latency", "median", "runtime", "verify", "convert", "model", "layer", "batch")


def rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


def augment(image: np.ndarray, rng: np.random.Generator, size: tuple[int, int], crop: float = 0.85,
            flip: bool = True) -> np.ndarray:
    """A random crop (``crop``..1 of each side), maybe mirrored, resized to ``size`` (w, h),
    with brightness and contrast jitter: uint8 RGB."""
    h, w = image.shape[:2]
    s = rng.uniform(crop, 1.0)
    ch, cw = int(h * s), int(w * s)
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    out = resized(np.ascontiguousarray(rgb(image)[y:y + ch, x:x + cw]), size).astype(np.float32)
    if flip and rng.random() < 0.5:
        out = out[:, ::-1]
    mean = out.mean()
    out = (out - mean) * rng.uniform(0.8, 1.2) + mean * rng.uniform(0.75, 1.25)
    return np.clip(out, 0, 255).astype(np.uint8)


@functools.cache
def lfw_faces() -> np.ndarray:
    """scikit-image's LFW subset: the first 100 of its 200 25x25 crops are real faces."""
    import skimage.data

    return (skimage.data.lfw_subset()[:100] * 255).astype(np.uint8)


def astronaut_views(n: int, size: tuple[int, int], seed: int) -> list[np.ndarray]:
    """The whole astronaut photo (face included), cropped, shifted and lit differently."""
    rng = np.random.default_rng(seed)
    return [augment(photo("astronaut"), rng, size, crop=0.7) for _ in range(n)]


def face_views(n: int, size: tuple[int, int], seed: int) -> list[np.ndarray]:
    """Crops around the astronaut's face with varying margins, offsets, mirror and light."""
    rng = np.random.default_rng(seed)
    return [augment(face_crop(float(rng.uniform(0.2, 0.6))), rng, size, crop=0.85) for _ in range(n)]


def scene_views(n: int, size: tuple[int, int], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [augment(photo(SCENES[i % len(SCENES)]), rng, size, crop=0.6) for i in range(n)]


# -- per model -----------------------------------------------------------------------------------

def fer(name: str) -> dict[str, np.ndarray]:
    """64x64 grey faces scaled to [-1, 1] as fer does: 24 LFW faces and 16 views of the astronaut's."""
    faces = [np.asarray(Image.fromarray(f).resize((64, 64), Image.BILINEAR)) for f in lfw_faces()[:24]]
    faces += [np.asarray(Image.fromarray(v).convert("L")) for v in face_views(16, (64, 64), seed=1)]
    x = np.stack(faces).astype(np.float32)
    return {name: ((x / 255.0 - 0.5) * 2.0)[:, None, :, :, None]}


def blazeface() -> dict[str, np.ndarray]:
    views = astronaut_views(28, (128, 128), seed=2) + scene_views(12, (128, 128), seed=3)
    return {"input": np.stack(views).astype(np.float32)[:, None] / 127.5 - 1.0}


def face_mesh() -> dict[str, np.ndarray]:
    return {"input_1": np.stack(face_views(SAMPLES, (192, 192), seed=4)).astype(np.float32)[:, None] / 255.0}


def nudenet() -> dict[str, np.ndarray]:
    views = astronaut_views(28, (320, 320), seed=5) + scene_views(12, (320, 320), seed=6)
    return {"images": (np.stack(views).astype(np.float32) / 255.0).transpose(0, 3, 1, 2)[:, None]}


def _line(text: str, width: int, rng: np.random.Generator) -> np.ndarray:
    """Rendered text on a [48, width] white strip, a random left margin and ink level."""
    image = rendered_text(text)[:, : width - 12].astype(np.float32)
    strip = np.full((48, width, 3), 255.0, np.float32)
    left = int(rng.integers(0, 12))
    strip[:, left:left + image.shape[1]] = image
    ink = rng.uniform(0.0, 80.0)
    return np.clip(strip * (255 - ink) / 255 + ink * (strip < 128), 0, 255)


def _phrases(n: int, rng: np.random.Generator) -> list[str]:
    return list(OCR_TEXTS) + [" ".join(rng.choice(WORDS, int(rng.integers(1, 4)))) for _ in range(n - len(OCR_TEXTS))]


def ocr_rec(width: int = 320) -> dict[str, np.ndarray]:
    """Lines padded to one width, as rapidocr batches them: 16 printed phrases and 16 lines of six
    handwritten digits (scikit-learn's, rows 60-75: not the 60 that test the digits accuracy)."""
    from corpus import digit_lines

    rng = np.random.default_rng(7)
    short = [t for t in OCR_TEXTS if len(t) <= 14]
    phrases = short + [" ".join(rng.choice(WORDS, int(rng.integers(1, 3)))) for _ in range(16 - len(short))]
    printed = [(_line(t, width, rng) / 255.0 - 0.5) / 0.5 for t in phrases]
    digits = np.ones((16, 48, width, 3), np.float32)
    for i, feed in enumerate(digit_lines(rows=76)[0][60:]):
        glyphs = feed["x"][0].transpose(1, 2, 0)
        digits[i, :, :glyphs.shape[1]] = glyphs[:, :width]
    batch = np.concatenate([np.stack(printed), digits])
    return {"x": batch.transpose(0, 3, 1, 2)[:, None].astype(np.float32)}


def ocr_cls() -> dict[str, np.ndarray]:
    """Lines at 192x48, every second one upside down; labels 0 (upright) and 1 (180 degrees)."""
    rng = np.random.default_rng(8)
    lines = []
    for text in _phrases(SAMPLES // 2, rng):
        image = resized(_line(text, 400, rng).astype(np.uint8), (192, 48)) / 255.0
        lines += [image, image[::-1, ::-1]]
    x = ((np.stack(lines) - 0.5) / 0.5).transpose(0, 3, 1, 2)[:, None].astype(np.float32)
    return {"x": x, "labels": np.tile([0, 1], len(lines) // 2)}


def ocr_det() -> dict[str, np.ndarray]:
    """480x288 pages with three printed lines at random rows and texts, varied ink and paper."""
    rng = np.random.default_rng(9)
    pages = [ocr_det_page()]
    while len(pages) < SAMPLES:
        page = np.full((288, 480, 3), float(rng.uniform(215, 255)), np.float32)
        for top in sorted(rng.choice(np.arange(0, 240, 8), 3, replace=False)):
            line = _line(str(rng.choice(_phrases(12, rng))), 470, rng)
            page[top:top + 48, 5:475] = np.minimum(page[top:top + 48, 5:475], line)
        pages.append(page.astype(np.uint8))
    x = np.stack(pages).astype(np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    return {"x": x.transpose(0, 3, 1, 2)[:, None].astype(np.float32)}


def basic_pitch(name: str, samples: int = 32) -> dict[str, np.ndarray]:
    """Tones over four octaves, two-note intervals, with the test's own tones among them."""
    rng = np.random.default_rng(10)
    clips = [tone(m, seed=i) for i, m in enumerate(TONES_MIDI)]
    while len(clips) < samples:
        a = int(rng.integers(45, 85))
        clip = tone(a, seed=len(clips))
        if rng.random() < 0.4:
            clip = clip + tone(a + int(rng.choice([3, 4, 7, 12])), seed=len(clips) + 100)
        clips.append((clip * rng.uniform(0.5, 1.5)).astype(np.float32))
    return {name: np.stack(clips)[:, None, :, None]}


def silero() -> dict[str, np.ndarray]:
    """512-sample chunks at 16 kHz of tones, tones in noise, noise and silence, each fed with the
    LSTM state the float model itself carried into it (the VAD runs chunk after chunk)."""
    import onnxruntime as ort

    from corpus import CORPUS

    session = ort.InferenceSession(str(CORPUS["silero-vad-onnx"].path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(11)
    chunks, states = [], []
    for clip in range(5):
        audio = tone(int(rng.integers(50, 80)), 8 * 512, 16000, seed=clip) * rng.uniform(0.5, 2.0)
        audio = audio + rng.standard_normal(audio.shape).astype(np.float32) * (0.002 if clip % 2 else 0.05)
        audio[: 512 * int(rng.integers(0, 3))] *= 0.01  # a quiet lead-in
        state = np.zeros((2, 1, 128), np.float32)
        for k in range(8):
            chunk = audio[k * 512:(k + 1) * 512][None].astype(np.float32)
            chunks.append(chunk)
            states.append(state)
            _, state = session.run(None, {"input": chunk, "state": state, "sr": np.array(16000)})
    return {"input": np.stack(chunks), "state": np.stack(states), "sr": np.full(len(chunks), 16000, np.int64)}


BUILDERS = {
    "fer-keras-h5": lambda: fer("input_1"),
    "silero-vad-onnx": silero,
    "basic-pitch-savedmodel": lambda: basic_pitch("input_2"),
    "basic-pitch-tflite": lambda: basic_pitch("serving_default_input_2:0"),
    "basic-pitch-onnx": lambda: basic_pitch("serving_default_input_2:0"),
    "nudenet-yolov8n-onnx": nudenet,
    "blazeface-tflite": blazeface,
    "face-mesh-tflite": face_mesh,
    "ocr-det-onnx": ocr_det,
    "ocr-rec-onnx": ocr_rec,
    "ocr-cls-onnx": ocr_cls,
}


def calibration(model_id: str) -> dict[str, np.ndarray]:
    return BUILDERS[model_id]()
