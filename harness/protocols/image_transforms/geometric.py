"""Geometric image transforms: rotation, flips, translation, scale, shear (torchvision kernels)."""

from __future__ import annotations

import numpy as np
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from harness.protocols.image_transforms.pixels import check_finite, check_image, to_image, to_tensor


def rotation(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate about the center, counter-clockwise, bilinear; uncovered corners are black.

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
    out = tvf.rotate(to_tensor(image), degrees, interpolation=InterpolationMode.BILINEAR, fill=0)
    return to_image(out, image)


def _flip(name: str, image: np.ndarray, magnitude: float, axis: int) -> np.ndarray:
    image = check_image(image)
    magnitude = check_finite(name, magnitude)
    if magnitude not in (0.0, 1.0):
        raise ValueError(f"{name}: magnitude must be 1 (flip) or 0 (identity), got {magnitude}")
    if magnitude == 0.0:
        return image.copy()
    return np.ascontiguousarray(np.flip(image, axis=axis))


def hflip(image: np.ndarray, magnitude: float = 1.0) -> np.ndarray:
    """Flip left-right.

    Args:
        image: uint8 (H, W) or (H, W, 3).
        magnitude: 1 flips, 0 returns a copy.

    Returns:
        The flipped image, same shape.
    """
    return _flip("hflip", image, magnitude, axis=1)


def vflip(image: np.ndarray, magnitude: float = 1.0) -> np.ndarray:
    """Flip top-bottom.

    Args:
        image: uint8 (H, W) or (H, W, 3).
        magnitude: 1 flips, 0 returns a copy.

    Returns:
        The flipped image, same shape.
    """
    return _flip("vflip", image, magnitude, axis=0)


def translation(image: np.ndarray, fraction: float) -> np.ndarray:
    """Shift right and down by ``fraction`` of the width and height; uncovered pixels are black.

    The shift is rounded to whole pixels, so the kept pixels are copied exactly.

    Args:
        image: uint8 (H, W) or (H, W, 3).
        fraction: Shift as a fraction of the image size; negative shifts left and up.

    Returns:
        The shifted image, same shape.
    """
    image = check_image(image)
    fraction = check_finite("translation", fraction)
    height, width = image.shape[:2]
    dy, dx = round(fraction * height), round(fraction * width)
    out = np.zeros_like(image)
    if abs(dy) >= height or abs(dx) >= width:
        return out
    src_y = slice(max(0, -dy), height - max(0, dy))
    dst_y = slice(max(0, dy), height - max(0, -dy))
    src_x = slice(max(0, -dx), width - max(0, dx))
    dst_x = slice(max(0, dx), width - max(0, -dx))
    out[dst_y, dst_x] = image[src_y, src_x]
    return out


def _affine(image: np.ndarray, *, scale: float = 1.0, shear: float = 0.0) -> np.ndarray:
    out = tvf.affine(
        to_tensor(image),
        angle=0.0,
        translate=[0, 0],
        scale=scale,
        shear=[shear, 0.0],
        interpolation=InterpolationMode.BILINEAR,
        fill=0,
    )
    return to_image(out, image)


def scale(image: np.ndarray, factor: float) -> np.ndarray:
    """Zoom about the center, bilinear: >1 zooms in, <1 zooms out with a black border.

    Args:
        image: uint8 (H, W) or (H, W, 3).
        factor: Zoom factor, > 0.

    Returns:
        The zoomed image, same shape.
    """
    image = check_image(image)
    factor = check_finite("scale", factor)
    if factor <= 0:
        raise ValueError(f"scale: factor must be > 0, got {factor}")
    if factor == 1:
        return image.copy()
    return _affine(image, scale=factor)


def shear(image: np.ndarray, degrees: float) -> np.ndarray:
    """Shear along x about the center, bilinear; uncovered pixels are black.

    Args:
        image: uint8 (H, W) or (H, W, 3).
        degrees: Shear angle, in (-90, 90).

    Returns:
        The sheared image, same shape.
    """
    image = check_image(image)
    degrees = check_finite("shear", degrees)
    if not -90 < degrees < 90:
        raise ValueError(f"shear: angle must lie in (-90, 90) degrees, got {degrees}")
    if degrees == 0:
        return image.copy()
    return _affine(image, shear=degrees)
