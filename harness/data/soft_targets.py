"""Training targets of label-smoothed labels (CheXpert LSR-Ones / LSR-Zeros).

A label policy may mark entries whose *training* target is a uniform draw from a range
instead of the hard 0/1 label (:class:`harness.data.table.SoftTargets`). Every metric
scores against the hard labels; only losses see the soft targets:

- mini-batch training draws a fresh target for each marked entry every time an image is
  loaded, as MR-HosseinzadehTaher/BenchmarkTransferLearning@5656fec:Version1/dataloader.py
  does in ``CheXpertDataset.__getitem__`` (:func:`draw_targets`);
- a full-batch fit uses the range's midpoint (:func:`expected_targets`): binary
  cross-entropy is linear in its target, so the midpoint gives exactly the expected loss
  over the draws.
"""

from __future__ import annotations

import numpy as np
import torch

from harness.data.table import SoftTargets, take_soft

__all__ = ["draw_targets", "expected_targets", "take_soft"]


def expected_targets(labels: np.ndarray, soft: SoftTargets | None) -> np.ndarray:
    """Float targets with each marked entry at its range's midpoint.

    Args:
        labels: hard 0/1 labels, ``(N,)`` or ``(N, C)``.
        soft: the marks, or None for hard targets.

    Returns:
        float64 targets of the labels' shape.
    """
    targets = np.asarray(labels, dtype=np.float64).copy()
    if soft is not None:
        targets[np.asarray(soft.mask, dtype=bool)] = (soft.low + soft.high) / 2.0
    return targets


def draw_targets(
    labels: torch.Tensor,
    mask: torch.Tensor | None,
    soft: SoftTargets | None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Float targets of one batch with each marked entry drawn from U(low, high).

    Args:
        labels: the batch's hard 0/1 labels.
        mask: the batch's bool marks (the labels' shape), or None.
        soft: the range (its mask is not used here), or None for hard targets.
        generator: the draws' generator (the training loop's, so a run is reproducible).

    Returns:
        float32 targets of the labels' shape.
    """
    targets = labels.to(torch.float32).clone()
    if soft is None or mask is None:
        return targets
    mask = mask.to(torch.bool)
    draws = torch.rand(targets.shape, generator=generator).to(targets.device)
    draws = soft.low + (soft.high - soft.low) * draws
    return torch.where(mask, draws, targets)
