"""Where and how a fine-tuning run computes: device, precision, threads, RNGs, determinism."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


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
