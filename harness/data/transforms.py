"""Evaluation transforms built from a model's preprocessing config (never hard-coded)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from harness.config.cards import Preprocessing
from harness.config.model_cards import CHANNEL_RULES
from harness.data.pil_resize import width_first_steps

TRANSFORM_VERSION = 2  # 2: resizes width first (harness.data.pil_resize)
HISTOGRAM_BINS = 256
# Pillow's "L" conversion weights (ITU-R 601-2 luma).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def eval_transform(pre: Preprocessing) -> Callable[[np.ndarray], torch.Tensor]:
    """Return the model's evaluation transform: resize, center crop, normalise.

    The resize/crop geometry and interpolation follow timm's ``create_transform``
    (resize the short side to ``input_size / crop_pct``, center crop ``input_size``); with
    ``crop_mode: squash`` the image is resized to a square of that size first, aspect not
    kept (torchvision's ``Resize([257, 257])`` before ``CenterCrop(224)``). The resize
    runs its horizontal pass first, so the bytes do not depend on the Pillow version
    (:mod:`harness.data.pil_resize`).

    Args:
        pre: the model card's preprocessing.

    Returns:
        A function from a uint8 image array (H, W) or (H, W, 3) to a float tensor (3, S, S).
    """
    steps = eval_steps(pre)
    if needs_preparation(pre):
        at = next(i for i, step in enumerate(steps) if type(step).__name__ == "Normalize")
        steps.insert(at, functools.partial(prepare_for_normalise, pre=pre))

    def apply(image: np.ndarray) -> torch.Tensor:
        out = to_pil_rgb(image)
        for step in steps:
            out = step(out)
        return out

    return apply


def eval_steps(pre: Preprocessing) -> list[Callable[[Any], Any]]:
    """The steps of timm's eval transform for ``pre``, its resize run width first.

    Args:
        pre: the model card's preprocessing.

    Returns:
        Resize, crop, to-tensor and normalise steps, each PIL / tensor in and out.
    """
    from timm.data import create_transform

    transform = create_transform(
        input_size=(3, pre.input_size, pre.input_size),
        is_training=False,
        interpolation=pre.interpolation,
        mean=pre.mean,
        std=pre.std,
        crop_pct=pre.crop_pct,
        crop_mode=crop_mode(pre),
    )
    return width_first_steps(transform.transforms)


def describe(pre: Preprocessing) -> dict[str, object]:
    """Return what the transform does, for cache keys and records."""
    out: dict[str, object] = {
        "kind": "timm_eval",
        "version": TRANSFORM_VERSION,
        "input_size": pre.input_size,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "interpolation": pre.interpolation,
        "crop_pct": pre.crop_pct,
    }
    if pre.histogram_normalize:  # only when set: older keys stay as they were
        out["histogram_normalize"] = HISTOGRAM_BINS
    if crop_mode(pre) != "center":
        out["crop_mode"] = crop_mode(pre)
    if channel_rule(pre) != "rgb":
        out["channels"] = channel_rule(pre)
    return out


def channel_rule(pre: Preprocessing) -> str:
    """A value of :data:`CHANNEL_RULES`: how the image's channels reach the model."""
    rule = str(getattr(pre, "channels", "rgb"))
    if rule not in CHANNEL_RULES:
        raise ValueError(f"channels must be one of {CHANNEL_RULES}, got {rule!r}")
    return rule


def needs_preparation(pre: Preprocessing) -> bool:
    """Whether :func:`prepare_for_normalise` changes anything for ``pre``."""
    return bool(pre.histogram_normalize) or channel_rule(pre) != "rgb"


def prepare_for_normalise(x: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """What runs between ``ToTensor`` and ``Normalize``: histogram equalisation (per
    image) and the channel rule.

    Args:
        x: Float images in [0, 1], ``(3, H, W)`` or ``(N, 3, H, W)``.
        pre: The preprocessing.

    Returns:
        The tensor ``Normalize(pre.mean, pre.std)`` is to see, of the same shape.
    """
    if pre.histogram_normalize:
        x = (
            histogram_normalize(x)
            if x.dim() == 3
            else torch.stack([histogram_normalize(img.cpu()) for img in x]).to(x.device)
        )
    if channel_rule(pre) == "grey-first":
        x = grey_in_first_channel(x, pre.mean)
    return x


def normalise(x: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """``ToTensor`` output to the model's input: :func:`prepare_for_normalise`, then the
    mean / std.

    Args:
        x: A float image in [0, 1], ``(3, H, W)``.
        pre: The preprocessing.

    Returns:
        The normalised float tensor.
    """
    return F.normalize(prepare_for_normalise(x, pre), list(pre.mean), list(pre.std))


def grey_in_first_channel(x: torch.Tensor, mean: tuple[float, ...]) -> torch.Tensor:
    """The grey image in channel 0 and each other channel at its mean, which the
    normalisation then makes exactly 0.

    A network fed this computes what one with a single-channel first layer holding the
    pretrained first-channel weights computes on the grey image
    (ChrisMats/feature-reuse@736d31b:defaults/models.py ``modify_first_layer``: the
    weight ``repeat(1, 4, 1, 1)[:, :1]``, bias kept). Grey images replicated to three
    channels keep their grey values exactly; colour images become Pillow's "L" luma. For
    a randomly initialised network the peer draws that layer for one input channel: with
    torchvision ResNet's fan-out init the same distribution as the first slice of the
    three-channel layer used here, with a fan-in init (DeiT's patch embedding) one
    sqrt(3) times wider.

    Args:
        x: Float images ``(..., 3, H, W)``.
        mean: The normalisation's per-channel mean.

    Returns:
        A tensor of the same shape.
    """
    red, green, blue = x.unbind(-3)
    if torch.equal(red, green) and torch.equal(green, blue):
        grey = red
    else:
        grey = sum(w * c for w, c in zip(LUMA_WEIGHTS, (red, green, blue), strict=True))
    others = [torch.full_like(grey, float(value)) for value in mean[1:]]
    return torch.stack([grey, *others], dim=-3)


def crop_mode(pre: Preprocessing) -> str:
    """``center`` (resize the short side, then center crop) or ``squash`` (resize to a square)."""
    return str(getattr(pre, "crop_mode", "center"))


def histogram_normalize(image: torch.Tensor) -> torch.Tensor:
    """Histogram-equalise an image tensor to values in [0, 255], as CovidPrognosis does.

    The ``HistogramNormalize`` transform of
    facebookresearch/CovidPrognosis@9c753d1156f0f04c3bec213aa4b1d0cc39a2f71d:
    covidprognosis/data/transforms.py, applied after resize, crop and to-tensor: a
    256-bin density histogram over all pixels (all channels), its cumulative sum scaled
    to 255, and every pixel mapped through it by linear interpolation at the left bin
    edges. The result does not depend on the input's scale, and grey replicated to three
    channels gives the single channel's mapping; the card's mean / std (0 / 1 for these
    models) then apply.

    Args:
        image: A float tensor (C, H, W).

    Returns:
        A float32 tensor of the same shape.
    """
    values = image.detach().cpu().numpy().astype(np.float64).ravel()
    density, edges = np.histogram(values, HISTOGRAM_BINS, density=True)
    cdf = density.cumsum()
    cdf = 255 * cdf / cdf[-1]
    equalised = np.interp(values, edges[:-1], cdf).reshape(image.shape)
    return torch.from_numpy(equalised).to(torch.float32)


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
