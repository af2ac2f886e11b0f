"""The step loop of the fine-tuning protocol: one training run, resumable.

:func:`train_run` trains a backbone plus a new linear head for a number of SGD steps,
validates every ``val_every`` steps, keeps a deep copy of the best weights, stops early
when the validation score has not strictly improved for ``patience`` validations, and
writes a checkpoint at every validation from which an interrupted run resumes exactly
(same batches, crops, RNG streams, optimizer and scheduler state).

Conventions (the peers differ on these; ``docs/protocols.md``):

* Only a strictly higher validation score is an improvement; a tie is not, and NaN never
  is. SSL_medicalimaging counted a tie as an improvement (``RunSpec.tie_improves``).
* The best weights are cloned (``tensor.to("cpu", copy=True)``), not referenced.
  SSL_medicalimaging kept ``model.state_dict()`` itself, which aliases the live tensors,
  so "restoring the best state" restored the last one (``RunSpec.restore_best=False``
  reproduces it: early stopping still acts, the last weights are returned).
* Optimizer SGD, Adam or Keras' Adam; schedule cosine, constant, ReduceLROnPlateau stepped
  at every validation (BenchmarkTransferLearning steps it once an epoch on the validation
  loss), or feature-reuse's per-iteration warmup + once-an-epoch plateau (:mod:`.warmup`).
* A run may start from given weights (``init_state``: revisiting-transfer's second stage
  continues from its freeze stage) and put dropout before the head (``head_dropout``).
* Validations during a freeze phase do not count towards ``patience`` (a frozen backbone
  must get the chance to be unfrozen), but they can still set the best weights.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from harness.config.cards import Preprocessing
from harness.protocols.finetune.data import train_loader
from harness.protocols.finetune.network import Classifier, clone_state
from harness.protocols.finetune.optim import Scheduler, make_optimizer, make_scheduler
from harness.protocols.finetune.runtime import Runtime, capture_rng, restore_rng
from harness.protocols.finetune.spec import RunOutcome, RunSpec, StepInfo
from harness.protocols.finetune.warmup import WarmupPlateau

if TYPE_CHECKING:
    from harness.cache.runs import Checkpoint


@dataclass
class _State:
    step: int = 0
    best_score: float = math.nan
    best_step: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    bad_evals: int = 0
    val_curve: list[list[float]] = field(default_factory=list)
    loss_curve: list[list[float]] = field(default_factory=list)
    stopped_early: bool = False
    diverged: bool = False
    finished: bool = False
    train_seconds: float = 0.0


def train_run(
    spec: RunSpec,
    backbone: nn.Module,
    feature_dim: int,
    num_outputs: int,
    images: np.ndarray,
    targets: np.ndarray,
    preprocessing: Preprocessing,
    criterion: nn.Module,
    runtime: Runtime,
    validate: Callable[[nn.Module], float] | None = None,
    checkpoint: Checkpoint | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    progress: bool = True,
    init_state: dict[str, torch.Tensor] | None = None,
) -> RunOutcome:
    """Train one run: a copy of ``backbone`` plus a new head, resuming from ``checkpoint``.

    The head is initialised under ``torch.manual_seed(spec.seed)``, so every run of a sweep
    starts from the same weights and sees the same sample order. Call it inside
    :func:`seeded` to leave the caller's RNGs alone.

    Args:
        spec: The run's settings.
        backbone: Pretrained feature extractor (copied, never modified).
        feature_dim: Its feature width.
        num_outputs: Head outputs.
        images: uint8 training images.
        targets: Training targets (int64 ids, or float32 rows for multilabel).
        preprocessing: The model's preprocessing (input size, mean/std, interpolation).
        criterion: Loss on float32 logits.
        runtime: Device, precision, memory format.
        validate: Maps the model (in eval mode) to a validation score, higher is better.
            Required when ``spec.select_best``.
        checkpoint: The run's checkpoint (from the case's training store), resumed from and
            written at every validation; one saved for another run is ignored. None: none.
        callback: Called after every step (tests use it to interrupt or inspect).
        progress: Show a tqdm bar (on a terminal).
        init_state: Weights (of a classifier with the same head) to start from instead of
            the backbone and a fresh head.

    Returns:
        The outcome; its model holds the best weights when ``spec.select_best``. A run
        whose loss became non-finite stops there with ``diverged`` set (callers decide:
        a sweep scores it NaN, a final run without a best copy raises).
    """
    if spec.select_best and validate is None:
        raise ValueError(f"run {spec.name}: select_best needs a validate function")
    torch.manual_seed(spec.seed)
    model = Classifier(copy.deepcopy(backbone), feature_dim, num_outputs, spec.head_init)
    if spec.head_dropout:
        model.head = nn.Sequential(nn.Dropout(spec.head_dropout), model.head)
    if init_state is not None:
        model.load_state_dict(init_state)
    model.requires_grad_(True)
    model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(spec, model)
    scheduler = make_scheduler(spec, optimizer)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.precision == "fp16")
    state = _State()

    resumed_from = 0
    payload = checkpoint.load() if checkpoint is not None else None
    if payload is not None:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        scaler.load_state_dict(payload["scaler"])
        restore_rng(payload["rng"], runtime.device)
        state = _State(**{k: payload[k] for k in _State.__dataclass_fields__})
        resumed_from = state.step

    if not state.finished:
        _loop(
            spec, model, optimizer, scheduler, scaler, state, images, targets, preprocessing,
            criterion, runtime, validate, checkpoint, callback, progress,
        )  # fmt: skip

    restored = False
    keep_best = spec.select_best and spec.restore_best
    if keep_best and state.best_state is not None:
        model.load_state_dict(state.best_state)
        restored = True
    elif keep_best and not state.diverged:
        warnings.warn(
            f"fine-tune run {spec.name}: no finite validation score; keeping the last weights",
            RuntimeWarning,
            stacklevel=2,
        )
    model.requires_grad_(True)
    model.eval()
    return RunOutcome(
        model=model,
        best_score=state.best_score,
        best_step=state.best_step if keep_best else state.step,
        steps_done=state.step,
        stopped_early=state.stopped_early,
        diverged=state.diverged,
        restored_best=restored,
        val_curve=state.val_curve,
        loss_curve=state.loss_curve,
        resumed_from_step=resumed_from,
        best_state=state.best_state,
        train_seconds=state.train_seconds,
        lr_scales=[float(g["lr_scale"]) for g in optimizer.param_groups],
        val_score=_scored_val(spec, state, keep_best),
        lrs=[float(g["lr"]) for g in optimizer.param_groups],
    )


def _scored_val(spec: RunSpec, state: _State, keep_best: bool) -> float:
    """The validation score of the returned weights (NaN when they were not validated)."""
    if keep_best:
        return state.best_score
    if state.val_curve and state.val_curve[-1][0] == state.step:
        return state.val_curve[-1][1]
    return math.nan


def _loop(
    spec: RunSpec,
    model: Classifier,
    optimizer: torch.optim.Optimizer,
    scheduler: Scheduler,
    scaler: torch.amp.GradScaler,
    state: _State,
    images: np.ndarray,
    targets: np.ndarray,
    preprocessing: Preprocessing,
    criterion: nn.Module,
    runtime: Runtime,
    validate: Callable[[nn.Module], float] | None,
    checkpoint: Checkpoint | None,
    callback: Callable[[StepInfo], None] | None,
    progress: bool,
) -> None:
    loader = train_loader(
        images,
        targets,
        preprocessing,
        spec.crop_scale,
        spec.batch_size,
        spec.seed,
        start=state.step * spec.batch_size,
        num_workers=spec.num_workers,
        pin_memory=runtime.device.type == "cuda",
        sampling=spec.sampling,
        rotation=spec.rotation,
        augmentation=spec.augmentation,
        keras=(spec.hflip, spec.shift, spec.shear, spec.zoom),
        soft_range=spec.soft_range,
    )
    batches = iter(loader)
    window: list[float] = []
    last_val = state.val_curve[-1][1] if state.val_curve else math.nan
    bar = tqdm(
        total=spec.steps,
        initial=state.step,
        desc=f"finetune {spec.name}",
        disable=None if progress else True,
        leave=False,
        dynamic_ncols=True,
    )
    started = time.perf_counter()
    try:
        while state.step < spec.steps:
            frozen = spec.head_only or state.step < spec.freeze_steps
            _set_phase(model, frozen)
            x, y = next(batches)
            x = runtime.inputs(x)
            y = y.to(runtime.device, non_blocking=True)
            with runtime.autocast():
                logits = model(x)
            loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if spec.grad_clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(
                    [p for p in model.parameters() if p.grad is not None], spec.grad_clip
                )
            scaler.step(optimizer)
            scaler.update()
            if spec.schedule != "plateau":
                scheduler.step()
            state.step += 1
            value = float(loss.item())
            window.append(value)
            state.diverged = not math.isfinite(value)

            if state.step % spec.val_every == 0 or state.step == spec.steps or state.diverged:
                state.loss_curve.append([state.step, float(np.mean(window))])
                window = []
                if spec.select_best and not state.diverged:
                    assert validate is not None
                    last_val = _validate(spec, model, validate, state, frozen)
                    if isinstance(scheduler, WarmupPlateau):
                        scheduler.observe(last_val if spec.select_on == "metric" else -last_val)
                    elif spec.schedule == "plateau":
                        # the metric in mode max, the loss (the negated score) in mode min
                        scheduler.step(last_val if spec.select_on == "metric" else -last_val)
                state.finished = state.diverged or state.stopped_early or state.step >= spec.steps
                state.train_seconds += time.perf_counter() - started
                started = time.perf_counter()
                if checkpoint is not None:
                    _save_checkpoint(
                        checkpoint, spec, model, optimizer, scheduler, scaler, state, runtime
                    )
            bar.update(1)
            if state.step % 10 == 0 or state.finished:
                bar.set_postfix(loss=f"{value:.4f}", val=f"{last_val:.4f}", refresh=False)
            if callback is not None:
                callback(StepInfo(spec.name, state.step, value, model))
            if state.finished:
                break
    finally:
        bar.close()
    state.train_seconds += time.perf_counter() - started


def _set_phase(model: Classifier, frozen: bool) -> None:
    """Freeze phase: backbone without gradients and in eval mode (BN statistics fixed)."""
    model.train()
    model.backbone.requires_grad_(not frozen)
    if frozen:
        model.backbone.eval()


def _validate(
    spec: RunSpec,
    model: Classifier,
    validate: Callable[[nn.Module], float],
    state: _State,
    frozen: bool,
) -> float:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            score = float(validate(model))
    finally:
        model.train(was_training)
    if spec.val_round is not None:
        score = round(score, spec.val_round)
    state.val_curve.append([state.step, score])
    # Strictly better only (a tie too under tie_improves); NaN never is.
    better = score >= state.best_score if spec.tie_improves else score > state.best_score
    if not math.isnan(score) and (math.isnan(state.best_score) or better):
        state.best_score = score
        state.best_step = state.step
        if spec.restore_best:
            state.best_state = clone_state(model)
        state.bad_evals = 0
    elif not frozen or spec.head_only:
        state.bad_evals += 1
        if spec.patience is not None and state.bad_evals >= spec.patience:
            state.stopped_early = True
    return score


def _save_checkpoint(
    checkpoint: Checkpoint,
    spec: RunSpec,
    model: Classifier,
    optimizer: torch.optim.Optimizer,
    scheduler: Scheduler,
    scaler: torch.amp.GradScaler,
    state: _State,
    runtime: Runtime,
) -> None:
    checkpoint.save(
        {
            "run": spec.name,
            "sampler_position": state.step * spec.batch_size,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": capture_rng(runtime.device),
            **{name: getattr(state, name) for name in _State.__dataclass_fields__},
        }
    )
