"""Named, parametrised, deterministic image transforms for the invariance protocol.

Every transform takes a uint8 image, ``(H, W)`` grayscale or ``(H, W, 3)`` RGB, and one
float magnitude, and returns a new uint8 image of the same shape. The same input and
magnitude always give the same bytes (no randomness; torchvision's geometric kernels
are deterministic on CPU, the photometric ones are numpy look-up arithmetic with
``rint``). Transforms act at the dataset's native resolution, before the model's own
resize and center crop, as ssl-invariances applies them to the original PIL image.

Transforms, their magnitude and (in brackets) the magnitude that is the identity:

* ``rotation``: degrees counter-clockwise about the center, bilinear, uncovered corners
  black [0].
* ``hflip`` / ``vflip``: 1 flips left-right / top-bottom, 0 leaves the image alone [0].
* ``translation``: shift right and down by this fraction of W and H, rounded to whole
  pixels, uncovered pixels black; negative shifts left and up [0].
* ``scale``: zoom factor about the center, bilinear; > 1 zooms in, < 1 leaves a black
  border [1].
* ``shear``: x-shear angle in degrees about the center, bilinear [0].
* ``brightness``: multiply intensities by the factor [1].
* ``contrast``: ``m + f (x - m)`` with ``m`` the image's mean luminance (torchvision's
  definition) [1].
* ``hue``: hue shift in turns, in [-0.5, 0.5] (torchvision ``adjust_hue``) [0].
* ``saturation``: ``g + f (x - g)`` with ``g`` the pixel's luminance [1].
* ``grayscale``: blend fraction towards the luminance, 1 = gray [0].
* ``blur``: gaussian sigma in pixels, kernel ``2 ceil(3 sigma) + 1`` [0].
* ``windowing``: window width as a fraction of the uint8 range [0, 255], centred at
  mid-range (127.5); intensities below / above the window clip to 0 / 255 and the window
  is stretched to [0, 255], like a narrower CT window (``windowing(image, width,
  center=...)`` takes another center) [1].
* ``gamma``: ``255 (x / 255) ** gamma`` [1].

Grayscale images: hue, saturation and grayscale are colour transforms. A model sees a
grayscale image as gray replicated to three channels, whose saturation is zero, so a
hue shift, a saturation factor or a conversion to gray leaves it exactly unchanged.
These transforms therefore return an unchanged copy of a grayscale image, in its own
``(H, W)`` shape (converting to ``(H, W, 3)`` would break the same-shape contract and
change nothing the model sees). The same holds for RGB arrays whose channels are equal.
:func:`applicable` says so, and the benchmark skips these transforms on such images
instead of recording a trivial cosine of 1.

Luminance uses the ITU-R 601-2 weights (0.299, 0.587, 0.114), as PIL and torchvision.
At the identity magnitude every transform returns an exact copy of its input.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

Transform = Callable[[np.ndarray, float], np.ndarray]

_LUMA = np.array([0.299, 0.587, 0.114])

#: The magnitude at which each transform returns its input unchanged.
IDENTITY: dict[str, float] = {
    "rotation": 0.0,
    "hflip": 0.0,
    "vflip": 0.0,
    "translation": 0.0,
    "scale": 1.0,
    "shear": 0.0,
    "brightness": 1.0,
    "contrast": 1.0,
    "hue": 0.0,
    "saturation": 1.0,
    "grayscale": 0.0,
    "blur": 0.0,
    "windowing": 1.0,
    "gamma": 1.0,
}

#: Transforms that only change colour: exact identities on grayscale images.
COLOUR_TRANSFORMS = frozenset({"hue", "saturation", "grayscale"})

#: The default (name, magnitude) pairs of the invariance protocol: one moderate setting
#: per transform (two for rotation: a small tilt and a quarter turn).
DEFAULT_TRANSFORMS: tuple[tuple[str, float], ...] = (
    ("rotation", 10.0),
    ("rotation", 90.0),
    ("hflip", 1.0),
    ("vflip", 1.0),
    ("translation", 0.1),
    ("scale", 1.25),
    ("shear", 15.0),
    ("brightness", 1.3),
    ("contrast", 0.7),
    ("hue", 0.1),
    ("saturation", 1.5),
    ("grayscale", 1.0),
    ("blur", 1.0),
    ("windowing", 0.5),
    ("gamma", 0.7),
)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"expected an image of shape (H, W) or (H, W, 3), got {image.shape}")
    return image


def _check_finite(name: str, magnitude: float) -> float:
    magnitude = float(magnitude)
    if not math.isfinite(magnitude):
        raise ValueError(f"{name}: magnitude must be finite, got {magnitude}")
    return magnitude


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(image))
    return tensor[None] if image.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def _to_image(tensor: torch.Tensor, like: np.ndarray) -> np.ndarray:
    array = tensor[0] if like.ndim == 2 else tensor.permute(1, 2, 0)
    return np.ascontiguousarray(array.numpy())


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)


def _lut(image: np.ndarray, table: np.ndarray) -> np.ndarray:
    return _to_uint8(table)[image]


def _luminance(image: np.ndarray) -> np.ndarray:
    """Float luminance (H, W) of a uint8 image (the image itself when grayscale)."""
    if image.ndim == 2:
        return image.astype(np.float64)
    return image.astype(np.float64) @ _LUMA


def rotation(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate about the center, counter-clockwise, bilinear; uncovered corners are black.

    Args:
        image: uint8 (H, W) or (H, W, 3).
        degrees: Rotation angle.

    Returns:
        The rotated image, same shape.
    """
    image = _check_image(image)
    degrees = _check_finite("rotation", degrees)
    if degrees == 0:
        return image.copy()
    out = tvf.rotate(_to_tensor(image), degrees, interpolation=InterpolationMode.BILINEAR, fill=0)
    return _to_image(out, image)


