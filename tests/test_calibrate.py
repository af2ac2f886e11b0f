"""medxfer calibrate: every run in a fresh process, kernel runs with fresh caches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from harness.baselines import calibrate as cal
from harness.baselines.expected import load_expected


def test_plan_gives_seed_runs_one_cache_and_each_kernel_run_its_own(tmp_path: Path) -> None:
    runs = cal.plan_runs(tmp_path, seeds=3, kernel_runs=2)
    seeds, kernels = runs[:3], runs[3:]
    assert [r.seed for r in runs] == [0, 1, 2, 0, 0]
    assert len({r.home for r in seeds}) == 1 and all(not r.env for r in seeds)
    homes = {r.home for r in kernels}
    assert len(homes) == 2 and not homes & {seeds[0].home}
    assert [dict(r.env) for r in kernels] == [dict(v.env) for v in cal.KERNEL_VARIANTS[:2]]
    assert len({r.results for r in runs}) == 5
    with pytest.raises(ValueError, match="seeds"):
        cal.plan_runs(tmp_path, seeds=0, kernel_runs=0)
    with pytest.raises(ValueError, match="kernel-runs"):
        cal.plan_runs(tmp_path, seeds=1, kernel_runs=len(cal.KERNEL_VARIANTS) + 1)


def test_kernel_variants_name_real_kernel_switches() -> None:
    known = {
        "ONEDNN_MAX_CPU_ISA",
        "ATEN_CPU_CAPABILITY",
        "OPENBLAS_CORETYPE",
        "MKL_ENABLE_INSTRUCTIONS",
    }
    assert all(set(v.env) <= known and v.env for v in cal.KERNEL_VARIANTS)
    assert len({v.name for v in cal.KERNEL_VARIANTS}) == len(cal.KERNEL_VARIANTS)


@pytest.mark.slow
def test_calibration_runs_fresh_processes_and_caches_and_writes_components(
    tmp_path: Path,
) -> None:
    suite = tmp_path / "tiny.yaml"
    suite.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "profile": "smoke",
                "models": ["mobilenet_v2.tv_in1k_pip"],
                "datasets": ["demo_modality"],
                "protocols": ["linear"],
            }
        )
    )
    out = tmp_path / "tiny.yaml.expected"
    work = tmp_path / "work"
    expected = cal.calibrate(str(suite), 2, ("-q",), out, kernel_runs=1, work_dir=work)

    (entry,) = expected.entries.values()
    parts = entry.tolerance_components
    assert entry.device == "cpu" and parts["seeds"] == 2 and parts["extraction_runs"] == 2
    assert parts["tolerance"] == entry.tolerance >= parts["floor"]
    assert entry.source["kind"] == "calibration"
    assert list(entry.source["kernel_runs"]) == [cal.KERNEL_VARIANTS[0].name]
    assert load_expected(out, "tiny").entries[entry.case_id] == entry

    def record(folder: str) -> dict:
        (path,) = (work / folder).rglob("*.json")
        return json.loads(path.read_text())

    seed0, seed1, kernel = record("seed0"), record("seed1"), record("kernels0")
    assert seed0["run_id"] != seed1["run_id"] != kernel["run_id"]  # one process each
    assert set(seed0["feature_cache"].values()) == {"miss"}  # the seed cache starts empty
    assert set(seed1["feature_cache"].values()) == {"hit"}
    assert set(kernel["feature_cache"].values()) == {"miss"}  # its own empty cache
    assert kernel["hardware"]["kernel_env"] == dict(cal.KERNEL_VARIANTS[0].env)
    assert seed0["hardware"]["kernel_env"] == {}
    assert (work / "home-kernels0" / "data").is_dir()  # the dataset was built again


def test_cli_options_after_the_suite_are_read_and_pytest_args_follow_a_bare_dash_dash(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from harness import cli

    seen = {}

    def fake(suite, seeds, pytest_args, out, kernel_runs, work_dir, resume, merge):
        seen.update(suite=suite, seeds=seeds, args=pytest_args, kernels=kernel_runs, work=work_dir)
        seen.update(resume=resume, merge=merge)

    monkeypatch.setattr(cal, "calibrate", fake)
    argv = ["calibrate", "smoke", "--seeds", "2", "--kernel-runs", "1", "--work-dir", str(tmp_path)]
    assert cli.main([*argv, "--resume", "--merge", "--", "-n", "2"]) == 0
    assert seen == {
        "suite": "smoke",
        "seeds": 2,
        "args": ["-n", "2"],
        "kernels": 1,
        "work": tmp_path,
        "resume": True,
        "merge": True,
    }


def test_resume_reruns_only_unfinished_sessions_each_on_a_fresh_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[str] = []
    failing = {"kernels onednn-sse41"}

    def session(run: cal.CalibrationRun, suite: str, pytest_args) -> int:
        assert not run.results.exists()  # a session never sees an earlier one's records
        if run.starts_cache:
            assert not run.home.exists()
        calls.append(run.label)
        run.results.mkdir(parents=True)
        run.home.mkdir(parents=True, exist_ok=True)
        (run.home / "partial").write_text("cache")
        return 2 if run.label in failing else 0

    monkeypatch.setattr(cal, "run_session", session)
    out, work = tmp_path / "x.yaml", tmp_path / "work"
    with pytest.raises(RuntimeError, match="onednn-sse41"):
        cal.calibrate("smoke", 2, ("-q",), out, kernel_runs=2, work_dir=work)
    assert calls == ["seed 0", "seed 1", "kernels onednn-sse41"]

    calls.clear()
    failing.clear()
    cal.calibrate("smoke", 2, ("-q",), out, kernel_runs=2, work_dir=work, resume=True)
    assert calls == ["kernels onednn-sse41", "kernels aten-default"]

    calls.clear()  # other pytest arguments: nothing finished earlier counts
    cal.calibrate("smoke", 2, ("-x",), out, kernel_runs=1, work_dir=work, resume=True)
    assert calls == ["seed 0", "seed 1", "kernels onednn-sse41"]
    with pytest.raises(ValueError, match="work-dir"):
        cal.calibrate("smoke", 1, (), out, kernel_runs=0, resume=True)


def _record(value: float, cpu: str, kernel_env: dict | None = None) -> dict:
    """A minimal record of one run: accuracy primary, ROC AUC beside it."""
    return {
        "case_id": "knn/demo_modality/tf_efficientnet_lite0.random",
        "profile": "demo",
        "protocol": {"name": "knn", "version": 1},
        "dataset": {"version": 1},
        "primary_metric": "accuracy",
        "primary_value": value,
        "metrics": {"accuracy": value, "roc_auc": 0.66 + value / 10},
        "hardware": {"cpu_count": 2, "cpu_model": cpu, "kernel_env": kernel_env or {}},
        "details": {"metric_notes": {"accuracy": {"resolution": 1 / 300}}},
    }


def test_merge_keeps_the_runs_of_the_machine_the_entry_was_calibrated_on() -> None:
    # the entry as an AVX2 machine calibrated it: every run 0.3133
    epyc = cal.calibrated_entry(
        [_record(0.313333, "EPYC")] * 3, None, [_record(0.313333, "EPYC")] * 2, ["a", "b"]
    )
    assert epyc.tolerance == 0.005
    xeon_runs = [_record(0.32, "Xeon")] * 3
    xeon_kernels = [_record(0.32, "Xeon")] * 2
    alone = cal.calibrated_entry(xeon_runs, epyc, xeon_kernels, ["a", "b"])
    assert abs(alone.value - epyc.value) > alone.tolerance  # the EPYC would fail
    assert "other_hardware" not in alone.source

    merged = cal.calibrated_entry(xeon_runs, epyc, xeon_kernels, ["a", "b"], merge=True)
    assert merged.value == 0.32 and abs(merged.value - epyc.value) <= merged.tolerance
    assert merged.tolerance_components["extraction_runs"] == 3 + 3 + 2
    (other,) = merged.source["other_hardware"]
    assert other["hardware"] == epyc.source["hardware"] != merged.source["hardware"]
    assert other["values"] == [0.313333] * 3 and other["kernel_runs"] == {
        "a": 0.313333,
        "b": 0.313333,
    }
    roc = merged.others["roc_auc"]
    assert abs(roc.value - epyc.others["roc_auc"].value) <= roc.tolerance

    # recalibrating on the Xeon again keeps the EPYC's runs once, and not the Xeon's own
    again = cal.calibrated_entry(xeon_runs, merged, xeon_kernels, ["a", "b"], merge=True)
    assert again.source["other_hardware"] == merged.source["other_hardware"]
    assert again.tolerance == merged.tolerance
