"""The step loop of the fine-tuning protocol: one training run, resumable.

:func:`train_run` trains a backbone plus a new linear head for a number of SGD steps,
validates every ``val_every`` steps, keeps a deep copy of the best weights, stops early
when the validation score has not strictly improved for ``patience`` validations, and
writes a checkpoint at every validation from which an interrupted run resumes exactly
(same batches, crops, RNG streams, optimizer and scheduler state).

Conventions (peers in ``shared/reference/peers.md`` sections 2.3 and 6):

* Only a strictly higher validation score is an improvement; a tie is not, and NaN never
  is. SSL_medicalimaging counted a tie as an improvement.
* The best weights are cloned (``tensor.to("cpu", copy=True)``), not referenced.
  SSL_medicalimaging kept ``model.state_dict()`` itself, which aliases the live tensors,
  so "restoring the best state" restored the last one.
* Validations during a freeze phase do not count towards ``patience`` (a frozen backbone
  must get the chance to be unfrozen), but they can still set the best weights.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import random
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from harness.cache.atomic import atomic_path
from harness.config.cards import Preprocessing
from harness.precision import compute_precision
from harness.protocols.finetune_data import EvalSet, train_loader

CHECKPOINT_FORMAT = 1


class Classifier(nn.Module):
    """A backbone producing pooled features followed by a new linear head."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_outputs: int) -> None:
        """Create the classifier.

        Args:
            backbone: Module mapping (B, 3, S, S) images to (B, feature_dim) features.
            feature_dim: Width of the backbone's features.
            num_outputs: Logits of the head (classes, or labels for multilabel tasks).
        """
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


