"""The peers' transform kernels: ``torchvision.transforms.functional`` on PIL images.

ssl-invariances and SSL_medicalimaging build each transformed image with
``torchvision.transforms.functional`` applied to the PIL image at its native resolution,
with torchvision's defaults (linusericsson/ssl-invariances@62d5085:eval_synthetic_invariance.py
``ManualTransform.T``; jonahanton/SSL_medicalimaging@77fceef:invariances/invariances.py, the
same class). The defaults differ from medxfer's kernels (:mod:`.geometric`,
:mod:`.photometric`): a rotation is nearest-neighbour (PIL ``Image.rotate`` with
``NEAREST``), colour adjustments go through PIL's ``ImageEnhance`` and HSV conversion.
This module runs the same library calls on uint8 arrays, so a preset that names the
``torchvision-pil`` backend transforms the bytes as the peers did.

Magnitudes mean what they mean in medxfer's kernels (degrees counter-clockwise, flip
1/0, hue shift in turns, enhancement factors, grayscale 1/0), and at the identity
magnitude every kernel returns an exact copy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torchvision.transforms.functional as tf
from PIL import Image

from harness.protocols.image_transforms.pixels import check_finite, check_image


def _to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(image))


def _from_pil(picture: Image.Image, like: np.ndarray) -> np.ndarray:
    out = np.asarray(picture, dtype=np.uint8)
    if out.shape != like.shape:
        raise ValueError(f"PIL kernel changed the image shape {like.shape} -> {out.shape}")
    return np.ascontiguousarray(out)


def rotation(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate counter-clockwise about the center, nearest-neighbour, corners black (PIL).

    Args:
        image: uint8 (H, W) or (H, W, 3).
        degrees: Rotation angle.

    Returns:
        The rotated image, same shape.
    """
    image = check_image(image)
    degrees = check_finite("rotation", degrees)
    if degrees == 0:
        return image.copy()
    return _from_pil(tf.rotate(_to_pil(image), degrees), image)


def _flip(name: str, image: np.ndarray, magnitude: float) -> np.ndarray:
    image = check_image(image)
    magnitude = check_finite(name, magnitude)
    if magnitude not in (0.0, 1.0):
        raise ValueError(f"{name}: magnitude must be 1 (flip) or 0 (identity), got {magnitude}")
    if magnitude == 0.0:
        return image.copy()
    kernel = tf.hflip if name == "hflip" else tf.vflip
    return _from_pil(kernel(_to_pil(image)), image)


def hflip(image: np.ndarray, magnitude: float = 1.0) -> np.ndarray:
    """Flip left-right (PIL); 0 returns a copy."""
    return _flip("hflip", image, magnitude)


def vflip(image: np.ndarray, magnitude: float = 1.0) -> np.ndarray:
    """Flip top-bottom (PIL); 0 returns a copy."""
    return _flip("vflip", image, magnitude)


def hue(image: np.ndarray, shift: float) -> np.ndarray:
    """``adjust_hue`` on the PIL image: HSV round trip, hue channel shifted in uint8 steps.

    Grayscale (mode ``L``) images come back unchanged, as torchvision returns them.

    Args:
        image: uint8 (H, W) or (H, W, 3).
        shift: Hue shift in turns, in [-0.5, 0.5].

    Returns:
        The adjusted image, same shape.
    """
    image = check_image(image)
    shift = check_finite("hue", shift)
    if not -0.5 <= shift <= 0.5:
        raise ValueError(f"hue: shift must lie in [-0.5, 0.5], got {shift}")
    if shift == 0 or image.ndim == 2:
        return image.copy()
    return _from_pil(tf.adjust_hue(_to_pil(image), shift), image)


def _enhance(
    name: str, kernel: Callable[..., Image.Image]
) -> Callable[[np.ndarray, float], np.ndarray]:
    def apply(image: np.ndarray, factor: float) -> np.ndarray:
        image = check_image(image)
        factor = check_finite(name, factor)
        if factor < 0:
            raise ValueError(f"{name}: factor must be >= 0, got {factor}")
        if factor == 1:
            return image.copy()
        return _from_pil(kernel(_to_pil(image), factor), image)

    apply.__name__ = name
    apply.__doc__ = f"torchvision ``{kernel.__name__}`` on the PIL image (PIL ``ImageEnhance``)."
    return apply


brightness = _enhance("brightness", tf.adjust_brightness)
contrast = _enhance("contrast", tf.adjust_contrast)
saturation = _enhance("saturation", tf.adjust_saturation)


def grayscale(image: np.ndarray, amount: float = 1.0) -> np.ndarray:
    """``rgb_to_grayscale`` with 3 output channels (PIL ``convert('L')``); 0 returns a copy.

    Args:
        image: uint8 (H, W) or (H, W, 3).
        amount: 1 converts to gray, 0 returns a copy (the peers' two-value sweep).

    Returns:
        The converted image, same shape.
    """
    image = check_image(image)
    amount = check_finite("grayscale", amount)
    if amount not in (0.0, 1.0):
        raise ValueError(f"grayscale: the torchvision-pil kernel takes 0 or 1, got {amount}")
    if amount == 0 or image.ndim == 2:
        return image.copy()
    return _from_pil(tf.rgb_to_grayscale(_to_pil(image), num_output_channels=3), image)


TRANSFORMS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "rotation": rotation,
    "hflip": hflip,
    "vflip": vflip,
    "hue": hue,
    "brightness": brightness,
    "contrast": contrast,
    "saturation": saturation,
    "grayscale": grayscale,
}
