"""DINO's multi-crop views of one training image, as medical_transformers builds them.

ChrisMats/medical_transformers@ecd460a:self_supervised/DINO/augmentation_strategy.json
replaces the training transforms with ``global_1``, ``global_2`` and six ``local`` views,
each inheriting params.json's ``Resize`` (a square of 256 for 224 px input, bilinear) and
``Normalize`` (the target's statistics); defaults/bases.py applies the resize once and
then, per view and in this order: RandomResizedCrop (bilinear), horizontal flip (p 0.5),
ColorJitter(0.4, 0.4, 0.2, 0.1) with p 0.8, RandomGrayscale(0.2), a Gaussian blur of
radius uniform in [0.1, 2] applied when a uniform draw is at most ``p`` (1.0 for
``global_1``, 0.1 for ``global_2``, 0.5 for the local views), RandomSolarize(128, p 0.2)
on ``global_2`` only, ToTensor and Normalize.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision import transforms as v1
from torchvision.transforms import InterpolationMode

from harness.config.cards import Preprocessing
from harness.data.pil_resize import WidthFirstResizedCrop
from harness.data.transforms import normalise, to_pil_rgb
from harness.protocols.dino.config import DinoConfig
from harness.protocols.finetune.augment import square_resize

#: Blur probability of global_1, global_2 and each local view.
BLUR_P = (1.0, 0.1, 0.5)


class RandomBlur:
    """A PIL Gaussian blur of radius uniform in ``[low, high]``, applied when a draw <= ``p``."""

    def __init__(self, p: float, low: float = 0.1, high: float = 2.0) -> None:
        self.p, self.low, self.high = p, low, high

    def __call__(self, image: Image.Image) -> Image.Image:
        if float(torch.rand(())) > self.p:
            return image
        radius = self.low + (self.high - self.low) * float(torch.rand(()))
        return image.filter(ImageFilter.GaussianBlur(radius=radius))


def _view(size: int, scale: tuple[float, float], blur_p: float, solarize: bool) -> v1.Compose:
    return v1.Compose(
        [
            WidthFirstResizedCrop(
                v1.RandomResizedCrop(size, scale=scale, interpolation=InterpolationMode.BILINEAR)
            ),
            v1.RandomHorizontalFlip(0.5),
            v1.RandomApply([v1.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            v1.RandomGrayscale(0.2),
            RandomBlur(blur_p),
            *([v1.RandomSolarize(128, p=0.2)] if solarize else []),
            v1.ToTensor(),
        ]
    )


def local_size(pre: Preprocessing, config: DinoConfig) -> int:
    """The local views' side: ``local_fraction`` of the input size (96 at 224)."""
    return max(1, round(pre.input_size * config.local_fraction))


def multi_crop_transform(
    pre: Preprocessing, config: DinoConfig
) -> Callable[[np.ndarray], tuple[torch.Tensor, ...]]:
    """The views of one image: two global, then ``config.local_crops`` local ones.

    Args:
        pre: The preprocessing (input size, the resize's ``crop_pct`` and interpolation,
            mean / std, channel rule).
        config: The crop counts and scales.

    Returns:
        uint8 image array -> float tensors, global ones (3, S, S), local ones (3, s, s),
        drawing from torch's global RNG.
    """
    resize = square_resize(pre, "the dino multi-crop")
    small = local_size(pre, config)
    views = [
        _view(pre.input_size, config.global_scale, BLUR_P[0], solarize=False),
        _view(pre.input_size, config.global_scale, BLUR_P[1], solarize=True),
        *(_view(small, config.local_scale, BLUR_P[2], False) for _ in range(config.local_crops)),
    ]

    def apply(image: np.ndarray) -> tuple[torch.Tensor, ...]:
        resized = resize(to_pil_rgb(image))
        return tuple(normalise(view(resized), pre) for view in views)

    return apply
