"""Automatic feature-extraction batch size: the largest batch that fits the device's memory.

``auto`` resolves to a number once per (model, input size, device, precision) and process:

- **CUDA**: the forward (normalisation included, as extraction runs it) is probed at
  ``maximum`` images, then at half as many after each ``torch.cuda.OutOfMemoryError``
  (the allocator's cache is emptied between tries), down to 1. The first size that runs
  is used: a power of two when ``maximum`` is one.
- **CPU**: from a memory budget: ``CPU_FRACTION`` of the available memory (psutil when
  installed, else ``MemAvailable`` from ``/proc/meminfo``, else ``os.sysconf``) divided by
  an estimate of one image's activation memory, rounded down to a power of two and clipped
  to ``[1, maximum]``. The estimate is one probe forward on 2 images: the bytes of every
  leaf module's output plus the input, per image. Inference frees an activation once its
  consumers have run, so this sum is an upper bound and the choice errs on the small side.
  On CPU ``maximum`` defaults to ``CPU_DEFAULT_MAX`` (16), not ``DEFAULT_MAX``: a CPU
  forward is fastest at 16-32 images, where a layer's activations still sit near the
  caches, and slows as batches grow (ResNet-50 at 224 px, EfficientNet-Lite0 and
  MobileNetV2 at 160 px: docs/performance.md), so filling memory only costs speed.

Either way the batch is then capped at the smallest power of two that holds every image
of the split, so a small split is not padded up to a large batch.

Features do not depend on the batch size beyond float rounding (every forward has one
shape, see :mod:`harness.features`). The feature cache key holds the *setting* (``auto``
or the number), not the resolved size, so a cache hit never loads the model to probe;
the size that ran is recorded in the feature file's meta (``batch_size``).

Where it is set: ``MEDXFER_BATCH_SIZE`` (``auto`` or a number) overrides the profile's
extraction batch size (64 by default, unchanged); ``MEDXFER_BATCH_MAX`` sets ``maximum``
(default 256 on CUDA, 16 on CPU).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from harness.config.cards import Preprocessing
from harness.precision import compute_precision

AUTO = "auto"
BATCH_ENV = "MEDXFER_BATCH_SIZE"
MAX_ENV = "MEDXFER_BATCH_MAX"
DEFAULT_MAX = 256
#: The largest batch ``auto`` picks on CPU unless ``MEDXFER_BATCH_MAX`` says otherwise.
CPU_DEFAULT_MAX = 16
#: Share of the available memory the CPU rule lets one extraction's activations use.
CPU_FRACTION = 0.25
LOG = logging.getLogger("medxfer.features")

BatchSize = int | str
_CHOSEN: dict[tuple[str, int, str, str], int] = {}


def check_batch_size(value: object, where: str = "batch size") -> BatchSize:
    """Return ``value`` as a batch-size setting: a positive int or ``"auto"``.

    Raises:
        ValueError: naming ``where`` and the value.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        if text.isdigit() and int(text) >= 1:
            return int(text)
    elif isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(f"{where}: expected a positive integer or 'auto', got {value!r}")


def batch_size_setting(default: BatchSize) -> BatchSize:
    """The extraction batch size: ``$MEDXFER_BATCH_SIZE`` when set, else ``default``.

    Raises:
        ValueError: when the variable holds neither a positive integer nor ``auto``.
    """
    value = os.environ.get(BATCH_ENV, "").strip()
    return check_batch_size(value, BATCH_ENV) if value else check_batch_size(default)


def max_batch_size(device_type: str = "cuda") -> int:
    """The largest batch ``auto`` tries on a device type.

    ``$MEDXFER_BATCH_MAX`` when set, else ``CPU_DEFAULT_MAX`` on CPU and ``DEFAULT_MAX``
    elsewhere.

    Raises:
        ValueError: when the variable holds no positive integer.
    """
    value = os.environ.get(MAX_ENV, "").strip()
    if not value:
        return CPU_DEFAULT_MAX if device_type == "cpu" else DEFAULT_MAX
    size = check_batch_size(value, MAX_ENV)
    if size == AUTO:
        raise ValueError(f"{MAX_ENV}: expected a positive integer, got {value!r}")
    return int(size)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception is the device running out of memory."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def largest_fitting(
    forward: Callable[[int], None], start: int, after_failure: Callable[[], None] = lambda: None
) -> int:
    """The first of ``start, start // 2, ..., 1`` for which ``forward(size)`` runs.

    Args:
        forward: runs one probe batch of the given size; raises on out of memory.
        start: the largest size tried.
        after_failure: called after each out-of-memory failure (e.g. empty the cache).

    Raises:
        torch.cuda.OutOfMemoryError: when even one image does not fit.
        Exception: whatever else ``forward`` raises, unchanged.
    """
    size = max(1, int(start))
    while True:
        try:
            forward(size)
            return size
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            after_failure()
            if size == 1:
                raise
            size //= 2


