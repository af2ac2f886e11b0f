"""How a fine-tuning case selects its model: train and select on val, LR finder, grid search.

revisiting-transfer's separate freeze stage is :mod:`.stages`; cats-scans' k-fold is
:mod:`.kfold`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from harness.config.cards import Preprocessing
from harness.data.npz import SplitData
from harness.protocols.base import TaskInfo
from harness.protocols.finetune.config import FinetuneConfig
from harness.protocols.finetune.loop import train_run
from harness.protocols.finetune.network import Classifier, num_outputs, uses_bce
from harness.protocols.finetune.runtime import Runtime
from harness.protocols.finetune.spec import RunOutcome, RunSpec, StepInfo
from harness.zoo import LoadedModel

if TYPE_CHECKING:
    from harness.cache.runs import Training


@dataclass
class FineTuned:
    """A fine-tuned model and how it was chosen (the output of :func:`fine_tune`).

    Attributes:
        model: The classifier to score (eval mode, on ``runtime.device``).
        runtime: Device, precision and memory format it ran with.
        hyperparameters: The chosen lr, weight decay, steps and validation score.
        details: Curves, sweep results, resume and data facts (JSON-friendly).
    """

    model: Classifier
    runtime: Runtime
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What every run of one fine-tuning case shares (model, task, settings, store).

    Attributes:
        model: The pretrained backbone (copied by every run).
        task: Task type, number of classes and metrics.
        config: Protocol settings.
        pre: The effective preprocessing.
        runtime: Device, precision and memory format.
        criterion: The training loss.
        validate: Maps a model to its validation score.
        training: The case's training folder (checkpoints, done-markers), or None.
        callback: Called after every training step.
        progress: Show tqdm bars.
        soft_range: The range label-smoothed training targets are drawn from (CheXpert
            LSR), or None.
    """

    model: LoadedModel
    task: TaskInfo
    config: FinetuneConfig
    pre: Preprocessing
    runtime: Runtime
    criterion: torch.nn.Module
    validate: Callable[[torch.nn.Module], float]
    training: Training | None
    callback: Callable[[StepInfo], None] | None
    progress: bool
    soft_range: tuple[float, float] | None = None

    def spec(
        self, name: str, lr: float, weight_decay: float, n: int = 0, **overrides: Any
    ) -> RunSpec:
        """A run with the config's settings, ``lr`` and ``weight_decay``, and ``overrides``.

        ``n`` (the number of training images) turns the config's epochs into steps:
        ``ceil(n / batch_size)`` steps an epoch under ``sampling="epochs"``, ``n //
        batch_size`` under ``"drop_last"``; validations every ``int(val_every * epoch)``
        steps under ``val_unit="epochs"`` (feature-reuse's rule for a fractional epoch).
        """
        c = self.config
        per_epoch = steps_per_epoch(n, c.batch_size, c.sampling)
        if (c.epochs is not None or c.val_unit == "epochs") and per_epoch < 1:
            raise ValueError(
                f"fine-tune: epoch-based settings need at least one batch of "
                f"{c.batch_size} training images, got {n}"
            )
        steps = c.epochs * per_epoch if c.epochs is not None else c.steps
        if c.val_unit == "epochs":
            val_every = max(1, int(c.val_every * per_epoch))
        else:
            val_every = int(c.val_every)
        base = RunSpec(
            name=name,
            lr=lr,
            weight_decay=weight_decay,
            steps=steps,
            horizon=steps,
            schedule=c.schedule,
            batch_size=c.batch_size,
            val_every=val_every,
            patience=c.patience,
            select_best=True,
            restore_best=c.restore_best,
            tie_improves=c.tie_improves,
            select_on=c.select_on,
            optimizer=c.optimizer,
            plateau_factor=c.plateau_factor,
            plateau_patience=c.plateau_patience,
            plateau_threshold=c.plateau_threshold,
            sampling=c.sampling,
            rotation=c.rotation,
            augmentation=c.augmentation,
            hflip=c.hflip,
            shift=c.shift,
            shear=c.shear,
            zoom=c.zoom,
            head_dropout=c.head_dropout,
            val_round=c.val_round,
            warmup_iters=c.warmup_iters,
            warmup_start=c.warmup_start,
            cosine_floor=c.cosine_floor,
            steps_per_epoch=max(per_epoch, 1),
            freeze_steps=c.freeze_steps,
            momentum=c.momentum,
            nesterov=c.nesterov,
            grad_clip=c.grad_clip,
            layer_decay=c.layer_decay,
            crop_scale=c.crop_scale,
            seed=c.seed,
            num_workers=c.num_workers,
            soft_range=self.soft_range,
            decay_at=c.decay_at,
            decay_factor=c.decay_factor,
            warmup_steps=c.warmup_steps,
            head_init=c.head_init,
        )
        return replace(base, **overrides)

    def train(
        self,
        spec: RunSpec,
        images: np.ndarray,
        targets: np.ndarray,
        checkpoint: bool = True,
        validate: Callable[[torch.nn.Module], float] | None = None,
        init_state: dict[str, torch.Tensor] | None = None,
    ) -> RunOutcome:
        """Train ``spec`` on the images, resuming from its checkpoint when ``checkpoint``.

        ``validate`` replaces the case's validation score; ``init_state`` is the weights
        the run starts from (default: the backbone and a fresh head).
        """
        resume = None
        if self.training is not None and checkpoint:
            resume = self.training.checkpoint(spec.name, asdict(spec))
        return train_run(
            spec,
            self.model.module,
            self.model.feature_dim,
            num_outputs(self.task.task, self.task.num_classes, self.config.loss),
            images,
            targets,
            self.pre,
            self.criterion,
            self.runtime,
            validate=(validate or self.validate) if spec.select_best else None,
            checkpoint=resume,
            callback=self.callback,
            progress=self.progress,
            init_state=init_state,
        )

    def finished_run(
        self,
        spec: RunSpec,
        images: np.ndarray,
        targets: np.ndarray,
        checkpoint: bool = True,
        score: Callable[[torch.nn.Module], float] | None = None,
    ) -> dict[str, Any]:
        """Summary of a sweep run, from its done-marker or by training it (a run without
        selection is scored once at its end, by ``score`` or the validation score)."""

        def compute() -> dict[str, Any]:
            outcome = self.train(spec, images, targets, checkpoint)
            summary = outcome.summary()
            if not spec.select_best:  # LR finder: score once at the end of the short run
                scorer = score or self.validate
                summary["val_score"] = scorer(outcome.model) if not outcome.diverged else math.nan
            else:
                summary["val_score"] = outcome.best_score
            return summary

        if self.training is None:
            return compute()
        return self.training.finished(spec.name, compute)


