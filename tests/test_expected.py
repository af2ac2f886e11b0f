"""Expected values: file format, the check and its messages, regeneration, calibration, compare."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.baselines import check, obtained
from harness.baselines import expected as ex
from harness.baselines.calibrate import calibrated_entry, measure_cross_device
from harness.baselines.compare import FailRule, compare_runs
from harness.baselines.tolerance import TOLERANCE_RULE, ToleranceRule
from harness.records.results import DatasetInfo, ModelInfo, ProtocolInfo, ResultRecord, store

CASE = "linear/demo_modality/mobilenet_v2.random"


def _record(
    value: float = 0.80, protocol_version: int = 1, device: str = "cpu", **metrics: float
) -> dict[str, Any]:
    return {
        "details": {"device_class": device},
        "case_id": CASE,
        "profile": "demo",
        "protocol": {"name": "linear", "version": protocol_version},
        "dataset": {"name": "demo_modality", "version": 1},
        "primary_metric": "accuracy",
        "primary_value": value,
        "metrics": {"accuracy": value, "roc_auc": 0.9, **metrics},
        "hardware": {"cpu_count": 2, "machine": "x86_64"},
        "versions": {"torch": "2.14.1"},
        "git": {"commit": "abc123"},
    }


def _entry(value: float = 0.80, tolerance: float = 0.01, **extra: Any) -> dict[str, Any]:
    entry = {
        "profile": "demo",
        "protocol_version": 1,
        "dataset_version": 1,
        "metric": "accuracy",
        "value": value,
        "tolerance": tolerance,
        "source": {
            "kind": "calibration",
            "hardware": "2x x86_64",
            "seeds": 3,
            "versions": {"torch": "2.14.1"},
            "commit": "abc123",
            "date": "2026-11-21",
        },
    }
    entry.update(extra)
    return entry


def _write(path: Path, cases: dict[str, Any], suite: str = "demo", schema: int = 1) -> Path:
    path.write_text(yaml.safe_dump({"schema_version": schema, "suite": suite, "cases": cases}))
    return path


def test_value_within_tolerance_passes(tmp_path: Path) -> None:
    file = ex.load_expected(_write(tmp_path / "demo.yaml", {CASE: _entry()}), "demo")
    assert check.check_record(_record(0.809), file).status == "pass"
    assert check.check_record(_record(0.79), file).status == "pass"


def test_value_outside_tolerance_fails_with_a_readable_diff(tmp_path: Path) -> None:
    file = ex.load_expected(_write(tmp_path / "demo.yaml", {CASE: _entry()}), "demo")
    outcome = check.check_record(_record(0.85), file)
    assert outcome.status == "fail"
    text = outcome.message
    for piece in (CASE, "expected 0.8000", "measured 0.8500", "delta +0.0500", "tolerance 0.0100"):
        assert piece in text
    assert "calibration on 2x x86_64, 3 seeds" in text and str(file.path) in text


def test_other_metrics_are_checked_too(tmp_path: Path) -> None:
    entry = _entry(others={"roc_auc": {"value": 0.95, "tolerance": 0.01}})
    file = ex.load_expected(_write(tmp_path / "demo.yaml", {CASE: entry}), "demo")
    outcome = check.check_record(_record(0.80), file)
    assert (
        outcome.status == "fail" and "roc_auc: expected 0.9500, measured 0.9000" in outcome.message
    )


def test_missing_entry_names_the_case_and_file(tmp_path: Path) -> None:
    file = ex.load_expected(_write(tmp_path / "demo.yaml", {}), "demo")
    outcome = check.check_record(_record(), file)
    assert outcome.status == "missing"
    assert CASE in outcome.message and "demo.yaml" in outcome.message


def test_protocol_version_bump_makes_the_entry_stale(tmp_path: Path) -> None:
    file = ex.load_expected(_write(tmp_path / "demo.yaml", {CASE: _entry()}), "demo")
    outcome = check.check_record(_record(0.80, protocol_version=2), file)
    assert outcome.status == "stale"
    assert "calibrated for linear v1, running v2" in outcome.message


def _under_preset(name: str, version: int) -> dict[str, Any]:
    record = _record(0.80)
    record["protocol"]["preset"] = {"name": name, "version": version}
    return record


def test_an_entry_for_several_presets_checks_each_and_no_other(tmp_path: Path) -> None:
    entry = _entry(preset=["medmnist-transferability v2", "medmnist-transferability-grid v1"])
    path = _write(tmp_path / "demo.yaml", {CASE: entry})
    file = ex.load_expected(path, "demo")
    assert file.entries[CASE].presets == (
        ("medmnist-transferability", 2),
        ("medmnist-transferability-grid", 1),
    )
    for name, version in file.entries[CASE].presets:
        assert check.check_record(_under_preset(name, version), file).status == "pass"
    outcome = check.check_record(_under_preset("medmnist-transferability-grid", 2), file)
    assert outcome.status == "stale"
    assert (
        "calibrated for preset medmnist-transferability v2 or medmnist-transferability-grid v1, "
        "running medmnist-transferability-grid v2"
    ) in outcome.message
    assert check.check_record(_record(0.80), file).status == "stale"  # the default preset
    file.save()  # written back as it was read
    assert yaml.safe_load(path.read_text())["cases"][CASE]["preset"] == entry["preset"]
    single = ex.load_expected(_write(tmp_path / "one.yaml", {CASE: _entry(preset="a v3")}), "demo")
    assert single.entries[CASE].presets == (("a", 3),)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c[CASE].pop("value"), "'value' must be a finite number"),
        (lambda c: c[CASE].update(tolerance=-1), "'tolerance' must be >= 0"),
        (lambda c: c[CASE].update(source={"kind": "rumour"}), "'source' must be a mapping"),
        (lambda c: c[CASE]["source"].pop("seeds"), "calibration source needs field(s) seeds"),
        (lambda c: c[CASE].update(colour="red"), "unknown field(s) colour"),
        (lambda c: c[CASE].update(protocol_version="1"), "'protocol_version' must be an integer"),
        (lambda c: c[CASE].update(preset=["a v1", "b"]), "'preset' must read '<name> v<version>'"),
    ],
)
def test_malformed_entries_name_file_and_case(tmp_path: Path, mutate, message: str) -> None:
    cases = {CASE: copy.deepcopy(_entry())}
    mutate(cases)
    path = _write(tmp_path / "demo.yaml", cases)
    with pytest.raises(ex.ExpectedFileError) as error:
        ex.load_expected(path, "demo")
    assert (
        message in str(error.value) and str(path) in str(error.value) and CASE in str(error.value)
    )


def test_malformed_files_name_the_file(tmp_path: Path) -> None:
    bad_yaml = tmp_path / "a.yaml"
    bad_yaml.write_text("cases: [unclosed")
    with pytest.raises(ex.ExpectedFileError, match=r"a\.yaml: not valid YAML"):
        ex.load_expected(bad_yaml, "demo")
    with pytest.raises(ex.ExpectedFileError, match="schema_version is 7"):
        ex.load_expected(_write(tmp_path / "b.yaml", {}, schema=7), "demo")
    with pytest.raises(ex.ExpectedFileError, match="for suite 'smoke', not 'demo'"):
        ex.load_expected(_write(tmp_path / "c.yaml", {}, suite="smoke"), "demo")
    assert ex.load_expected(tmp_path / "absent.yaml", "demo").entries == {}


def test_tolerance_rule_takes_the_largest_of_spread_interval_and_floor() -> None:
    rule = ToleranceRule(k=3.0, floor=0.005)
    assert rule.tolerance(0.0) == 0.005
    assert rule.tolerance(0.01) == pytest.approx(0.03)
    assert rule.tolerance(0.001, interval=0.012) == pytest.approx(0.012)
    # seed and extraction spreads add in quadrature; a larger observed deviation wins
    assert rule.tolerance(0.003, extraction_std=0.004) == pytest.approx(0.015)
    assert rule.tolerance(0.001, observed=0.02) == pytest.approx(0.02)
    # never below what one test image can change (1/64 for accuracy on 64 images)
    assert rule.tolerance(0.0, resolution=1 / 64) == pytest.approx(0.0157)
    assert TOLERANCE_RULE.version == 2 and "tolerance-v2" in TOLERANCE_RULE.describe()


def test_tolerance_components_are_measured_from_seed_and_kernel_runs() -> None:
    parts = TOLERANCE_RULE.components([0.80, 0.80, 0.80], [0.80, 0.78, 0.80], None, 0.80)
    assert parts["seed_std"] == 0 and parts["seeds"] == 3 and parts["extraction_runs"] == 3
    assert parts["extraction_std"] == pytest.approx(0.011547, abs=1e-6)
    assert parts["observed_max_deviation"] == pytest.approx(0.02)
    assert parts["tolerance"] == pytest.approx(0.0347)


def test_regenerated_entry_keeps_the_previous_tolerance_and_uses_protocol_interval() -> None:
    previous = ex.parse_entry(CASE, _entry(tolerance=0.02), "x")
    entry = obtained.entry_from_record(_record(0.7), previous)
    assert entry.value == 0.7 and entry.tolerance == 0.02
    assert entry.source["kind"] == "regenerated"
    fresh = obtained.entry_from_record(_record(0.7, accuracy_ci95=0.031), None)
    assert fresh.tolerance == pytest.approx(0.031)


def test_obtained_files_merge_into_the_expected_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "demo.yaml", {CASE: _entry()})
    file = ex.load_expected(path, "demo")
    written = obtained.write_obtained(
        path, obtained.entry_from_record(_record(0.9), file.entries[CASE])
    )
    assert written.parent.name == "demo.yaml.obtained"
    assert obtained.merge_obtained(file) == [CASE]
    reloaded = ex.load_expected(path, "demo")
    assert reloaded.entries[CASE].value == 0.9
    assert not list(written.parent.glob("*.yaml"))
    assert check.check_record(_record(0.9), reloaded).status == "pass"


def test_calibrated_entry_uses_mean_and_spread_across_seeds() -> None:
    records = [_record(v) for v in (0.80, 0.82, 0.84)]
    entry = calibrated_entry(records, None)
    assert entry.value == pytest.approx(0.82)
    assert entry.tolerance == pytest.approx(3 * 0.02)
    assert entry.source["kind"] == "calibration" and entry.source["seeds"] == 3
    assert entry.source["values"] == [0.8, 0.82, 0.84]
    assert entry.others["roc_auc"].tolerance == 0.005
    assert entry.device == "cpu"


def test_calibrated_entry_covers_the_kernel_runs_and_writes_its_components() -> None:
    seeds = [_record(0.80), _record(0.80), _record(0.80)]
    kernels = [_record(0.76, roc_auc_extra=0.0), _record(0.80)]
    entry = calibrated_entry(seeds, None, kernels, ["onednn-sse41", "aten-default"])
    parts = entry.tolerance_components
    assert parts["seed_std"] == 0 and parts["extraction_runs"] == 3
    assert entry.tolerance >= 0.04  # the kernel run that moved passes its own check
    assert check.check_record(_record(0.76), _file_with(entry)).status == "pass"
    assert entry.source["kernel_runs"] == {"onednn-sse41": 0.76, "aten-default": 0.8}
    assert "tolerance_components" in entry.to_yaml_dict()


def test_calibrated_tolerance_never_goes_below_one_test_image() -> None:
    def record() -> dict[str, Any]:
        out = _record(0.80)
        out["details"]["metric_notes"] = {"resolution": {"accuracy": 1 / 64, "roc_auc": 1e-3}}
        return out

    entry = calibrated_entry([record(), record(), record()], None, [record()], ["k"])
    assert entry.tolerance_components["resolution"] == pytest.approx(1 / 64, abs=1e-6)
    assert entry.tolerance == pytest.approx(0.0157)  # every run was identical
    assert entry.others["roc_auc"].tolerance == 0.005  # the floor


def _file_with(entry: ex.Expectation, device: str = "cpu") -> ex.ExpectedFile:
    return ex.ExpectedFile(Path("demo.yaml"), "demo", {entry.case_id: entry}, device)


def _store(
    results: Path, value: float, device: str = "cpu", suite: str = "demo", roc_auc: float = 0.9
) -> None:
    record = ResultRecord(
        case_id=CASE,
        suite=suite,
        profile="demo",
        model=ModelInfo("mobilenet_v2.random", "random-init", "mobilenet_v2", "random"),
        dataset=DatasetInfo("demo_modality", 1, "multiclass", "accuracy"),
        protocol=ProtocolInfo("linear", 1),
        metrics={"accuracy": value, "roc_auc": roc_auc},
        primary_metric="accuracy",
        primary_value=value,
        details={"device_class": device},
    )
    store(record, results)


def test_pytest_report_and_compare_give_one_verdict_per_case(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A case failing only on a secondary metric fails in all three, through one check."""
    from harness.records.results import load_record
    from harness.records.table import load_records
    from harness.report.build import render_report

    cards = tmp_path / "cards"
    (cards / "suites").mkdir(parents=True)
    (cards / "suites" / "mine.yaml").write_text("name: mine\n")
    (cards / "expected").mkdir()
    others = {"roc_auc": {"value": 0.9, "tolerance": 0.01}}
    _write(cards / "expected" / "mine.yaml", {CASE: _entry(others=others)}, suite="mine")
    monkeypatch.setenv("MEDXFER_CARDS", str(cards))
    _store(tmp_path / "a", 0.80, suite="mine")
    _store(tmp_path / "b", 0.80, suite="mine", roc_auc=0.85)  # primary still matches

    baselines = check.Baselines("mine")
    assert baselines.path_for("cpu") == cards / "expected" / "mine.yaml"
    (path_b,) = load_records(tmp_path / "b")["path"]
    verdict = baselines.check(load_record(Path(path_b)).to_dict())  # what pytest runs
    assert verdict.status == "fail"
    assert "roc_auc: expected 0.9000, measured 0.8500" in verdict.message

    table, broken = compare_runs(tmp_path / "a", tmp_path / "b", [], fail_on_expected=True)
    assert table[["check_a", "check_b"]].values.tolist() == [["pass", "fail"]]
    assert broken == [f"{CASE}: run B fails its expected-value check"]
    assert compare_runs(tmp_path / "a", tmp_path / "b", [])[1] == []  # opt-in

    report = render_report(load_records(tmp_path / "b"), "t", "mine", baselines)
    (row,) = [line for line in report.splitlines() if line.startswith(f"| `{CASE}`")]
    assert row.split("|")[6].strip() == "FAIL"


