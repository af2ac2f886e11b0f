"""Sharding (``--medxfer-shard i/N``): a partition of the cases, deterministic, by feature group."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from harness.sharding import (
    ShardSpecError,
    assign,
    parse_shard,
    select_shard,
    shard_loads,
    units_of,
)

pytest_plugins = ["pytester"]

MODELS = ("m_a", "m_b", "m_c")
DATASETS = ("d_1", "d_2", "d_3", "d_4")


def _item(protocol: str, model: str, dataset: str, profile: str = "smoke") -> SimpleNamespace:
    case = SimpleNamespace(
        protocol=protocol,
        group=f"{model}@{dataset}",
        suite="s",
        profile=SimpleNamespace(name=profile),
        case_id=f"{protocol}/{dataset}/{model}",
    )
    return SimpleNamespace(
        nodeid=f"benchmarks/test_{protocol}.py::test_{protocol}[{dataset}-{model}]",
        callspec=SimpleNamespace(params={"bench": case}),
    )


def _items() -> list[SimpleNamespace]:
    return [
        _item(protocol, model, dataset)
        for protocol in ("linear", "knn", "fewshot", "finetune")
        for dataset in DATASETS
        for model in MODELS
        if protocol != "finetune" or dataset == "d_1"
    ]


def _shards(items: list, count: int, by: str = "group") -> list[list[str]]:
    return [
        [item.nodeid for item in select_shard(items, index, count, by)[0]]  # type: ignore[arg-type]
        for index in range(1, count + 1)
    ]


@pytest.mark.parametrize("count", [1, 2, 3, 5, 40])
def test_every_case_is_in_exactly_one_shard(count: int) -> None:
    items = _items()
    shards = _shards(items, count)
    every = [nodeid for shard in shards for nodeid in shard]
    assert sorted(every) == sorted(item.nodeid for item in items)
    assert len(set(every)) == len(every)
    for index in range(1, count + 1):
        selected, deselected = select_shard(items, index, count)
        assert len(selected) + len(deselected) == len(items)
        assert not {id(i) for i in selected} & {id(i) for i in deselected}


def test_assignment_ignores_collection_order_and_keeps_it_within_a_shard() -> None:
    items = _items()
    shuffled = list(items)
    random.Random(3).shuffle(shuffled)
    assert [sorted(s) for s in _shards(items, 3)] == [sorted(s) for s in _shards(shuffled, 3)]
    selected, _ = select_shard(shuffled, 2, 3)
    positions = [shuffled.index(item) for item in selected]
    assert positions == sorted(positions)  # collection order kept


def test_a_feature_group_stays_in_one_shard_and_finetune_cases_spread() -> None:
    items = _items()
    shards = _shards(items, 3)
    for model in MODELS:
        for dataset in DATASETS:
            holding = [
                i
                for i, shard in enumerate(shards)
                for nodeid in shard
                if f"[{dataset}-{model}]" in nodeid and "finetune" not in nodeid
            ]
            assert len(set(holding)) == 1, (model, dataset, holding)
    finetune = [i for i, shard in enumerate(shards) for n in shard if "finetune" in n]
    assert len(set(finetune)) == 3  # 3 costly cases, 3 shards: one each


def test_shards_are_balanced_by_cost() -> None:
    loads = shard_loads(_items(), 3)
    assert max(loads) - min(loads) <= max(u.cost for u in units_of(_items()) if u.cost < 40)


def test_by_case_places_every_case_alone() -> None:
    items = _items()
    units = units_of(items, "case")
    assert len(units) == len(items)
    shards = _shards(items, 2, "case")
    assert sorted(n for s in shards for n in s) == sorted(i.nodeid for i in items)


def test_assign_is_deterministic_and_fills_the_least_loaded_shard() -> None:
    units = units_of(_items())
    assert assign(units, 4) == assign(list(reversed(units)), 4)[::-1]
    assert assign(units, 1) == [0] * len(units)


def test_tests_that_are_not_cases_are_placed_too() -> None:
    items = [SimpleNamespace(nodeid=f"tests/test_x.py::test_{i}") for i in range(7)]
    shards = _shards(items, 3)
    assert sorted(n for s in shards for n in s) == sorted(i.nodeid for i in items)
    assert all(shards)


@pytest.mark.parametrize("text", ["0/3", "4/3", "1/0", "a/b", "3", "", "1/-2"])
def test_malformed_shard_values_are_refused(text: str) -> None:
    with pytest.raises(ShardSpecError, match="--medxfer-shard"):
        parse_shard(text)
    assert parse_shard(" 2/3 ") == (2, 3)


def test_plugin_deselects_the_other_shards(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_many="import pytest\n\n@pytest.mark.parametrize('n', range(10))\n"
        "def test_n(n):\n    pass\n"
    )
    seen = []
    for index in (1, 2, 3):
        result = pytester.runpytest_inprocess(
            "-p", "harness.plugin_shard", "--medxfer-shard", f"{index}/3", "-q", "--co"
        )
        assert result.ret == 0, result.stdout.str()
        seen += [line for line in result.outlines if "::test_n[" in line]
    assert sorted(seen) == sorted(f"test_many.py::test_n[{n}]" for n in range(10))
    bad = pytester.runpytest_inprocess("-p", "harness.plugin_shard", "--medxfer-shard", "4/3")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert "1 to 3" in bad.stderr.str()
