"""pytest side of sharding: ``--medxfer-shard i/N`` keeps this shard's cases, deselects the rest.

Loaded with the medxfer plugin (or ``-p harness.plugin_shard``). Every shard of a suite
runs the same command apart from ``i``; the assignment (:mod:`harness.sharding`) keeps
each (model, dataset) feature group in one shard and balances the shards by an estimate
of their cost. It runs after ``-k`` / ``-m`` have deselected, so the shards split what
is left.
"""

from __future__ import annotations

import pytest

from harness.sharding import SHARD_BY, ShardSpecError, parse_shard, select_shard

SHARD_OPTION = "--medxfer-shard"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register ``--medxfer-shard`` and ``--medxfer-shard-by`` in medxfer's option group."""
    group = parser.getgroup("medxfer", "medxfer benchmark harness")
    group.addoption(
        SHARD_OPTION,
        default=None,
        metavar="I/N",
        help="run only shard I of N (1-based) of the collected cases; each (model, dataset) "
        "feature group stays in one shard (medxfer submit runs every shard)",
    )
    group.addoption(
        "--medxfer-shard-by",
        default="group",
        choices=SHARD_BY,
        help="group (default): a (model, dataset) feature group is one shard's; case: every "
        "case is placed alone (shards then share features through the cache)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Reject a malformed ``--medxfer-shard`` before collection."""
    value = config.getoption("medxfer_shard", None)
    if value is not None:
        try:
            parse_shard(value)
        except ShardSpecError as exc:
            raise pytest.UsageError(str(exc)) from exc


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep this shard's items; report the others as deselected."""
    value = config.getoption("medxfer_shard", None)
    if value is None or not items:
        return
    index, count = parse_shard(value)
    selected, deselected = select_shard(items, index, count, config.getoption("medxfer_shard_by"))
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected
