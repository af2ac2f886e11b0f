"""The session's end: a terminal leaderboard of the cases just run, and --medxfer-mlflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_cases import MODEL, benchmark_files, prepare_inprocess, suite, tiny_dataset

pytest_plugins = ["pytester"]


@pytest.fixture
def tiny(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    cards = tmp_path / "cards"
    tiny_dataset(cards)
    suite(cards, "tracked", ["tiny_ds"], ["linear"])
    benchmark_files(pytester, ["linear"])
    prepare_inprocess(pytester, monkeypatch, cards, tmp_path / "home")
    return tmp_path


def test_leaderboard_and_mlflow_runs_of_the_cases_just_run(
    pytester: pytest.Pytester, tiny: Path
) -> None:
    pytest.importorskip("mlflow")  # the mlflow extra, part of dev
    from harness.tracking.mlflow import default_tracking_uri, tracking_client

    results = tiny / "results"
    args = ["benchmarks", "--suite", "tracked", "--medxfer-results", str(results)]
    args += ["--medxfer-expected", str(tiny / "expected.yaml")]
    first = pytester.runpytest_inprocess(*args, "--medxfer-mlflow")
    first.assert_outcomes(passed=1)
    (record_path,) = sorted(results.glob("**/linear__tiny_ds__*.json"))
    record = json.loads(record_path.read_text())
    out = first.stdout.str()
    assert "medxfer results: 1 case, 1 protocol, 1 dataset" in out
    assert "linear · tiny_ds (accuracy)" in out
    assert f"{MODEL}  {record['primary_value']:.3f}" in out

    client = tracking_client(default_tracking_uri(results))
    (experiment,) = [e for e in client.search_experiments() if e.name == "medxfer/tracked"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.metrics["primary_value"] == record["primary_value"]
    assert run.data.tags["medxfer.case_id"] == record["case_id"]

    # a reused case is on the leaderboard too, and is not logged to MLflow again
    second = pytester.runpytest_inprocess(*args, "--medxfer-mlflow")
    second.assert_outcomes(passed=1)
    assert f"{MODEL}  {record['primary_value']:.3f}" in second.stdout.str()
    assert len(client.search_runs([experiment.experiment_id])) == 1