def test_compare_fails_only_on_a_regression_beyond_the_rule(tmp_path: Path) -> None:
    _store(tmp_path / "a", 0.80)
    _store(tmp_path / "b", 0.78)
    _, broken = compare_runs(tmp_path / "a", tmp_path / "b", [FailRule.parse("accuracy:0.01")])
    assert len(broken) == 1 and "0.8000 -> 0.7800" in broken[0]
    _, ok = compare_runs(tmp_path / "a", tmp_path / "b", [FailRule.parse("primary:3%")])
    assert ok == []
    with pytest.raises(ValueError, match="METRIC:DELTA"):
        FailRule.parse("accuracy")


def test_committed_expected_files_load_and_the_published_example_cites_its_row() -> None:
    from harness.config.suites import available_suites, load_suite

    for name in available_suites():
        path = ex.expected_path(name)
        if path.is_file():
            ex.load_expected(path, load_suite(name).name)
    example = ex.load_expected(ex.expected_path("paper-example"), "paper-example")
    entry = example.entries["fewshot/shenzhen_cxr/resnet50.tv_in1k"]
    assert entry.source["kind"] == "published"
    assert entry.source["row"] == "supervised r50" and len(entry.source["commit"]) == 40
    assert entry.tolerance == entry.source["interval"]["value"] == 0.0072
    assert "published: jonahanton/SSL_medicalimaging" in entry.source_summary()


