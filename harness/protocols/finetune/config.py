"""Settings of the fine-tuning protocol: the config dataclass and its per-profile values."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from harness.config.profiles import check_profile
from harness.protocols.base import without_defaults
from harness.protocols.finetune.config_checks import config_problems
from harness.protocols.finetune.sweep_axes import normalize_sweep, sweep_points

VERSION = 2

#: The fields ``smoke`` and ``demo`` change (``paper`` is the defaults).
_PROFILE_SCALE: dict[str, dict[str, Any]] = {
    "smoke": {"steps": 30, "batch_size": 16, "val_every": 10, "eval_batch_size": 64},
    "demo": {"steps": 150, "batch_size": 32, "val_every": 25, "eval_batch_size": 100},
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
        optimizer: "sgd" (with ``momentum`` and ``nesterov``), "adam" (torch's
            defaults: betas (0.9, 0.999), eps 1e-8) or "keras-adam" (Keras' Adam: eps 1e-7
            added to the uncorrected ``sqrt(v)``, :mod:`.keras`).
        schedule: "cosine" (to 0 at ``steps``), "cosine-epoch" (the cosine held constant
            within each epoch: ``CosineAnnealingLR(T_max=epochs)`` stepped once an epoch,
            as DovileDo/transferability-in-medical-imaging), "constant", "plateau" (torch's
            ReduceLROnPlateau, stepped at every validation on the validation quantity) or
            "warmup-plateau" (feature-reuse's LinearWarmup stepped every iteration, then
            ReduceLROnPlateau stepped once an epoch, :mod:`.warmup`), "warmup-cosine"
            (medical_transformers': the same warmup, then CosineAnnealingLR to
            ``cosine_floor`` stepped every iteration) or "step" (VTAB's:
            linear warmup from 0 over ``warmup_steps``, then the lr times ``decay_factor``
            after each ``decay_at`` fraction of the run, :func:`.warmup.step_lr_factor`).
        decay_at: Fractions of the run after which the "step" schedule decays.
        decay_factor: The "step" schedule's decay factor.
        warmup_steps: The "step" schedule's linear warmup from 0 (0: none).
        warmup_iters: LinearWarmup's iterations ("warmup-plateau", "warmup-cosine").
        warmup_start: LinearWarmup's starting lr (its ``eta_min``).
        cosine_floor: The "warmup-cosine" schedule's ``eta_min``.
        plateau_factor: ReduceLROnPlateau's factor.
        plateau_patience: ReduceLROnPlateau's patience (validations).
        plateau_threshold: ReduceLROnPlateau's relative threshold.
        sampling: "stream" (an endless seeded stream: every batch is full), "epochs"
            (reshuffled epochs whose last batch is partial, as a DataLoader without
            ``drop_last``) or "drop_last" (reshuffled epochs of ``n // batch_size`` full
            batches, the rest of each epoch's permutation left out).
        epochs: Run length in epochs (epoch sampling); None: ``steps`` steps.
        val_unit: "steps" or "epochs": the unit of ``val_every``.
        val_every: Steps (or epochs) between validations (and checkpoints); in epochs it
            may be a fraction (feature-reuse's 0.5: every ``int(0.5 * epoch)`` steps).
        val_round: Round validation scores to this many decimals before selection and
            the plateau schedule use them (feature-reuse's metrics are rounded to 3).
        patience: Validations without an improvement before stopping early; None trains
            all steps (the best validation weights are still kept).
        select_on: Validation quantity: "metric" (the primary metric, higher is better)
            or "loss" (the mean validation loss, lower is better).
        tie_improves: A validation equal to the best counts as an improvement (resets
            patience, becomes the best); medxfer: only strictly better does.
        restore_best: Score the best validation weights; False scores the last ones.
        input_size: Training and evaluation image size; None uses the profile's, then the
            model card's.
        crop_scale: RandomResizedCrop area range (torchvision's default (0.08, 1));
            feature-reuse's (0.8, 1.2) goes above 1.
        rotation: RandomRotation degrees after the crop and flip (0: none), drawn from
            ``[-rotation, rotation]``; from ``[0, rotation]`` under
            ``augmentation="transferability"``; Keras' ``rotation_range`` under
            ``augmentation="keras"``.
        augmentation: Training augmentation: "crop-flip" (RandomResizedCrop + flip),
            "feature-reuse" (square resize, RandomResizedCrop, both flips, colour jitter,
            grayscale), "keras" (Keras ``ImageDataGenerator``'s random affine, :mod:`.keras`),
            "transferability" (flip, RandomResizedCrop, one-sided rotation, then random
            sharpness, autocontrast and equalize, :func:`.augment.transferability_transform`)
            or "none" (train on the eval transform, VTAB).
        hflip: Random horizontal flips under ``augmentation="keras"``.
        shift: Keras ``width_shift_range`` / ``height_shift_range`` (fractions).
        shear: Keras ``shear_range`` (degrees).
        zoom: Keras ``zoom_range`` (zoom in [1 - zoom, 1 + zoom] per axis).
        head_dropout: Dropout before the linear head (the Keras peers' 0.5).
        head_init: The new head's weights: "default" (torch's ``nn.Linear``) or "zeros"
            (weights and bias, VTAB's ``tf.zeros_initializer``).
        primary_metric: The metric validation selects on and the record reports as
            primary; None: the dataset card's (VTAB: "accuracy", top-1).
        grid_search: Run ssl-transfer's lr x w grid, then retrain on train+val.
        grid_score: "best": every grid point validates with early stopping and scores its
            best validation, the retrain runs to that point's best step; "last": every
            point trains all ``steps`` without validating and is scored on its last
            weights, the retrain runs all ``steps``.
        grid_lrs: Learning rates of the grid.
        grid_ws: ``w`` values of the grid; weight decay is ``w / lr``.
        grid_steps: Run lengths of the grid (innermost; each point's schedule spans its
            own length, VTAB's sweep); empty: every point runs ``steps``.
        sweep: A full-run sweep (DovileDo/transferability-in-medical-imaging's grid):
            ``batch_size``, ``lr``, ``momentum`` and ``weight_decay`` -> values (a mapping
            or its items; empty: off). Every point is a whole run of this config with its
            early stopping and restore; the selected run is scored on test, nothing is
            retrained (:mod:`.sweep`). ``nesterov`` holds at points with momentum > 0.
        sweep_select: "val_loss": the lowest validation loss of each run's scored weights,
            the mean of per-batch mean losses over batches of the point's batch size (the
            study's ``my_test``); "metric": the highest validation score.
        freeze_steps: Leading steps on a frozen backbone (0: none).
        lr_finder: Choose the lr with feature-reuse's LR finder first.
        lr_finder_min: Smallest lr tried.
        lr_finder_max: Largest lr tried.
        lr_finder_points: Number of log-spaced lrs.
        lr_finder_steps: Steps of each short run.
        lr_finder_epochs: Epochs of each short run instead of steps (feature-reuse: 5).
        lr_finder_select: "val" (validation metric), "loss" (training loss) or
            "val_loss" (feature-reuse: the lowest validation loss, the mean of per-batch
            mean losses over batches of ``eval_batch_size``).
        freeze_stage: revisiting-transfer's ``--freeze``: a separate first stage trains
            the head on the frozen backbone (fresh optimizer, ``freeze_lr``, early stop on
            validation accuracy with ``freeze_patience``, last weights kept), then the
            main run trains everything with a fresh optimizer from those weights.
        freeze_lr: Learning rate of the freeze stage.
        freeze_patience: Validations without a strictly better accuracy before the freeze
            stage stops.
        folds: Stratified k-fold cross-validation over the pooled splits (cats-scans):
            one fine-tune per fold, each scored on its held-out fold; 0: off.
        fold_seed: ``random_state`` of the shuffled ``StratifiedKFold``.
        auc_average: Multiclass ROC AUC of the k-fold score: "macro" or "weighted" OvR.
        layer_decay: Layer-wise lr decay factor (timm models), or None.
        grad_clip: Max gradient norm, or None (no clipping).
        class_weighting: "none", "inverse_frequency" (weighted CE / BCE pos_weight) or
            "balanced" (Keras ``class_weight`` from sklearn's "balanced" weights: each
            sample's loss times its class weight, averaged over the batch; k-fold only).
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
        val_drop_last: Each validation scores a fresh random ``eval_batch_size * (n //
            eval_batch_size)`` of the validation images, as a shuffled loader with
            ``drop_last`` does (medical_transformers, :mod:`.validation`).
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
    val_every: int | float = 200
    val_round: int | None = None
    patience: int | None = 3
    select_on: str = "metric"
    tie_improves: bool = False
    restore_best: bool = True
    input_size: int | None = None
    crop_scale: tuple[float, float] = (0.08, 1.0)
    rotation: float = 0.0
    augmentation: str = "crop-flip"
    hflip: bool = True
    shift: float = 0.0
    shear: float = 0.0
    zoom: float = 0.0
    head_dropout: float = 0.0
    head_init: str = "default"
    primary_metric: str | None = None
    decay_at: tuple[float, ...] = (0.3, 0.6, 0.9)
    decay_factor: float = 0.1
    warmup_steps: int = 0
    warmup_iters: int = 1000
    warmup_start: float = 1e-8
    cosine_floor: float = 0.0
    grid_search: bool = False
    grid_score: str = "best"
    grid_lrs: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4)
    grid_ws: tuple[float, ...] = (0.0, 1e-6, 1e-5, 1e-4, 1e-3)
    grid_steps: tuple[int, ...] = ()
    sweep: tuple[tuple[str, tuple[float, ...]], ...] = ()
    sweep_select: str = "val_loss"
    freeze_steps: int = 0
    lr_finder: bool = False
    lr_finder_min: float = 1e-5
    lr_finder_max: float = 1e-2
    lr_finder_points: int = 25
    lr_finder_steps: int = 100
    lr_finder_epochs: int | None = None
    lr_finder_select: str = "val"
    freeze_stage: bool = False
    freeze_lr: float = 1e-3
    freeze_patience: int = 10
    folds: int = 0
    fold_seed: int = 2
    auc_average: str = "macro"
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
    val_drop_last: bool = False
    num_workers: int = 0
    cpu_threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("crop_scale", "grid_lrs", "grid_ws", "decay_at"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        object.__setattr__(self, "grid_steps", tuple(int(v) for v in self.grid_steps))
        object.__setattr__(self, "sweep", normalize_sweep(self.sweep))
        if self.eval_labels is not None:
            object.__setattr__(self, "eval_labels", tuple(int(v) for v in self.eval_labels))
        problems = config_problems(self)
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
        if profile == "paper":
            return cls()
        return cls(**_PROFILE_SCALE[profile], input_size=64, cpu_threads=1)

    def grid(self) -> list[tuple[float, float, float]]:
        """The grid-search points in sweep order.

        Returns:
            ``(lr, w, weight_decay = w / lr)`` triples.
        """
        return [(lr, w, w / lr) for lr in self.grid_lrs for w in self.grid_ws]

    def grid_points(self) -> list[tuple[float, float, float, int]]:
        """The sweep in order, ``(lr, w, weight_decay, run steps)``: :meth:`grid` with each
        of ``grid_steps`` innermost (``steps`` without them)."""
        lengths = self.grid_steps or (self.steps,)
        return [(lr, w, wd, n) for lr, w, wd in self.grid() for n in lengths]

    def sweep_points(self) -> list[dict[str, float]]:
        """The points of :attr:`sweep` in order (the last field varies fastest)."""
        return sweep_points(self.sweep)

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
        out = without_defaults(asdict(self), {"cosine_floor": 0.0, "val_drop_last": False})
        for name, value in out.items():
            if isinstance(value, tuple):
                out[name] = list(value)
        out["sweep"] = {field: list(values) for field, values in self.sweep}
        return out
