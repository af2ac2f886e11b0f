"""What a validation scores: the primary metric or the negated loss on the val split.

With ``val_drop_last`` the split is read as ChrisMats/medical_transformers@ecd460a's
params.json sets its ``valloader`` (``shuffle: true, drop_last: true``): each validation
scores a fresh random ``batch * (n // batch)`` of the validation images. Predictions in
evaluation mode do not depend on the batch an image is in, so the subset is taken from
the predictions of the whole split: the same numbers as predicting the subset.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from harness.protocols.base import TaskInfo
from harness.protocols.finetune.config import FinetuneConfig
from harness.protocols.finetune.data import EvalSet
from harness.protocols.finetune.network import predict, validation_loss
from harness.protocols.finetune.runtime import Runtime
from harness.protocols.metrics import compute_metrics


class DroppedLastBatch:
    """The indices each validation keeps, drawn from a seeded stream (one per run)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        """Set up the draws.

        Args:
            n: Validation images.
            batch_size: The loader's batch size.
            seed: Seed of the stream of permutations.

        Raises:
            ValueError: When fewer than ``batch_size`` images leave no full batch.
        """
        if n < batch_size:
            raise ValueError(
                f"val_drop_last: {n} validation images make no full batch of {batch_size}"
            )
        self.keep = batch_size * (n // batch_size)
        self.n = n
        self.rng = np.random.default_rng(seed)

    def next_indices(self) -> np.ndarray:
        """The images the next validation scores, in the loader's shuffled order."""
        return self.rng.permutation(self.n)[: self.keep]


def make_validate(
    val_set: EvalSet,
    y_val: np.ndarray,
    task: TaskInfo,
    config: FinetuneConfig,
    runtime: Runtime,
    columns: list[int],
) -> Callable[[torch.nn.Module], float]:
    """The validation a run selects on (higher is better).

    Args:
        val_set: The validation images, transformed for evaluation.
        y_val: Their labels.
        task: The task (its primary metric is scored).
        config: ``select_on``, ``loss``, ``eval_batch_size``, ``val_drop_last``, ``seed``.
        runtime: Device and precision of the predictions.
        columns: The multilabel columns scored (empty: all).

    Returns:
        ``net -> score``: the primary metric, or the negated validation loss.
    """
    subsets = (
        DroppedLastBatch(len(y_val), config.eval_batch_size, config.seed)
        if config.val_drop_last
        else None
    )

    def validate(net: torch.nn.Module) -> float:
        probs = predict(net, val_set, task.task, runtime, config.eval_batch_size, config.loss)
        y_scored = y_val
        if subsets is not None:
            kept = subsets.next_indices()
            y_scored, probs = y_val[kept], probs[kept]
        if config.select_on == "loss":  # higher is better: the negated loss, all outputs
            return -validation_loss(task.task, config.loss, y_scored, probs)
        y, p = (y_scored[:, columns], probs[:, columns]) if columns else (y_scored, probs)
        return compute_metrics(task.task, y, p, (task.primary_metric,))[task.primary_metric]

    return validate
