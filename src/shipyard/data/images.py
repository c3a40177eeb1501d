"""Images preprocessed like training did (Pillow): resize, scale, mean/std, layout.

Two sources use it: a folder of image files (:class:`ImageFolderSource`) and encoded images
inside TFRecords (``data/tfrecord.py``). In a folder, sub-folders are classes (sorted names ->
label 0, 1, ...), as in Keras' and torchvision's image-folder loaders, so task accuracy can be
measured when the folder is laid out that way.
"""
from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from shipyard.errors import InputError, UsageError
from shipyard.model import Signature, TensorSpec

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}
# The first bytes of the encodings Pillow reads: how a TFRecord's bytes feature is known to be an image.
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def looks_like_image(data: bytes) -> bool:
    return data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def image_files(folder: Path, limit: int | None = None) -> tuple[list[Path], np.ndarray | None]:
    """The images under ``folder`` (sorted) and their labels when every image sits in a class sub-folder."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
    if limit:
        files = files[:limit]
    if not files:
        raise InputError(f"{folder}: no images found (looked for {', '.join(sorted(EXTENSIONS))})")
    classes = sorted({p.parent.relative_to(folder).parts[0] for p in files if p.parent != folder})
    labels = (np.array([classes.index(p.parent.relative_to(folder).parts[0]) for p in files])
              if classes and all(p.parent != folder for p in files) else None)
    return files, labels


def _floats(text: str | None, what: str) -> np.ndarray | None:
    if text is None:
        return None
    try:
        if "/" in text and "," not in text:
            num, den = text.split("/")
            return np.array([float(num) / float(den)], np.float32)
        return np.array([float(v) for v in text.split(",")], np.float32)
    except ValueError:
        raise UsageError(f"{what} {text!r}: expected numbers separated by commas (or a fraction like 1/255)") from None


class Preprocess:
    """Decoded image -> one model input sample, with the ``--image-size/--layout/--mean/--std/--scale`` options."""

    def __init__(self, size: str | None = None, layout: str | None = None, mean: str | None = None,
                 std: str | None = None, scale: str | None = "1/255"):
        self.size = tuple(int(v) for v in size.replace("x", ",").split(",")) if size else None
        if self.size is not None and len(self.size) == 1:
            self.size = (self.size[0], self.size[0])
        if layout not in (None, "NHWC", "NCHW"):
            raise UsageError(f"--layout {layout}: expected NHWC or NCHW")
        self.layout = layout
        self.mean, self.std, self.scale = _floats(mean, "--mean"), _floats(std, "--std"), _floats(scale, "--scale")

    def geometry(self, spec: TensorSpec, where: str) -> tuple[str, tuple[int, int], int]:
        """(layout, (height, width), channels) for an image batch input."""
        if spec.shape is None or len(spec.shape) != 4:
            raise InputError(f"{where}: input '{spec.name}' is not an image batch (shape {spec.shape})")
        layout = self.layout or ("NCHW" if spec.shape[1] in (1, 3) and spec.shape[-1] not in (1, 3) else "NHWC")
        h, w, c = (spec.shape[2], spec.shape[3], spec.shape[1]) if layout == "NCHW" else spec.shape[1:4]
        size = self.size or (h, w)
        if not all(isinstance(d, int) and d > 0 for d in size):
            raise UsageError(f"input '{spec.name}' has no fixed image size: give --image-size H,W")
        return layout, size, c

    def sample(self, image: Path | bytes, spec: TensorSpec, where: str) -> np.ndarray:
        """One image (a file or encoded bytes) as the input's per-sample array (no batch axis)."""
        from PIL import Image, UnidentifiedImageError

        layout, size, c = self.geometry(spec, where)
        try:
            with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as img:
                img = img.convert("L" if c == 1 else "RGB").resize((size[1], size[0]), Image.BILINEAR)
                x = np.asarray(img, np.float32)
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"{where}: not a readable image ({exc})") from exc
        x = x.reshape(size[0], size[1], -1)
        if self.scale is not None:
            x = x * self.scale
        if self.mean is not None:
            x = x - self.mean
        if self.std is not None:
            x = x / self.std
        if layout == "NCHW":
            x = x.transpose(2, 0, 1)
        return x.astype(spec.dtype if spec.dtype not in ("unknown",) else np.float32)


class ImageFolderSource:
    measured = True

    def __init__(self, folder: Path, size: str | None = None, layout: str | None = None, mean: str | None = None,
                 std: str | None = None, scale: str | None = "1/255", limit: int | None = None):
        self.folder = folder
        self.files, self.labels = image_files(folder, limit)
        self.preprocess = Preprocess(size, layout, mean, std, scale)
        self.description = f"{folder} ({len(self.files)} images)"

    def feeds(self, signature: Signature) -> Iterator[dict[str, np.ndarray]]:
        if len(signature.inputs) != 1:
            raise InputError(f"{self.folder}: an image folder can only feed a one-input model")
        spec = signature.inputs[0]
        self.preprocess.geometry(spec, str(self.folder))  # a model that takes no images fails before any decoding
        for path in self.files:
            yield {spec.name: self.preprocess.sample(path, spec, str(path))[None]}
