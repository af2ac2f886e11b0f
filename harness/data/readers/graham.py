"""Ben Graham's fundus preprocessing, as TFDS' ``diabetic_retinopathy_detection/btgraham-300``.

VTAB's Retinopathy task (google-research/task_adaptation@d7630d3:
task_adaptation/data/diabetic_retinopathy.py) reads TFDS' ``btgraham-300`` config, whose
builder re-encodes every Kaggle JPEG once
(tensorflow/datasets@0560e68:tensorflow_datasets/image_classification/
diabetic_retinopathy_detection.py, ``_btgraham_processing``):

1. decode with OpenCV (``cv2.imdecode(..., flags=3)``: BGR, EXIF orientation applied);
2. scale so that the eyeball's radius is ``radius`` pixels: the radius is half the count
   of middle-row pixels whose channel sum exceeds a tenth of the row's mean sum (the
   image height / 2 when that count is 0), and ``cv2.resize`` by ``radius / r``
   (bilinear);
3. subtract the local average colour: ``4 * image - 4 * GaussianBlur(sigma = radius /
   30) + 128``, saturated to uint8 (``cv2.addWeighted``). Which blur is the field
   ``blur``: ``opencv`` is the installed OpenCV's; ``opencv-pre-4.2`` is the blur of every
   OpenCV from 3.4.1 to 4.1.2 (2018-2019, when TFDS built the data VTAB read), whose
   8-bit kernel does not sum to 1 (at radius 300 it sums to 252/256 per pass: a blur up
   to 3% too dark, so the stored disc is about 12 grey levels brighter;
   opencv/opencv#9863, fixed in 3.4.9 / 4.2.0 by opencv/opencv#15855): see
   :func:`gaussian_blur_pre_4_2`;
4. keep a centred disc of radius ``int(mask_ratio * radius)`` (``cv2.circle``, filled),
   grey (128) outside, and crop to the disc's bounding square, clipped to the image;
5. encode as JPEG at quality 72 (``cv2.imencode``), the bytes TFDS stores.

The reader then decodes those bytes as TensorFlow does (libjpeg, through PIL) and fits
them to the card's size. OpenCV (``pip install "medxfer[retinopathy]"``) is used for
steps 1-5 so that the pixels are TFDS' own.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.data import DatasetError

TFDS_JPEG_QUALITY = 72
BLURS = ("opencv", "opencv-pre-4.2")


@dataclass(frozen=True, kw_only=True)
class GrahamParams:
    """The ``btgraham-<radius>`` processing of TFDS' diabetic_retinopathy_detection.

    Attributes:
        radius: the eyeball radius in pixels after scaling (``btgraham-300``: 300).
        mask_ratio: the kept disc's radius as a fraction of ``radius``.
        crop: crop to the disc's bounding square (TFDS: ``crop_to_radius=True``).
        jpeg_quality: quality of the JPEG the processed image is stored as.
        blur: whose Gaussian blur subtracts the local average: ``opencv`` (the installed
            OpenCV's) or ``opencv-pre-4.2`` (OpenCV 3.4.1-4.1.2's, bit for bit).
    """

    radius: int = 300
    mask_ratio: float = 0.9
    crop: bool = True
    jpeg_quality: int = TFDS_JPEG_QUALITY
    blur: str = "opencv"

    def validate(self) -> None:
        """Check the radius, the ratio and the quality."""
        if not 8 <= self.radius <= 4096:
            raise ValueError(f"'graham.radius' must be in 8..4096, got {self.radius}")
        if not 0 < self.mask_ratio <= 1:
            raise ValueError(f"'graham.mask_ratio' must be in (0, 1], got {self.mask_ratio}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"'graham.jpeg_quality' must be in 1..100, got {self.jpeg_quality}")
        if self.blur not in BLURS:
            raise ValueError(f"'graham.blur' must be one of {BLURS}, got {self.blur!r}")


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:
        raise DatasetError(
            "Graham's preprocessing (reader field 'graham') needs OpenCV: "
            'pip install "medxfer[retinopathy]"'
        ) from exc
    return cv2


def opencv_version() -> str:
    """The installed OpenCV's version (a key part of data it processed).

    Raises:
        DatasetError: when OpenCV is not installed.
    """
    return str(_cv2().__version__)


def graham_jpeg(data: bytes, params: GrahamParams) -> bytes:
    """The JPEG bytes TFDS' ``btgraham`` builder stores for one original image file.

    Raises:
        ValueError: when OpenCV cannot decode ``data``.
    """
    cv2 = _cv2()
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags=3)
    if image is None:
        raise ValueError("OpenCV cannot decode it as an image")
    middle = image[image.shape[0] // 2, :, :].sum(axis=1)
    r = (middle > middle.mean() / 10.0).sum() / 2.0
    if r < 1.0:  # TFDS: a corrupted image; assume the radius is half the height
        r = image.shape[0] / 2.0
    scale = params.radius / r
    image = cv2.resize(image, dsize=None, fx=scale, fy=scale)
    sigma = params.radius / 30
    if params.blur == "opencv-pre-4.2":
        blurred = gaussian_blur_pre_4_2(image, sigma)
    else:
        blurred = cv2.GaussianBlur(image, (0, 0), sigma)
    image = cv2.addWeighted(image, 4, blurred, -4, 128)
    mask = np.zeros(image.shape)
    centre = (image.shape[1] // 2, image.shape[0] // 2)
    radius = int(params.radius * params.mask_ratio)
    cv2.circle(mask, center=centre, radius=radius, color=(1, 1, 1), thickness=-1)
    image = image * mask + (1 - mask) * 128
    if params.crop:  # the disc's bounding square, clipped to the image
        (cx, cy), (height, width) = centre, image.shape[:2]
        image = image[
            max(cy - radius, 0) : min(cy + radius, height),
            max(cx - radius, 0) : min(cx + radius, width),
        ]
    quality = [int(cv2.IMWRITE_JPEG_QUALITY), params.jpeg_quality]
    ok, encoded = cv2.imencode(".jpg", image, quality)
    if not ok:
        raise ValueError("OpenCV could not encode the processed image")
    return encoded.tobytes()


def gaussian_blur_pre_4_2(image: np.ndarray, sigma: float) -> np.ndarray:
    """``cv2.GaussianBlur(image, (0, 0), sigma)`` of a uint8 image as OpenCV 3.4.1-4.1.2 computed it.

    Those versions blur 8-bit images in fixed point: the kernel size is
    ``round(6 * sigma + 1) | 1``, the normalised Gaussian is rounded to multiples of 1/256
    (``ufixedpoint16``) with no correction of its sum, each pass is an exact integer
    correlation with that kernel (border ``REFLECT_101``), and the result is rounded half
    up from 16 fractional bits and saturated. At ``sigma = 10`` (radius 300) the kernel
    sums to 252/256 per pass, so the blur is about 3% darker than the image it smooths.
    Checked against the real OpenCV 3.4.1, 3.4.5, 4.0.0, 4.1.0 and 4.1.2 by
    ``tests/perf/graham_opencv_versions.py``.

    Args:
        image: uint8 ``(H, W)`` or ``(H, W, C)``.
        sigma: the standard deviation in both directions (> 0).

    Returns:
        The blurred uint8 image, of the same shape.
    """
    from scipy.ndimage import correlate1d

    if image.dtype != np.uint8 or sigma <= 0:
        raise ValueError(f"needs a uint8 image and sigma > 0, got {image.dtype} and {sigma}")
    size = int(np.rint(sigma * 6 + 1)) | 1
    offsets = np.arange(size) - (size - 1) / 2
    kernel = np.exp(-(offsets**2) / (2 * sigma * sigma))
    fixed = np.rint(kernel / kernel.sum() * 256).astype(np.int64)
    # scipy's "mirror" is OpenCV's REFLECT_101 (the edge pixel is not repeated)
    rows = correlate1d(image.astype(np.int64), fixed, axis=1, mode="mirror")
    both = correlate1d(rows, fixed, axis=0, mode="mirror")
    return np.clip((both + (1 << 15)) >> 16, 0, 255).astype(np.uint8)


def graham_decoder(
    params: GrahamParams, fit: Callable[[object], np.ndarray]
) -> Callable[[Path], np.ndarray]:
    """A function reading one original fundus image as ``btgraham`` stores it, then fitted.

    Args:
        params: the Graham processing.
        fit: brings the decoded RGB PIL image to the card's size (``fit_image``).
    """
    from PIL import Image

    _cv2()  # a missing OpenCV fails the reader once, not every image

    def decode(path: Path) -> np.ndarray:
        stored = graham_jpeg(path.read_bytes(), params)
        with Image.open(io.BytesIO(stored)) as opened:
            return fit(opened.convert("RGB"))

    return decode
