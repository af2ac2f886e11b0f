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
   30) + 128``, saturated to uint8 (``cv2.addWeighted``);
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


@dataclass(frozen=True, kw_only=True)
class GrahamParams:
    """The ``btgraham-<radius>`` processing of TFDS' diabetic_retinopathy_detection.

    Attributes:
        radius: the eyeball radius in pixels after scaling (``btgraham-300``: 300).
        mask_ratio: the kept disc's radius as a fraction of ``radius``.
        crop: crop to the disc's bounding square (TFDS: ``crop_to_radius=True``).
        jpeg_quality: quality of the JPEG the processed image is stored as.
    """

    radius: int = 300
    mask_ratio: float = 0.9
    crop: bool = True
    jpeg_quality: int = TFDS_JPEG_QUALITY

    def validate(self) -> None:
        """Check the radius, the ratio and the quality."""
        if not 8 <= self.radius <= 4096:
            raise ValueError(f"'graham.radius' must be in 8..4096, got {self.radius}")
        if not 0 < self.mask_ratio <= 1:
            raise ValueError(f"'graham.mask_ratio' must be in (0, 1], got {self.mask_ratio}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"'graham.jpeg_quality' must be in 1..100, got {self.jpeg_quality}")


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:
        raise DatasetError(
            "Graham's preprocessing (reader field 'graham') needs OpenCV: "
            'pip install "medxfer[retinopathy]"'
        ) from exc
    return cv2


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
    blurred = cv2.GaussianBlur(image, (0, 0), params.radius / 30)
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
