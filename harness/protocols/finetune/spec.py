"""One fine-tuning training run: its settings (:class:`RunSpec`) and its outcome."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from harness.protocols.finetune.network import Classifier
from harness.protocols.finetune.warmup import step_lr_factor

#: Learning-rate schedules a run knows (see :class:`RunSpec`).
SCHEDULES = (
    "cosine",
    "cosine-epoch",
    "constant",
    "plateau",
    "warmup-plateau",
    "warmup-cosine",
    "step",
)
#: Schedules that step once an epoch (they need epoch sampling and ``steps_per_epoch``).
EPOCH_SCHEDULES = ("warmup-plateau", "cosine-epoch")


@dataclass(frozen=True)
class RunSpec:
    """One training run.

    Attributes:
        name: Name of the run (progress bar, checkpoint file, records).
        lr: Base learning rate (the head's; backbone groups scale it under layer decay).
        weight_decay: Weight decay, applied to every parameter.
        steps: Steps to train (fewer when early stopping triggers).
        horizon: Length of the cosine schedule (>= steps; a retrain that stops at the
            selected step keeps the selected run's learning-rate trajectory).
        schedule: "cosine" (to 0 at ``horizon``), "cosine-epoch" (the same curve held
            constant over each epoch: ``CosineAnnealingLR(T_max=epochs)`` stepped once an
            epoch), "constant", "plateau"
            (ReduceLROnPlateau stepped at every validation) or "warmup-plateau"
            (feature-reuse's LinearWarmup + once-an-epoch ReduceLROnPlateau),
            "warmup-cosine" (medical_transformers' LinearWarmup + per-iteration
            CosineAnnealingLR over ``horizon`` to ``cosine_floor``) or "step"
            (VTAB's warmup and step decays over ``horizon``).
        decay_at: "step": fractions of ``horizon`` after which the lr decays.
        decay_factor: "step": the decay factor.
        warmup_steps: "step": linear warmup steps from 0.
        head_init: "default" or "zeros" (:class:`~.network.Classifier`).
        batch_size: Samples per step.
        val_every: Steps between validations (and checkpoints).
        patience: Validations without improvement before stopping; None trains all
            ``steps``.
        select_best: Validate (early stopping, best weights); False trains blind and keeps
            the last weights (checkpoints are still written every ``val_every`` steps).
        restore_best: With ``select_best``, return the best validation weights; False
            returns the last ones (validation still drives early stopping).
        tie_improves: A validation score equal to the best is an improvement.
        select_on: "metric" (the validation score is a metric) or "loss" (it is the
            negated validation loss); ReduceLROnPlateau watches the metric in mode max,
            the loss in mode min.
        optimizer: "sgd", "adam" or "keras-adam".
        plateau_factor: ReduceLROnPlateau's factor.
        plateau_patience: ReduceLROnPlateau's patience.
        plateau_threshold: ReduceLROnPlateau's relative threshold.
        sampling: "stream" (full batches), "epochs" (partial last batch per epoch) or
            "drop_last" (``n // batch_size`` full batches per epoch).
        rotation: RandomRotation degrees of the training augmentation (0: none).
        augmentation: "crop-flip", "feature-reuse" or "keras" (:mod:`.augment`).
        hflip: Keras horizontal flips.
        shift: Keras shift range (fraction).
        shear: Keras shear range (degrees).
        zoom: Keras zoom range.
        head_dropout: Dropout probability before the head.
        head_only: Train the head alone for the whole run (backbone frozen, in eval mode);
            unlike ``freeze_steps`` its validations count towards ``patience``.
        val_round: Decimals validation scores are rounded to, or None.
        warmup_iters: LinearWarmup iterations ("warmup-plateau", "warmup-cosine").
        cosine_floor: "warmup-cosine": the cosine's ``eta_min``.
        warmup_start: LinearWarmup's starting lr.
        steps_per_epoch: Steps of an epoch (the once-an-epoch plateau step of
            "warmup-plateau", the epochs of "cosine-epoch"); 0 when the run is not
            epoch-based.
        freeze_steps: Leading steps that train only the head (backbone frozen, eval mode).
        momentum: SGD momentum.
        nesterov: Nesterov momentum.
        grad_clip: Max global gradient norm, or None.
        layer_decay: Layer-wise learning-rate decay factor, or None.
        crop_scale: RandomResizedCrop area range.
        seed: Seed of the head initialisation, sample order and augmentation.
        num_workers: DataLoader workers.
        soft_range: The uniform range of label-smoothed training targets (entries coded
            NaN in the targets are drawn from it each time their image is loaded), or None.
    """

    name: str
    lr: float
    weight_decay: float
    steps: int
    horizon: int
    schedule: str = "cosine"
    batch_size: int = 64
    val_every: int = 200
    patience: int | None = 3
    select_best: bool = True
    restore_best: bool = True
    tie_improves: bool = False
    select_on: str = "metric"
    optimizer: str = "sgd"
    plateau_factor: float = 0.5
    plateau_patience: int = 5
    plateau_threshold: float = 1e-4
    sampling: str = "stream"
    rotation: float = 0.0
    augmentation: str = "crop-flip"
    hflip: bool = True
    shift: float = 0.0
    shear: float = 0.0
    zoom: float = 0.0
    head_dropout: float = 0.0
    head_only: bool = False
    val_round: int | None = None
    warmup_iters: int = 1000
    warmup_start: float = 1e-8
    cosine_floor: float = 0.0
    steps_per_epoch: int = 0
    freeze_steps: int = 0
    momentum: float = 0.9
    nesterov: bool = True
    grad_clip: float | None = None
    layer_decay: float | None = None
    crop_scale: tuple[float, float] = (0.08, 1.0)
    seed: int = 0
    num_workers: int = 0
    soft_range: tuple[float, float] | None = None
    decay_at: tuple[float, ...] = ()
    decay_factor: float = 0.1
    warmup_steps: int = 0
    head_init: str = "default"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.horizon < self.steps:
            raise ValueError(f"run {self.name}: need 1 <= steps <= horizon")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"run {self.name}: unknown schedule {self.schedule!r}")
        if self.schedule == "warmup-cosine" and not 1 <= self.warmup_iters < self.horizon:
            raise ValueError(
                f"run {self.name}: warmup-cosine needs 1 <= warmup_iters ({self.warmup_iters}) "
                f"< the run's {self.horizon} steps"
            )
        if self.schedule in EPOCH_SCHEDULES and self.steps_per_epoch < 1:
            raise ValueError(f"run {self.name}: {self.schedule!r} needs steps_per_epoch >= 1")

    def lr_factor(self, step: int) -> float:
        """Multiplier of the base learning rate after ``step`` optimizer steps."""
        if self.schedule == "step":
            return step_lr_factor(
                step, self.horizon, self.decay_at, self.decay_factor, self.warmup_steps
            )
        if self.schedule == "cosine-epoch":
            # CosineAnnealingLR(T_max=epochs) stepped after each epoch: constant within one.
            epochs = self.horizon / self.steps_per_epoch
            epoch = min(step // self.steps_per_epoch, epochs)
            return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
        if self.schedule != "cosine":  # plateau schedules change the lr themselves
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(step, self.horizon) / self.horizon))


@dataclass
class StepInfo:
    """What a step callback sees after each optimizer step (and its checkpoint, if any)."""

    run: str
    step: int
    loss: float
    model: nn.Module


@dataclass
class RunOutcome:
    """The result of :func:`train_run`.

    Attributes:
        model: The trained classifier (best weights restored when ``select_best``).
        best_score: Best validation score (NaN without validation or if none was finite).
        best_step: Step of the best score (the last step without selection).
        steps_done: Steps trained.
        stopped_early: Patience ran out.
        diverged: A training loss was not finite; training stopped there.
        restored_best: The returned weights are the best-validation copy.
        val_curve: ``[step, score]`` per validation.
        loss_curve: ``[step, mean training loss since the previous checkpoint]``.
        resumed_from_step: Step of the checkpoint this run resumed from (0: fresh start).
        best_state: The deep copy of the best weights (CPU), or None.
        train_seconds: Wall time spent training, summed over resumed sessions.
        lr_scales: Learning-rate scale of each optimizer group (layer decay), in order.
        val_score: Validation score of the returned weights (the best score when they are
            the best copy; the last validation when it scored them; else NaN).
        lrs: Learning rate of each optimizer group after the last step.
    """

    model: Classifier
    best_score: float
    best_step: int
    steps_done: int
    stopped_early: bool
    diverged: bool
    restored_best: bool
    val_curve: list[list[float]]
    loss_curve: list[list[float]]
    resumed_from_step: int
    best_state: dict[str, torch.Tensor] | None
    train_seconds: float
    lr_scales: list[float] = field(default_factory=list)
    val_score: float = math.nan
    lrs: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Plain-value summary (no weights) for records and done-markers."""
        return {
            "best_score": self.best_score,
            "best_step": self.best_step,
            "steps_done": self.steps_done,
            "stopped_early": self.stopped_early,
            "diverged": self.diverged,
            "restored_best": self.restored_best,
            "val_curve": self.val_curve,
            "loss_curve": self.loss_curve,
            "resumed_from_step": self.resumed_from_step,
            "train_seconds": self.train_seconds,
            "scored_val_score": self.val_score,
        }
