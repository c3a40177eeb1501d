"""A folder of images (Pillow) preprocessed like training did: resize, scale, mean/std, layout.

Sub-folders are classes (sorted names -> label 0, 1, ...), as in Keras' and torchvision's
image-folder loaders, so task accuracy can be measured when the folder is laid out that way.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from shipyard.errors import InputError, UsageError
from shipyard.model import Signature

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}


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


class ImageFolderSource:
    measured = True

    def __init__(self, folder: Path, size: str | None = None, layout: str | None = None, mean: str | None = None,
                 std: str | None = None, scale: str | None = "1/255", limit: int | None = None):
        self.folder = folder
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
        if limit:
            files = files[:limit]
        if not files:
            raise InputError(f"{folder}: no images found (looked for {', '.join(sorted(EXTENSIONS))})")
        self.files = files
        classes = sorted({p.parent.relative_to(folder).parts[0] for p in files if p.parent != folder})
        self.labels = (np.array([classes.index(p.parent.relative_to(folder).parts[0]) for p in files])
                       if classes and all(p.parent != folder for p in files) else None)
        self.size = tuple(int(v) for v in size.replace("x", ",").split(",")) if size else None
        if self.size is not None and len(self.size) == 1:
            self.size = (self.size[0], self.size[0])
        if layout not in (None, "NHWC", "NCHW"):
            raise UsageError(f"--layout {layout}: expected NHWC or NCHW")
        self.layout = layout
        self.mean, self.std, self.scale = _floats(mean, "--mean"), _floats(std, "--std"), _floats(scale, "--scale")
        self.description = f"{folder} ({len(files)} images)"

    def feeds(self, signature: Signature) -> Iterator[dict[str, np.ndarray]]:
        from PIL import Image, UnidentifiedImageError

        if len(signature.inputs) != 1:
            raise InputError(f"{self.folder}: an image folder can only feed a one-input model")
        spec = signature.inputs[0]
        if spec.shape is None or len(spec.shape) != 4:
            raise InputError(f"{self.folder}: input '{spec.name}' is not an image batch (shape {spec.shape})")
        layout = self.layout or ("NCHW" if spec.shape[1] in (1, 3) and spec.shape[-1] not in (1, 3) else "NHWC")
        h, w, c = (spec.shape[2], spec.shape[3], spec.shape[1]) if layout == "NCHW" else spec.shape[1:4]
        size = self.size or (h, w)
        if not all(isinstance(d, int) and d > 0 for d in size):
            raise UsageError(f"input '{spec.name}' has no fixed image size: give --image-size H,W")
        for path in self.files:
            try:
                with Image.open(path) as img:
                    img = img.convert("L" if c == 1 else "RGB").resize((size[1], size[0]), Image.BILINEAR)
                    x = np.asarray(img, np.float32)
            except (UnidentifiedImageError, OSError) as exc:
                raise InputError(f"{path}: not a readable image ({exc})") from exc
            x = x.reshape(size[0], size[1], -1)
            if self.scale is not None:
                x = x * self.scale
            if self.mean is not None:
                x = x - self.mean
            if self.std is not None:
                x = x / self.std
            if layout == "NCHW":
                x = x.transpose(2, 0, 1)
            yield {spec.name: x[None].astype(spec.dtype if spec.dtype not in ("unknown",) else np.float32)}
