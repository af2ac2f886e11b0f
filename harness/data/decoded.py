"""Decode and resize once: the model's eval geometry as a uint8 array, normalised in batches.

timm's eval transform is ``Resize -> CenterCrop -> ToTensor -> Normalize``. The first two
steps depend only on the image and the geometry (input size, interpolation, crop
fraction, crop mode); ``ToTensor`` is ``uint8 / 255``. So the geometric steps can run once
per (images, geometry) and be stored as uint8, and the rest runs batched on the device:

    resize_crop(images, pre)          -> uint8 (N, S, S, 3)   once, cacheable, in workers
    normalise_batch(batch, pre, dev)  -> float (B, 3, S, S)   per batch, on the device

The result is bit-identical to :func:`harness.data.transforms.eval_transform` (tested), so
models with the same geometry share one resized copy and features do not change.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import PIL
import torch
from PIL import Image

from harness.cache.mapped import release_pages
from harness.config.cards import Preprocessing
from harness.data.transforms import (
    crop_mode,
    eval_steps,
    prepare_for_normalise,
    to_pil_rgb,
)

DECODED_VERSION = 2  # 2: resizes width first (harness.data.pil_resize)


def geometry(pre: Preprocessing) -> dict[str, Any]:
    """What decides the resized pixels (a cache key's part): the preprocessing's fields and
    the version of Pillow, which resizes (Pillow 13 changed some resizes by one grey level)."""
    return {
        "version": DECODED_VERSION,
        "pillow": PIL.__version__,
        "input_size": pre.input_size,
        "interpolation": pre.interpolation,
        "crop_pct": pre.crop_pct,
        "crop_mode": crop_mode(pre),
    }


def geometry_key(images_digest: str, pre: Preprocessing) -> str:
    """A hex digest naming one resized copy of one image array."""
    payload = json.dumps({"images": images_digest, **geometry(pre)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def geometric_transform(pre: Preprocessing) -> Callable[[Image.Image], Image.Image]:
    """The resize and crop steps of the model's eval transform, PIL in, PIL out."""
    steps = eval_steps(pre)
    cut = next((i for i, step in enumerate(steps) if "ToTensor" in type(step).__name__), len(steps))
    geometric = steps[:cut]

    def apply(image: Image.Image) -> Image.Image:
        for step in geometric:
            image = step(image)
        return image

    return apply


RELEASE_EVERY = 8


def resize_crop_one(
    image: np.ndarray, transform: Callable[[Image.Image], Image.Image]
) -> np.ndarray:
    """One uint8 image (H, W) or (H, W, 3) to the model's uint8 (S, S, 3), writable."""
    # np.array, not asarray: PIL's buffer is read-only, which torch.from_numpy warns about
    return np.array(transform(to_pil_rgb(image)), dtype=np.uint8)


class ResizeDataset(torch.utils.data.Dataset):
    """Rows of a uint8 image array, resized and cropped (for loader worker processes)."""

    def __init__(self, images: np.ndarray, pre: Preprocessing) -> None:
        self.images = images
        self.pre = pre
        self._transform: Callable[[Image.Image], Image.Image] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self._transform is None:  # built in the worker: transforms need not pickle
            self._transform = geometric_transform(self.pre)
        return torch.from_numpy(resize_crop_one(self.images[index], self._transform))


def resize_crop_batches(
    images: np.ndarray, pre: Preprocessing, batch_size: int = 64, workers: int = 0
) -> Iterator[np.ndarray]:
    """Yield the resized uint8 ``(B, S, S, 3)`` batches of ``images``, in order.

    Args:
        images: uint8 ``(N, H, W)`` or ``(N, H, W, 3)`` (a memory map is read lazily).
        pre: the model's preprocessing.
        batch_size: rows per batch.
        workers: loader worker processes (0: in this process).
    """
    if workers <= 0:
        transform = geometric_transform(pre)
        for number, start in enumerate(range(0, len(images), batch_size)):
            rows = images[start : start + batch_size]
            yield np.stack([resize_crop_one(image, transform) for image in rows])
            if number % RELEASE_EVERY == RELEASE_EVERY - 1:
                release_pages(images)
        return
    loader = torch.utils.data.DataLoader(
        ResizeDataset(images, pre), batch_size=batch_size, num_workers=workers, shuffle=False
    )
    for batch in loader:
        yield batch.numpy()


def resize_crop(images: np.ndarray, pre: Preprocessing, workers: int = 0) -> np.ndarray:
    """All of ``images`` resized and cropped: uint8 ``(N, S, S, 3)``."""
    size = pre.input_size
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    at = 0
    for batch in resize_crop_batches(images, pre, workers=workers):
        out[at : at + len(batch)] = batch
        at += len(batch)
    return out


def normalise_batch(batch: torch.Tensor, pre: Preprocessing, device: torch.device) -> torch.Tensor:
    """uint8 ``(B, S, S, 3)`` to the model's float input ``(B, 3, S, S)``, channels-last.

    The same arithmetic as ``ToTensor`` then ``Normalize`` (divide by 255, subtract the
    mean, divide by the std, in float32), so the result equals the per-image transform's.
    """
    x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).to(torch.float32).div(255)
    x = prepare_for_normalise(x, pre)
    mean, std = _channel_stats(tuple(pre.mean), tuple(pre.std), device)
    return x.sub(mean).div(std).contiguous(memory_format=torch.channels_last)


@functools.lru_cache(maxsize=32)
def _channel_stats(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: a fresh small tensor on a GPU is a blocking copy that waits
    # for the forward already queued, once per batch.
    def on_device(values: tuple[float, ...]) -> torch.Tensor:
        with torch.inference_mode(False):  # usable inside and outside inference mode
            return torch.tensor(values, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    return on_device(mean), on_device(std)
