"""Decoding image files with PIL to uint8 arrays of one declared size, and the shared params."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from harness.data import DatasetError
from harness.data.dicom import to_uint8
from harness.data.pil_resize import resize_width_first
from harness.data.resize_tf import tf1_bilinear_resize

RESAMPLING = ("bilinear", "bicubic", "nearest", "lanczos", "tf1_bilinear")


@dataclass(frozen=True, kw_only=True)
class GeometryParams:
    """How a decoded image is brought to the dataset's square size.

    Attributes:
        size: output side in pixels (all images of a dataset share it, so arrays stack).
        fit: ``center_crop`` crops the central square before resizing (MedMNIST's way);
            ``stretch`` resizes the whole image.
        interpolation: PIL resampling filter (antialiased when shrinking), or
            ``tf1_bilinear``: TensorFlow 1's bilinear resize without antialiasing
            (:func:`~harness.data.resize_tf.tf1_bilinear_resize`, VTAB's), rounded to uint8.
    """

    size: int = 224
    fit: Literal["center_crop", "stretch"] = "center_crop"
    interpolation: Literal["bilinear", "bicubic", "nearest", "lanczos", "tf1_bilinear"] = "bilinear"

    def validate(self) -> None:
        """Check the size."""
        if not 8 <= self.size <= 4096:
            raise ValueError(f"'size' must be in 8..4096, got {self.size}")


@dataclass(frozen=True, kw_only=True)
class ImageParams(GeometryParams):
    """Geometry plus colour.

    Attributes:
        mode: ``L`` stores grayscale ``(H, W)``, ``RGB`` stores ``(H, W, 3)``.
    """

    mode: Literal["L", "RGB"] = "L"


@dataclass(frozen=True, kw_only=True)
class DicomParams(GeometryParams):
    """Geometry plus how a DICOM frame is windowed to uint8 (as ``harness.data.dicom``).

    Attributes:
        frame: the frame of a multi-frame file to use.
        window: ``[low, high]`` values (after the modality rescale) mapped to 0 and 255;
            by default each image's robust ``percentiles``.
        percentiles: lower and upper percentiles used when ``window`` is not given.
        invert_monochrome1: flip MONOCHROME1 images so that larger means brighter.
    """

    frame: int = 0
    window: tuple[float, float] | None = None
    percentiles: tuple[float, float] = (0.5, 99.5)
    invert_monochrome1: bool = True

    def validate(self) -> None:
        """Check the geometry and the window."""
        GeometryParams.validate(self)
        if self.window is not None and not self.window[1] > self.window[0]:
            raise ValueError(f"'window' must be [low, high] with high > low, got {self.window}")
        if not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            raise ValueError(
                f"'percentiles' must be 0 <= low < high <= 100, got {self.percentiles}"
            )


def dicom_decoder(params: DicomParams) -> Callable[[Path], np.ndarray]:
    """A function decoding one DICOM file to uint8 grayscale of the declared size.

    The modality rescale is applied, the frame windowed per ``params`` and fitted like
    any image (:func:`fit_image`).
    """
    from harness.data.dicom import read_dicom_frames

    def decode(path: Path) -> np.ndarray:
        frames = read_dicom_frames(path, invert_monochrome1=params.invert_monochrome1)
        if not -len(frames) <= params.frame < len(frames):
            raise DatasetError(f"has {len(frames)} frame(s); reader.frame is {params.frame}")
        frame = to_uint8(frames[params.frame], params.window, params.percentiles)
        return fit_image(dicom_to_pil(frame), params)

    return decode


def fit_image(image: object, params: GeometryParams) -> np.ndarray:
    """Crop (per ``params.fit``) and resize a PIL image; return it as a uint8 array."""
    from PIL import Image

    assert isinstance(image, Image.Image)
    if params.fit == "center_crop":
        width, height = image.size
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size == (params.size, params.size):
        return np.asarray(image, dtype=np.uint8)
    if params.interpolation == "tf1_bilinear":
        resized = tf1_bilinear_resize(np.asarray(image), params.size)
        return np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    resample = getattr(Image.Resampling, params.interpolation.upper())
    resized = resize_width_first(image, (params.size, params.size), resample)
    return np.asarray(resized, dtype=np.uint8)


def decode_image(path: Path, params: ImageParams) -> np.ndarray:
    """Decode an image file (PNG, JPEG, TIFF, BMP ...) to uint8 of the declared size and mode.

    16-bit and float grayscale images are scaled to 8 bits (16-bit by 65535 -> 255, others
    by their robust range).

    Raises:
        FileNotFoundError: when the file is missing.
        OSError / ValueError: when the file is not a decodable image (the caller names it).
    """
    from PIL import Image

    with Image.open(path) as opened:
        opened.load()
        image = opened
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            values = np.asarray(image, dtype=np.float32)
            window = (0.0, 65535.0) if image.mode.startswith("I;16") else None
            image = Image.fromarray(to_uint8(values, window=window))
        if image.mode != params.mode:
            image = image.convert(params.mode)
        return fit_image(image, params)


def dicom_to_pil(frame: np.ndarray) -> object:
    """A uint8 frame as a PIL grayscale image."""
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
