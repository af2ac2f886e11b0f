"""Settings of the fine-tuning protocol: the config dataclass and its per-profile values."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from harness.config.profiles import check_profile

VERSION = 2

_CLASS_WEIGHTING = ("none", "inverse_frequency")
_AMP = ("auto", "none", "bf16", "fp16")
_CHOICES = {
    "optimizer": ("sgd", "adam"),
    "schedule": ("cosine", "constant", "plateau"),
    "sampling": ("stream", "epochs"),
    "val_unit": ("steps", "epochs"),
    "select_on": ("metric", "loss"),
    "grid_score": ("best", "last"),
    "loss": ("auto", "bce"),
}


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of the fine-tuning protocol (defaults: the peers' ``paper`` values).

    Attributes:
        steps: Training steps (the cosine schedule's length).
        batch_size: Samples per step.
        lr: Learning rate (the head's, under layer decay).
        weight_decay: Weight decay (L2 added to the gradient, SGD's and Adam's).
        momentum: SGD momentum.
        nesterov: Nesterov momentum.
        optimizer: "sgd" (with ``momentum`` and ``nesterov``) or "adam" (torch's
            defaults: betas (0.9, 0.999), eps 1e-8).
        schedule: "cosine" (to 0 at ``steps``), "constant", or "plateau" (torch's
            ReduceLROnPlateau, stepped at every validation on the validation quantity).
        plateau_factor: ReduceLROnPlateau's factor.
        plateau_patience: ReduceLROnPlateau's patience (validations).
        plateau_threshold: ReduceLROnPlateau's relative threshold.
        sampling: "stream" (an endless seeded stream: every batch is full) or "epochs"
            (reshuffled epochs whose last batch is partial, as a DataLoader without
            ``drop_last``).
        epochs: Run length in epochs (``sampling="epochs"``); None: ``steps`` steps.
        val_unit: "steps" or "epochs": the unit of ``val_every``.
        val_every: Steps (or epochs) between validations (and checkpoints).
        patience: Validations without an improvement before stopping early; None trains
            all steps (the best validation weights are still kept).
        select_on: Validation quantity: "metric" (the primary metric, higher is better)
            or "loss" (the mean validation loss, lower is better).
        tie_improves: A validation equal to the best counts as an improvement (resets
            patience, becomes the best); medxfer: only strictly better does.
        restore_best: Score the best validation weights; False scores the last ones.
        input_size: Training and evaluation image size; None uses the profile's, then the
            model card's.
        crop_scale: RandomResizedCrop area range (torchvision's default (0.08, 1)).
        rotation: RandomRotation degrees after the crop and flip (0: none).
        grid_search: Run ssl-transfer's lr x w grid, then retrain on train+val.
        grid_score: "best": every grid point validates with early stopping and scores its
            best validation, the retrain runs to that point's best step; "last": every
            point trains all ``steps`` without validating and is scored on its last
            weights, the retrain runs all ``steps``.
        grid_lrs: Learning rates of the grid.
        grid_ws: ``w`` values of the grid; weight decay is ``w / lr``.
        freeze_steps: Leading steps on a frozen backbone (0: none).
        lr_finder: Choose the lr with feature-reuse's LR finder first.
        lr_finder_min: Smallest lr tried.
        lr_finder_max: Largest lr tried.
        lr_finder_points: Number of log-spaced lrs.
        lr_finder_steps: Steps of each short run.
        lr_finder_select: "val" (validation metric) or "loss" (training loss).
        layer_decay: Layer-wise lr decay factor (timm models), or None.
        grad_clip: Max gradient norm, or None (no clipping).
        class_weighting: "none" or "inverse_frequency" (weighted CE / BCE pos_weight).
        loss: "auto" (cross-entropy; sigmoid + BCE for multilabel) or "bce" (sigmoid + BCE
            for every task: one-hot targets, one output for a binary task).
        test_tencrop: Score test on TenCrop (resize to ``input_size / crop_pct`` square,
            four corners and centre plus their mirror images), averaging the ten
            predicted probabilities.
        eval_labels: Multilabel only: label indices scored (val selection and test);
            None scores all.
        amp: "auto" (bf16/fp16 on CUDA, fp32 on CPU), "none", "bf16", "fp16".
        channels_last: Channels-last memory format.
        deterministic: Deterministic kernels where cheap.
        eval_batch_size: Images per evaluation forward pass.
        num_workers: DataLoader workers for training batches.
        cpu_threads: torch threads while fine-tuning on CPU (None: leave torch's setting).
            One thread per case is much faster than two on a loaded 2-core machine
            (OpenMP threads wait on each other), e.g. under pytest-xdist.
        seed: Seed of the head init, sample order and augmentation.
    """

    steps: int = 5000
    batch_size: int = 64
    lr: float = 1e-2
    weight_decay: float = 1e-8
    momentum: float = 0.9
    nesterov: bool = True
    optimizer: str = "sgd"
    schedule: str = "cosine"
    plateau_factor: float = 0.5
    plateau_patience: int = 5
    plateau_threshold: float = 1e-4
    sampling: str = "stream"
    epochs: int | None = None
    val_unit: str = "steps"
    val_every: int = 200
    patience: int | None = 3
    select_on: str = "metric"
    tie_improves: bool = False
    restore_best: bool = True
    input_size: int | None = None
    crop_scale: tuple[float, float] = (0.08, 1.0)
    rotation: float = 0.0
    grid_search: bool = False
    grid_score: str = "best"
    grid_lrs: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4)
    grid_ws: tuple[float, ...] = (0.0, 1e-6, 1e-5, 1e-4, 1e-3)
    freeze_steps: int = 0
    lr_finder: bool = False
    lr_finder_min: float = 1e-5
    lr_finder_max: float = 1e-2
    lr_finder_points: int = 25
    lr_finder_steps: int = 100
    lr_finder_select: str = "val"
    layer_decay: float | None = None
    grad_clip: float | None = None
    class_weighting: str = "none"
    loss: str = "auto"
    test_tencrop: bool = False
    eval_labels: tuple[int, ...] | None = None
    amp: str = "auto"
    channels_last: bool = True
    deterministic: bool = True
    eval_batch_size: int = 128
    num_workers: int = 0
    cpu_threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("crop_scale", "grid_lrs", "grid_ws"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.eval_labels is not None:
            object.__setattr__(self, "eval_labels", tuple(int(v) for v in self.eval_labels))
        problems = []
        if self.steps < 1 or self.batch_size < 1 or self.val_every < 1:
            problems.append("steps, batch_size and val_every must be >= 1")
        if self.patience is not None and self.patience < 1:
            problems.append(f"patience must be >= 1 or None, got {self.patience}")
        if not (self.lr > 0 and math.isfinite(self.lr)) or self.weight_decay < 0:
            problems.append("lr must be > 0 and weight_decay >= 0")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.sampling != "epochs" and (self.epochs is not None or self.val_unit == "epochs"):
            problems.append("epochs and val_unit='epochs' need sampling='epochs'")
        if self.epochs is not None and self.epochs < 1:
            problems.append(f"epochs must be >= 1 or None, got {self.epochs}")
        if self.epochs is not None and (self.grid_search or self.lr_finder):
            problems.append("epochs is not supported with grid_search or lr_finder: use steps")
        if self.schedule == "plateau" and (self.grid_search or self.lr_finder):
            problems.append(
                "schedule='plateau' steps on validations: not with grid_search/lr_finder"
            )
        if not 0 < self.plateau_factor < 1 or self.plateau_patience < 0:
            problems.append("plateau_factor must lie in (0, 1) and plateau_patience be >= 0")
        if self.plateau_threshold < 0 or not 0 <= self.rotation <= 180:
            problems.append("plateau_threshold must be >= 0 and rotation lie in [0, 180]")
        if self.loss == "bce" and self.class_weighting != "none":
            problems.append("loss='bce' supports class_weighting='none' only")
        low, high = self.crop_scale if len(self.crop_scale) == 2 else (0.0, -1.0)
        if not 0 < low <= high <= 1:
            problems.append(f"crop_scale must be (a, b) with 0 < a <= b <= 1: {self.crop_scale}")
        if self.input_size is not None and self.input_size < 8:
            problems.append(f"input_size must be >= 8, got {self.input_size}")
        if not 0 <= self.freeze_steps < self.steps:
            problems.append(f"freeze_steps must lie in [0, steps), got {self.freeze_steps}")
        if self.grid_search and self.lr_finder:
            problems.append("grid_search and lr_finder are alternatives; enable one")
        if not self.grid_lrs or any(lr <= 0 for lr in self.grid_lrs):
            problems.append("grid_lrs must be positive and not empty")
        if not self.grid_ws or any(w < 0 for w in self.grid_ws):
            problems.append("grid_ws must be >= 0 and not empty")
        if not 0 < self.lr_finder_min < self.lr_finder_max or self.lr_finder_points < 2:
            problems.append("the LR finder needs 0 < lr_finder_min < lr_finder_max, >= 2 points")
        if self.lr_finder_steps < 1:
            problems.append("lr_finder_steps must be >= 1")
        if self.lr_finder_select not in ("val", "loss"):
            problems.append(f"lr_finder_select must be 'val' or 'loss': {self.lr_finder_select}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            problems.append(f"layer_decay must lie in (0, 1], got {self.layer_decay}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            problems.append(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.class_weighting not in _CLASS_WEIGHTING:
            problems.append(f"class_weighting must be one of {_CLASS_WEIGHTING}")
        if self.amp not in _AMP:
            problems.append(f"amp must be one of {_AMP}, got {self.amp!r}")
        if self.eval_labels is not None and (
            not self.eval_labels
            or min(self.eval_labels) < 0
            or len(set(self.eval_labels)) != len(self.eval_labels)
        ):
            problems.append(f"eval_labels must be distinct indices >= 0: {self.eval_labels}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            problems.append(f"cpu_threads must be >= 1 or None, got {self.cpu_threads}")
        if self.eval_batch_size < 1 or self.num_workers < 0:
            problems.append("eval_batch_size must be >= 1 and num_workers >= 0")
        if problems:
            raise ValueError("FinetuneConfig: " + "; ".join(problems))

    @classmethod
    def for_profile(cls, profile: str) -> FinetuneConfig:
        """The configuration of a run profile.

        ``smoke``: 30 steps of batch 16 at 64 px, validating every 10 (seconds on CPU).
        ``demo``: 150 steps of batch 32 at 64 px (the demo datasets' native size),
        validating every 25; about 1.5 minutes per case on a loaded 2-core CPU (0.4-0.6 s
        a step for EfficientNet-Lite0). ``paper``: the peers' values at the model's own
        input size. ``smoke`` and ``demo`` fine-tune on one CPU thread (``cpu_threads=1``):
        several times faster than two threads on a shared 2-core machine and the same
        numbers on any machine; ``paper`` leaves torch's thread count alone.

        Args:
            profile: "smoke", "demo" or "paper".

        Returns:
            The profile's configuration.

        Raises:
            ValueError: On an unknown profile.
        """
        check_profile(profile)
        if profile == "smoke":
            return cls(
                steps=30,
                batch_size=16,
                val_every=10,
                input_size=64,
                eval_batch_size=64,
                cpu_threads=1,
            )
        if profile == "demo":
            return cls(
                steps=150,
                batch_size=32,
                val_every=25,
                input_size=64,
                eval_batch_size=100,
                cpu_threads=1,
            )
        return cls()

    def grid(self) -> list[tuple[float, float, float]]:
        """The grid-search points in sweep order.

        Returns:
            ``(lr, w, weight_decay = w / lr)`` triples.
        """
        return [(lr, w, w / lr) for lr in self.grid_lrs for w in self.grid_ws]

    def finder_lrs(self) -> list[float]:
        """The LR finder's learning rates, ascending (12 significant digits)."""
        grid = np.logspace(
            math.log10(self.lr_finder_min), math.log10(self.lr_finder_max), self.lr_finder_points
        )
        return [float(f"{lr:.12g}") for lr in grid]

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-friendly dict (tuples as lists).

        Returns:
            Field name -> value.
        """
        out = asdict(self)
        for name, value in out.items():
            if isinstance(value, tuple):
                out[name] = list(value)
        return out
