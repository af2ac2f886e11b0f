"""The tolerance rule: how far a fresh run may land from its expected value.

What varies between two users' runs of one case (``docs/reproducibility.md``):

* the seed, when a user or a library change draws other episodes, subsets or batches:
  the spread over calibration seeds, each in its own process;
* the last bits of the features, which depend on the CPU's kernels (oneDNN, ATen and
  BLAS pick code paths by instruction set): the spread over calibration runs in fresh
  processes with fresh caches, some under other kernel choices
  (:data:`harness.baselines.calibrate.KERNEL_VARIANTS`);
* the protocol's own sampling interval (few-shot's 95% CI over episodes);
* the metric's resolution: what one test image's prediction can change
  (:func:`harness.protocols.metrics.metric_resolution`, e.g. ``1/N`` for accuracy). Last-bit
  differences can flip an image that sits on a decision boundary on any machine, and a
  handful of calibration runs cannot prove that none does.

Rule version 2: ``tolerance = max(k * sqrt(seed_std^2 + extraction_std^2),
observed, resolution, interval, floor)``, where ``observed`` is the largest distance of
any calibration run from the expected value (so every run that calibrated passes),
rounded up to 4 decimals. Every component is written into the expected entry. Version 1 was
``max(k * seed_std, interval, floor)`` over seeds that shared one feature cache, so
extraction-level variation was never seen.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class ToleranceRule:
    """How a tolerance is derived from repeated runs (versioned: change it, bump it)."""

    version: int = 2
    k: float = 3.0
    floor: float = 0.005

    def tolerance(
        self,
        seed_std: float,
        interval: float | None = None,
        extraction_std: float = 0.0,
        observed: float = 0.0,
        resolution: float = 0.0,
    ) -> float:
        """Return ``max(k * sqrt(seed_std² + extraction_std²), observed, resolution, interval, floor)``.

        Rounded up to 4 decimals.
        """
        candidates = [
            self.k * math.hypot(seed_std, extraction_std),
            observed,
            resolution,
            self.floor,
        ]
        if interval is not None and math.isfinite(interval):
            candidates.append(interval)
        return math.ceil(max(candidates) * 1e4 - 1e-9) / 1e4

    def components(
        self,
        seed_values: Sequence[float],
        extraction_values: Sequence[float],
        interval: float | None,
        expected: float,
        resolution: float = 0.0,
    ) -> dict[str, Any]:
        """Measure every component of a tolerance from calibration runs.

        Args:
            seed_values: One value per seed (each run in a fresh process).
            extraction_values: Values of one seed from runs with fresh feature caches,
                the seed run among them (empty when none ran).
            interval: The protocol's own interval, if it has one.
            expected: The expected value the tolerance is centred on.
            resolution: What one test image's prediction can change in the metric.

        Returns:
            The components and the resulting ``tolerance``.
        """
        seed_std = _std(seed_values)
        extraction_std = _std(extraction_values)
        observed = max(abs(v - expected) for v in (*seed_values, *extraction_values))
        return {
            "rule": self.describe(),
            "k": self.k,
            "seeds": len(seed_values),
            "seed_std": round(seed_std, 6),
            "extraction_runs": len(extraction_values),
            "extraction_std": round(extraction_std, 6),
            "observed_max_deviation": round(observed, 6),
            "resolution": round(resolution, 6),
            "interval": None if interval is None else round(interval, 6),
            "floor": self.floor,
            "tolerance": self.tolerance(seed_std, interval, extraction_std, observed, resolution),
        }

    def describe(self) -> str:
        """One line for expected files and reports."""
        return (
            f"tolerance-v{self.version}: max({self.k:g} * sqrt(seed_std^2 + extraction_std^2), "
            f"largest calibration deviation, one test image's worth, protocol interval, "
            f"{self.floor:g})"
        )


TOLERANCE_RULE = ToleranceRule()
