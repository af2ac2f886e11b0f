"""The axes of a full-run hyperparameter sweep (``FinetuneConfig.sweep``) and their points.

A sweep names config fields and the values each takes. It is kept as a tuple of
``(field, values)`` pairs in :data:`SWEEP_FIELDS` order, whatever order it was given in,
so that two spellings of one sweep make one config (and one training key).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from typing import Any

#: The fields a sweep may vary, in the order its points are enumerated (the last varies
#: fastest): DovileDo/transferability-in-medical-imaging's batch size x lr x momentum x wd.
SWEEP_FIELDS = ("batch_size", "lr", "momentum", "weight_decay")

Sweep = tuple[tuple[str, tuple[float, ...]], ...]


def normalize_sweep(sweep: Mapping[str, Iterable[Any]] | Iterable[Any]) -> Sweep:
    """The sweep as ``(field, values)`` pairs in :data:`SWEEP_FIELDS` order.

    Args:
        sweep: A mapping field -> values (a suite's YAML), or its items.

    Returns:
        The pairs; ``batch_size`` values as ints, the others as floats. An unknown field is
        kept (after the known ones) for :func:`sweep_problems` to name.
    """
    pairs = dict(sweep.items() if isinstance(sweep, Mapping) else sweep)
    order = [f for f in SWEEP_FIELDS if f in pairs] + sorted(set(pairs) - set(SWEEP_FIELDS))
    cast = {"batch_size": int}
    return tuple((name, tuple(cast.get(name, float)(v) for v in pairs[name])) for name in order)


def sweep_problems(sweep: Sweep) -> list[str]:
    """What is wrong with a normalized sweep (empty when it is valid or off)."""
    problems = []
    for name, values in sweep:
        if name not in SWEEP_FIELDS:
            problems.append(f"sweep field {name!r} is not one of {SWEEP_FIELDS}")
        elif not values or len(set(values)) != len(values):
            problems.append(f"sweep {name} needs distinct values, got {list(values)}")
        elif any(not math.isfinite(v) for v in values):
            problems.append(f"sweep {name} values must be finite: {list(values)}")
        elif name in ("batch_size", "lr") and min(values) <= 0:
            problems.append(f"sweep {name} values must be > 0: {list(values)}")
        elif min(values) < 0:
            problems.append(f"sweep {name} values must be >= 0: {list(values)}")
    return problems


def sweep_points(sweep: Sweep) -> list[dict[str, float]]:
    """Every point of the sweep in order (the last field varies fastest)."""
    names = [name for name, _ in sweep]
    return [
        dict(zip(names, combo, strict=True)) for combo in itertools.product(*dict(sweep).values())
    ]
