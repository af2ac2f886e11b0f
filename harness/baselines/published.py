"""The tolerance rule for published numbers (``published-v1``).

A published number and a faithful reproduction of it are two draws, each with its own
sampling error: the study's (its published interval) and ours (the record's own interval,
or a stand-in). Their difference has standard error ``sqrt(se_published^2 +
se_reproduction^2)``, so the rule is::

    tolerance = max(floor, z * sqrt(se_published^2 + se_reproduction^2))

rounded up to 4 decimals, with ``z = 3``: a faithful reproduction fails with probability
``P(|Z| > 3) = 0.27%``. Using the published 95% interval alone as the tolerance (the rule
before this one) fails a faithful reproduction about 17% of the time when both errors are
equal: ``P(|Z| > 1.96 / sqrt(2)) = 0.166``.

``se_published`` from the entry's ``source.interval``:

* ``{kind: ci95, value: h}``: ``h / 1.96``;
* ``{kind: std, value: s, runs: n}``: the standard error of a mean of ``n`` runs,
  ``s / sqrt(n)``, times ``sqrt(pi / 2)`` when ``statistic: median`` (the median of
  normal draws is that much noisier than their mean); ``s`` itself without ``runs``;
* no interval: 0.

``se_reproduction``, at check time, from the record, the first that applies:

1. the record's own 95% interval, ``<metric>_ci95`` (few-shot): ``h / 1.96``;
2. the published per-run ``std`` (one reproduction is one run of a seed-dependent
   protocol, so it spreads like one of the study's runs);
3. ``mean_cosine`` (multi-view invariance): ``details.cosine_std / sqrt(n_pairs)``;
4. a proportion (``accuracy``, ``mean_per_class_accuracy``) on a fixed test set: the
   binomial standard error ``sqrt(p (1 - p) * r)`` with ``p`` the published value and ``r``
   the metric's resolution as recorded (``1/N`` for accuracy; ``1/(K n_min)`` for mean
   per-class accuracy, which treats every class as the smallest and so errs wide), else
   ``r = 1 / dataset.n["test"]``;
5. none: 0 (the floor alone then bounds it from below).

The stored ``tolerance`` of a published entry is the floor: the check never uses less.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from harness.config.vocabulary import interval_name

Z_95 = 1.96
PROPORTION_METRICS = ("accuracy", "mean_per_class_accuracy")
MEDIAN_EFFICIENCY = math.sqrt(math.pi / 2.0)


class PublishedIntervalError(ValueError):
    """A published entry's ``source.interval`` is malformed."""


def two_sided_rate(z: float) -> float:
    """``P(|Z| > z)`` for a standard normal ``Z``."""
    return math.erfc(z / math.sqrt(2.0))


def published_se(interval: dict[str, Any] | None) -> tuple[float, str]:
    """The standard error of a published number, from its ``source.interval``.

    Args:
        interval: ``{kind: ci95, value}``, ``{kind: std, value, runs?, statistic?}`` or None.

    Returns:
        The standard error and how it was derived.

    Raises:
        PublishedIntervalError: on an unknown kind or a non-positive value or run count.
    """
    if not interval:
        return 0.0, "none published"
    kind, value = interval.get("kind"), interval.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise PublishedIntervalError(f"interval value must be a number >= 0, got {value!r}")
    if kind == "ci95":
        return value / Z_95, f"ci95 {value:g} / 1.96"
    if kind != "std":
        raise PublishedIntervalError(f"interval kind must be ci95 or std, got {kind!r}")
    runs = interval.get("runs")
    if runs is None:
        return float(value), f"std {value:g} (runs not given)"
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise PublishedIntervalError(f"interval runs must be a positive integer, got {runs!r}")
    se = value / math.sqrt(runs)
    if interval.get("statistic") == "median":
        return se * MEDIAN_EFFICIENCY, f"std {value:g} / sqrt({runs}) * sqrt(pi/2) (median)"
    return se, f"std {value:g} / sqrt({runs})"


