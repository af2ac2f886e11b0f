"""Issue 16: a finished case reuses its stored record, verified by its key; one lock per case.

The plugin runs a tiny linear case in-process (40 images of 32 px, smoke profile): the
second run reuses the record (still checked against the expected value),
``--medxfer-rerun`` computes again, and a corrupt record or marker is a miss.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny_cases import benchmark_files, prepare_inprocess, suite, tiny_dataset

from harness.cache.store import read_events
from harness.config.suites import load_suite
from harness.protocols.case import CaseRun
from harness.protocols.case_resume import CASES, case_key, run_or_reuse
from harness.protocols.registry import get_protocol

pytest_plugins = ["pytester"]


@pytest.fixture
def tiny(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A card folder with the tiny dataset and suite ``resume`` (linear), set up in-process."""
    cards = tmp_path / "cards"
    tiny_dataset(cards)
    suite(cards, "resume", ["tiny_ds"], ["linear"])
    benchmark_files(pytester, ["linear"])
    prepare_inprocess(pytester, monkeypatch, cards, tmp_path / "home")
    return tmp_path


def _records(results: Path) -> list[Path]:
    return sorted(results.rglob("*.json"))


def _case_events(home: Path) -> list[str]:
    return [event["event"] for event in read_events(home / CASES.name)]


def test_a_finished_case_is_reused_checked_and_recomputed_on_request(
    pytester: pytest.Pytester, tiny: Path
) -> None:
    results, expected = tiny / "results", tiny / "expected.yaml"
    home = tiny / "home"

    def run(*extra: str) -> pytest.RunResult:
        return pytester.runpytest_inprocess(
            "benchmarks",
            "--suite",
            "resume",
            "--medxfer-results",
            str(results),
            "--medxfer-expected",
            str(expected),
            *extra,
        )

    first = run("--medxfer-regen")
    first.assert_outcomes(passed=1)
    (record_path,) = _records(results)
    record = json.loads(record_path.read_text())
    assert record["case_id"] == "linear/tiny_ds/mobilenet_v2.tv_in1k_pip"
    assert len(record["details"]["case_key"]) == CASES.key_length
    assert _case_events(home) == ["finished"]
    extractions = len(read_events(home / "features"))

    second = run()
    second.assert_outcomes(passed=1)
    assert _records(results) == [record_path]  # nothing new: the stored record was reused
    assert _case_events(home) == ["finished", "hit"]
    assert len(read_events(home / "features")) == extractions  # no feature work either
    assert "finished cases: 1 reused their stored result" in second.stdout.str()

    # a reused record is still checked against its expected value
    values = yaml.safe_load(expected.read_text())
    entry = values["cases"][record["case_id"]]
    entry["value"] = entry["value"] + 0.5
    expected.write_text(yaml.safe_dump(values))
    failed = run()
    failed.assert_outcomes(failed=1)
    assert _records(results) == [record_path]
    entry["value"] = record["primary_value"]
    expected.write_text(yaml.safe_dump(values))

    rerun = run("--medxfer-rerun")
    rerun.assert_outcomes(passed=1)
    assert len(_records(results)) == 2
    assert _case_events(home)[-1] == "finished"


def test_a_corrupt_record_or_marker_is_a_miss(pytester: pytest.Pytester, tiny: Path) -> None:
    results, home = tiny / "results", tiny / "home"
    args = ("benchmarks", "--suite", "resume", "--medxfer-results", str(results))
    pytester.runpytest_inprocess(*args, "--medxfer-record-only").assert_outcomes(passed=1)
    (record_path,) = _records(results)
    record_path.write_text('{"case_id": ')  # cut short by a crash, say

    pytester.runpytest_inprocess(*args, "--medxfer-record-only").assert_outcomes(passed=1)
    assert _case_events(home) == ["finished", "mismatch", "finished"]
    newest = max(_records(results))
    assert newest != record_path and json.loads(newest.read_text())["primary_value"] >= 0

    (marker,) = record_path.parent.glob("case-*.finished")
    marker.write_text("not json")
    pytester.runpytest_inprocess(*args, "--medxfer-record-only").assert_outcomes(passed=1)
    assert _case_events(home)[-2:] == ["corrupt", "finished"]

    # a valid record file under the right name, written for another key, is not trusted
    newest = max(_records(results))
    foreign = json.loads(newest.read_text())
    foreign["details"]["case_key"] = "0" * CASES.key_length
    newest.write_text(json.dumps(foreign))
    pytester.runpytest_inprocess(*args, "--medxfer-record-only").assert_outcomes(passed=1)
    assert _case_events(home)[-2:] == ["mismatch", "finished"]


def _case_run(results: Path) -> CaseRun:
    (case,) = load_suite("resume").cases()
    run = CaseRun(case, results)
    run.splits()
    return run


def test_one_lock_per_case_two_sessions_run_it_once(tiny: Path) -> None:
    results = tiny / "results"
    spec = get_protocol("linear")
    calls: list[int] = []
    started, go = threading.Event(), threading.Event()

    def slow_run_case(case: Any, config: Any) -> Any:
        calls.append(1)
        started.set()
        go.wait()
        return spec.run_case(case, config)

    slow = dataclasses.replace(spec, run_case=slow_run_case)
    first, second = _case_run(results), _case_run(results)
    config = first.configure(spec.make_config(first))
    assert case_key(first, spec, config) == case_key(second, spec, config)
    outcome: dict[str, Path] = {}
    holder = threading.Thread(
        target=lambda: outcome.setdefault("a", run_or_reuse(first, slow, config))
    )
    holder.start()
    started.wait()  # the first session runs the case, holding its lock
    waiter = threading.Thread(
        target=lambda: outcome.setdefault("b", run_or_reuse(second, slow, config))
    )
    waiter.start()
    go.set()
    holder.join()
    waiter.join()
    assert len(calls) == 1  # the second session waited and reused the first one's record
    assert first.outcome == "computed" and second.outcome == "reused"
    assert outcome["a"] == outcome["b"]
