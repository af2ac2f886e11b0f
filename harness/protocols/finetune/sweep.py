"""A full-run hyperparameter sweep, selected on validation without a retrain (``config.sweep``).

DovileDo/transferability-in-medical-imaging@7e308c4 runs ``src/fine-tuning.py`` once per
point of a 120-point grid (2 batch sizes x 6 lrs x 2 momenta x 5 weight decays), each a
whole early-stopped run scored from its best-AUC checkpoint; ``finetuned_AUCs.ipynb`` then
keeps, per target, the run with the lowest ``val_loss`` (``groupby(...)['val_loss']
.idxmin()``) and reports that run's ``test_auc``. ``val_loss`` is ``my_test`` on the
reloaded checkpoint: the mean of per-batch mean losses over a val loader of the run's own
batch size, so a partial last batch counts as much as a full one.

Here every point is the case's config at that point (:meth:`FinetuneConfig.sweep_points`),
trained with its own early stopping and restore, then scored on val by
``config.sweep_select``. A point whose training diverged before any usable validation
has no score and is never selected (the study's sweep has no row for a crashed run); ties
keep the earlier point in sweep order (pandas ``idxmin`` keeps the first row of the
exported CSV). The selected point is trained once more, with the same seed, batches and
steps, rather than holding up to 120 models in memory; the record keeps both val losses
so the two runs can be compared.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from harness.data.npz import SplitData
from harness.protocols.finetune.lr_finder import batch_mean_loss, val_predictions
from harness.protocols.finetune.modes import (
    Context,
    FineTuned,
    _outcome_details,
    _require_usable,
    as_targets,
)
from harness.protocols.finetune.spec import RunSpec


def sweep_select(ctx: Context, train: SplitData, val: SplitData, y_train: np.ndarray) -> FineTuned:
    """Run every point of ``ctx.config.sweep`` on train, keep the one val selects.

    Args:
        ctx: The case's shared settings (its config holds the sweep).
        train: Training images and labels.
        val: Validation images and labels (selection only: nothing is retrained on them).
        y_train: Checked training labels.

    Returns:
        The selected point's model (its own run's scored weights) with the sweep table.

    Raises:
        FloatingPointError: When no point has a finite selection score.
    """
    config = ctx.config
    targets = as_targets(y_train, ctx.task, config.loss)
    val_loss = _val_loss_of(ctx, val)
    points = config.sweep_points()
    table: list[dict[str, Any]] = []
    for index, point in enumerate(points):
        point_ctx, spec = _point_run(ctx, point, index, len(train))

        def compute(point_ctx: Context = point_ctx, spec: RunSpec = spec) -> dict[str, Any]:
            outcome = point_ctx.train(spec, train.images, targets)
            summary = outcome.summary()
            usable = not (outcome.diverged and not outcome.restored_best)
            summary["val_score"] = outcome.val_score if usable else math.nan
            summary["val_loss"] = val_loss(outcome.model, spec.batch_size) if usable else math.nan
            return summary

        summary = compute() if ctx.training is None else ctx.training.finished(spec.name, compute)
        if ctx.training is not None:
            ctx.training.discard(spec.name)
        table.append(
            {
                **point,
                "nesterov": spec.nesterov,
                "val_score": summary["val_score"],
                "val_loss": summary["val_loss"],
                "best_step": summary["best_step"],
                "steps_done": summary["steps_done"],
                "stopped_early": summary["stopped_early"],
                "diverged": summary["diverged"],
                "resumed_from_step": summary["resumed_from_step"],
            }
        )
    best = selected_index(table, config.sweep_select)
    point = points[best]
    point_ctx, spec = _point_run(ctx, point, best, len(train))
    spec = replace(spec, name="selected")  # the run's name does not enter its seed
    outcome = point_ctx.train(spec, train.images, targets, checkpoint=False)
    _require_usable(outcome, spec)
    chosen = table[best]
    retrained_loss = val_loss(outcome.model, spec.batch_size)
    hyper = {
        **point,
        "steps": outcome.best_step,
        "val_primary": outcome.val_score,
        "val_loss": retrained_loss,
    }
    details = {
        "mode": "sweep",
        "sweep_select": config.sweep_select,
        "fit_split": "train",
        "sweep": table,
        "chosen_index": best,
        "tie_break": "earlier point in sweep order",
        "sweep_val_loss": chosen["val_loss"],
        "retrained_val_loss": retrained_loss,
        **_outcome_details(outcome),
        "resumed_from_step": max(row["resumed_from_step"] for row in table),
        "resumed_runs": {
            **{f"sweep{i:03d}": row["resumed_from_step"] for i, row in enumerate(table)},
            "selected": outcome.resumed_from_step,
        },
        "n_fit": len(train),
        "freeze_steps": config.freeze_steps,
        "layer_decay": config.layer_decay,
    }
    return FineTuned(outcome.model, ctx.runtime, hyper, details)


def selected_index(table: list[dict[str, Any]], select: str) -> int:
    """The row a sweep keeps: the lowest ``val_loss`` ("val_loss") or the highest
    ``val_score`` ("metric"); NaN never wins, ties keep the earlier row.

    Raises:
        FloatingPointError: When no row has a finite value.
    """
    column, sign = ("val_loss", -1.0) if select == "val_loss" else ("val_score", 1.0)
    best = None
    for index, row in enumerate(table):
        value = sign * row[column]
        if not math.isnan(value) and (best is None or value > sign * table[best][column]):
            best = index
    if best is None:
        raise FloatingPointError(f"fine-tune sweep: no point gave a finite {column}")
    return best


def _point_run(
    ctx: Context, point: dict[str, float], index: int, n: int
) -> tuple[Context, RunSpec]:
    """The case's context and run at one sweep point (Nesterov only with momentum)."""
    nesterov = ctx.config.nesterov and point.get("momentum", ctx.config.momentum) > 0
    config = replace(ctx.config, sweep=(), nesterov=nesterov, **point)
    point_ctx = replace(ctx, config=config)
    return point_ctx, point_ctx.spec(f"sweep{index:03d}", config.lr, config.weight_decay, n=n)


def _val_loss_of(ctx: Context, val: SplitData) -> Callable[[torch.nn.Module, int], float]:
    """``(model, batch_size) -> val loss``: the mean of per-batch mean losses over batches of
    ``batch_size`` (the study's val loader), from predicted probabilities."""
    probabilities, labels = val_predictions(ctx, val)

    def score(net: torch.nn.Module, batch_size: int) -> float:
        probs = probabilities(net)
        return batch_mean_loss(ctx.task.task, ctx.config.loss, labels, probs, batch_size)

    return score
