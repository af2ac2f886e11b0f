"""End-to-end: the plugin run as users run it, in subprocesses, on the smoke suite.

One module-scoped MEDXFER_HOME is shared so the demo datasets are built once; tests
that need a cold feature cache clear the ``features`` folder first.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.cache.atomic import TMP_INFIX
from harness.config.paths import PROJECT_ROOT
from harness.features import read_events
from harness.huge_pages import HUGE_PAGES_ENV
from harness.protocols.registry import get_protocol

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("medxfer-home")


def _env(home: Path, results: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(MEDXFER_HOME=str(home), MEDXFER_RESULTS=str(results), PYTHONUNBUFFERED="1")
    env.pop("MEDXFER_RUN_ID", None)
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop(HUGE_PAGES_ENV, None)  # the plugin asks for huge pages itself
    return env


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider", *args]


def run_benchmarks(home: Path, results: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(*args),
        cwd=PROJECT_ROOT,
        env=_env(home, results),
        capture_output=True,
        text=True,
        timeout=900,
    )


def _events(home: Path) -> list[dict]:
    # skips a line a running writer has not finished (the harness's own reader)
    return read_events(home / "features")


def _records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.rglob("*.json"))]


def _cold(home: Path) -> None:
    shutil.rmtree(home / "features", ignore_errors=True)


# One process collects under each selection in turn: what `pytest benchmarks ... -k EXPR`
# prints, without paying the interpreter's and the protocols' imports once per selection.
_COLLECT_EACH = """
import json, sys, pytest
for args in json.loads(sys.argv[1]):
    print("<<<selection>>>", flush=True)
    code = pytest.main(["benchmarks", "-p", "no:cacheprovider", "--collect-only", "-q", *args])
    print(f"<<<exit {int(code)}>>>", flush=True)
