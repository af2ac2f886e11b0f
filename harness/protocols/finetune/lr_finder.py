"""The LR finders: a short constant-lr run per candidate lr, then the best candidate.

medxfer's (``lr_finder_select`` "val" or "loss": ``lr_finder_steps`` steps per lr) and
feature-reuse's (ChrisMats/feature-reuse@736d31b:defaults/trainer.py
``lr_grid_search`` with params.json's ``min_pow -5, max_pow -2, resolution 25, n_epochs
5``: ``10 ** linspace(-5, -2, 25)``, each lr trained ``n_epochs`` epochs from the same
start weights without a schedule or validation, then scored by the validation loss, the
plain mean of its per-batch mean losses; ``lr_finder_select="val_loss"`` and
``lr_finder_epochs``). The peer prints the lr of the lowest loss (``np.argmin``: the first
of ties, so the smallest lr) and of the best metric; the preset takes the former. A
diverged candidate (NaN loss) is never chosen here; ``np.argmin`` would pick it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from harness.data.npz import SplitData
from harness.protocols.finetune.data import EvalSet
from harness.protocols.finetune.modes import as_targets, steps_per_epoch
from harness.protocols.finetune.network import predict, validation_loss
from harness.protocols.metrics import compute_metrics

if TYPE_CHECKING:
    from harness.protocols.finetune.modes import Context


def val_scorer(
    ctx: Context, val: SplitData | None, quantity: str
) -> Callable[[torch.nn.Module], float]:
    """A validation score other than the case's: "accuracy", or "batch_loss" (the negated
    mean of per-batch mean losses over batches of ``eval_batch_size``, feature-reuse's).

    Raises:
        ValueError: Without the val split.
    """
    if val is None:
        raise ValueError(f"fine-tune: scoring val by {quantity} needs the val split")
    config, task = ctx.config, ctx.task
    probabilities, labels = val_predictions(ctx, val)

    def score(net: torch.nn.Module) -> float:
        probs = probabilities(net)
        if quantity == "accuracy":
            return compute_metrics(task.task, labels, probs, ("accuracy",))["accuracy"]
        return -batch_mean_loss(task.task, config.loss, labels, probs, config.eval_batch_size)

    return score


def val_predictions(
    ctx: Context, val: SplitData
) -> tuple[Callable[[torch.nn.Module], np.ndarray], np.ndarray]:
    """A model's predicted probabilities on the val split (its eval transform applied once),
    and the labels the losses and metrics compare them with."""
    config, task = ctx.config, ctx.task
    data = EvalSet(val.images, ctx.pre)
    labels = as_targets(val.labels, task) if task.task != "multilabel" else val.labels

    def probabilities(net: torch.nn.Module) -> np.ndarray:
        return predict(net, data, task.task, ctx.runtime, config.eval_batch_size, config.loss)

    return probabilities, labels


def batch_mean_loss(
    task: str, loss: str, labels: np.ndarray, probabilities: np.ndarray, batch_size: int
) -> float:
    """The unweighted mean of per-batch mean losses (a partial last batch counts as much as
    a full one), as feature-reuse's ``np.array(val_loss).mean()``."""
    losses = [
        validation_loss(task, loss, labels[i : i + batch_size], probabilities[i : i + batch_size])
        for i in range(0, len(labels), batch_size)
    ]
    return float(np.mean(losses))


def lr_finder(
    ctx: Context, images: np.ndarray, targets: np.ndarray, val: SplitData | None = None
) -> tuple[float, dict[str, Any]]:
    config = ctx.config
    steps = config.lr_finder_steps
    if config.lr_finder_epochs is not None:
        steps = config.lr_finder_epochs * steps_per_epoch(
            len(images), config.batch_size, config.sampling
        )
    score = val_scorer(ctx, val, "batch_loss") if config.lr_finder_select == "val_loss" else None
    lrs = config.finder_lrs()
    scores: list[float] = []
    losses: list[float] = []
    for index, lr in enumerate(lrs):
        spec = ctx.spec(
            f"lrfind{index:02d}",
            lr,
            config.weight_decay,
            n=len(images),
            steps=steps,
            horizon=steps,
            schedule="constant",
            val_every=max(1, steps // 4),  # loss windows = quarters of the run
            patience=None,
            select_best=False,
            freeze_steps=min(config.freeze_steps, steps - 1),
        )
        summary = ctx.finished_run(spec, images, targets, checkpoint=False, score=score)
        last_loss = summary["loss_curve"][-1][1] if summary["loss_curve"] else math.nan
        losses.append(math.nan if summary["diverged"] else last_loss)
        scores.append(summary["val_score"])
    # "val" and "val_loss" score the validation (the latter as a negated loss); "loss"
    # the training loss. Lowest loss first, as np.argmin; a NaN (diverged) never wins.
    keyed = scores if config.lr_finder_select != "loss" else [-v for v in losses]
    best = None
    for index, value in enumerate(keyed):  # ascending lr, strict >: ties keep the smaller lr
        if not math.isnan(value) and (best is None or value > keyed[best]):
            best = index
    if best is None:
        raise FloatingPointError("fine-tune LR finder: no lr gave a finite score")
    return lrs[best], {
        "select": config.lr_finder_select,
        "steps": steps,
        "lrs": lrs,
        "val_scores": scores,
        "final_losses": losses,
        "chosen_index": best,
    }
