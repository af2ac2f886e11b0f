"""Photometric image transforms: brightness, contrast, colour, blur, windowing, gamma."""

from __future__ import annotations

import math

import numpy as np
from torchvision.transforms.v2 import functional as tvf

from harness.protocols.image_transforms.pixels import (
    check_finite,
    check_image,
    luminance,
    lut,
    to_image,
    to_tensor,
    to_uint8,
)


def _nonnegative(name: str, factor: float) -> float:
    factor = check_finite(name, factor)
    if factor < 0:
        raise ValueError(f"{name}: factor must be >= 0, got {factor}")
    return factor


def brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """Multiply intensities by ``factor`` (clipped to [0, 255]).

    Args:
        image: uint8 (H, W) or (H, W, 3).
        factor: Brightness factor, >= 0 (0 gives black).

    Returns:
        The adjusted image, same shape.
    """
    image = check_image(image)
    factor = _nonnegative("brightness", factor)
    return lut(image, np.arange(256, dtype=np.float64) * factor)


def contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Scale the distance from the image's mean luminance: ``m + factor (x - m)``.

    Args:
        image: uint8 (H, W) or (H, W, 3).
        factor: Contrast factor, >= 0 (0 gives a flat gray image at the mean).

    Returns:
        The adjusted image, same shape.
    """
    image = check_image(image)
    factor = _nonnegative("contrast", factor)
    if factor == 1:
        return image.copy()
    mean = float(luminance(image).mean())
    return to_uint8(mean + factor * (image.astype(np.float64) - mean))


def hue(image: np.ndarray, shift: float) -> np.ndarray:
    """Rotate the hue by ``shift`` turns (torchvision ``adjust_hue``); grayscale: a copy.

    Args:
        image: uint8 (H, W) or (H, W, 3).
        shift: Hue shift, in [-0.5, 0.5].

    Returns:
        The adjusted image, same shape.
    """
    image = check_image(image)
    shift = check_finite("hue", shift)
    if not -0.5 <= shift <= 0.5:
        raise ValueError(f"hue: shift must lie in [-0.5, 0.5], got {shift}")
    if shift == 0 or image.ndim == 2:
        return image.copy()
    return to_image(tvf.adjust_hue(to_tensor(image), shift), image)


def saturation(image: np.ndarray, factor: float) -> np.ndarray:
    """Scale the distance from each pixel's luminance: ``g + factor (x - g)``; grayscale: a copy.

    Args:
        image: uint8 (H, W) or (H, W, 3).
        factor: Saturation factor, >= 0 (0 gives gray).

    Returns:
        The adjusted image, same shape.
    """
    image = check_image(image)
    factor = _nonnegative("saturation", factor)
    if factor == 1 or image.ndim == 2:
        return image.copy()
    gray = luminance(image)[..., None]
    return to_uint8(gray + factor * (image.astype(np.float64) - gray))


def grayscale(image: np.ndarray, amount: float = 1.0) -> np.ndarray:
    """Blend towards the luminance (replicated to 3 channels); grayscale: a copy.

    Args:
        image: uint8 (H, W) or (H, W, 3).
        amount: Blend fraction in [0, 1]; 1 converts to gray.

    Returns:
        The adjusted image, same shape.
    """
    image = check_image(image)
    amount = check_finite("grayscale", amount)
    if not 0 <= amount <= 1:
        raise ValueError(f"grayscale: amount must lie in [0, 1], got {amount}")
    return saturation(image, 1.0 - amount)


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation ``sigma`` pixels (reflected borders).

    The kernel spans ``2 ceil(3 sigma) + 1`` pixels, capped at the largest odd size the
    image can reflect-pad.

    Args:
        image: uint8 (H, W) or (H, W, 3).
        sigma: Standard deviation in pixels, >= 0.

    Returns:
        The blurred image, same shape.
    """
    image = check_image(image)
    sigma = _nonnegative("blur", sigma)
    if sigma == 0:
        return image.copy()
    size = min(2 * math.ceil(3 * sigma) + 1, 2 * min(image.shape[:2]) - 1)
    if size < 3:
        return image.copy()
    out = tvf.gaussian_blur(to_tensor(image), kernel_size=[size, size], sigma=[sigma, sigma])
    return to_image(out, image)


def windowing(image: np.ndarray, width: float, center: float = 0.5) -> np.ndarray:
    """Apply an intensity window and stretch it to the full range (CT-style windowing).

    The window is ``[center - width/2, center + width/2]`` in fractions of [0, 255];
    intensities below / above it become 0 / 255. ``width=1, center=0.5`` is the identity.

    Args:
        image: uint8 (H, W) or (H, W, 3).
        width: Window width as a fraction of the uint8 range, > 0.
        center: Window center as a fraction of the uint8 range.

    Returns:
        The windowed image, same shape.
    """
    image = check_image(image)
    width = check_finite("windowing", width)
    center = check_finite("windowing", center)
    if width <= 0:
        raise ValueError(f"windowing: width must be > 0, got {width}")
    low = 255.0 * (center - width / 2)
    return lut(image, (np.arange(256, dtype=np.float64) - low) / width)


def gamma(image: np.ndarray, value: float) -> np.ndarray:
    """Gamma curve ``255 (x / 255) ** value`` (< 1 brightens dark regions).

    Args:
        image: uint8 (H, W) or (H, W, 3).
        value: Gamma, > 0.

    Returns:
        The adjusted image, same shape.
    """
    image = check_image(image)
    value = check_finite("gamma", value)
    if value <= 0:
        raise ValueError(f"gamma: value must be > 0, got {value}")
    return lut(image, 255.0 * (np.arange(256, dtype=np.float64) / 255.0) ** value)