def _flip_switch(name: str, magnitude: float) -> bool:
    magnitude = _check_finite(name, magnitude)
    if magnitude not in (0.0, 1.0):
        raise ValueError(f"{name}: magnitude must be 1 (flip) or 0 (identity), got {magnitude}")
    return magnitude == 1.0


def hflip(image: np.ndarray, magnitude: float = 1.0) -> np.ndarray:
    """Flip left-right.

    Args:
        image: uint8 (H, W) or (H, W, 3).
        magnitude: 1 flips, 0 returns a copy.

    Returns:
        The flipped image, same shape.
    """
    image = _check_image(image)
    if not _flip_switch("hflip", magnitude):
        return image.copy()
    return np.ascontiguousarray(image[:, ::-1])


def vflip(image: np.ndarray, magnitude: float = 1.0) -> np.ndarray:
    """Flip top-bottom.

    Args:
        image: uint8 (H, W) or (H, W, 3).
        magnitude: 1 flips, 0 returns a copy.

    Returns:
        The flipped image, same shape.
    """
    image = _check_image(image)
    if not _flip_switch("vflip", magnitude):
        return image.copy()
    return np.ascontiguousarray(image[::-1])


def translation(image: np.ndarray, fraction: float) -> np.ndarray:
    """Shift right and down by ``fraction`` of the width and height; uncovered pixels are black.

    The shift is rounded to whole pixels, so the kept pixels are copied exactly.

    Args:
        image: uint8 (H, W) or (H, W, 3).
        fraction: Shift as a fraction of the image size; negative shifts left and up.

    Returns:
        The shifted image, same shape.
    """
    image = _check_image(image)
    fraction = _check_finite("translation", fraction)
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
        _to_tensor(image),
        angle=0.0,
        translate=[0, 0],
        scale=scale,
        shear=[shear, 0.0],
        interpolation=InterpolationMode.BILINEAR,
        fill=0,
    )
    return _to_image(out, image)


