"""Result records: schema validation, atomic per-case store, loading into pandas."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import harness.cache.atomic
from harness.records.provenance import collect_provenance, git_state
from harness.records.results import (
    SCHEMA_VERSION,
    DatasetInfo,
    ModelInfo,
    ProtocolInfo,
    RecordError,
    ResultRecord,
    load_record,
    new_run_id,
    store,
)
from harness.records.table import load_records


def make_record(
    model: str = "tf_efficientnet_lite0.in1k_pip",
    dataset: str = "demo_modality",
    value: float = 0.87,
    timestamp: str = "2026-01-02T03:04:05.000006Z",
    run_id: str = "20260102T030405Z-abc123",
    **overrides: Any,
) -> ResultRecord:
    fields: dict[str, Any] = {
        "case_id": f"linear/{dataset}/{model}",
        "suite": "demo",
        "profile": "demo",
        "model": ModelInfo(
            name=model,
            category="supervised",
            architecture="tf_efficientnet_lite0",
            weights_source="pip",
            weights_sha256="0" * 64,
            pretraining_data="ImageNet-1k",
        ),
        "dataset": DatasetInfo(
            name=dataset,
            version=1,
            task="binary",
            primary_metric="roc_auc",
            semi_synthetic=False,
            classes=["neg", "pos"],
            n={"train": 80, "val": 20, "test": 50},
        ),
        "protocol": ProtocolInfo(name="linear", version=1, config={"n_c": 45}),
        "metrics": {"accuracy": 0.8, "mean_per_class_accuracy": 0.75, "roc_auc": value},
        "primary_metric": "roc_auc",
        "primary_value": value,
        "hyperparameters": {"C": 0.012},
        "seeds": {"protocol": 0, "dataset": 0},
        "feature_cache": {"train": "hit", "val": "hit", "test": "miss"},
        "timings": {"extraction_s": 1.5, "protocol_s": 0.25, "total_s": 1.75},
        "hardware": {"platform": "test", "cpu_count": 1},
        "versions": {"python": "3.11", "torch": "2.0"},
        "git": {"commit": "a" * 40, "dirty": False},
        "timestamp": timestamp,
        "run_id": run_id,
    }
    fields.update(overrides)
    return ResultRecord(**fields)


def json_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


def test_store_load_round_trip(tmp_path: Path) -> None:
    record = make_record()
    path = store(record, tmp_path)

    assert path == (
        tmp_path
        / "demo"
        / "linear__demo_modality__tf_efficientnet_lite0.in1k_pip"
        / "20260102T030405000006Z-20260102T030405Z-abc123.json"
    )
    assert load_record(path) == record
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION

    frame = load_records(tmp_path)
    assert len(frame) == 1
    row = frame.iloc[0]
    assert row["case_id"] == "linear/demo_modality/tf_efficientnet_lite0.in1k_pip"
    assert row["model"] == "tf_efficientnet_lite0.in1k_pip"
    assert row["model_category"] == "supervised"
    assert row["dataset"] == "demo_modality"
    assert row["dataset_version"] == 1
    assert not row["semi_synthetic"]
    assert row["protocol"] == "linear"
    assert row["protocol_version"] == 1
    assert row["primary_metric"] == "roc_auc"
    assert row["primary_value"] == pytest.approx(0.87)
    assert row["metric_roc_auc"] == pytest.approx(0.87)
    assert row["metric_accuracy"] == pytest.approx(0.8)
    assert row["hyperparameters"] == {"C": 0.012}
    assert row["extraction_s"] == pytest.approx(1.5)
    assert row["protocol_s"] == pytest.approx(0.25)
    assert (row["feature_cache_hits"], row["feature_cache_misses"]) == (2, 1)
    assert row["git_commit"] == "a" * 40
    assert row["path"] == str(path)
    columns = list(frame.columns)
    assert columns.index("primary_value") < columns.index("metric_accuracy")
    assert columns.index("metric_roc_auc") < columns.index("hyperparameters")


def test_record_json_is_strict(tmp_path: Path) -> None:
    record = make_record(
        metrics={"roc_auc": np.float32(0.5), "accuracy": float("nan")},
        primary_value=np.float64(0.5),
        hyperparameters={"C": np.float32(0.25), "k": np.int64(3), "grid": np.arange(2)},
    )
    path = store(record, tmp_path)
    data = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(name))
    assert data["metrics"] == {"roc_auc": 0.5, "accuracy": None}
    assert data["hyperparameters"] == {"C": 0.25, "k": 3, "grid": [0, 1]}
    loaded = load_record(path)
    assert math.isnan(loaded.metrics["accuracy"])


def test_two_runs_keep_both_and_latest_wins(tmp_path: Path) -> None:
    old = store(make_record(value=0.6, timestamp="2026-01-01T00:00:00Z", run_id="r1"), tmp_path)
    new = store(make_record(value=0.9, timestamp="2026-01-03T00:00:00Z", run_id="r0"), tmp_path)
    assert old.exists() and new.exists() and old != new

    latest = load_records(tmp_path)
    assert len(latest) == 1
    assert latest.iloc[0]["primary_value"] == pytest.approx(0.9)
    assert latest.iloc[0]["path"] == str(new)

    every = load_records(tmp_path, latest_only=False)
    assert list(every["primary_value"]) == pytest.approx([0.6, 0.9])


def test_latest_is_per_suite_and_profile(tmp_path: Path) -> None:
    store(make_record(value=0.6), tmp_path)
    store(make_record(value=0.7, suite="other"), tmp_path)
    store(make_record(value=0.8, profile="smoke"), tmp_path)
    frame = load_records(tmp_path)
    assert sorted(frame["primary_value"]) == pytest.approx([0.6, 0.7, 0.8])


def test_store_never_overwrites_same_timestamp_and_run(tmp_path: Path) -> None:
    first = store(make_record(value=0.1), tmp_path)
    second = store(make_record(value=0.2), tmp_path)
    assert first != second
    assert load_record(first).primary_value == pytest.approx(0.1)
    assert load_record(second).primary_value == pytest.approx(0.2)
    assert len(load_records(tmp_path, latest_only=False)) == 2


def test_corrupt_and_temporary_files_are_skipped_with_warning(tmp_path: Path) -> None:
    good = store(make_record(), tmp_path)
    corrupt = good.parent / "20260101T000000000000Z-broken.json"
    corrupt.write_text('{"schema_version": 1, "case_id": ')
    leftover = good.parent / f"x.json{harness.cache.atomic.TMP_INFIX}abc.json"
    leftover.write_text('{"partial": ')

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = load_records(tmp_path)

    messages = [str(warning.message) for warning in caught]
    assert any(str(corrupt) in message and "not valid JSON" in message for message in messages)
    assert any(str(leftover) in message and "temporary" in message for message in messages)
    assert len(frame) == 1
    assert frame.iloc[0]["path"] == str(good)


def test_invalid_record_is_skipped_with_warning(tmp_path: Path) -> None:
    path = tmp_path / "demo" / "case" / "bad.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "case_id": "x"}))
    with pytest.warns(UserWarning, match=re.escape(str(path))):
        frame = load_records(tmp_path)
    assert frame.empty
    assert "primary_value" in frame.columns


def test_from_dict_rejects_wrong_schema_version_naming_the_file(tmp_path: Path) -> None:
    data = make_record().to_dict()
    data["schema_version"] = 99
    path = tmp_path / "record.json"
    path.write_text(json.dumps(data))

    with pytest.raises(RecordError, match=re.escape(str(path)) + r".*schema_version is 99"):
        load_record(path)
    with pytest.raises(RecordError, match=r"^somewhere\.json: schema_version is 99"):
        ResultRecord.from_dict(data, source="somewhere.json")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("primary_value"), "missing required field.*primary_value"),
        (lambda d: d["model"].pop("name"), "field 'model' lacks name"),
        (lambda d: d.update(metrics=[1]), "field 'metrics' must be dict"),
        (lambda d: d["metrics"].update(roc_auc="high"), "metrics.roc_auc"),
        (lambda d: d["dataset"].update(version="1"), "dataset.version' must be an integer"),
        (lambda d: d.update(timestamp="yesterday"), "not ISO-8601"),
    ],
)
def test_from_dict_names_the_bad_field(change: Any, message: str) -> None:
    data = make_record().to_dict()
    change(data)
    with pytest.raises(RecordError, match=r"^rec\.json: .*" + message):
        ResultRecord.from_dict(data, source="rec.json")


def test_crash_mid_write_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write_with = harness.cache.atomic.write_with

    def crashing_write_text(target: Path, text: str) -> None:
        def half_then_crash(handle: Any) -> None:
            handle.write(text[: len(text) // 2].encode())
            handle.flush()
            raise RuntimeError("simulated crash mid-write")

        real_write_with(target, half_then_crash)

    monkeypatch.setattr(harness.cache.atomic, "write_text", crashing_write_text)
    with pytest.raises(RuntimeError, match="mid-write"):
        store(make_record(), tmp_path)

    assert json_files(tmp_path) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_records(tmp_path).empty


def test_crash_before_rename_keeps_older_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    older = store(make_record(value=0.5, timestamp="2026-01-01T00:00:00Z"), tmp_path)

    def crash(path: Path) -> None:
        raise OSError("simulated power loss before rename")

    monkeypatch.setattr(harness.cache.atomic, "_fsync_file", crash)
    with pytest.raises(OSError, match="power loss"):
        store(make_record(value=0.9), tmp_path)

    assert json_files(tmp_path) == [older]
    assert load_records(tmp_path).iloc[0]["primary_value"] == pytest.approx(0.5)


def test_defaults_carry_provenance_and_a_run_id() -> None:
    record = ResultRecord(
        case_id="linear/d/m.x",
        suite="demo",
        profile="smoke",
        model=ModelInfo("m.x", "supervised", "m", "pip"),
        dataset=DatasetInfo("d", 1, "binary", "roc_auc"),
        protocol=ProtocolInfo("linear", 1),
        metrics={"roc_auc": 0.5},
        primary_metric="roc_auc",
        primary_value=0.5,
    )
    provenance = collect_provenance()
    assert record.versions == provenance["versions"]
    assert record.hardware == provenance["hardware"]
    assert record.git == provenance["git"]
    assert record.timestamp.endswith("Z")
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", record.run_id)
    assert new_run_id() != new_run_id()
    ResultRecord.from_dict(record.to_dict())


def test_provenance_contents_and_cache() -> None:
    first = collect_provenance()
    assert set(first) == {"hardware", "versions", "git"}
    assert first["versions"]["python"].count(".") == 2
    assert first["versions"]["medxfer"]
    assert first["versions"]["numpy"] == np.__version__
    assert first["hardware"]["cpu_count"] >= 1
    assert isinstance(first["hardware"]["cuda_available"], bool)
    assert set(first["git"]) == {"commit", "dirty"}
    first["versions"]["numpy"] = "changed"
    assert collect_provenance()["versions"]["numpy"] == np.__version__


def test_git_state_outside_a_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert git_state(tmp_path) == {"commit": None, "dirty": None}
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable at all
    assert git_state(tmp_path) == {"commit": None, "dirty": None}
