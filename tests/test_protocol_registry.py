"""The protocol registry and the thin plugin, run with pytester as a user runs them.

A toy protocol written as one module of the user's own (``MEDXFER_PROTOCOL_MODULES``),
its two-line benchmark test, and a dataset card and suite kept in a folder outside the
checkout (``--medxfer-cards``) run end to end: collection, ``-m``, records, the report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.config.cards import DATASET_CARD_DIR
from harness.protocols import registry
from harness.protocols.registry import ProtocolError, discover, get_protocol, register_protocol

pytest_plugins = ["pytester"]

TOY_PROTOCOL = '''
"""A toy protocol: nearest class mean on frozen features."""

from dataclasses import asdict, dataclass

import numpy as np

from harness.protocols.base import ProtocolResult
from harness.protocols.registry import register_protocol

VERSION = 3


@dataclass(frozen=True)
class ToyConfig:
    seed: int = 0

    @classmethod
    def for_profile(cls, profile):
        return cls()

    def to_dict(self):
        return asdict(self)


@register_protocol(
    "toy", version=VERSION, marker="toy nearest-class-mean cases", config=ToyConfig,
    primary_metric="nearest_mean_accuracy",
)
def run_case(case, config):
    features = case.features(("train", "test"))
    train, test = features["train"], features["test"]
    classes = np.unique(train.labels)
    means = np.stack([train.features[train.labels == c].mean(0) for c in classes])
    distance = ((test.features[:, None, :] - means[None]) ** 2).sum(-1)
    predicted = classes[distance.argmin(1)]
    return ProtocolResult(
        metrics={"nearest_mean_accuracy": float((predicted == test.labels).mean())}
    )
'''


def test_every_builtin_protocol_registers_once_with_its_metadata() -> None:
    specs = discover()
    assert set(specs) >= {"linear", "knn", "fewshot", "invariance", "multiview", "finetune"}
    assert specs["fewshot"].primary_metric == "accuracy"
    assert specs["linear"].primary_metric is None  # the dataset card's metric
    assert {n for n, s in specs.items() if s.display == "descriptive"} >= {
        "invariance",
        "multiview",
    }
    assert specs["finetune"].needs == "images" and specs["linear"].needs == "features"
    assert all(spec.marker and spec.version >= 1 for spec in specs.values())
    assert specs["linear"].module == "harness.protocols.linear"


def test_registering_a_taken_name_or_a_bad_declaration_fails() -> None:
    spec = get_protocol("linear")

    def run_case(case: object, config: object) -> None:
        raise AssertionError

    with pytest.raises(ProtocolError, match=r"registered by harness\.protocols\.linear"):
        register_protocol("linear", version=1, marker="x", config=spec.config)(run_case)
    with pytest.raises(ProtocolError, match="lowercase identifier"):
        register_protocol("Bad-Name", version=1, marker="x", config=spec.config)
    with pytest.raises(ProtocolError, match="version"):
        register_protocol("toy2", version=0, marker="x", config=spec.config)
    with pytest.raises(ProtocolError, match="for_profile"):
        register_protocol("toy2", version=1, marker="x", config=dict)
    with pytest.raises(ProtocolError, match="unknown protocol 'nope'"):
        get_protocol("nope")
    assert "toy2" not in registry.discover()


def test_importing_the_plugin_imports_neither_torch_nor_numpy() -> None:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import harness.plugin"],
        capture_output=True,
        text=True,
        check=True,
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()}
    assert "harness.plugin" in imported
    assert not {"torch", "numpy", "pandas", "sklearn"} & imported


def test_options_are_prefixed_and_coexist_with_regressions_and_profiling(
    pytester: pytest.Pytester,
) -> None:
    # pytest-regressions adds --regen-all, pytest-profiling --profile: both must still parse
    pytester.makeconftest(
        """
        def pytest_addoption(parser):
            parser.addoption("--regen-all", action="store_true")
            parser.addoption("--profile", action="store_true")
        """
    )
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("--regen-all", "--profile", "-q")
    result.assert_outcomes(passed=1)
    help_text = pytester.runpytest_subprocess("--help").stdout.str()
    for option in ("--medxfer-regen", "--medxfer-profile", "--medxfer-cards", "--suite"):
        assert option in help_text


@pytest.fixture
def user_folder(pytester: pytest.Pytester) -> Path:
    """A toy protocol module, its benchmark test, and a card folder with a dataset and suite."""
    pytester.makepyfile(toy_protocol=TOY_PROTOCOL)
    benchmarks = pytester.mkdir("benchmarks")
    (benchmarks / "test_toy.py").write_text(
        "from harness.plugin import benchmark_test\n\ntest_toy = benchmark_test('toy')\n"
    )
    cards = pytester.mkdir("my_cards")
    (cards / "datasets").mkdir()
    card = yaml.safe_load((DATASET_CARD_DIR / "demo_modality.yaml").read_text())
    card["name"] = "my_modality"
    card["reader"]["file"] = "my_modality.npz"
    (cards / "datasets" / "my_modality.yaml").write_text(yaml.safe_dump(card))
    (cards / "suites").mkdir()
    suite = {
        "name": "mine",
        "profile": "smoke",
        "models": ["mobilenet_v2.tv_in1k_pip"],
        "datasets": ["my_modality"],
        "protocols": ["toy", "linear"],
    }
    (cards / "suites" / "mine.yaml").write_text(yaml.safe_dump(suite))
    return cards


@pytest.mark.slow
def test_a_toy_protocol_in_one_file_runs_end_to_end_from_a_user_card_folder(
    pytester: pytest.Pytester,
    user_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home, results = tmp_path / "home", tmp_path / "results"
    monkeypatch.setenv("MEDXFER_HOME", str(home))
    monkeypatch.setenv("MEDXFER_PROTOCOL_MODULES", "toy_protocol")
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))
    monkeypatch.delenv("MEDXFER_RUN_ID", raising=False)
    common = (
        "benchmarks",
        "--suite",
        "mine",
        "--medxfer-cards",
        str(user_folder),
        "-p",
        "no:cacheprovider",
    )

    collected = pytester.runpytest_subprocess(*common, "--collect-only", "-q", "-m", "toy")
    nodes = [line for line in collected.stdout.lines if "::test_toy[" in line]
    assert nodes == ["benchmarks/test_toy.py::test_toy[my_modality-mobilenet_v2.tv_in1k_pip]"]

    ran = pytester.runpytest_subprocess(
        *common, "--medxfer-record-only", "--medxfer-results", str(results)
    )
    ran.assert_outcomes(passed=1)
    (path,) = results.rglob("*.json")
    record = json.loads(path.read_text())
    assert record["case_id"] == "toy/my_modality/mobilenet_v2.tv_in1k_pip"
    assert record["protocol"]["name"] == "toy" and record["protocol"]["version"] == 3
    assert record["primary_metric"] == "nearest_mean_accuracy"
    assert 0.0 <= record["primary_value"] <= 1.0
    assert record["dataset"]["name"] == "my_modality"

    # the expected values of a user's suite live in its card folder, not in the checkout
    regen = pytester.runpytest_subprocess(
        *common, "--medxfer-regen", "--medxfer-results", str(results)
    )
    regen.assert_outcomes(passed=1)
    expected = yaml.safe_load((user_folder / "expected" / "mine.yaml").read_text())
    assert list(expected["cases"]) == ["toy/my_modality/mobilenet_v2.tv_in1k_pip"]
    checked = pytester.runpytest_subprocess(*common, "--medxfer-results", str(results))
    checked.assert_outcomes(passed=1)

    out = tmp_path / "report.md"
    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "report",
            "--results",
            str(results),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert report.returncode == 0, report.stderr
    text = out.read_text()
    assert "toy" in text and "nearest_mean_accuracy" in text
