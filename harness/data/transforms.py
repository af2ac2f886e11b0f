"""Evaluation transforms built from a model's preprocessing config (never hard-coded)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from harness.config.cards import Preprocessing

TRANSFORM_VERSION = 1


def eval_transform(pre: Preprocessing) -> Callable[[np.ndarray], torch.Tensor]:
    """Return the model's evaluation transform: resize, center crop, normalise.

    The resize/crop geometry and interpolation follow timm's ``create_transform``
    (resize the short side to ``input_size / crop_pct``, center crop ``input_size``).

    Args:
        pre: the model card's preprocessing.

    Returns:
        A function from a uint8 image array (H, W) or (H, W, 3) to a float tensor (3, S, S).
    """
    from timm.data import create_transform

    transform = create_transform(
        input_size=(3, pre.input_size, pre.input_size),
        is_training=False,
        interpolation=pre.interpolation,
        mean=pre.mean,
        std=pre.std,
        crop_pct=pre.crop_pct,
    )

    def apply(image: np.ndarray) -> torch.Tensor:
        return transform(to_pil_rgb(image))

    return apply


def describe(pre: Preprocessing) -> dict[str, object]:
    """Return what the transform does, for cache keys and records."""
    return {
        "kind": "timm_eval",
        "version": TRANSFORM_VERSION,
        "input_size": pre.input_size,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "interpolation": pre.interpolation,
        "crop_pct": pre.crop_pct,
    }


def to_pil_rgb(image: np.ndarray) -> Image.Image:
    """Convert a uint8 grayscale or RGB array to an RGB PIL image (grey replicated to 3 channels)."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        return Image.fromarray(image, mode="L").convert("RGB")
    if image.ndim == 3 and image.shape[2] == 3:
        return Image.fromarray(image, mode="RGB")
    if image.ndim == 3 and image.shape[2] == 1:
        return Image.fromarray(image[:, :, 0], mode="L").convert("RGB")
    raise ValueError(f"expected an image of shape (H, W) or (H, W, 3), got {image.shape}")
