"""Test-time TenCrop, as BenchmarkTransferLearning scores every test image.

MR-HosseinzadehTaher/BenchmarkTransferLearning@5656fec:Version1/dataloader.py builds the
test transform ``Resize((256, 256))`` -> ``TenCrop(224)`` -> per-crop ``ToTensor`` and
normalise, and Version1/trainer.py:test_classification averages the model's outputs over
the ten crops. Its head ends in ``nn.Sigmoid``, so what is averaged are probabilities, not
logits; :func:`harness.protocols.finetune.network.predict` averages probabilities too.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torchvision.transforms import functional as F

from harness.config.cards import Preprocessing
from harness.data.pil_resize import pil_filter, resize_width_first
from harness.data.transforms import normalise, to_pil_rgb
from harness.protocols.finetune.augment import torchvision_interpolation
from harness.protocols.finetune.data import EvalSet

CROPS = 10


def tencrop_size(pre: Preprocessing) -> int:
    """Side of the square the image is resized to before cropping (timm's scale size).

    Args:
        pre: The preprocessing (``input_size`` and ``crop_pct``).

    Returns:
        ``floor(input_size / crop_pct)``: 256 for 224 px at crop_pct 0.875.
    """
    return math.floor(pre.input_size / pre.crop_pct)


def tencrop_transform(pre: Preprocessing) -> Callable[[np.ndarray], torch.Tensor]:
    """The TenCrop evaluation transform.

    Args:
        pre: The preprocessing (input size, crop_pct, interpolation, mean/std).

    Returns:
        A function from a uint8 image array to a float tensor (10, 3, S, S): the four
        corner crops and the centre crop, then the same five of the mirrored image
        (torchvision's ``TenCrop`` order).
    """
    side = tencrop_size(pre)
    interpolation = torchvision_interpolation(pre, "test_tencrop")

    def apply(image: np.ndarray) -> torch.Tensor:
        resized = resize_width_first(to_pil_rgb(image), (side, side), pil_filter(interpolation))
        crops = []
        for crop in F.ten_crop(resized, [pre.input_size, pre.input_size]):
            crops.append(normalise(F.to_tensor(crop), pre))
        return torch.stack(crops)

    return apply


class TenCropSet(EvalSet):
    """A split prepared for TenCrop evaluation; batches are (B, 10, 3, S, S)."""

    def __init__(self, images: np.ndarray, pre: Preprocessing) -> None:
        """Create the evaluation set.

        Args:
            images: uint8 images.
            pre: The preprocessing.
        """
        super().__init__(images, pre, tencrop_transform(pre), views=CROPS)