def reproduction_se(
    record: dict[str, Any], metric: str, value: float, interval: dict[str, Any] | None
) -> tuple[float, str]:
    """The standard error of a reproduction's value (see the module docstring for the order).

    Args:
        record: The result record (as a dict).
        metric: The checked metric.
        value: The published value (used for the binomial stand-in).
        interval: The entry's published interval, if any.

    Returns:
        The standard error and where it came from.
    """
    metrics = record.get("metrics") or {}
    details = record.get("details") or {}
    own = metrics.get(interval_name(metric))
    if _finite(own):
        return own / Z_95, f"record {interval_name(metric)} {own:.4g} / 1.96"
    if interval and interval.get("kind") == "std" and _finite(interval.get("value")):
        return float(interval["value"]), f"published per-run std {interval['value']:g}"
    if metric == "mean_cosine":
        std, pairs = details.get("cosine_std"), metrics.get("n_pairs")
        if _finite(std) and _finite(pairs) and pairs > 0:
            return std / math.sqrt(pairs), f"cosine_std {std:.4g} / sqrt({int(pairs)} pairs)"
    if metric in PROPORTION_METRICS and 0.0 <= value <= 1.0:
        notes = details.get("metric_notes") or {}
        resolution = (notes.get("resolution") or {}).get(metric)
        if _finite(resolution) and resolution > 0:
            return math.sqrt(value * (1 - value) * resolution), "binomial, resolution"
        n_test = ((record.get("dataset") or {}).get("n") or {}).get("test")
        if _finite(n_test) and n_test > 0:
            return math.sqrt(value * (1 - value) / n_test), f"binomial, n_test {int(n_test)}"
    return 0.0, "none available"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class PublishedRule:
    """The published-value tolerance rule (versioned: change it, bump it)."""

    version: int = 1
    z: float = 3.0
    floor: float = 0.005

    @property
    def name(self) -> str:
        """``published-v<version>``."""
        return f"published-v{self.version}"

    @property
    def false_failure_rate(self) -> float:
        """How often a faithful reproduction fails: ``P(|Z| > z)``."""
        return two_sided_rate(self.z)

    def describe(self) -> str:
        """One line for expected files, docs and messages."""
        return (
            f"{self.name}: max({self.floor:g}, {self.z:g} * sqrt(se_published^2 + "
            f"se_reproduction^2)), false-failure rate {self.false_failure_rate:.2%}"
        )

    def combine(self, se_published: float, se_reproduction: float, floor: float) -> float:
        """``max(floor, z * sqrt(se_published² + se_reproduction²))``, rounded up to 4 decimals."""
        raw = max(floor, self.z * math.hypot(se_published, se_reproduction))
        return math.ceil(raw * 1e4 - 1e-9) / 1e4

    def entry_components(self, interval: dict[str, Any] | None) -> dict[str, Any]:
        """The components written into a published entry (the reproduction's come at check time)."""
        se, how = published_se(interval)
        return {
            "rule": self.describe(),
            "z": self.z,
            "false_failure_rate": round(self.false_failure_rate, 6),
            "se_published": round(se, 6),
            "se_published_from": how,
            "se_reproduction": "at check time: the record's own interval or a stand-in",
            "floor": self.floor,
        }

    def tolerance(
        self,
        record: dict[str, Any],
        metric: str,
        value: float,
        interval: dict[str, Any] | None,
        floor: float | None = None,
    ) -> tuple[float, str]:
        """The tolerance of a published value for one record.

        Args:
            record: The result record.
            metric: The checked metric.
            value: The published value.
            interval: The entry's ``source.interval``.
            floor: The entry's stored tolerance (the rule's floor when None).

        Returns:
            The tolerance and a note naming both standard errors.
        """
        se_pub, pub_how = published_se(interval)
        se_rep, rep_how = reproduction_se(record, metric, value, interval)
        floor = self.floor if floor is None else floor
        tolerance = self.combine(se_pub, se_rep, floor)
        note = (
            f"{self.name} (z {self.z:g}, false-failure rate {self.false_failure_rate:.2%}): "
            f"se_published {se_pub:.4f} [{pub_how}], se_reproduction {se_rep:.4f} "
            f"[{rep_how}], floor {floor:g}"
        )
        return tolerance, note


PUBLISHED_RULE = PublishedRule()