"""


def collect_each(home: Path, results: Path, selections: list[list[str]]) -> list[list[str]]:
    """The benchmark node ids that ``pytest benchmarks --collect-only`` lists per selection."""
    out = subprocess.run(
        [sys.executable, "-c", _COLLECT_EACH, json.dumps(selections)],
        cwd=PROJECT_ROOT,
        env=_env(home, results),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    chunks = out.stdout.split("<<<selection>>>")[1:]
    assert len(chunks) == len(selections), out.stdout + out.stderr
    assert all("<<<exit 0>>>" in chunk for chunk in chunks), out.stdout + out.stderr
    return [[line for line in chunk.splitlines() if "::test_" in line] for chunk in chunks]


def test_k_selects_cases_by_dataset_protocol_and_model(home: Path, tmp_path: Path) -> None:
    smoke = ["--suite", "smoke"]
    every, modality, linear, lite0, marked = collect_each(
        home,
        tmp_path,
        [
            smoke,
            [*smoke, "-k", "modality"],
            [*smoke, "-k", "linear"],
            [*smoke, "-k", "tf_efficientnet_lite0"],
            [*smoke, "-m", "linear"],
        ],
    )
    assert len([node for node in every if "::test_linear[" in node]) == 12
    assert len(modality) == 20 and all("demo_modality" in node for node in modality)
    assert len(linear) == 12 and all("::test_linear[" in node for node in linear)
    assert len(lite0) == 32 and all("tf_efficientnet_lite0" in node for node in lite0)
    assert marked == linear


def test_smoke_cases_pass_write_records_and_rerun_from_cache(home: Path, tmp_path: Path) -> None:
    _cold(home)
    first = run_benchmarks(
        home, tmp_path, "--suite", "smoke", "-k", "linear and cxr_lesion", "--medxfer-record-only"
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert "4 passed" in first.stdout
    extracts = [e for e in _events(home) if e["event"] == "extract"]
    assert len(extracts) == 12  # 4 models x 3 splits
    records = _records(tmp_path)
    assert len(records) == 4
    for record in records:
        assert record["schema_version"] == 1
        assert record["protocol"]["name"] == "linear" and record["protocol"]["version"] >= 1
        assert 0.0 <= record["primary_value"] <= 1.0
        assert record["primary_metric"] == "roc_auc"
        assert set(record["feature_cache"].values()) == {"miss"}
        assert record["hyperparameters"]["C"] > 0
        assert record["git"] is not None and record["versions"]["torch"]
        assert record["hardware"]["huge_pages"][HUGE_PAGES_ENV] == "1"
        details = record["details"]
        assert details["device_class"] == "cpu"
        assert details["precision"]["requested"] == details["precision"]["effective"] == "fp32"
        assert set(details["feature_scale"]) == {"train", "val", "test"}
        assert details["feature_scale"]["train"]["abs_mean"] > 1e-3  # no 1e-9 features
        twin = record["model"]["category"] == "random-init"
        rule = details["batchnorm_stats"]
        assert rule["rule"] == ("target_train" if twin else "checkpoint")
        if twin:
            assert rule["split"] == "train" and rule["images"] == 64  # whole batches of 96
    twins = {r["model"]["name"]: r["model"]["weights_sha256"] for r in records}
    assert len(set(twins.values())) == 4  # a twin's identity includes its statistics

    # finished cases are reused by default (tests/test_case_resume.py); --medxfer-rerun
    # runs them again, from the feature cache
    second = run_benchmarks(
        home,
        tmp_path,
        "--suite",
        "smoke",
        "-k",
        "linear and cxr_lesion",
        "--medxfer-record-only",
        "--medxfer-rerun",
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert len([e for e in _events(home) if e["event"] == "extract"]) == 12  # nothing new
    assert "feature cache: 12 hits, 0 extractions" in second.stdout
    newest = _records(tmp_path)
    assert len(newest) == 8  # a second record per case; the first run's are kept


def test_xdist_two_workers_extract_each_key_once(home: Path, tmp_path: Path) -> None:
    _cold(home)
    out = run_benchmarks(
        home,
        tmp_path,
        "--suite",
        "smoke",
        "-n",
        "2",
        "-k",
        "linear and not fundus",
        "--medxfer-record-only",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "8 passed" in out.stdout
    keys = [e["key"] for e in _events(home) if e["event"] == "extract"]
    assert len(keys) == 24 and len(set(keys)) == 24
    pids = {e["pid"] for e in _events(home)}
    assert len(pids) == 2  # both workers did work


def test_unprepared_dataset_is_skipped_with_how_to_prepare(home: Path, tmp_path: Path) -> None:
    out = run_benchmarks(home, tmp_path, "--suite", "medmnist", "-k", "lite0", "-rs")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "skipped" in out.stdout and "passed" not in out.stdout
    assert "pneumoniamnist_28 is not prepared" in out.stdout  # sizes are part of the name
    assert "pneumoniamnist_64.npz" in out.stdout


def test_sigkill_midway_leaves_no_corrupt_file_and_rerun_completes(
    home: Path, tmp_path: Path
) -> None:
    _cold(home)
    process = subprocess.Popen(
        _command("--suite", "smoke", "-k", "linear and modality", "--medxfer-record-only"),
        cwd=PROJECT_ROOT,
        env=_env(home, tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if any(e["event"] == "extract" for e in _events(home)):
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    rerun = run_benchmarks(
        home, tmp_path, "--suite", "smoke", "-k", "linear and modality", "--medxfer-record-only"
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "4 passed" in rerun.stdout
    for path in (home / "features").rglob("*.npz"):
        if TMP_INFIX in path.name:
            continue
        with np.load(path) as payload:
            assert np.isfinite(payload["features"]).all()
    for path in tmp_path.rglob("*.json"):
        json.loads(path.read_text())
    leftovers = [p for p in (home / "features").rglob(f"*{TMP_INFIX}*")]
    assert leftovers == []


def test_expected_values_check_regenerate_and_diff(home: Path, tmp_path: Path) -> None:
    expected = tmp_path / "smoke.yaml"
    results = tmp_path / "results"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_benchmarks(
            home,
            results,
            "--suite",
            "smoke",
            "-k",
            "linear and cxr_lesion",
            "--medxfer-expected",
            str(expected),
            *args,
        )

    missing = run()
    assert missing.returncode == 1
    assert "4 failed" in missing.stdout and "no expected value for case" in missing.stdout
    assert len(list((tmp_path / "smoke.yaml.obtained").glob("*.yaml"))) == 4

    regen = run("--medxfer-regen")
    assert regen.returncode == 0, regen.stdout
    assert "regenerated 4 entries" in regen.stdout
    entries = yaml.safe_load(expected.read_text())["cases"]
    assert len(entries) == 4

    again = run()
    assert again.returncode == 0 and "4 passed" in again.stdout

    # one run: a moved value, a stale entry (another protocol version) and an orphan entry
    case = "linear/demo_cxr_lesion/mobilenet_v2.random"
    old = "linear/demo_cxr_lesion/mobilenet_v2.tv_in1k_pip"
    document = yaml.safe_load(expected.read_text())
    document["cases"][case]["value"] += 0.1
    document["cases"][old]["protocol_version"] = 99
    document["cases"]["linear/demo_cxr_lesion/not_a_model.x"] = document["cases"][case]
    expected.write_text(yaml.safe_dump(document))
    moved = run()
    assert moved.returncode == 1 and "2 failed, 2 passed" in moved.stdout
    assert f"{case} differs from its expected value" in moved.stdout
    assert "delta -0.1000, tolerance 0.0050" in moved.stdout
    running = get_protocol("linear").version
    assert f"{old} is stale: calibrated for linear v99, running v{running}" in moved.stdout
    assert (
        "linear/demo_cxr_lesion/not_a_model.x" in moved.stdout and "matches no case" in moved.stdout
    )

    expected.write_text("cases: [unclosed")
    broken = run()
    assert broken.returncode == 1 and "4 failed" in broken.stdout
    assert f"{expected}: not valid YAML" in broken.stdout


def test_xdist_controller_lists_stale_expected_entries_from_the_workers_cases(
    home: Path, tmp_path: Path
) -> None:
    # The controller never collects: it learns the suite's case ids from the workers
    # (loading the suite itself would import torch and every protocol at the end).
    folder = tmp_path / "cards"
    (folder / "suites").mkdir(parents=True)
    (folder / "expected").mkdir()
    case = "linear/demo_modality/tf_efficientnet_lite0.in1k_pip"
    suite = {
        "name": "mini",
        "profile": "smoke",
        "models": ["tf_efficientnet_lite0.in1k_pip"],
        "datasets": ["demo_modality"],
        "protocols": ["linear"],
    }
    (folder / "suites" / "mini.yaml").write_text(yaml.safe_dump(suite), encoding="utf-8")
    smoke = yaml.safe_load((PROJECT_ROOT / "benchmarks/expected/smoke.yaml").read_text())
    stale = "linear/demo_modality/a_model_the_suite_dropped"
    expected = {
        "schema_version": 2,
        "suite": "mini",
        "device": "cpu",
        "cases": {case: smoke["cases"][case], stale: smoke["cases"][case]},
    }
    (folder / "expected" / "mini.yaml").write_text(yaml.safe_dump(expected), encoding="utf-8")
    env = _env(home, tmp_path / "results")
    env["MEDXFER_CARDS"] = str(folder)
    out = subprocess.run(
        _command("--suite", "mini", "-n", "2"),
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout
    assert f"entry {stale} in {folder / 'expected' / 'mini.yaml'} matches no case" in out.stdout
    assert f"entry {case} " not in out.stdout
