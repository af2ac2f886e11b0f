"""Numeric precision of feature extraction: float32 unless a check allows less.

Features and evaluation outputs are float32 by default, on every device. On CUDA that
also means no TF32: PyTorch lets cuDNN convolutions round their inputs to TF32 (10-bit
mantissa) by default, which is lower precision under another name.

Lower precision (``bf16`` or ``fp16`` autocast) is used only where
:func:`check_lower_precision` finds the features sound on a probe batch: no all-zero or
non-finite row, and every row within :data:`MAX_RELATIVE_ERROR` of its float32 value
(relative L2 error). A failed check falls back to float32 and says why; the requested
and the effective precision both go into the cache file's meta and the result record,
and the requested one into the cache key.

Why the check exists: a random-initialisation MobileNetV2 evaluated with its init
batch-norm statistics has pooled features of about 1e-9; in float16 (smallest subnormal
6e-8) every one of them becomes exactly 0, so every protocol would score chance.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch

PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_PRECISION = "fp32"
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Largest relative L2 error of a feature row against float32 that lower precision may
# have: bf16 keeps 8 mantissa bits (about 0.4% per rounding), fp16 keeps 11.
MAX_RELATIVE_ERROR = {"bf16": 0.1, "fp16": 0.02}


@dataclass(frozen=True)
class PrecisionDecision:
    """The precision a feature extraction ran in, and why.

    Attributes:
        requested: The precision asked for.
        effective: The precision used.
        reason: Why ``effective`` differs from ``requested`` ("" when it does not).
        relative_error: Largest relative L2 row error of the probe batch against float32
            (None when no check ran).
        zero_rows: All-zero rows of the probe batch in the requested precision.
        nonfinite_rows: Rows with NaN or inf in the requested precision.
    """

    requested: str
    effective: str
    reason: str = ""
    relative_error: float | None = None
    zero_rows: int = 0
    nonfinite_rows: int = 0

    def to_dict(self) -> dict[str, object]:
        """The decision as plain values (cache meta, records)."""
        return asdict(self)


def check_precision_name(precision: str) -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS`.

    Raises:
        ValueError: naming the known precisions.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    return precision


@contextlib.contextmanager
def compute_precision(device: torch.device, precision: str) -> Iterator[None]:
    """The context a forward pass runs in: strict float32, or autocast to bf16 / fp16.

    In float32 on CUDA, TF32 is switched off for matmuls and cuDNN convolutions for the
    duration of the block (and restored afterwards).
    """
    check_precision_name(precision)
    if precision != "fp32":
        with torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision]):
            yield
        return
    if device.type != "cuda":
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


def degenerate_rows(features: np.ndarray) -> tuple[int, int]:
    """Count the all-zero rows and the rows holding NaN or inf of a feature matrix.

    Returns:
        ``(zero_rows, nonfinite_rows)``.
    """
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] == 0:
        return 0, 0
    nonfinite = ~np.all(np.isfinite(features), axis=1)
    zero = np.all(features == 0, axis=1) & ~nonfinite
    return int(zero.sum()), int(nonfinite.sum())


def check_lower_precision(
    forward: Callable[[torch.Tensor], torch.Tensor],
    probe: torch.Tensor,
    device: torch.device,
    precision: str,
) -> PrecisionDecision:
    """Decide whether ``precision`` may replace float32 for a model, on one probe batch.

    Args:
        forward: The model's forward pass (batch -> features).
        probe: A batch of model inputs on ``device``.
        device: Where the model runs.
        precision: The precision asked for.

    Returns:
        The decision: ``effective`` is ``precision`` when the probe's features have no
        all-zero or non-finite row and a relative error within
        :data:`MAX_RELATIVE_ERROR`, else ``fp32`` with the reason.
    """
    check_precision_name(precision)
    if precision == "fp32":
        return PrecisionDecision("fp32", "fp32")
    with torch.inference_mode():
        with compute_precision(device, "fp32"):
            reference = _rows(forward(probe))
        with compute_precision(device, precision):
            lower = _rows(forward(probe))
    zero, nonfinite = degenerate_rows(lower)
    ref_norm = np.linalg.norm(reference, axis=1)
    err_norm = np.linalg.norm(np.nan_to_num(lower, nan=np.inf) - reference, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(ref_norm > 0, err_norm / ref_norm, np.where(err_norm > 0, np.inf, 0))
    worst = float(np.max(relative)) if relative.size else 0.0
    bound = MAX_RELATIVE_ERROR[precision]
    problems = []
    if zero:
        problems.append(f"{zero} all-zero feature row(s)")
    if nonfinite:
        problems.append(f"{nonfinite} row(s) with NaN or inf")
    if not worst <= bound:
        problems.append(f"relative error {worst:.3g} against float32 exceeds {bound:g}")
    if problems:
        reason = f"{precision} rejected on a probe batch of {len(reference)}: " + "; ".join(
            problems
        )
        return PrecisionDecision(precision, "fp32", reason, worst, zero, nonfinite)
    return PrecisionDecision(precision, precision, "", worst, zero, nonfinite)


def _rows(out: torch.Tensor) -> np.ndarray:
    if out.ndim != 2:
        out = torch.flatten(out, 1)
    return out.float().cpu().numpy().astype(np.float64)
