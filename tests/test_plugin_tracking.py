"""The session's end: a terminal leaderboard of the cases just run, and --medxfer-mlflow.

The sessions run in subprocesses: an in-process run makes pytester forget the modules it
imported, and SQLAlchemy's mappers (MLflow's store) cannot be defined twice in a process.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

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


READ_RUNS = """
import json, sys
from harness.tracking.mlflow import default_tracking_uri, tracking_client
client = tracking_client(default_tracking_uri(sys.argv[1]))
runs = [
    {"metrics": r.data.metrics, "tags": r.data.tags}
    for e in client.search_experiments() if e.name == "medxfer/tracked"
    for r in client.search_runs([e.experiment_id])
]
print(json.dumps(runs))
"""


def _mlflow_runs(results: Path) -> list[dict[str, Any]]:
    """The runs of experiment medxfer/tracked, read by MLflow's own client in a subprocess
    (so this process never imports MLflow, which pytester's module snapshot would break)."""
    done = subprocess.run(
        [sys.executable, "-c", READ_RUNS, str(results)], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_leaderboard_and_mlflow_runs_of_the_cases_just_run(
    pytester: pytest.Pytester, tiny: Path
) -> None:
    if importlib.util.find_spec("mlflow") is None:
        pytest.skip("the mlflow extra (part of dev) is not installed")
    results = tiny / "results"
    args = ["benchmarks", "--suite", "tracked", "--medxfer-results", str(results)]
    args += ["--medxfer-expected", str(tiny / "expected.yaml")]
    first = pytester.runpytest_subprocess(*args, "--medxfer-mlflow")
    first.assert_outcomes(passed=1)
    (record_path,) = sorted(results.glob("**/linear__tiny_ds__*.json"))
    record = json.loads(record_path.read_text())
    out = first.stdout.str()
    assert "medxfer results: 1 case, 1 protocol, 1 dataset" in out
    assert "linear · tiny_ds (accuracy)" in out
    assert f"{MODEL}  {record['primary_value']:.3f}" in out

    (run,) = _mlflow_runs(results)
    assert run["metrics"]["primary_value"] == record["primary_value"]
    assert run["tags"]["medxfer.case_id"] == record["case_id"]

    # a reused case is on the leaderboard too, and is not logged to MLflow again
    second = pytester.runpytest_subprocess(*args, "--medxfer-mlflow")
    second.assert_outcomes(passed=1)
    assert f"{MODEL}  {record['primary_value']:.3f}" in second.stdout.str()
    assert len(_mlflow_runs(results)) == 1
