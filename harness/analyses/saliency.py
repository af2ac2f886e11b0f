"""Task-agnostic occlusion saliency of a frozen backbone and its attentive diffusion.

The procedure of Ericsson et al. (2021, "How well do self-supervised models transfer?")
as SSL_medicalimaging runs it
(jonahanton/SSL_medicalimaging@77fceef:saliency.py, ``compute_saliency_map``):

1. ``f0`` is the backbone's feature vector of the (normalised) image.
2. A ``size`` x ``size`` window (10 x 10) filled with ``value`` (0, i.e. the dataset mean
   once the image is normalised) is placed at every position ``(i, j)`` with stride 1;
   the occluded copy's feature ``f`` gives the score ``||f0 - f||_2 / ||f0||_2``.
3. Every pixel under the window accumulates the score; the sum is divided by
   ``size ** 2`` and the map is cropped to ``[size - 1, H - size + 1)`` in both axes
   (the pixels that ``size ** 2`` windows cover), so each kept pixel holds the mean
   score of the windows that covered it.

The attentive diffusion of a map (same file, after the map is computed) is the
percentage of its pixels strictly above the map's mean:
``100 * (map > map.mean()).sum() / map.size``. A low value means the feature
depends on a small part of the image.

This module computes the same map, batched: many occluded copies run through one
forward, at most ``batch_size`` at a time. With ``stride`` > 1 (a cheaper profile)
the last window of each axis is always included and each pixel is divided by the
number of windows that covered it (for stride 1 this is exactly ``size ** 2`` on the
kept pixels, the peer's normalisation).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

FeatureFn = Callable[[torch.Tensor], torch.Tensor]
PEER_SIZE = 10
PEER_VALUE = 0.0


def window_starts(length: int, size: int, stride: int) -> list[int]:
    """Start offsets of the occlusion window along one axis.

    Args:
        length: The image's extent along the axis.
        size: The window's side.
        stride: Step between windows.

    Returns:
        ``0, stride, 2 * stride, ...`` up to ``length - size``, which is always included.

    Raises:
        ValueError: When the window does not fit or ``stride`` < 1.
    """
    if size < 1 or size > length:
        raise ValueError(f"occlusion window of {size} px does not fit an image of {length} px")
    if stride < 1:
        raise ValueError(f"occlusion stride must be >= 1, got {stride}")
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def _features(forward: FeatureFn, batch: torch.Tensor) -> torch.Tensor:
    out = forward(batch)
    return torch.flatten(out, 1).float()


def occlusion_saliency(
    forward: FeatureFn,
    image: torch.Tensor,
    size: int = PEER_SIZE,
    value: float = PEER_VALUE,
    stride: int = 1,
    batch_size: int = 64,
    crop: bool = True,
) -> np.ndarray:
    """Occlusion saliency map of one image (see the module docstring).

    Args:
        forward: Maps a batch (B, C, H, W) to features (B, ...) (flattened per row).
        image: The model-ready (normalised) image, (C, H, W), on the device ``forward``
            runs on.
        size: Side of the square occlusion window.
        value: What the window is filled with (in the normalised image's units).
        stride: Step between window positions (the peer: 1).
        batch_size: Occluded copies per forward (bounds the memory).
        crop: Keep only ``[size - 1, H - size + 1)`` in both axes, as the peer does
            (otherwise the whole map, border pixels averaged over fewer windows).

    Returns:
        float64 map, (H - 2 * (size - 1), W - 2 * (size - 1)) when cropped.

    Raises:
        ValueError: On a bad image shape, window, stride (above ``size``), batch size or a
            zero feature.
    """
    if image.ndim != 3:
        raise ValueError(f"occlusion_saliency: image must be (C, H, W), got {tuple(image.shape)}")
    if batch_size < 1:
        raise ValueError(f"occlusion_saliency: batch_size must be >= 1, got {batch_size}")
    if stride > size:
        raise ValueError(
            f"occlusion_saliency: a stride of {stride} px leaves pixels between {size} px "
            "windows uncovered"
        )
    _, height, width = image.shape
    rows = window_starts(height, size, stride)
    cols = window_starts(width, size, stride)
    if crop and (height < 2 * size - 1 or width < 2 * size - 1):
        raise ValueError(
            f"occlusion_saliency: a {height}x{width} image leaves nothing after the "
            f"{size - 1} px crop of a {size} px window"
        )
    positions = [(i, j) for i in rows for j in cols]
    with torch.inference_mode():
        reference = _features(forward, image.unsqueeze(0))[0]
        norm = torch.linalg.vector_norm(reference)
        if not torch.isfinite(norm) or norm == 0:
            raise ValueError("occlusion_saliency: the image's feature vector is zero or not finite")
        scores = np.empty(len(positions), dtype=np.float64)
        for start in range(0, len(positions), batch_size):
            chunk = positions[start : start + batch_size]
            batch = image.unsqueeze(0).repeat(len(chunk), 1, 1, 1)
            for k, (i, j) in enumerate(chunk):
                batch[k, :, i : i + size, j : j + size] = value
            moved = _features(forward, batch)
            distance = torch.linalg.vector_norm(moved - reference, dim=1) / norm
            scores[start : start + len(chunk)] = distance.double().cpu().numpy()
    total = np.zeros((height, width), dtype=np.float64)
    counts = np.zeros((height, width), dtype=np.float64)
    for (i, j), score in zip(positions, scores, strict=True):
        total[i : i + size, j : j + size] += score
        counts[i : i + size, j : j + size] += 1.0
    saliency = total / counts
    if crop:
        saliency = saliency[size - 1 : height - size + 1, size - 1 : width - size + 1]
    return saliency


def attentive_diffusion(saliency: np.ndarray) -> float:
    """Percentage of the map's pixels strictly above its mean (SSL_medicalimaging's measure).

    Args:
        saliency: A saliency map (any shape, finite values).

    Returns:
        A value in [0, 100): 0 for a constant map.

    Raises:
        ValueError: On an empty map or non-finite values.
    """
    values = np.asarray(saliency, dtype=np.float64)
    if values.size == 0:
        raise ValueError("attentive_diffusion: empty saliency map")
    if not np.all(np.isfinite(values)):
        raise ValueError("attentive_diffusion: the saliency map has non-finite values")
    return float(100.0 * np.count_nonzero(values > values.mean()) / values.size)


def peak_window(saliency: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` x ``size`` window holding the most saliency mass.

    Args:
        saliency: A saliency map (H, W) with H, W >= ``size``.
        size: The window's side.

    Returns:
        ``(row, col)`` of the window's top-left pixel (the first one on ties).
    """
    values = np.asarray(saliency, dtype=np.float64)
    padded = np.pad(values.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = (
        padded[size:, size:]
        - padded[:-size, size:]
        - padded[size:, :-size]
        + padded[:-size, :-size]
    )
    row, col = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(row), int(col)