def scale(image: np.ndarray, factor: float) -> np.ndarray:
    """Zoom about the center, bilinear: >1 zooms in, <1 zooms out with a black border.

    Args:
        image: uint8 (H, W) or (H, W, 3).
        factor: Zoom factor, > 0.

    Returns:
        The zoomed image, same shape.
    """
    image = _check_image(image)
    factor = _check_finite("scale", factor)
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
    image = _check_image(image)
    degrees = _check_finite("shear", degrees)
    if not -90 < degrees < 90:
        raise ValueError(f"shear: angle must lie in (-90, 90) degrees, got {degrees}")
    if degrees == 0:
        return image.copy()
    return _affine(image, shear=degrees)


def _nonnegative(name: str, factor: float) -> float:
    factor = _check_finite(name, factor)
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
    image = _check_image(image)
    factor = _nonnegative("brightness", factor)
    return _lut(image, np.arange(256, dtype=np.float64) * factor)


def contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Scale the distance from the image's mean luminance: ``m + factor (x - m)``.

    Args:
        image: uint8 (H, W) or (H, W, 3).
        factor: Contrast factor, >= 0 (0 gives a flat gray image at the mean).

    Returns:
        The adjusted image, same shape.
    """
    image = _check_image(image)
    factor = _nonnegative("contrast", factor)
    if factor == 1:
        return image.copy()
    mean = float(_luminance(image).mean())
    return _to_uint8(mean + factor * (image.astype(np.float64) - mean))


def hue(image: np.ndarray, shift: float) -> np.ndarray:
    """Rotate the hue by ``shift`` turns (torchvision ``adjust_hue``); grayscale: a copy.

    Args:
        image: uint8 (H, W) or (H, W, 3).
        shift: Hue shift, in [-0.5, 0.5].

    Returns:
        The adjusted image, same shape.
    """
    image = _check_image(image)
    shift = _check_finite("hue", shift)
    if not -0.5 <= shift <= 0.5:
        raise ValueError(f"hue: shift must lie in [-0.5, 0.5], got {shift}")
    if shift == 0 or image.ndim == 2:
        return image.copy()
    return _to_image(tvf.adjust_hue(_to_tensor(image), shift), image)


def saturation(image: np.ndarray, factor: float) -> np.ndarray:
    """Scale the distance from each pixel's luminance: ``g + factor (x - g)``; grayscale: a copy.

    Args:
        image: uint8 (H, W) or (H, W, 3).
        factor: Saturation factor, >= 0 (0 gives gray).

    Returns:
        The adjusted image, same shape.
    """
    image = _check_image(image)
    factor = _nonnegative("saturation", factor)
    if factor == 1 or image.ndim == 2:
        return image.copy()
    gray = _luminance(image)[..., None]
    return _to_uint8(gray + factor * (image.astype(np.float64) - gray))


def grayscale(image: np.ndarray, amount: float = 1.0) -> np.ndarray:
    """Blend towards the luminance (replicated to 3 channels); grayscale: a copy.

    Args:
        image: uint8 (H, W) or (H, W, 3).
        amount: Blend fraction in [0, 1]; 1 converts to gray.

    Returns:
        The adjusted image, same shape.
    """
    image = _check_image(image)
    amount = _check_finite("grayscale", amount)
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
    image = _check_image(image)
    sigma = _nonnegative("blur", sigma)
    if sigma == 0:
        return image.copy()
    size = min(2 * math.ceil(3 * sigma) + 1, 2 * min(image.shape[:2]) - 1)
    if size < 3:
        return image.copy()
    out = tvf.gaussian_blur(_to_tensor(image), kernel_size=[size, size], sigma=[sigma, sigma])
    return _to_image(out, image)


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
    image = _check_image(image)
    width = _check_finite("windowing", width)
    center = _check_finite("windowing", center)
    if width <= 0:
        raise ValueError(f"windowing: width must be > 0, got {width}")
    low = 255.0 * (center - width / 2)
    return _lut(image, (np.arange(256, dtype=np.float64) - low) / width)


def gamma(image: np.ndarray, value: float) -> np.ndarray:
    """Gamma curve ``255 (x / 255) ** value`` (< 1 brightens dark regions).

    Args:
        image: uint8 (H, W) or (H, W, 3).
        value: Gamma, > 0.

    Returns:
        The adjusted image, same shape.
    """
    image = _check_image(image)
    value = _check_finite("gamma", value)
    if value <= 0:
        raise ValueError(f"gamma: value must be > 0, got {value}")
    return _lut(image, 255.0 * (np.arange(256, dtype=np.float64) / 255.0) ** value)


TRANSFORMS: dict[str, Transform] = {
    "rotation": rotation,
    "hflip": hflip,
    "vflip": vflip,
    "translation": translation,
    "scale": scale,
    "shear": shear,
    "brightness": brightness,
    "contrast": contrast,
    "hue": hue,
    "saturation": saturation,
    "grayscale": grayscale,
    "blur": blur,
    "windowing": windowing,
    "gamma": gamma,
}


def get_transform(name: str) -> Transform:
    """Look a transform up by name.

    Args:
        name: A key of :data:`TRANSFORMS`.

    Returns:
        The transform function ``(image, magnitude) -> image``.

    Raises:
        KeyError: On an unknown name, listing the known ones.
    """
    if name not in TRANSFORMS:
        raise KeyError(f"unknown image transform {name!r}; known: {', '.join(TRANSFORMS)}")
    return TRANSFORMS[name]


def transform_tag(name: str, magnitude: float) -> str:
    """A short, file-name-safe tag for a (name, magnitude) pair, used in cache keys and metrics.

    Args:
        name: Transform name.
        magnitude: Its magnitude.

    Returns:
        ``"<name>_<magnitude>"`` with up to 12 significant digits, e.g. ``rotation_10``,
        ``scale_1.25``, ``hue_-0.1``.
    """
    get_transform(name)
    return f"{name}_{float(magnitude):.12g}"


def applicable(name: str, image: np.ndarray) -> str | None:
    """Why a transform says nothing about an image, or None when it does.

    Colour transforms are exact identities on grayscale images: ``(H, W)`` arrays, and
    ``(H, W, 3)`` arrays whose three channels are equal.

    Args:
        name: Transform name.
        image: One uint8 image, or a batch (N, H, W) / (N, H, W, 3).

    Returns:
        A reason string when the transform is an exact identity on these images,
        otherwise None.
    """
    get_transform(name)
    if name not in COLOUR_TRANSFORMS:
        return None
    array = np.asarray(image)
    if array.ndim in (2, 3) and not (array.ndim == 3 and array.shape[-1] == 3):
        return f"{name} is the identity on grayscale images (gray has no hue or saturation)"
    channels = array[..., 0], array[..., 1], array[..., 2]
    if np.array_equal(channels[0], channels[1]) and np.array_equal(channels[1], channels[2]):
        return (
            f"{name} is the identity on these images: their three channels are equal "
            "(gray has no hue or saturation)"
        )
    return None


def apply_transform(name: str, images: np.ndarray, magnitude: float) -> np.ndarray:
    """Apply one named transform to a batch of images.

    Args:
        name: Transform name.
        images: uint8 (N, H, W) or (N, H, W, 3).
        magnitude: The transform's magnitude.

    Returns:
        uint8 array of the same shape.

    Raises:
        KeyError: On an unknown name.
        ValueError: On malformed images or an invalid magnitude.
    """
    fn = get_transform(name)
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"expected a batch (N, H, W) or (N, H, W, 3), got {images.shape}")
    if len(images) == 0:
        return images.copy()
    return np.stack([fn(image, magnitude) for image in images])
