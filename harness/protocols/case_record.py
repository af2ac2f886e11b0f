"""The result record of one case: what it measured and how it computed it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.features import device_class
from harness.protocols.base import ProtocolResult
from harness.protocols.registry import DEFAULT_PRESET
from harness.records.results import DatasetInfo, ModelInfo, ProtocolInfo, ResultRecord
from harness.records.runid import session_run_id
from harness.zoo.sources import weights_file_sha256

if TYPE_CHECKING:
    from harness.protocols.case import CaseRun


def build_record(
    run: CaseRun,
    result: ProtocolResult,
    version: int,
    config: dict[str, Any],
    primary_metric: str | None = None,
) -> ResultRecord:
    """The case's result record (not written).

    Args:
        run: The case (its data, backbone, timings and feature-cache outcomes).
        result: What the protocol returned.
        version: The protocol's version.
        config: The protocol's settings, as recorded.
        primary_metric: The protocol's own measure; ``None`` takes the dataset's metric.
    """
    case = run.case
    model = ModelInfo.from_card(case.model)
    model.weights_sha256 = run.backbone().weights_id
    model.weights_file_sha256 = weights_file_sha256(case.model)
    sizes = {name: len(split.labels) for name, split in run.splits().items()}
    timings = {key: round(value, 4) for key, value in run.timings.items()}
    timings["total_s"] = round(time.perf_counter() - run.started, 4)
    primary = result.primary_metric or primary_metric or case.dataset.primary_metric
    return ResultRecord(
        case_id=case.case_id,
        suite=case.suite,
        suite_version=case.suite_version,
        profile=case.profile.name,
        model=model,
        dataset=DatasetInfo.from_card(case.dataset, sizes),
        protocol=ProtocolInfo(
            case.protocol,
            version,
            config,
            run.preset.identity() if run.preset else {"name": DEFAULT_PRESET},
        ),
        metrics=result.metrics,
        primary_metric=primary,
        primary_value=result.metrics[primary],
        hyperparameters=result.hyperparameters,
        details={
            **result.details,
            "profile": case.profile.to_dict(),
            **numerics(run),
        },
        seeds={"protocol": int(config.get("seed", 0)), "subset": case.profile.seed},
        feature_cache=dict(run.feature_cache),
        timings=timings,
        run_id=session_run_id(),
    )


def numerics(run: CaseRun) -> dict[str, Any]:
    """How the case computed: device class, precision, batch-norm rule, feature scale.

    Args:
        run: The case.
    """
    out: dict[str, Any] = {"device_class": device_class(run.device)}
    if run.feature_precision:
        effective = sorted({p.get("effective", "?") for p in run.feature_precision.values()})
        out["precision"] = {
            "requested": run.precision,
            "effective": effective[0] if len(effective) == 1 else effective,
            "per_split": run.feature_precision,
        }
        out["batchnorm_stats"] = run.backbone().batchnorm
    if run.feature_scale:
        out["feature_scale"] = run.feature_scale
    return out


def feature_scale(features: np.ndarray) -> dict[str, Any]:
    """Summarise the scale of a feature matrix, so a record shows degenerate features.

    Returns:
        ``abs_mean``, ``max_abs``, ``median_dim_std`` (per-dimension std across images),
        ``near_constant_dims`` (std at most 1e-5 of the dimension's largest magnitude:
        variation at rounding level), ``zero_rows`` and ``dim``.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.size == 0:
        return {"dim": int(x.shape[-1]) if x.ndim else 0}
    std = x.std(axis=0)
    peak = np.abs(x).max(axis=0)
    return {
        "abs_mean": float(np.abs(x).mean()),
        "max_abs": float(peak.max()),
        "median_dim_std": float(np.median(std)),
        "near_constant_dims": int(np.sum(std <= 1e-5 * peak)),
        "zero_rows": int(np.sum(np.all(x == 0, axis=1))),
        "dim": int(x.shape[1]),
    }