def test_a_gpu_run_is_never_silently_checked_against_cpu_values(tmp_path: Path) -> None:
    cpu = ex.load_expected(_write(tmp_path / "demo.yaml", {CASE: _entry()}), "demo")
    assert cpu.device == "cpu" and cpu.entries[CASE].device == "cpu"
    cuda = ex.load_expected(tmp_path / "demo.cuda.yaml", "demo")
    assert cuda.device == "cuda" and not cuda.entries
    outcome = check.check_record(_record(0.80, device="cuda"), cuda, fallback=cpu)
    assert outcome.status == "device" and not outcome.ok
    assert "ran on cuda" in outcome.message and "calibrated on cpu" in outcome.message
    assert check.check_record(_record(0.80, device="cuda"), cpu).status == "device"


def test_a_measured_cross_device_spread_widens_the_tolerance_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "demo.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "schema_version": 2,
                "suite": "demo",
                "device": "cpu",
                "cross_device": {"cuda": {"spread": {"linear": 0.02}, "cases": 1}},
                "cases": {CASE: _entry(device="cpu")},
            }
        )
    )
    cpu = ex.load_expected(path, "demo")
    outcome = check.check_record(
        _record(0.825, device="cuda"), ex.ExpectedFile(Path("x"), "demo", device="cuda"), cpu
    )
    assert outcome.status == "pass"
    assert "tolerance 0.0300" in outcome.message and "widened" in outcome.message
    assert check.check_record(_record(0.835, device="cuda"), cpu).status == "fail"


