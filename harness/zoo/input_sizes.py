"""Token models at any input size: timm's dynamic image size, and sizes rounded to the patch.

Profiles run every model at their own size (160 px in the demo, 96 px in smoke), not
the card's. A timm ViT (DeiT, CLIP, DINO, DINOv2, EVA) or Swin built as usual accepts
only its pretrained size; built with ``dynamic_img_size=True`` (timm >= 1.0) it keeps
its parameters unchanged (the same state dict, the same random initialisation) and,
at each forward, interpolates the absolute position embeddings to the input's patch
grid (ViT: ``resample_abs_pos_embed``) or builds the shifted-window masks for it
(Swin); at the pretrained size it computes exactly what the fixed-size model does.
CNNs take any size already and do not accept the argument.

A ViT's patch embedding still needs an input side divisible by its patch size (16,
or 14 for DINOv2), so :func:`round_to_patch` picks the nearest multiple: 160 px is
154 px for a patch-14 model, 96 px is 98 px. :func:`harness.zoo.build.model_input_size`
applies it to a card, and that size is the one images must be resized to.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

DYNAMIC_SIZE_ARG = "dynamic_img_size"


def create_timm_model(name: str, pretrained: bool, **kwargs: object) -> nn.Module:
    """``timm.create_model`` with ``dynamic_img_size=True`` where the architecture takes it.

    Architectures whose constructor does not know the argument (ResNet, EfficientNet,
    ConvNeXt, Inception: they take any size anyway) are created without it; the
    constructor refuses the keyword before it builds or fetches anything.
    """
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained, **{DYNAMIC_SIZE_ARG: True}, **kwargs)
    except TypeError as exc:
        if DYNAMIC_SIZE_ARG not in str(exc):
            raise
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def patch_size(module: nn.Module) -> int | None:
    """The side of a token model's patches (``patch_embed.patch_size``), None for a CNN."""
    size = getattr(getattr(module, "patch_embed", None), "patch_size", None)
    if size is None:
        return None
    sides = tuple(size) if isinstance(size, tuple | list) else (size,)
    if len(set(sides)) != 1:
        raise ValueError(f"non-square patches {sides} are not supported")
    return int(sides[0])


def round_to_patch(size: int, patch: int | None) -> int:
    """``size`` rounded to the nearest multiple of ``patch`` (halves up; at least one patch)."""
    if not patch or size % patch == 0:
        return size
    return max(patch, patch * math.floor(size / patch + 0.5))