def _probe_input(size: int, pre: Preprocessing, device: torch.device) -> torch.Tensor:
    from harness.data.decoded import normalise_batch

    blank = torch.zeros((size, pre.input_size, pre.input_size, 3), dtype=torch.uint8)
    return normalise_batch(blank, pre, device)


def cuda_batch_size(
    module: torch.nn.Module, pre: Preprocessing, device: torch.device, precision: str, maximum: int
) -> int:
    """The largest batch (``maximum`` halved until it fits) whose forward runs on ``device``."""

    def forward(size: int) -> None:
        with torch.inference_mode(), compute_precision(device, precision):
            module(_probe_input(size, pre, device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def empty() -> None:
        if device.type == "cuda":
            torch.cuda.empty_cache()

    try:
        return largest_fitting(forward, maximum, empty)
    finally:
        empty()


def activation_bytes(
    module: torch.nn.Module, pre: Preprocessing, device: torch.device, precision: str
) -> int:
    """Estimated activation memory of one image: every leaf module's output plus the input.

    Measured with one forward on 2 images (forward hooks on the leaf modules).
    """
    probe = 2
    total = [0]

    def hook(_module: torch.nn.Module, _inputs: object, output: object) -> None:
        tensors = output if isinstance(output, (tuple, list)) else [output]
        total[0] += sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))

    leaves = [m for m in module.modules() if not any(True for _ in m.children())]
    handles = [leaf.register_forward_hook(hook) for leaf in leaves]
    try:
        with torch.inference_mode(), compute_precision(device, precision):
            batch = _probe_input(probe, pre, device)
            total[0] += batch.numel() * batch.element_size()
            module(batch)
    finally:
        for handle in handles:
            handle.remove()
    return max(1, total[0] // probe)


def available_memory() -> int:
    """Bytes of memory available to new allocations (psutil, /proc/meminfo, or sysconf)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def cpu_batch_size(per_image: int, maximum: int, budget: int | None = None) -> int:
    """The CPU rule: ``budget // per_image`` rounded down to a power of two, in ``[1, maximum]``.

    Args:
        per_image: estimated activation bytes of one image (:func:`activation_bytes`).
        maximum: the largest batch allowed.
        budget: bytes the activations may use (default: ``CPU_FRACTION`` of
            :func:`available_memory`).
    """
    if budget is None:
        budget = int(available_memory() * CPU_FRACTION)
    fits = max(1, budget // max(1, per_image))
    return max(1, min(int(maximum), 1 << (fits.bit_length() - 1)))


def resolve_batch_size(
    setting: BatchSize,
    module: torch.nn.Module,
    pre: Preprocessing,
    device: torch.device,
    precision: str = "fp32",
    n_images: int | None = None,
    name: str | None = None,
    maximum: int | None = None,
) -> int:
    """The batch size to extract with: ``setting`` itself, or the ``auto`` choice.

    Args:
        setting: a positive int (returned as it is) or ``"auto"``.
        module: the backbone (moved to ``device`` and put in eval mode for the probe).
        pre: its preprocessing (the input size).
        device: where extraction runs.
        precision: the compute precision extraction runs in.
        n_images: images in the split: the choice is capped at the smallest power of two
            that holds them all.
        name: the model's name in the memo (default: the module's class and object id).
        maximum: the largest batch tried (default :func:`max_batch_size` of the device type).

    Returns:
        A positive batch size.
    """
    setting = check_batch_size(setting)
    if setting != AUTO:
        return int(setting)
    maximum = max_batch_size(device.type) if maximum is None else maximum
    memo = (
        name or f"{type(module).__qualname__}@{id(module)}",
        pre.input_size,
        str(device),
        precision,
    )
    if memo not in _CHOSEN:
        module = module.to(device).to(memory_format=torch.channels_last).eval()
        if device.type == "cuda":
            size = cuda_batch_size(module, pre, device, precision, maximum)
        else:
            size = cpu_batch_size(activation_bytes(module, pre, device, precision), maximum)
        LOG.info(
            "auto batch size for %s at %d px on %s (%s): %d",
            memo[0],
            memo[1],
            device,
            precision,
            size,
        )
        _CHOSEN[memo] = size
    size = _CHOSEN[memo]
    if n_images:
        size = min(size, 1 << max(0, int(n_images) - 1).bit_length())
    return size


def clear_memo() -> None:
    """Forget every ``auto`` choice made in this process (tests, or after freeing memory)."""
    _CHOSEN.clear()