def test_entries_calibrated_on_the_runs_device_are_used_first(tmp_path: Path) -> None:
    cuda_entry = _entry(value=0.70, device="cuda")
    path = tmp_path / "demo.cuda.yaml"
    path.write_text(
        yaml.safe_dump(
            {"schema_version": 2, "suite": "demo", "device": "cuda", "cases": {CASE: cuda_entry}}
        )
    )
    cuda = ex.load_expected(path, "demo")
    cpu = ex.load_expected(_write(tmp_path / "demo.yaml", {CASE: _entry()}), "demo")
    assert check.check_record(_record(0.70, device="cuda"), cuda, fallback=cpu).status == "pass"
    assert ex.expected_path("demo", "cuda").name == "demo.cuda.yaml"
    assert ex.expected_path("demo").name == "demo.yaml"


def test_an_entry_of_another_device_in_a_file_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "demo.yaml", {CASE: _entry(device="cuda")}, schema=2)
    with pytest.raises(ex.ExpectedFileError, match="entry is for device 'cuda'"):
        ex.load_expected(path, "demo")


def test_cross_device_spread_is_measured_from_records_of_the_other_device(tmp_path: Path) -> None:
    path = _write(tmp_path / "demo.yaml", {CASE: _entry(value=0.80)}, schema=2)
    expected = ex.load_expected(path, "demo")
    _store(tmp_path / "gpu", 0.8123, device="cuda")
    block = measure_cross_device(expected, tmp_path / "gpu")
    assert block["spread"] == {"linear": 0.0123} and block["cases"] == 1
    reloaded = ex.load_expected(path, "demo")
    assert reloaded.cross_device_spread("cuda", "linear") == pytest.approx(0.0123)
    _store(tmp_path / "cpu", 0.81)
    with pytest.raises(ValueError, match="other than cpu"):
        measure_cross_device(expected, tmp_path / "cpu")
