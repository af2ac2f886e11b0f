"""Pillow resizes that give the same bytes under every Pillow from 6.2 to 13.

Pillow resizes in two passes. Up to 12.3 it always ran the horizontal pass first; 13.0
runs the vertical pass first when the height shrinks much more than the width
(python-pillow/Pillow#9549), and because the intermediate image is rounded to 8 bits,
about 30% of stretches of non-square images move pixels by one grey level
(``tests/perf/pillow_resize_versions.py``: 414 of 1,368 resizes). Two explicit calls, the
width first and then the height, each a single pass, give the bytes of Pillow 6.2-12.3
under 13.0 too (1,368 of 1,368), and the peers ran Pillow of those years.

:class:`WidthFirstResize` stands in for torchvision's ``Resize`` on PIL images (tensors
pass through to it unchanged), :class:`WidthFirstResizedCrop` for ``RandomResizedCrop``;
:func:`resize_width_first` for ``Image.resize``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import PIL
from PIL import Image
from torchvision.transforms import InterpolationMode, RandomResizedCrop, Resize

# the pass order of every resize here; part of the keys of data resized with it
RESIZE_ORDER = "width-first"


def pillow_resizes() -> dict[str, str]:
    """What decides the bytes of the resizes here, for cache keys: Pillow's version (its
    filters change between releases too) and the pass order."""
    return {"pillow": PIL.__version__, "resize": RESIZE_ORDER}


def resize_width_first(image: Image.Image, size: tuple[int, int], resample: int) -> Image.Image:
    """``image.resize(size, resample)`` with the horizontal pass run first.

    Args:
        image: The image.
        size: ``(width, height)`` of the result.
        resample: A PIL filter (``Image.Resampling.BICUBIC``...).

    Returns:
        The resized image: Pillow 6.2-12.3's bytes whatever Pillow is installed.
    """
    width, height = size
    if image.width != width and image.height != height:
        image = image.resize((width, image.height), resample)
    return image.resize((width, height), resample)


def resized_size(
    height: int, width: int, size: int | Sequence[int], max_size: int | None = None
) -> tuple[int, int]:
    """The ``(height, width)`` torchvision's ``Resize(size, max_size=...)`` gives an image.

    An int (or one-element sequence) is the shorter side, the longer one scaled and
    truncated, then both capped by ``max_size``; two numbers are ``(height, width)``.
    """
    sides = [size] if isinstance(size, int) else list(size)
    if len(sides) == 2:
        return int(sides[0]), int(sides[1])
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = int(sides[0]), int(sides[0] * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_long, new_short) if width <= height else (new_short, new_long)


def pil_filter(mode: InterpolationMode) -> int:
    """The PIL filter of a torchvision interpolation mode."""
    return int(getattr(Image.Resampling, mode.value.upper()))


class WidthFirstResize:
    """torchvision's ``Resize`` with the horizontal pass first on PIL images.

    Args:
        resize: The ``Resize`` step it replaces (size, interpolation and max_size kept).
    """

    def __init__(self, resize: Resize) -> None:
        self.resize = resize

    def __call__(self, image: Any) -> Any:
        if not isinstance(image, Image.Image):
            return self.resize(image)
        height, width = resized_size(
            image.height, image.width, self.resize.size, self.resize.max_size
        )
        if (height, width) == (image.height, image.width):
            return image
        return resize_width_first(image, (width, height), pil_filter(self.resize.interpolation))

    def __repr__(self) -> str:
        return f"WidthFirst{self.resize!r}"


class WidthFirstResizedCrop:
    """torchvision's ``RandomResizedCrop`` with the horizontal pass first on PIL images.

    The crop box is drawn by torchvision's own ``RandomResizedCrop.get_params`` (the same
    draws from torch's global RNG as the v1 and v2 transforms make), the box is cut out
    and resized with :func:`resize_width_first`. Tensors pass through to the wrapped step.

    Args:
        crop: The ``RandomResizedCrop`` step it replaces (v1 or v2; size, scale, ratio and
            interpolation kept; PIL resizes always antialias).
    """

    def __init__(self, crop: Any) -> None:
        self.crop = crop

    def __call__(self, image: Any) -> Any:
        if not isinstance(image, Image.Image):
            return self.crop(image)
        top, left, height, width = RandomResizedCrop.get_params(
            image, list(self.crop.scale), list(self.crop.ratio)
        )
        box = image.crop((left, top, left + width, top + height))
        out_height, out_width = resized_size(height, width, list(self.crop.size))
        return resize_width_first(box, (out_width, out_height), pil_filter(self.crop.interpolation))

    def __repr__(self) -> str:
        return f"WidthFirst{self.crop!r}"


def width_first_steps(steps: list[Any]) -> list[Any]:
    """``steps`` with every torchvision ``Resize`` replaced by :class:`WidthFirstResize`."""
    return [WidthFirstResize(step) if isinstance(step, Resize) else step for step in steps]