def steps_per_epoch(n: int, batch_size: int, sampling: str) -> int:
    """Steps of one epoch: ``ceil(n / B)`` ("epochs"), ``n // B`` ("drop_last"), else 0."""
    if sampling == "epochs":
        return -(-n // batch_size)
    return n // batch_size if sampling == "drop_last" else 0


def select_on_val(
    ctx: Context, train: SplitData, y_train: np.ndarray, val: SplitData | None = None
) -> FineTuned:
    """Train on train (after the LR finder, if configured), keep the best validation weights.

    ``val`` is needed by the scores the case's validation function does not give (the LR
    finder's "val_loss", the freeze stage's accuracy).
    """
    config = ctx.config
    if config.folds:
        raise ValueError(
            f"fine-tune: folds={config.folds} is cross-validation over the pooled splits; "
            "it runs through harness.protocols.finetune.kfold.run_kfold (the case driver "
            "dispatches on config.folds), not a train/val selection"
        )
    if config.freeze_stage:
        from harness.protocols.finetune.stages import freeze_then_train

        return freeze_then_train(ctx, train, y_train, val)
    targets = as_targets(y_train, ctx.task, config.loss)
    lr = config.lr
    hyper: dict[str, Any] = {}
    details: dict[str, Any] = {"mode": "train_select_on_val", "fit_split": "train"}
    if config.lr_finder:
        from harness.protocols.finetune.lr_finder import lr_finder

        lr, finder = lr_finder(ctx, train.images, targets, val)
        hyper["lr_finder_lr"] = lr
        details["mode"] = "lr_finder"
        details["lr_finder"] = finder
    spec = ctx.spec("main", lr, config.weight_decay, n=len(train))
    outcome = ctx.train(spec, train.images, targets)
    _require_usable(outcome, spec)
    hyper.update(
        {
            "lr": lr,
            "weight_decay": config.weight_decay,
            "steps": outcome.best_step,
            "val_primary": outcome.val_score,
        }
    )
    details.update(_outcome_details(outcome))
    details["resumed_from_step"] = outcome.resumed_from_step
    details["resumed_runs"] = {"main": outcome.resumed_from_step}
    details["n_fit"] = len(train)
    details["freeze_steps"] = config.freeze_steps
    details["layer_decay"] = config.layer_decay
    return FineTuned(outcome.model, ctx.runtime, hyper, details)


def grid_search(
    ctx: Context,
    train: SplitData,
    val: SplitData,
    y_train: np.ndarray,
    y_val: np.ndarray,
) -> FineTuned:
    """Sweep the lr x w grid on train (scored on val), retrain the best point on train+val."""
    config = ctx.config
    targets = as_targets(y_train, ctx.task, config.loss)
    table: list[dict[str, Any]] = []
    best = None
    # "last": ssl-transfer trains every point all steps and scores its last weights.
    blind = {"select_best": False, "patience": None} if config.grid_score == "last" else {}
    for index, (lr, w, wd, length) in enumerate(config.grid_points()):
        spec = ctx.spec(
            f"grid{index:02d}", lr, wd, n=len(train), steps=length, horizon=length, **blind
        )
        summary = ctx.finished_run(spec, train.images, targets)
        if ctx.training is not None:
            ctx.training.discard(f"grid{index:02d}")
        row = {
            "lr": lr,
            "w": w,
            "weight_decay": wd,
            "run_steps": length,
            "val_score": summary["val_score"],
            "best_step": summary["best_step"],
            "steps_done": summary["steps_done"],
            "stopped_early": summary["stopped_early"],
            "diverged": summary["diverged"],
            "resumed_from_step": summary["resumed_from_step"],
        }
        table.append(row)
        value = row["val_score"]
        # Strict >: ties keep the earlier grid point; NaN never wins.
        if not math.isnan(value) and (best is None or value > table[best]["val_score"]):
            best = index
    if best is None:
        raise FloatingPointError("fine-tune grid search: no grid point gave a finite val score")
    chosen = table[best]
    images = np.concatenate([train.images, val.images])
    targets_fit = as_targets(np.concatenate([y_train, y_val]), ctx.task, config.loss)
    steps = max(1, int(chosen["best_step"]))
    spec = ctx.spec(
        "retrain",
        chosen["lr"],
        chosen["weight_decay"],
        n=len(images),
        steps=steps,
        horizon=chosen["run_steps"],
        patience=None,
        select_best=False,
        freeze_steps=min(config.freeze_steps, steps - 1),
    )
    outcome = ctx.train(spec, images, targets_fit)
    _require_usable(outcome, spec)
    resumed = {f"grid{i:02d}": row["resumed_from_step"] for i, row in enumerate(table)}
    resumed["retrain"] = outcome.resumed_from_step
    hyper = {
        "lr": chosen["lr"],
        "w": chosen["w"],
        "weight_decay": chosen["weight_decay"],
        "steps": steps,
        "val_primary": chosen["val_score"],
    }
    details = {
        "mode": "grid_search",
        "grid_score": config.grid_score,
        "fit_split": "train+val",
        "grid": table,
        "chosen_index": best,
        "tie_break": "earlier grid point (lr descending as listed, then w ascending)",
        "retrain_horizon": chosen["run_steps"],
        **_outcome_details(outcome),
        "resumed_from_step": max(resumed.values()),
        "resumed_runs": resumed,
        "n_fit": len(images),
        "freeze_steps": config.freeze_steps,
        "layer_decay": config.layer_decay,
    }
    return FineTuned(outcome.model, ctx.runtime, hyper, details)


def _require_usable(outcome: RunOutcome, spec: RunSpec) -> None:
    if outcome.diverged and not outcome.restored_best:
        raise FloatingPointError(
            f"fine-tune run {spec.name}: the training loss became non-finite at step "
            f"{outcome.steps_done} (lr={spec.lr}) before any usable validation; lower the lr"
        )


def _outcome_details(outcome: RunOutcome) -> dict[str, Any]:
    return {
        "best_step": outcome.best_step,
        "steps_done": outcome.steps_done,
        "stopped_early": outcome.stopped_early,
        "restored_best": outcome.restored_best,
        "val_curve": outcome.val_curve,
        "loss_curve": outcome.loss_curve,
        "train_seconds": outcome.train_seconds,
        "seconds_per_step": outcome.train_seconds / max(1, outcome.steps_done),
        "lr_scales": outcome.lr_scales,
        "final_lrs": outcome.lrs,
        "scored_val_score": outcome.val_score,
    }


def as_targets(labels: np.ndarray, task: TaskInfo, loss: str = "auto") -> np.ndarray:
    """Training targets: int64 class ids, or float32 rows under BCE (multilabel label
    rows; one-hot rows; a binary task's single column)."""
    if task.task == "multilabel":
        return labels.astype(np.float32)
    if not uses_bce(task.task, loss):
        return labels.astype(np.int64)
    if task.task == "binary":
        return labels.astype(np.float32).reshape(-1, 1)
    return np.eye(task.num_classes, dtype=np.float32)[labels.astype(np.int64)]
