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

Backends: the kernels above are the ``medxfer`` backend. The ``torchvision-pil`` backend
(:mod:`.pil`) runs the peers' kernels, ``torchvision.transforms.functional`` on PIL images
with torchvision's defaults (nearest-neighbour rotation, PIL colour enhancement), for the
transforms the peers' presets use; :func:`get_transform` and :func:`apply_transform` take
the backend's name.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from harness.protocols.image_transforms import pil
from harness.protocols.image_transforms.geometric import (
    hflip,
    rotation,
    scale,
    shear,
    translation,
    vflip,
)
from harness.protocols.image_transforms.photometric import (
    blur,
    brightness,
    contrast,
    gamma,
    grayscale,
    hue,
    saturation,
    windowing,
)

Transform = Callable[[np.ndarray, float], np.ndarray]

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


#: Transform kernels by backend: medxfer's own, and the peers' torchvision-on-PIL calls.
BACKENDS: dict[str, dict[str, Transform]] = {
    "medxfer": TRANSFORMS,
    "torchvision-pil": pil.TRANSFORMS,
}


def get_transform(name: str, backend: str = "medxfer") -> Transform:
    """Look a transform up by name.

    Args:
        name: A key of :data:`TRANSFORMS`.
        backend: A key of :data:`BACKENDS`.

    Returns:
        The transform function ``(image, magnitude) -> image``.

    Raises:
        KeyError: On an unknown name or backend, or a transform the backend lacks,
            listing the known ones.
    """
    if name not in TRANSFORMS:
        raise KeyError(f"unknown image transform {name!r}; known: {', '.join(TRANSFORMS)}")
    if backend not in BACKENDS:
        raise KeyError(f"unknown transform backend {backend!r}; known: {', '.join(BACKENDS)}")
    kernels = BACKENDS[backend]
    if name not in kernels:
        raise KeyError(
            f"transform backend {backend!r} has no {name!r}; it has: {', '.join(kernels)}"
        )
    return kernels[name]


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


def apply_transform(
    name: str, images: np.ndarray, magnitude: float, backend: str = "medxfer"
) -> np.ndarray:
    """Apply one named transform to a batch of images.

    Args:
        name: Transform name.
        images: uint8 (N, H, W) or (N, H, W, 3).
        magnitude: The transform's magnitude.
        backend: Whose kernels (a key of :data:`BACKENDS`).

    Returns:
        uint8 array of the same shape.

    Raises:
        KeyError: On an unknown name.
        ValueError: On malformed images or an invalid magnitude.
    """
    fn = get_transform(name, backend)
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"expected a batch (N, H, W) or (N, H, W, 3), got {images.shape}")
    if len(images) == 0:
        return images.copy()
    return np.stack([fn(image, magnitude) for image in images])
