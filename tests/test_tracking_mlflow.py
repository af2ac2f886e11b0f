"""Logging result records to a real local MLflow store and reading them back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.records.results import DatasetInfo, ModelInfo, ProtocolInfo, ResultRecord, store

pytest.importorskip("mlflow")  # the mlflow extra (mlflow-skinny, sqlalchemy, alembic)
pytest.importorskip("sqlalchemy")

from harness.tracking.mlflow import (
    TrackingError,
    default_tracking_uri,
    log_record,
    tracking_client,
)


def make_record(value: float = 0.8) -> ResultRecord:
    return ResultRecord(
        case_id="linear/demo_modality/lite0.in1k",
        suite="demo",
        suite_version=1,
        profile="demo",
        model=ModelInfo("lite0.in1k", "supervised", "tf_efficientnet_lite0", "pip"),
        dataset=DatasetInfo("demo_modality", 1, "multiclass", "accuracy"),
        protocol=ProtocolInfo("linear", 2, {"c_grid": 45}),
        metrics={"accuracy": value, "roc_auc": float("nan"), "accuracy_ci95": 0.01},
        primary_metric="accuracy",
        primary_value=value,
        hyperparameters={"C": 0.0123},
        seeds={"protocol": 0},
        hardware={},
        versions={"medxfer": "0.1.0"},
        git={"commit": "abc123", "dirty": False},
        timestamp="2026-01-02T03:04:05Z",
        run_id="20260102T030405Z-abcdef",
    )


def test_log_record_to_the_default_sqlite_store_under_results(tmp_path: Path) -> None:
    results = tmp_path / "results"
    path = store(make_record(), results)
    run_id = log_record(path, results_dir=results)
    uri = default_tracking_uri(results)
    assert uri == f"sqlite:///{results.resolve()}/mlflow/mlflow.db"
    assert (results / "mlflow" / "mlflow.db").is_file()

    client = tracking_client(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"accuracy": 0.8, "accuracy_ci95": 0.01, "primary_value": 0.8}
    params = run.data.params
    assert params["model"] == "lite0.in1k" and params["protocol_version"] == "2"
    assert params["hp.C"] == "0.0123" and params["seed.protocol"] == "0"
    assert params["preset"] == "medxfer" and params["medxfer_version"] == "0.1.0"
    assert run.data.tags["medxfer.case_id"] == "linear/demo_modality/lite0.in1k"
    assert run.data.tags["mlflow.source.git.commit"] == "abc123"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "medxfer/demo"
    # the artifact is the record itself, stored under the results folder
    (artifact,) = client.list_artifacts(run_id, "record")
    assert artifact.path == "record/linear__demo_modality__lite0.in1k.json"
    local = Path(client.download_artifacts(run_id, artifact.path, str(tmp_path)))
    assert json.loads(local.read_text()) == json.loads(path.read_text())
    assert str((results / "mlflow" / "artifacts").resolve()) in run.info.artifact_uri

    # a second record goes into the same experiment
    second = log_record(make_record(0.9), results_dir=results)
    runs = client.search_runs([run.info.experiment_id], order_by=["metrics.accuracy DESC"])
    assert [r.info.run_id for r in runs] == [second, run_id]


def test_log_record_to_a_given_uri(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    run_id = log_record(make_record().to_dict(), tracking_uri=uri, experiment="mine")
    client = tracking_client(uri)
    assert client.get_experiment_by_name("mine") is not None
    assert client.get_run(run_id).data.metrics["accuracy"] == 0.8
    assert not (tmp_path / "results").exists()


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="results_dir or tracking_uri"):
        log_record(make_record())
    with pytest.raises(TrackingError, match="bogus-scheme://nowhere"):
        log_record(make_record(), tracking_uri="bogus-scheme://nowhere")
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(TrackingError, match="cannot"):
        log_record(make_record(), tracking_uri=f"sqlite:///{blocked}/sub/m.db")