@dataclass(frozen=True)
class Runtime:
    """Where and how a run computes.

    Attributes:
        device: The torch device.
        precision: "fp32", "bf16" (autocast) or "fp16" (autocast + GradScaler).
        channels_last: Model and inputs in channels-last memory format.
        cpu_threads: torch intra-op threads on CPU (None: torch's setting, unchanged).
    """

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    cpu_threads: int | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of a forward pass (a no-op in fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Move a batch of images to the device in the run's memory format."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def describe(self) -> dict[str, Any]:
        """The runtime as plain values (records, checkpoint keys)."""
        threads = self.cpu_threads or torch.get_num_threads()
        return {
            "device": self.device.type,
            "precision": self.precision,
            "eval_precision": "fp32",
            "channels_last": self.channels_last,
            "cpu_threads": threads if self.device.type == "cpu" else None,
        }

    @contextlib.contextmanager
    def threads(self) -> Iterator[None]:
        """Apply ``cpu_threads`` for the duration of the block (CPU only)."""
        if self.device.type != "cpu" or self.cpu_threads is None:
            yield
            return
        previous = torch.get_num_threads()
        torch.set_num_threads(self.cpu_threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


def resolve_runtime(
    device: str, amp: str, channels_last: bool, cpu_threads: int | None = None
) -> Runtime:
    """Pick the device and precision of a run.

    Args:
        device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
        amp: "auto" (bf16 on CUDA when supported, else fp16; fp32 on CPU), "none", "bf16"
            or "fp16" (CUDA only).
        channels_last: Use channels-last memory format.
        cpu_threads: torch threads on CPU, or None to leave torch's setting.

    Returns:
        The runtime.

    Raises:
        ValueError: On an unknown setting, CUDA requested but unavailable, or fp16 on CPU.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"fine-tune: unknown device {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("fine-tune: device 'cuda' requested but CUDA is not available")
    if amp == "auto":
        if dev.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "fp32"
    elif amp == "none":
        precision = "fp32"
    elif amp in ("bf16", "fp16"):
        precision = amp
    else:
        raise ValueError(f"fine-tune: unknown amp setting {amp!r}")
    if precision == "fp16" and dev.type != "cuda":
        raise ValueError("fine-tune: fp16 mixed precision needs CUDA; use amp='bf16' or 'none'")
    return Runtime(dev, precision, channels_last, cpu_threads)


@dataclass(frozen=True)
class RunSpec:
    """One training run.

    Attributes:
        name: Name of the run (progress bar, checkpoint file, records).
        lr: Base learning rate (the head's; backbone groups scale it under layer decay).
        weight_decay: SGD weight decay, applied to every parameter.
        steps: Steps to train (fewer when early stopping triggers).
        horizon: Length of the cosine schedule (>= steps; a retrain that stops at the
            selected step keeps the selected run's learning-rate trajectory).
        schedule: "cosine" (to 0 at ``horizon``) or "constant".
        batch_size: Samples per step.
        val_every: Steps between validations (and checkpoints).
        patience: Validations without strict improvement before stopping; None trains
            all ``steps``.
        select_best: Validate and restore the best weights; False trains blind and keeps
            the last weights (checkpoints are still written every ``val_every`` steps).
        freeze_steps: Leading steps that train only the head (backbone frozen, eval mode).
        momentum: SGD momentum.
        nesterov: Nesterov momentum.
        grad_clip: Max global gradient norm, or None.
        layer_decay: Layer-wise learning-rate decay factor, or None.
        crop_scale: RandomResizedCrop area range.
        seed: Seed of the head initialisation, sample order and augmentation.
        num_workers: DataLoader workers.
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
    freeze_steps: int = 0
    momentum: float = 0.9
    nesterov: bool = True
    grad_clip: float | None = None
    layer_decay: float | None = None
    crop_scale: tuple[float, float] = (0.08, 1.0)
    seed: int = 0
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.horizon < self.steps:
            raise ValueError(f"run {self.name}: need 1 <= steps <= horizon")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"run {self.name}: unknown schedule {self.schedule!r}")

    def lr_factor(self, step: int) -> float:
        """Multiplier of the base learning rate after ``step`` optimizer steps."""
        if self.schedule == "constant":
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
        }


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


def clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A deep copy of a module's state dict on the CPU (never aliases live tensors).

    Args:
        module: Any module.

    Returns:
        Name -> cloned tensor.
    """
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def state_sha256(module: nn.Module) -> str:
    """sha256 over a module's state-dict names and tensor bytes (identical weights <=> equal).

    Args:
        module: Any module.

    Returns:
        Hex digest.
    """
    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        digest.update(key.encode())
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def param_groups(
    model: Classifier, lr: float, weight_decay: float, layer_decay: float | None
) -> list[dict[str, Any]]:
    """Optimizer parameter groups, with layer-wise learning-rate decay when asked.

    With ``layer_decay`` the backbone is split into timm's layer groups
    (``timm.optim.param_groups_layer_decay``, driven by the model's ``group_matcher``):
    group ``i`` of ``L`` gets ``lr * layer_decay ** (L - 1 - i)`` and the new head gets
    ``lr``. Weight decay stays uniform over all parameters (timm would exempt biases and
    norms) so that the decay is the only change against the plain setting.

    Args:
        model: The classifier.
        lr: Base learning rate (the head's).
        weight_decay: Weight decay of every group.
        layer_decay: Decay factor in (0, 1], or None for one group.

    Returns:
        Groups with ``params``, ``lr``, ``weight_decay`` and ``lr_scale``.

    Raises:
        ValueError: With ``layer_decay`` on a backbone that is not a timm model with a
            ``group_matcher`` (torchvision backbones have no layer grouping).
    """
    if layer_decay is None:
        params = list(model.parameters())
        return [{"params": params, "lr": lr, "weight_decay": weight_decay, "lr_scale": 1.0}]
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must lie in (0, 1], got {layer_decay}")
    backbone = model.backbone
    if not callable(getattr(backbone, "group_matcher", None)):
        raise ValueError(
            f"layer-wise learning-rate decay needs a timm backbone with group_matcher(); "
            f"{type(backbone).__name__} has none (torchvision architectures are not "
            "supported: set layer_decay=None)"
        )
    from timm.optim import param_groups_layer_decay

    groups = param_groups_layer_decay(
        backbone, weight_decay=weight_decay, layer_decay=layer_decay, weight_decay_exclude_1d=False
    )
    # timm returns a dict-ordered list; order by depth (ascending scale) for readable records.
    groups = sorted(groups, key=lambda g: g["lr_scale"])
    out = [
        {
            "params": g["params"],
            "lr": lr * g["lr_scale"],
            "weight_decay": weight_decay,
            "lr_scale": g["lr_scale"],
        }
        for g in groups
    ]
    out.append(
        {
            "params": list(model.head.parameters()),
            "lr": lr,
            "weight_decay": weight_decay,
            "lr_scale": 1.0,
        }
    )
    return out


def make_criterion(task: str, class_weights: np.ndarray | None, device: torch.device) -> nn.Module:
    """The training loss: cross-entropy, or sigmoid + BCE for multilabel tasks.

    Args:
        task: Task type.
        class_weights: CE class weights, BCE ``pos_weight``, or None.
        device: Where the weights live.

    Returns:
        A loss module taking float32 logits and targets.
    """
    weight = None
    if class_weights is not None:
        weight = torch.as_tensor(class_weights, dtype=torch.float32, device=device)
    if task == "multilabel":
        return nn.BCEWithLogitsLoss(pos_weight=weight)
    return nn.CrossEntropyLoss(weight=weight)


@torch.inference_mode()
def predict(
    model: nn.Module, data: EvalSet, task: str, runtime: Runtime, batch_size: int
) -> np.ndarray:
    """Predicted probabilities of a split: softmax, or per-label sigmoid for multilabel.

    Always in float32 (no autocast, no TF32), whatever precision training used: bf16
    logits tie many test scores and move ROC AUC.

    Args:
        model: The classifier (left in the training mode it had).
        data: The split, with the eval transform.
        task: Task type.
        runtime: Device and memory format (its training precision is not used).
        batch_size: Images per forward pass.

    Returns:
        float64 (N, C).
    """
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for x in data.batches(batch_size):
            with compute_precision(runtime.device, "fp32"):
                logits = model(runtime.inputs(x))
            logits = logits.float()
            probs = torch.sigmoid(logits) if task == "multilabel" else logits.softmax(dim=1)
            chunks.append(probs.cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks).double().numpy()


def capture_rng(device: torch.device) -> dict[str, Any]:
    """The global RNG states as tensors and plain values (loadable with weights_only)."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    """Set the global RNG states captured by :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate(
        (python_state["version"], tuple(python_state["internal"]), python_state["gauss"])
    )
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch, numpy and python's RNGs; restore the caller's states afterwards.

    Args:
        seed: The seed.
        device: The run's device (its CUDA RNG is forked too).
    """
    devices = [device] if device.type == "cuda" else []
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


@contextlib.contextmanager
def deterministic(enabled: bool, device: torch.device) -> Iterator[None]:
    """Deterministic kernels where cheap, restoring the previous global settings.

    CPU: ``torch.use_deterministic_algorithms(True, warn_only=True)``. CUDA: cuDNN
    deterministic and no benchmark autotuning (full determinism on CUDA would also need
    ``CUBLAS_WORKSPACE_CONFIG`` and deterministic scatter kernels; not forced here).

    Args:
        enabled: Whether to switch it on.
        device: The run's device.
    """
    if not enabled:
        yield
        return
    if device.type == "cpu":
        previous = (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        )
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        return
    cudnn = torch.backends.cudnn
    previous_cudnn = (cudnn.deterministic, cudnn.benchmark)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = previous_cudnn


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
    checkpoint: Path | None = None,
    checkpoint_key: str = "",
    callback: Callable[[StepInfo], None] | None = None,
    progress: bool = True,
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
        checkpoint: File to resume from and write at every validation, or None.
        checkpoint_key: Identity of the run; a checkpoint with another key is ignored.
        callback: Called after every step (tests use it to interrupt or inspect).
        progress: Show a tqdm bar (on a terminal).

    Returns:
        The outcome; its model holds the best weights when ``spec.select_best``. A run
        whose loss became non-finite stops there with ``diverged`` set (callers decide:
        a sweep scores it NaN, a final run without a best copy raises).
    """
    if spec.select_best and validate is None:
        raise ValueError(f"run {spec.name}: select_best needs a validate function")
    torch.manual_seed(spec.seed)
    model = Classifier(copy.deepcopy(backbone), feature_dim, num_outputs)
    model.requires_grad_(True)
    model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        param_groups(model, spec.lr, spec.weight_decay, spec.layer_decay),
        lr=spec.lr,
        momentum=spec.momentum,
        nesterov=spec.nesterov,
        weight_decay=spec.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, spec.lr_factor)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.precision == "fp16")
    state = _State()

    resumed_from = 0
    payload = _load_checkpoint(checkpoint, checkpoint_key)
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
            criterion, runtime, validate, checkpoint, checkpoint_key, callback, progress,
        )  # fmt: skip

    restored = False
    if spec.select_best and state.best_state is not None:
        model.load_state_dict(state.best_state)
        restored = True
    elif spec.select_best and not state.diverged:
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
        best_step=state.best_step if spec.select_best else state.step,
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
    )


