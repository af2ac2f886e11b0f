"""``medxfer submit``: a suite run as shards through submitit's local executor.

Three shards (three processes) share one cache home and one results folder; their records
equal those of one session, none is lost, and every feature key is extracted once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from tiny_cases import MODEL, benchmark_files, prepare_inprocess, tiny_dataset, write_yaml

from harness.cli import build_parser, main
from harness.features import read_events
from harness.submit import (
    ShardResult,
    Submission,
    check_extra_args,
    gathered_records,
    make_executor,
    parse_slurm_params,
    shard_jobs,
    submit_suite,
    summarise,
)

pytest.importorskip("submitit")  # the "cluster" extra
pytest_plugins = ["pytester"]
DATASETS = ("tiny_a", "tiny_b", "tiny_c")
PROTOCOLS = ["knn", "linear"]
EXTRA = ("-p", "no:cacheprovider", "--medxfer-record-only", "-q")


@pytest.fixture
def cards(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Three tiny datasets and suite ``sharded`` (one model x 3 datasets x kNN, linear)."""
    folder = tmp_path / "cards"
    for name in DATASETS:
        tiny_dataset(folder, name)
    write_yaml(
        folder / "suites" / "sharded.yaml",
        {
            "name": "sharded",
            "profile": "smoke",
            "models": [MODEL],
            "datasets": list(DATASETS),
            "protocols": PROTOCOLS,
            "expected_values": "optional",
        },
    )
    benchmark_files(pytester, PROTOCOLS)
    prepare_inprocess(pytester, monkeypatch, folder, tmp_path / "home-single")
    return folder


def _records(results: Path) -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    for path in sorted(results.glob("*/*/*.json")):
        data = json.loads(path.read_text())
        assert data["case_id"] not in records, f"two records of {data['case_id']}"
        records[data["case_id"]] = data
    return records


def _run_sharded(
    monkeypatch: pytest.MonkeyPatch,
    pytester: pytest.Pytester,
    tmp_path: Path,
    shards: int,
    *extra: str,
) -> tuple[Submission, list[ShardResult], Path]:
    home = tmp_path / "home-shared"
    monkeypatch.setenv("MEDXFER_HOME", str(home))
    submission = submit_suite(
        "sharded",
        shards,
        tmp_path / "results-sharded",
        executor="local",
        folder=tmp_path / "jobs",
        tests=pytester.path / "benchmarks",
        extra=(*EXTRA, *extra),
        timeout_min=20,
    )
    outcomes = submission.wait()
    for outcome in outcomes:
        assert outcome.ok, "\n".join(outcome.tail)
    return submission, outcomes, home


@pytest.mark.slow
def test_three_local_shards_write_the_records_of_one_session_extracting_each_key_once(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cards: Path
) -> None:
    single = tmp_path / "results-single"
    one = pytester.runpytest_inprocess(
        "benchmarks", "--suite", "sharded", "--medxfer-results", str(single), *EXTRA
    )
    assert one.ret == 0, one.stdout.str()
    expected = _records(single)
    assert len(expected) == len(DATASETS) * len(PROTOCOLS)

    submission, outcomes, home = _run_sharded(monkeypatch, pytester, tmp_path, 3)

    lines, ok = summarise(submission, outcomes)
    assert ok, lines
    assert sorted(o.index for o in outcomes) == [1, 2, 3]
    assert sum(o.records_written or 0 for o in outcomes) == len(expected)
    records = _records(submission.results)
    assert len(submission.records()) == len(records)  # all carry the run id
    assert sorted(records) == sorted(expected)  # no record lost, none run twice
    for case_id, record in records.items():
        reference = expected[case_id]
        assert record["run_id"] == submission.run_id
        assert record["primary_metric"] == reference["primary_metric"]
        assert record["metrics"] == pytest.approx(reference["metrics"], rel=1e-6, abs=1e-9)
        assert set(record["feature_cache"]) == set(reference["feature_cache"])
    extracts = [e for e in read_events(home / "features") if e["event"] == "extract"]
    keys = [e["key"] for e in extracts]
    assert len(keys) == len(DATASETS) * 3 and len(set(keys)) == len(keys)  # 3 splits each
    assert len({e["pid"] for e in extracts}) == 3  # one feature group per shard

    out = tmp_path / "report.md"
    argv = ["report", "--results", str(submission.results), "--suite", "sharded"]
    assert main([*argv, "--out", str(out), "--no-figures", "--no-html"]) == 0
    report = out.read_text()
    assert all(name in report for name in DATASETS)


