"""Shards: a suite's cases split over N independent pytest sessions (``--medxfer-shard i/N``).

Every shard collects the same cases and computes the same assignment, so the shards of
one suite together run every case exactly once, with no coordinator. Cases are assigned in
*units*:

- the frozen-feature cases of one (model, dataset) pair form one unit (their extraction
  group: the same group pytest-xdist keeps on one worker), so a shard computes the features
  it needs itself and no two shards extract the same key even without a shared cache;
- a case whose protocol runs the backbone itself (fine-tuning) is a unit of its own;
- any other collected test is a unit of its own.

Each unit has a cost estimate: a fixed extraction cost per feature group plus a relative
cost per case of its protocol (:data:`PROTOCOL_COST`), scaled by its profile
(:data:`PROFILE_SCALE`). Units are placed by the longest-processing-time rule: costliest
first (ties broken by name), each onto the shard with the least cost so far (ties: the
lowest index). The assignment depends only on the collected cases, never on their order,
on hash seeds or on the host.

Shards are numbered from 1: ``--medxfer-shard 1/3``, ``2/3``, ``3/3``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

ShardBy = Literal["group", "case"]
SHARD_BY: tuple[ShardBy, ...] = ("group", "case")

#: Relative cost of one case of a protocol on the smoke profile (a kNN case is ~0.5).
PROTOCOL_COST: dict[str, float] = {
    "finetune": 40.0,
    "inversion": 8.0,
    "saliency": 4.0,
    "invariance": 3.0,
    "multiview": 2.0,
    "layerwise": 3.0,
    "fewshot": 1.5,
    "similarity": 1.5,
    "transferability": 1.0,
    "linear": 1.0,
    "knn": 0.5,
}
#: Cost of a protocol missing from :data:`PROTOCOL_COST`.
DEFAULT_CASE_COST = 1.0
#: Cost of extracting one (model, dataset) feature group.
EXTRACTION_COST = 2.0
#: How much a profile multiplies a case's cost.
PROFILE_SCALE: dict[str, float] = {"smoke": 1.0, "demo": 5.0, "paper": 25.0}

T = TypeVar("T")


class ShardSpecError(ValueError):
    """A ``--medxfer-shard`` value that is not ``i/N`` with ``1 <= i <= N``."""


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``i/N`` into ``(i, N)``.

    Args:
        text: e.g. ``"2/3"``.

    Returns:
        The 1-based shard index and the shard count.

    Raises:
        ShardSpecError: When the text is malformed or the index is out of range.
    """
    index_text, sep, count_text = text.strip().partition("/")
    try:
        index, count = int(index_text), int(count_text)
    except ValueError:
        index = count = 0
    if not sep or count < 1:
        raise ShardSpecError(f"--medxfer-shard {text!r}: expected i/N, e.g. 1/3 (N >= 1)")
    if not 1 <= index <= count:
        raise ShardSpecError(
            f"--medxfer-shard {text!r}: the shard index runs from 1 to {count} (1-based)"
        )
    return index, count


@dataclass
class Unit:
    """Items that go to one shard together.

    Attributes:
        key: A stable name (the extraction group, or the test's node id).
        cost: The estimated cost of the whole unit.
        members: Indexes of its items in the collected list.
    """

    key: str
    cost: float = 0.0
    members: list[int] = field(default_factory=list)


def case_of(item: Any) -> Any | None:
    """The medxfer case a collected test runs, or None for any other test."""
    callspec = getattr(item, "callspec", None)
    params = getattr(callspec, "params", None) or {}
    case = params.get("bench")
    return case if hasattr(case, "protocol") and hasattr(case, "group") else None


def _needs(protocol: str) -> str:
    """``features`` or ``images``: what a protocol's cases run on (features if unknown)."""
    from harness.protocols.registry import ProtocolError, get_protocol

    try:
        return get_protocol(protocol).needs
    except (ProtocolError, KeyError):
        return "features"


def case_cost(case: Any) -> float:
    """The estimated cost of one case (without its group's extraction)."""
    profile = getattr(getattr(case, "profile", None), "name", "smoke")
    scale = PROFILE_SCALE.get(str(profile), 1.0)
    return PROTOCOL_COST.get(str(case.protocol), DEFAULT_CASE_COST) * scale


def units_of(items: Sequence[Any], by: ShardBy = "group") -> list[Unit]:
    """Group collected items into units (see the module doc), sorted by key.

    Args:
        items: Collected tests (anything with ``nodeid``; medxfer cases also carry
            ``callspec.params["bench"]``).
        by: ``group`` keeps each (model, dataset) feature group together; ``case`` makes
            every case its own unit (the shards then share feature groups through the cache).
    """
    units: dict[str, Unit] = {}
    for position, item in enumerate(items):
        case = case_of(item)
        if case is None:
            key, cost, extraction = f"test:{item.nodeid}", DEFAULT_CASE_COST, 0.0
        elif not hasattr(case, "profile"):  # an unusable card: the case fails at once
            key, cost, extraction = f"case:{item.nodeid}", 0.1, 0.0
        else:
            frozen = _needs(case.protocol) == "features"
            cost = case_cost(case)
            extraction = EXTRACTION_COST * PROFILE_SCALE.get(case.profile.name, 1.0) * frozen
            grouped = frozen and by == "group"
            key = f"features:{case.profile.name}:{case.group}" if grouped else f"case:{item.nodeid}"
        unit = units.get(key)
        if unit is None:
            unit = units[key] = Unit(key, extraction)
        unit.cost += cost
        unit.members.append(position)
    return [units[key] for key in sorted(units)]


def assign(units: Sequence[Unit], count: int) -> list[int]:
    """Place units on ``count`` shards, costliest first onto the least loaded shard.

    Args:
        units: The units (any order: they are sorted by cost, then key).
        count: The number of shards.

    Returns:
        The 0-based shard of each unit, in the order of ``units``.
    """
    loads = [0.0] * count
    shard_of: dict[str, int] = {}
    for unit in sorted(units, key=lambda u: (-round(u.cost, 9), u.key)):
        target = min(range(count), key=lambda s: (loads[s], s))
        loads[target] += unit.cost
        shard_of[unit.key] = target
    return [shard_of[unit.key] for unit in units]


def select_shard(
    items: Sequence[T], index: int, count: int, by: ShardBy = "group"
) -> tuple[list[T], list[T]]:
    """Split collected items into this shard's and the others'.

    Args:
        items: The collected tests, as every shard collects them.
        index: This shard, 1-based (``1 <= index <= count``).
        count: The number of shards.
        by: ``group`` (default) or ``case``: see :func:`units_of`.

    Returns:
        ``(selected, deselected)``, each in collection order.

    Raises:
        ShardSpecError: When ``index`` is out of range.
    """
    if count < 1 or not 1 <= index <= count:
        raise ShardSpecError(f"shard {index}/{count}: the index runs from 1 to count")
    units = units_of(items, by)
    mine: set[int] = set()
    for unit, shard in zip(units, assign(units, count), strict=True):
        if shard == index - 1:
            mine.update(unit.members)
    selected = [item for position, item in enumerate(items) if position in mine]
    deselected = [item for position, item in enumerate(items) if position not in mine]
    return selected, deselected


def shard_loads(items: Sequence[Any], count: int, by: ShardBy = "group") -> list[float]:
    """The estimated cost each of ``count`` shards gets (for planning and messages)."""
    units = units_of(items, by)
    loads = [0.0] * count
    for unit, shard in zip(units, assign(units, count), strict=True):
        loads[shard] += unit.cost
    return loads