def _loop(
    spec: RunSpec,
    model: Classifier,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    state: _State,
    images: np.ndarray,
    targets: np.ndarray,
    preprocessing: Preprocessing,
    criterion: nn.Module,
    runtime: Runtime,
    validate: Callable[[nn.Module], float] | None,
    checkpoint: Path | None,
    checkpoint_key: str,
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
            frozen = state.step < spec.freeze_steps
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
                state.finished = state.diverged or state.stopped_early or state.step >= spec.steps
                state.train_seconds += time.perf_counter() - started
                started = time.perf_counter()
                if checkpoint is not None:
                    _save_checkpoint(
                        checkpoint, checkpoint_key, spec, model, optimizer, scheduler, scaler,
                        state, runtime,
                    )  # fmt: skip
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
    state.val_curve.append([state.step, score])
    # Strictly better only: a tie is not an improvement and NaN never is.
    if not math.isnan(score) and (math.isnan(state.best_score) or score > state.best_score):
        state.best_score = score
        state.best_step = state.step
        state.best_state = clone_state(model)
        state.bad_evals = 0
    elif not frozen:
        state.bad_evals += 1
        if spec.patience is not None and state.bad_evals >= spec.patience:
            state.stopped_early = True
    return score


def _save_checkpoint(
    path: Path,
    key: str,
    spec: RunSpec,
    model: Classifier,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    state: _State,
    runtime: Runtime,
) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "key": key,
        "run": spec.name,
        "sampler_position": state.step * spec.batch_size,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": capture_rng(runtime.device),
        **{name: getattr(state, name) for name in _State.__dataclass_fields__},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_checkpoint(path: Path | None, key: str) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt file must not block the case: start over
        warnings.warn(
            f"fine-tune: ignoring unreadable checkpoint {path}: {exc}", RuntimeWarning, stacklevel=3
        )
        return None
    if payload.get("format") != CHECKPOINT_FORMAT or payload.get("key") != key:
        warnings.warn(
            f"fine-tune: ignoring checkpoint {path} written for another run",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return payload
