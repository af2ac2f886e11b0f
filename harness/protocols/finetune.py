"""Full fine-tuning: the pretrained backbone plus a new linear head, trained end to end.

Follows ssl-transfer / SSL_medicalimaging's ``finetune.py`` (``shared/reference/peers.md``
sections 2.1 and 2.3): SGD with Nesterov momentum 0.9, a cosine schedule over the steps,
5000 steps of batch 64, lr 1e-2 and weight decay 1e-8, RandomResizedCrop + horizontal
flip with the model's own preprocessing, early stopping that validates every 200 steps
with patience 3. Model selection uses the validation split's primary metric; the test
split is scored once, from probabilities (``harness.protocols.metrics``).

Modes (``FinetuneConfig``):

* Default: train on train, keep the best validation weights, score test.
* ``grid_search``: ssl-transfer's grid lr in {1e-1, 1e-2, 1e-3, 1e-4} x w in
  {0, 1e-6, 1e-5, 1e-4, 1e-3} with ``wd = w / lr``, every point trained on train with early
  stopping and scored on val. The best point (strictly highest val score; ties keep the
  earlier point in grid order, NaN never wins) is retrained on train+val for its best
  step count, on the same cosine trajectory (schedule length ``steps``, stopped at the
  selected step), with no validation; its last weights are scored on test.
* ``lr_finder``: feature-reuse's 25-point log grid over 1e-5..1e-2. Each lr gets a short
  run (``lr_finder_steps`` at constant lr, same start weights, same batches) and is scored
  by the validation metric after the run (``lr_finder_select="val"``, default) or by the
  mean training loss over the run's last quarter (``"loss"``, lower is better). Ties go to
  the smaller lr, diverged runs never win. The main run then uses the chosen lr.
* ``freeze_steps``: revisiting-transfer's freeze-then-unfreeze: the first steps train the
  head on a frozen backbone (no gradients, BatchNorm in eval mode), the rest train all.
  The frozen steps are part of ``steps`` and of the one cosine schedule.
* ``layer_decay``: layer-wise lr decay over timm's layer groups (timm models only; a
  torchvision backbone raises a clear ``ValueError``).

Pitfalls fixed (peers.md section 6): the best weights are deep-copied, not referenced;
only a strictly better validation score is an improvement (a tie is not); ROC AUC comes
from probabilities, never from argmax predictions.

Engineering: mixed precision training on CUDA (bf16 autocast, or fp16 + GradScaler) with
validation and test predictions always in float32 (VERSION 2; bf16 logits tied test
scores), channels-last
(default on: oneDNN is also ~1.6x faster with it on CPU for EfficientNet), optional
gradient clipping (default None, as ssl-transfer / SSL_medicalimaging; feature-reuse
clips at 1.0), deterministic seeding (torch, numpy, python; a seeded infinite sampler
whose position is a function of the step), a tqdm bar, and a checkpoint at every
validation so an interrupted case resumes exactly where it stopped. Checkpoints live in
``checkpoint_dir/ft-<key>/`` where the key hashes the case id, the config, the weights
identity, the data, the preprocessing and the runtime; a changed config starts afresh
(stale ``ft-*`` siblings are deleted: ``checkpoint_dir`` belongs to one case), and the
folder is deleted once the case has been scored.

Multilabel tasks train 14-way (say) sigmoid + BCE and score the mean AUROC over
``eval_labels`` (all labels by default), as BenchmarkTransferLearning evaluates CheXpert.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from harness.cache.atomic import write_json
from harness.config.cards import Preprocessing, stable_hash
from harness.data.npz import SplitData
from harness.protocols.base import ProtocolResult, TaskInfo
from harness.protocols.finetune_data import EvalSet, inverse_frequency_weights
from harness.protocols.finetune_loop import (
    Classifier,
    RunOutcome,
    RunSpec,
    Runtime,
    StepInfo,
    deterministic,
    make_criterion,
    predict,
    resolve_runtime,
    seeded,
    state_sha256,
    train_run,
)
from harness.protocols.metrics import (
    check_metric_names,
    compute_metrics,
    compute_metrics_with_notes,
    is_integer_valued,
)
from harness.protocols.registry import register_protocol
from harness.zoo import LoadedModel, build_model

if TYPE_CHECKING:
    from harness.protocols.case import CaseRun

VERSION = 2

_PROFILES = ("smoke", "demo", "paper")
_CLASS_WEIGHTING = ("none", "inverse_frequency")
_AMP = ("auto", "none", "bf16", "fp16")

__all__ = [
    "VERSION",
    "FineTuned",
    "FinetuneConfig",
    "StepInfo",
    "checkpoint_key",
    "fine_tune",
    "run",
    "score",
]


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of the fine-tuning protocol (defaults: the peers' ``paper`` values).

    Attributes:
        steps: Training steps (the cosine schedule's length).
        batch_size: Samples per step.
        lr: Learning rate (the head's, under layer decay).
        weight_decay: SGD weight decay.
        momentum: SGD momentum.
        nesterov: Nesterov momentum.
        schedule: "cosine" (to 0 at ``steps``) or "constant".
        val_every: Steps between validations (and checkpoints).
        patience: Validations without a strictly better score before stopping early;
            None trains all steps (the best validation weights are still kept).
        input_size: Training and evaluation image size; None uses the profile's, then the
            model card's.
        crop_scale: RandomResizedCrop area range (torchvision's default (0.08, 1)).
        grid_search: Run ssl-transfer's lr x w grid, then retrain on train+val.
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
    schedule: str = "cosine"
    val_every: int = 200
    patience: int | None = 3
    input_size: int | None = None
    crop_scale: tuple[float, float] = (0.08, 1.0)
    grid_search: bool = False
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
        if self.schedule not in ("cosine", "constant"):
            problems.append(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
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
        if profile == "paper":
            return cls()
        raise ValueError(f"unknown profile {profile!r}; expected one of {_PROFILES}")

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


def run(
    model: LoadedModel,
    splits: Mapping[str, SplitData],
    task: TaskInfo,
    config: FinetuneConfig,
    preprocessing: Preprocessing,
    checkpoint_dir: Path | None = None,
    case_id: str = "",
    device: str = "auto",
    progress: bool = True,
    callback: Callable[[StepInfo], None] | None = None,
    reuse_completed: bool = True,
) -> ProtocolResult:
    """Fine-tune on train (select on val, or grid search + retrain on train+val), score test.

    A finished case leaves ``ft-<key>.completed.json`` in ``checkpoint_dir`` (the
    result, not the weights). Run again under the same key (case, VERSION, config,
    weights, train/val/test data, preprocessing, task, runtime, torch / timm / numpy
    versions) it resumes at the end: the stored result is returned with
    ``details["reused_completed_run"] = True``. A different seed, config, data or
    library version trains again; ``reuse_completed=False`` always does.

    Args:
        model: The pretrained backbone (copied; the caller's module is not modified).
        splits: "train", "val" and "test" images and labels.
        task: Task type, number of classes and metrics.
        config: Protocol settings.
        preprocessing: The model's preprocessing; ``config.input_size`` overrides its size.
        checkpoint_dir: Folder for resumable checkpoints (one case per folder), or None.
        case_id: Identifies the case in the checkpoint key.
        device: "auto", "cpu" or "cuda".
        progress: Show tqdm bars (on a terminal).
        callback: Called after every training step of every run.
        reuse_completed: Return the stored result of a finished run with the same key.

    Returns:
        ``metrics``: test metrics. ``hyperparameters``: ``lr``, ``weight_decay``, ``steps``
        (steps of the scored weights), ``val_primary`` and, per mode, ``w`` or
        ``lr_finder_lr``. ``details``: curves, sweep tables, ``resumed_from_step``, split
        sizes, class weights, runtime, timings, ``final_weights_sha256``, ``metric_notes``.

    Raises:
        ValueError: On malformed inputs or settings, naming what is at fault.
        FloatingPointError: When training diverges before any usable validation.
    """
    for name in ("train", "val", "test"):
        if name not in splits:
            raise ValueError(f"fine-tune needs a {name!r} split; got {sorted(splits)}")
    done = None
    if checkpoint_dir is not None:
        done = _completed_path(
            Path(checkpoint_dir), case_id, model, splits, task, config, preprocessing, device
        )
        if reuse_completed and done.is_file():
            stored = json.loads(done.read_text(encoding="utf-8"))
            details = {**stored["details"], "reused_completed_run": True}
            return ProtocolResult(stored["metrics"], stored["hyperparameters"], details)
    fitted = fine_tune(
        model,
        splits["train"],
        splits["val"],
        task,
        config,
        preprocessing,
        checkpoint_dir=checkpoint_dir,
        case_id=case_id,
        device=device,
        progress=progress,
        callback=callback,
    )
    started = time.perf_counter()
    metrics, notes, _ = score(fitted, splits["test"], task, config, preprocessing)
    details = dict(fitted.details)
    details["n_test"] = len(splits["test"])
    details["test_seconds"] = time.perf_counter() - started
    details["metric_notes"] = notes
    if checkpoint_dir is not None and done is not None:
        shutil.rmtree(Path(details.pop("checkpoint_path")), ignore_errors=True)
        details["reused_completed_run"] = False
        write_json(
            done,
            {"metrics": metrics, "hyperparameters": fitted.hyperparameters, "details": details},
        )
    else:
        details.pop("checkpoint_path", None)
    return ProtocolResult(metrics=metrics, hyperparameters=fitted.hyperparameters, details=details)


def _completed_path(
    checkpoint_dir: Path,
    case_id: str,
    model: LoadedModel,
    splits: Mapping[str, SplitData],
    task: TaskInfo,
    config: FinetuneConfig,
    preprocessing: Preprocessing,
    device: str,
) -> Path:
    import timm

    pre = _effective_preprocessing(preprocessing, config)
    runtime = resolve_runtime(device, config.amp, config.channels_last, config.cpu_threads)
    key = checkpoint_key(
        case_id, config, model.weights_id, splits["train"], splits["val"], pre, task, runtime
    )
    full = stable_hash(
        {
            "checkpoint_key": key,
            "test": _data_fingerprint(splits["test"]),
            "libraries": [torch.__version__, timm.__version__, np.__version__],
        }
    )
    return checkpoint_dir / f"ft-{full}.completed.json"


def score(
    fitted: FineTuned,
    split: SplitData,
    task: TaskInfo,
    config: FinetuneConfig,
    preprocessing: Preprocessing,
) -> tuple[dict[str, float], dict[str, Any], np.ndarray]:
    """Score a fine-tuned model on a split with all the task's metrics.

    Args:
        fitted: The output of :func:`fine_tune`.
        split: Images and labels to score.
        task: Task type and metrics.
        config: Protocol settings (input size, eval batch size, eval labels).
        preprocessing: The model's preprocessing.

    Returns:
        (metrics, metric notes, probabilities (N, C) over all outputs).
    """
    pre = _effective_preprocessing(preprocessing, config)
    labels = _check_labels("test", np.asarray(split.labels), len(split.images), task)
    with fitted.runtime.threads():
        probabilities = predict(
            fitted.model,
            EvalSet(split.images, pre),
            task.task,
            fitted.runtime,
            config.eval_batch_size,
        )
    columns = _eval_columns(task, config)
    y, p = (labels[:, columns], probabilities[:, columns]) if columns else (labels, probabilities)
    metrics, notes = compute_metrics_with_notes(task.task, y, p, task.metrics)
    return metrics, notes, probabilities


def fine_tune(
    model: LoadedModel,
    train: SplitData,
    val: SplitData,
    task: TaskInfo,
    config: FinetuneConfig,
    preprocessing: Preprocessing,
    checkpoint_dir: Path | None = None,
    case_id: str = "",
    device: str = "auto",
    progress: bool = True,
    callback: Callable[[StepInfo], None] | None = None,
) -> FineTuned:
    """Train (and select) the model of one case without touching the test split.

    Args:
        model: The pretrained backbone.
        train: Training images and labels.
        val: Validation images and labels (selection; part of the retrain in grid search).
        task: Task type, number of classes and metrics.
        config: Protocol settings.
        preprocessing: The model's preprocessing.
        checkpoint_dir: Folder for resumable checkpoints, or None.
        case_id: Identifies the case in the checkpoint key.
        device: "auto", "cpu" or "cuda".
        progress: Show tqdm bars.
        callback: Called after every training step.

    Returns:
        The selected model with hyperparameters and details.
    """
    check_metric_names(task.task, (task.primary_metric, *task.metrics))
    if task.num_classes < 2:
        raise ValueError(f"task needs at least 2 classes, got num_classes={task.num_classes}")
    columns = _eval_columns(task, config)
    y_train = _check_labels("train", np.asarray(train.labels), len(train.images), task)
    y_val = _check_labels("val", np.asarray(val.labels), len(val.images), task)
    _check_images("train", train.images)
    _check_images("val", val.images)
    if train.images.shape[1:] != val.images.shape[1:]:
        raise ValueError(
            f"train and val images differ in shape: {train.images.shape[1:]} vs "
            f"{val.images.shape[1:]}"
        )
    pre = _effective_preprocessing(preprocessing, config)
    runtime = resolve_runtime(device, config.amp, config.channels_last, config.cpu_threads)
    key = checkpoint_key(case_id, config, model.weights_id, train, val, pre, task, runtime)
    store = _Store(Path(checkpoint_dir), key) if checkpoint_dir is not None else None

    weights = None
    if config.class_weighting == "inverse_frequency":
        weights = inverse_frequency_weights(y_train, task.num_classes, task.task)
    criterion = make_criterion(task.task, weights, runtime.device)
    val_set = EvalSet(val.images, pre)

    def validate(net: torch.nn.Module) -> float:
        probs = predict(net, val_set, task.task, runtime, config.eval_batch_size)
        y, p = (y_val[:, columns], probs[:, columns]) if columns else (y_val, probs)
        return compute_metrics(task.task, y, p, (task.primary_metric,))[task.primary_metric]

    ctx = _Context(
        model, task, config, pre, runtime, criterion, validate, store, callback, progress
    )
    with (
        runtime.threads(),
        seeded(config.seed, runtime.device),
        deterministic(config.deterministic, runtime.device),
    ):
        if config.grid_search:
            fitted = _grid_search(ctx, train, val, y_train, y_val)
        else:
            fitted = _select_on_val(ctx, train, y_train)
        weights_sha256 = state_sha256(fitted.model)
    fitted.details.update(
        {
            "n_train": len(train),
            "n_val": len(val),
            "class_weights": None if weights is None else weights.tolist(),
            "loss": "bce" if task.task == "multilabel" else "cross_entropy",
            "eval_labels": columns or None,
            "input_size": pre.input_size,
            "interpolation": pre.interpolation,
            **runtime.describe(),
            "deterministic": config.deterministic,
            "improvement_rule": "strictly greater validation score; ties are not improvements",
            "final_weights_sha256": weights_sha256,
            "checkpoint_key": key,
            "checkpoint_path": None if store is None else str(store.folder),
            "torch_version": torch.__version__,
        }
    )
    return fitted


@dataclass
class _Context:
    model: LoadedModel
    task: TaskInfo
    config: FinetuneConfig
    pre: Preprocessing
    runtime: Runtime
    criterion: torch.nn.Module
    validate: Callable[[torch.nn.Module], float]
    store: _Store | None
    callback: Callable[[StepInfo], None] | None
    progress: bool

    def spec(self, name: str, lr: float, weight_decay: float, **overrides: Any) -> RunSpec:
        c = self.config
        base = RunSpec(
            name=name,
            lr=lr,
            weight_decay=weight_decay,
            steps=c.steps,
            horizon=c.steps,
            schedule=c.schedule,
            batch_size=c.batch_size,
            val_every=c.val_every,
            patience=c.patience,
            select_best=True,
            freeze_steps=c.freeze_steps,
            momentum=c.momentum,
            nesterov=c.nesterov,
            grad_clip=c.grad_clip,
            layer_decay=c.layer_decay,
            crop_scale=c.crop_scale,
            seed=c.seed,
            num_workers=c.num_workers,
        )
        return replace(base, **overrides)

    def train(
        self, spec: RunSpec, images: np.ndarray, targets: np.ndarray, checkpoint: bool = True
    ) -> RunOutcome:
        path = self.store.checkpoint(spec.name) if self.store and checkpoint else None
        run_key = stable_hash({"case": self.store.key if self.store else "", "spec": asdict(spec)})
        return train_run(
            spec,
            self.model.module,
            self.model.feature_dim,
            self.task.num_classes,
            images,
            targets,
            self.pre,
            self.criterion,
            self.runtime,
            validate=self.validate if spec.select_best else None,
            checkpoint=path,
            checkpoint_key=run_key,
            callback=self.callback,
            progress=self.progress,
        )

    def finished_run(
        self, spec: RunSpec, images: np.ndarray, targets: np.ndarray, checkpoint: bool = True
    ) -> dict[str, Any]:
        """Summary of a sweep run, from its done-marker or by training it."""
        if self.store is not None:
            done = self.store.done(spec.name)
            if done is not None:
                return done
        outcome = self.train(spec, images, targets, checkpoint)
        summary = outcome.summary()
        if not spec.select_best:  # LR finder: score once at the end of the short run
            summary["val_score"] = (
                self.validate(outcome.model) if not outcome.diverged else math.nan
            )
        else:
            summary["val_score"] = outcome.best_score
        if self.store is not None:
            self.store.mark_done(spec.name, summary)
        return summary


def _select_on_val(ctx: _Context, train: SplitData, y_train: np.ndarray) -> FineTuned:
    config = ctx.config
    targets = _targets(y_train, ctx.task)
    lr = config.lr
    hyper: dict[str, Any] = {}
    details: dict[str, Any] = {"mode": "train_select_on_val", "fit_split": "train"}
    if config.lr_finder:
        lr, finder = _lr_finder(ctx, train.images, targets)
        hyper["lr_finder_lr"] = lr
        details["mode"] = "lr_finder"
        details["lr_finder"] = finder
    spec = ctx.spec("main", lr, config.weight_decay)
    outcome = ctx.train(spec, train.images, targets)
    _require_usable(outcome, spec)
    hyper.update(
        {
            "lr": lr,
            "weight_decay": config.weight_decay,
            "steps": outcome.best_step,
            "val_primary": outcome.best_score,
        }
    )
    details.update(_outcome_details(outcome))
    details["resumed_from_step"] = outcome.resumed_from_step
    details["resumed_runs"] = {"main": outcome.resumed_from_step}
    details["n_fit"] = len(train)
    details["freeze_steps"] = config.freeze_steps
    details["layer_decay"] = config.layer_decay
    return FineTuned(outcome.model, ctx.runtime, hyper, details)


def _lr_finder(
    ctx: _Context, images: np.ndarray, targets: np.ndarray
) -> tuple[float, dict[str, Any]]:
    config = ctx.config
    steps = config.lr_finder_steps
    lrs = config.finder_lrs()
    scores: list[float] = []
    losses: list[float] = []
    for index, lr in enumerate(lrs):
        spec = ctx.spec(
            f"lrfind{index:02d}",
            lr,
            config.weight_decay,
            steps=steps,
            horizon=steps,
            schedule="constant",
            val_every=max(1, steps // 4),  # loss windows = quarters of the run
            patience=None,
            select_best=False,
            freeze_steps=min(config.freeze_steps, steps - 1),
        )
        summary = ctx.finished_run(spec, images, targets, checkpoint=False)
        last_loss = summary["loss_curve"][-1][1] if summary["loss_curve"] else math.nan
        losses.append(math.nan if summary["diverged"] else last_loss)
        scores.append(summary["val_score"])
    keyed = scores if config.lr_finder_select == "val" else [-v for v in losses]
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


def _grid_search(
    ctx: _Context,
    train: SplitData,
    val: SplitData,
    y_train: np.ndarray,
    y_val: np.ndarray,
) -> FineTuned:
    config = ctx.config
    targets = _targets(y_train, ctx.task)
    table: list[dict[str, Any]] = []
    best = None
    for index, (lr, w, wd) in enumerate(config.grid()):
        summary = ctx.finished_run(ctx.spec(f"grid{index:02d}", lr, wd), train.images, targets)
        if ctx.store is not None:
            ctx.store.checkpoint(f"grid{index:02d}").unlink(missing_ok=True)
        row = {
            "lr": lr,
            "w": w,
            "weight_decay": wd,
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
    targets_fit = _targets(np.concatenate([y_train, y_val]), ctx.task)
    steps = max(1, int(chosen["best_step"]))
    spec = ctx.spec(
        "retrain",
        chosen["lr"],
        chosen["weight_decay"],
        steps=steps,
        horizon=config.steps,
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
        "fit_split": "train+val",
        "grid": table,
        "chosen_index": best,
        "tie_break": "earlier grid point (lr descending as listed, then w ascending)",
        "retrain_horizon": config.steps,
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
    }


def checkpoint_key(
    case_id: str,
    config: FinetuneConfig,
    weights_id: str,
    train: SplitData,
    val: SplitData,
    pre: Preprocessing,
    task: TaskInfo,
    runtime: Runtime,
) -> str:
    """The identity of a case's training: a checkpoint is resumed only under the same key.

    Hashes the case id, protocol VERSION, the full config, the weights identity, the
    train/val data (shapes, labels and a strided sample of images), the preprocessing,
    the task and the runtime (device type, precision, memory format).

    Returns:
        A 16-hex-digit key.
    """
    return stable_hash(
        {
            "case_id": case_id,
            "version": VERSION,
            "config": config.to_dict(),
            "weights_id": weights_id,
            "data": [_data_fingerprint(train), _data_fingerprint(val)],
            "preprocessing": asdict(pre),
            "task": asdict(task),
            "runtime": runtime.describe(),
        }
    )


def _data_fingerprint(split: SplitData) -> str:
    digest = hashlib.sha256()
    images = np.ascontiguousarray(split.images)
    digest.update(str((images.shape, images.dtype.str)).encode())
    digest.update(np.ascontiguousarray(split.labels).tobytes())
    stride = max(1, len(images) // 256)
    digest.update(np.ascontiguousarray(images[::stride]).tobytes())
    return digest.hexdigest()


class _Store:
    """One case's checkpoint folder: ``<checkpoint_dir>/ft-<key>/``."""

    def __init__(self, root: Path, key: str) -> None:
        self.key = key
        self.folder = root / f"ft-{key}"
        if root.exists():
            for stale in root.glob("ft-*"):
                if stale.is_dir() and stale != self.folder:
                    shutil.rmtree(stale, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)

    def checkpoint(self, name: str) -> Path:
        return self.folder / f"{name}.pt"

    def done(self, name: str) -> dict[str, Any] | None:
        path = self.folder / f"{name}.done.json"
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return None

    def mark_done(self, name: str, summary: dict[str, Any]) -> None:
        write_json(self.folder / f"{name}.done.json", summary)


def _effective_preprocessing(pre: Preprocessing, config: FinetuneConfig) -> Preprocessing:
    return pre.with_input_size(config.input_size)


def _eval_columns(task: TaskInfo, config: FinetuneConfig) -> list[int]:
    if config.eval_labels is None:
        return []
    if task.task != "multilabel":
        raise ValueError(
            f"FinetuneConfig.eval_labels applies to multilabel tasks, not {task.task!r}"
        )
    bad = [j for j in config.eval_labels if j >= task.num_classes]
    if bad:
        raise ValueError(
            f"FinetuneConfig.eval_labels {bad} out of range for {task.num_classes} labels"
        )
    return list(config.eval_labels)


def _targets(labels: np.ndarray, task: TaskInfo) -> np.ndarray:
    if task.task == "multilabel":
        return labels.astype(np.float32)
    return labels.astype(np.int64)


def _check_images(name: str, images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise ValueError(f"{name} split: images must be a uint8 array")
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[3] == 3)):
        raise ValueError(f"{name} split: images must be (N, H, W) or (N, H, W, 3): {images.shape}")
    if len(images) == 0:
        raise ValueError(f"{name} split is empty")


