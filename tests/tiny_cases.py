"""A tiny user card folder for plugin tests run in-process: a 40-image dataset, suites,
and the benchmark test files, so a case runs in about a second on a busy CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from harness.data.npz import SplitData, save_npz

MODEL = "mobilenet_v2.tv_in1k_pip"


def _import_what_a_case_uses() -> None:
    """Import torch, the protocols and the data entries now, at collection.

    Pytester forgets every module imported during a test (and during an in-process run),
    importing torch twice in one process crashes it, and registered entries need their
    modules: so they are imported before any test starts.
    """
    import harness.baselines.check
    import harness.baselines.obtained
    import harness.data.prepare
    import harness.protocols.case
    import harness.zoo.build  # noqa: F401
    from harness.data.registry import load_entries
    from harness.protocols.registry import discover

    discover()
    load_entries()


_import_what_a_case_uses()


def tiny_dataset(cards: Path, name: str = "tiny_ds", constant: bool = False) -> Path:
    """Write ``<cards>/datasets/<name>.yaml`` and its archive: 2 classes, 16/8/16 images of
    32 px, class 1 with a bright square (or every image all zero with ``constant``)."""
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", 16), ("val", 8), ("test", 16)):
        labels = np.arange(n) % 2
        images = rng.integers(0, 60, size=(n, 32, 32), dtype=np.uint8)
        images[labels == 1, 8:24, 8:24] = 220
        if constant:
            images[:] = 0
        splits[split] = SplitData(images, labels.astype(np.int64))
    data = cards / "data"
    data.mkdir(parents=True, exist_ok=True)
    with open(data / f"{name}.npz", "wb") as handle:
        save_npz(handle, splits, where=name)
    card = {
        "name": name,
        "version": 1,
        "modality": "synthetic",
        "task": "binary",
        "classes": ["neg", "pos"],
        "reader": {"format": "npz", "file": f"{name}.npz", "root": str(data)},
        "primary_metric": "accuracy",
        "fewshot": {"n_way": 2},
    }
    return write_yaml(cards / "datasets" / f"{name}.yaml", card)


def write_yaml(path: Path, data: Any) -> Path:
    """Write ``data`` (a string as it is, anything else as YAML) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def suite(cards: Path, name: str, datasets: list[str], protocols: list[str]) -> Path:
    """A smoke-profile suite of :data:`MODEL` on ``datasets`` whose expected values are optional."""
    return write_yaml(
        cards / "suites" / f"{name}.yaml",
        {
            "name": name,
            "profile": "smoke",
            "models": [MODEL],
            "datasets": datasets,
            "protocols": protocols,
            "expected_values": "optional",
        },
    )


def benchmark_files(pytester: pytest.Pytester, protocols: list[str]) -> None:
    """``benchmarks/test_<protocol>.py`` for each protocol, as the checkout has them."""
    # importlib mode: the harness's own tests/test_<protocol>.py may already be imported
    # under the same basename in this process (an in-process run) or on its sys.path
    pytester.makeini("[pytest]\naddopts = --import-mode=importlib\n")
    bench = pytester.mkdir("benchmarks")
    for protocol in protocols:
        (bench / f"test_{protocol}.py").write_text(
            f"from harness.plugin import benchmark_test\n\ntest_{protocol} = "
            f"benchmark_test({protocol!r})\n"
        )


def prepare_inprocess(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, cards: Path, home: Path
) -> None:
    """Point the harness at ``cards`` and ``home`` for in-process runs.

    The environment is set through ``monkeypatch``, so what the plugin sets (run id,
    card folders) is undone; the modules a case uses were imported with this module.
    """
    monkeypatch.setenv("MEDXFER_CARDS", str(cards))
    monkeypatch.setenv("MEDXFER_HOME", str(home))
    monkeypatch.setenv("MEDXFER_RUN_ID", "unset")
    monkeypatch.delenv("MEDXFER_RUN_ID")
    monkeypatch.chdir(pytester.path)


def toy_dataset_card(name: str = "toy", version: int = 1) -> Any:
    """A minimal binary dataset card (``toy.npz``, accuracy) for tests that only key on it."""
    from harness.config.cards import DatasetCard

    return DatasetCard(
        name=name,
        version=version,
        modality="test",
        task="binary",
        classes=("a", "b"),
        reader={"format": "npz", "file": "toy.npz"},
        primary_metric="accuracy",
        metrics=("accuracy",),
    )