@pytest.mark.slow
def test_shards_placing_cases_alone_share_features_through_the_cache(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cards: Path
) -> None:
    # by case, two shards: the kNN and linear cases of one dataset land on different shards
    submission, outcomes, home = _run_sharded(
        monkeypatch, pytester, tmp_path, 2, "--medxfer-shard-by", "case"
    )
    assert summarise(submission, outcomes)[1]
    assert len(_records(submission.results)) == len(DATASETS) * len(PROTOCOLS)
    events = read_events(home / "features")
    extracted = {e["key"]: e["pid"] for e in events if e["event"] == "extract"}
    keys = [e["key"] for e in events if e["event"] == "extract"]
    assert len(keys) == len(DATASETS) * 3 and len(set(keys)) == len(keys)  # once each
    hits = [e for e in events if e["event"] == "hit"]
    assert len(hits) == len(keys)  # the other protocol of each dataset read them
    shared = {e["key"] for e in hits if e["pid"] != extracted[e["key"]]}
    assert shared  # read by a process that did not extract them: shared through the cache
    assert len({e["pid"] for e in events}) == 2


def test_shard_jobs_share_home_results_cards_and_run_id(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDXFER_CARDS", str(tmp_path / "cards"))
    jobs = shard_jobs("smoke", 3, tmp_path / "res", "RUN", extra=["-n", "2"])
    assert [job.index for job in jobs] == [1, 2, 3]
    for job in jobs:
        command = list(job.command)
        assert command[command.index("--medxfer-shard") + 1] == f"{job.index}/3"
        assert command[command.index("--suite") + 1] == "smoke"
        assert command[command.index("--medxfer-results") + 1] == str(tmp_path / "res")
        assert command[-2:] == ["-n", "2"] and "harness.plugin_shard" in command
        assert job.env["MEDXFER_HOME"] == str(tmp_path / "home")
        assert job.env["MEDXFER_CARDS"] == str(tmp_path / "cards")
        assert job.env["MEDXFER_RUN_ID"] == "RUN"
    with pytest.raises(ValueError, match="at least 1"):
        shard_jobs("smoke", 0, tmp_path, "RUN")


@pytest.mark.parametrize(
    "arg", ["--suite=x", "--medxfer-shard", "--medxfer-results", "--medxfer-regen"]
)
def test_arguments_submit_sets_itself_are_refused(arg: str) -> None:
    with pytest.raises(ValueError, match=arg.split("=")[0]):
        check_extra_args(["-q", arg])


def test_summary_counts_gathered_records_against_what_shards_wrote(tmp_path: Path) -> None:
    folder = tmp_path / "smoke" / "knn__d__m"
    folder.mkdir(parents=True)
    (folder / "20260101T000000000000Z-RUN.json").write_text("{}")
    (folder / "20260101T000000000001Z-OTHER.json").write_text("{}")
    assert [p.name for p in gathered_records(tmp_path, "RUN")] == [
        "20260101T000000000000Z-RUN.json"
    ]
    submission = Submission("RUN", tmp_path, [], tmp_path / "jobs")
    fine = [ShardResult(1, 2, 0, "1 passed in 1s", 1), ShardResult(2, 2, 5)]
    lines, ok = summarise(submission, fine)
    assert ok and "shard 2/2: no case in this shard" in lines
    lines, ok = summarise(submission, [ShardResult(1, 2, 0, "", 2), ShardResult(2, 2, 0)])
    assert not ok and any("MISSING" in line for line in lines)
    assert not summarise(submission, [ShardResult(1, 1, 1, "1 failed in 1s", 1)])[1]


def test_cli_parses_submit_with_pytest_args_after_dash_dash() -> None:
    args = build_parser().parse_args(
        ["submit", "smoke", "--shards", "3", "--executor", "local", "--no-wait"]
    )
    assert (args.suite, args.shards, args.executor, args.no_wait) == ("smoke", 3, "local", True)
    assert args.func.__name__ == "_cmd_submit"


def test_slurm_executor_gets_the_job_parameters(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from submitit.slurm.slurm import _make_sbatch_string  # what sbatch is given

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    executor = make_executor(
        "slurm",
        tmp_path / "jobs",
        timeout_min=30,
        gpus_per_node=1,
        cpus_per_task=8,
        mem_gb=32.0,
        slurm_partition="gpu",
        slurm_array_parallelism=None,
        slurm_additional_parameters=parse_slurm_params(["account=proj", "constraint=a100"]),
        name="medxfer-smoke",
    )
    script = _make_sbatch_string(command="x", folder=tmp_path, **executor._executor.parameters)
    for flag in (
        "--partition=gpu",
        "--gpus-per-node=1",
        "--cpus-per-task=8",
        "--mem=32GB",
        "--time=30",
        "--account=proj",
        "--constraint=a100",
        "--job-name=medxfer-smoke",
    ):
        assert f"#SBATCH {flag}\n" in script
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_slurm_params(["account"])


def test_slurm_executor_without_srun_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="--executor local"):
        make_executor("slurm", tmp_path / "jobs", timeout_min=5)