def _check_labels(name: str, y: np.ndarray, n: int, task: TaskInfo) -> np.ndarray:
    k = task.num_classes
    if task.task == "multilabel":
        if y.shape != (n, k):
            raise ValueError(
                f"{name} split: multilabel labels must have shape ({n}, {k}): {y.shape}"
            )
        if not np.all((y == 0) | (y == 1)):
            raise ValueError(f"{name} split: multilabel labels must be 0/1")
        return y.astype(np.int64)
    if y.shape != (n,):
        raise ValueError(f"{name} split: labels must have shape ({n},), got {y.shape}")
    if not is_integer_valued(y):
        raise ValueError(f"{name} split: labels must be integer class ids, got {y.dtype}")
    y = y.astype(np.int64)
    if n and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"{name} split: labels must lie in [0, {k}): [{y.min()}, {y.max()}]")
    return y


@register_protocol(
    "finetune",
    version=VERSION,
    marker="full fine-tuning benchmark cases (backbone and a new linear head, end to end)",
    config=FinetuneConfig,
    needs="images",
)
def run_case(case: CaseRun, config: FinetuneConfig) -> ProtocolResult:
    """One fine-tuning case: a fresh copy of the backbone, resumable in the case's folder."""
    size = config.input_size or case.profile.input_size
    return run(
        build_model(case.case.model),
        case.splits(),
        case.task,
        config,
        case.case.model.preprocessing.with_input_size(size),
        checkpoint_dir=case.checkpoint_dir(),
        case_id=case.case.case_id,
        device=case.device,
        reuse_completed=not case.retrain,
    )
