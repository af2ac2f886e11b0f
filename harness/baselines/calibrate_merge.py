"""Calibrations of several machines in one entry (``medxfer calibrate --merge``).

No kernel variant makes a machine compute as one with a wider instruction set does, and
even the variants that narrow it do not reproduce another vendor's libraries bit for bit
(docs/reproducibility.md). So a value calibrated on one machine can fail on another. With
``--merge``, an entry recalibrated on this machine keeps the runs of the machines its
previous version was calibrated on (``source.other_hardware``): they count as further
extraction runs of the tolerance rule, so the tolerance covers every machine calibrated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from harness.baselines.expected import Expectation


def other_machines(previous: Expectation | None, hardware: str) -> list[dict[str, Any]]:
    """The runs of other machines that ``previous`` holds.

    Args:
        previous: The entry being recalibrated, if any.
        hardware: This machine's hardware text (``source.hardware``).

    Returns:
        One dict per other machine: ``hardware``, ``values`` (its seed runs),
        ``kernel_runs`` and ``others`` (the other metrics' values); the previous entry's
        own machine when it is not this one, and the machines it had merged.
    """
    if previous is None or previous.source.get("kind") != "calibration":
        return []
    source = previous.source
    found = [dict(m) for m in source.get("other_hardware", []) if m.get("hardware") != hardware]
    if source.get("hardware") not in (None, hardware):
        found.append(
            {
                "hardware": source["hardware"],
                "values": list(source.get("values", [previous.value])),
                "kernel_runs": dict(source.get("kernel_runs", {})),
                "others": {name: m.value for name, m in previous.others.items()},
            }
        )
    return found


def machine_values(machines: Sequence[dict[str, Any]], metric: str | None = None) -> list[float]:
    """The values the other machines measured: every seed and kernel run of the primary
    metric, or one value per machine of another ``metric``.

    Args:
        machines: As :func:`other_machines` returns them.
        metric: None for the primary metric, else the other metric's name.

    Returns:
        The values, machine by machine.
    """
    if metric is not None:
        return [float(m["others"][metric]) for m in machines if metric in m.get("others", {})]
    values: list[float] = []
    for machine in machines:
        values += [float(v) for v in machine.get("values", [])]
        values += [float(v) for v in machine.get("kernel_runs", {}).values()]
    return values
