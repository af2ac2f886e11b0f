"""Pixel helpers shared by the image transforms: checks, tensor round trips, look-up tables."""

from __future__ import annotations

import math

import numpy as np
import torch

_LUMA = np.array([0.299, 0.587, 0.114])


def check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"expected an image of shape (H, W) or (H, W, 3), got {image.shape}")
    return image


def check_finite(name: str, magnitude: float) -> float:
    magnitude = float(magnitude)
    if not math.isfinite(magnitude):
        raise ValueError(f"{name}: magnitude must be finite, got {magnitude}")
    return magnitude


def to_tensor(image: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(image))
    return tensor[None] if image.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def to_image(tensor: torch.Tensor, like: np.ndarray) -> np.ndarray:
    array = tensor[0] if like.ndim == 2 else tensor.permute(1, 2, 0)
    return np.ascontiguousarray(array.numpy())


def to_uint8(values: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)


def lut(image: np.ndarray, table: np.ndarray) -> np.ndarray:
    return to_uint8(table)[image]


def luminance(image: np.ndarray) -> np.ndarray:
    """Float luminance (H, W) of a uint8 image (the image itself when grayscale)."""
    if image.ndim == 2:
        return image.astype(np.float64)
    return image.astype(np.float64) @ _LUMA
