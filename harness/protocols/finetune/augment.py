"""The peers' training augmentations other than RandomResizedCrop + flip.

:func:`feature_reuse_transform` (feature-reuse's torchvision pipeline) and
:func:`keras_transform` (the Keras peers' ``ImageDataGenerator``), selected by
``FinetuneConfig.augmentation`` through :func:`harness.protocols.finetune.data.train_transform`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torchvision import transforms as v1
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from harness.config.cards import Preprocessing
from harness.data.transforms import histogram_normalize, to_pil_rgb
from harness.protocols.finetune.keras import keras_augment

Transform = Callable[[np.ndarray], torch.Tensor]


def _normalized(pre: Preprocessing, x: torch.Tensor) -> torch.Tensor:
    if pre.histogram_normalize:
        x = histogram_normalize(x)
    return F.normalize(x, list(pre.mean), list(pre.std))


def feature_reuse_transform(pre: Preprocessing, scale: tuple[float, float]) -> Transform:
    """feature-reuse's training augmentation (params.json ``train_transforms``).

    ChrisMats/feature-reuse@736d31b:defaults/bases.py (``get_trans_list``) in its order:
    Resize to a square of ``floor(input_size / crop_pct)`` (256 for 224 at 0.875),
    RandomResizedCrop(input_size, ``scale``, bilinear) with the peer's (0.8, 1.2), vertical
    and horizontal flips (p 0.5 each), ColorJitter(0.2, 0.2, 0.1, 0.1) applied with p 0.2,
    RandomGrayscale(0.2), then normalise.

    Args:
        pre: The preprocessing (size, crop_pct, interpolation of the resize, mean/std).
        scale: RandomResizedCrop's area range.

    Returns:
        Image array -> float tensor (3, S, S), drawing from torch's global RNG.
    """
    side = math.floor(pre.input_size / pre.crop_pct)
    transform = v1.Compose(
        [
            v1.Resize((side, side), InterpolationMode(pre.interpolation)),
            v1.RandomResizedCrop(
                pre.input_size, scale=scale, interpolation=InterpolationMode.BILINEAR
            ),
            v1.RandomVerticalFlip(0.5),
            v1.RandomHorizontalFlip(0.5),
            v1.RandomApply([v1.ColorJitter(0.2, 0.2, 0.1, 0.1)], p=0.2),
            v1.RandomGrayscale(0.2),
            v1.ToTensor(),
        ]
    )

    def apply(image: np.ndarray) -> torch.Tensor:
        return _normalized(pre, transform(to_pil_rgb(image)))

    return apply


def keras_transform(
    pre: Preprocessing, rotation: float, hflip: bool, shift: float, shear: float, zoom: float
) -> Transform:
    """The Keras peers' training augmentation (``ImageDataGenerator``).

    ``flow_from_dataframe`` loads every image at ``target_size`` with nearest-neighbour
    resizing (the aspect ratio is not kept), then ``random_transform`` applies the random
    affine and flip (:func:`harness.protocols.finetune.keras.keras_augment`), then the
    model's normalisation (the peers' ``preprocess_input``).

    Args:
        pre: The preprocessing (input size, mean/std).
        rotation: ``rotation_range`` (degrees).
        hflip: ``horizontal_flip``.
        shift: Width and height shift range.
        shear: ``shear_range`` (degrees).
        zoom: ``zoom_range``.

    Returns:
        Image array -> float tensor (3, S, S), drawing from torch's global RNG.
    """

    def apply(image: np.ndarray) -> torch.Tensor:
        size = [pre.input_size, pre.input_size]
        resized = F.resize(to_pil_rgb(image), size, InterpolationMode.NEAREST)
        x = keras_augment(F.to_tensor(resized), rotation, shift, shear, zoom, hflip)
        return _normalized(pre, x)

    return apply
