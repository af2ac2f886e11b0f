"""Log result records as MLflow runs (optional: needs ``mlflow-skinny``).

One record becomes one MLflow run in the experiment named after its suite
(``medxfer/<suite>``): params are the case (model, dataset, protocol, preset, profile,
versions, seeds and hyperparameters, flattened as ``hp.<name>``), metrics are the
record's metrics plus ``primary_value``, tags carry the case id, run id, git commit and
model category, and the record's JSON is the artifact ``record/<file name>.json``.

By default the store is a SQLite database under the results folder,
``sqlite:///<results_dir>/mlflow/mlflow.db``, with artifacts in
``<results_dir>/mlflow/artifacts``; any tracking URI may be given instead (an
``http(s)://`` server, ``databricks``, a ``file:`` store). ``mlflow-skinny`` reads and
writes a SQLite store when ``sqlalchemy`` and ``alembic`` are installed (the ``mlflow``
extra); full ``mlflow`` is not needed.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.records.results import ResultRecord, load_record

DB_NAME = "mlflow.db"
MAX_PARAM_CHARS = 500  # MLflow's limit on a param value is larger; keep params readable


class TrackingError(RuntimeError):
    """MLflow is not installed, or the tracking store refused the run."""


def default_tracking_uri(results_dir: Path) -> str:
    """``sqlite:///<results_dir>/mlflow/mlflow.db`` (absolute)."""
    return f"sqlite:///{(Path(results_dir) / 'mlflow' / DB_NAME).resolve()}"


def log_record(
    record: ResultRecord | Mapping[str, Any] | Path,
    results_dir: Path | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
) -> str:
    """Log one result record as a finished MLflow run.

    Args:
        record: the record, its ``to_dict()`` form, or the path of its JSON file.
        results_dir: the results root; the default store lives under it. Needed when
            ``tracking_uri`` is None.
        tracking_uri: where to log; None: :func:`default_tracking_uri` of ``results_dir``.
        experiment: the experiment name; None: ``medxfer/<suite>``.

    Returns:
        The MLflow run id.

    Raises:
        TrackingError: when mlflow is not installed or the store cannot be written.
        ValueError: when neither ``results_dir`` nor ``tracking_uri`` is given.
    """
    data = _record_data(record)
    if tracking_uri is None:
        if results_dir is None:
            raise ValueError("log_record needs results_dir or tracking_uri")
        tracking_uri = default_tracking_uri(Path(results_dir))
        (Path(results_dir) / "mlflow").mkdir(parents=True, exist_ok=True)
    name = experiment or f"medxfer/{data['suite']}"
    artifacts = None
    if tracking_uri.startswith("sqlite:") and results_dir is not None:
        artifacts = (Path(results_dir) / "mlflow" / "artifacts").resolve().as_uri()
    elif tracking_uri.startswith("sqlite:"):
        db = Path(tracking_uri[len("sqlite:///") :])
        artifacts = (db.parent / "artifacts").resolve().as_uri()
    client = tracking_client(tracking_uri)  # raises TrackingError without mlflow
    try:
        found = client.get_experiment_by_name(name)
        experiment_id = (
            found.experiment_id
            if found is not None
            else client.create_experiment(name, artifact_location=artifacts)
        )
        run = client.create_run(experiment_id, run_name=str(data["case_id"]), tags=_tags(data))
        run_id = run.info.run_id
        client.log_batch(run_id, metrics=_metrics(data), params=_params(data))
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"{_file_stem(data)}.json"
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            client.log_artifact(run_id, str(path), artifact_path="record")
        client.set_terminated(run_id, "FINISHED")
    except Exception as exc:  # the store's own errors vary by backend
        raise TrackingError(f"cannot log case {data['case_id']} to {tracking_uri}: {exc}") from exc
    return str(run_id)


def tracking_client(tracking_uri: str) -> Any:
    """An ``MlflowClient`` for ``tracking_uri`` (reads runs back; used by :func:`log_record`).

    mlflow-skinny has no model registry for SQLite URIs; the registry (never used here)
    is pointed at a ``file:`` folder beside the database so the client can be built.

    Raises:
        TrackingError: when mlflow is not installed.
    """
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise TrackingError(
            "experiment tracking needs MLflow: pip install 'medxfer[mlflow]' "
            "(mlflow-skinny, sqlalchemy, alembic)"
        ) from exc
    registry = None
    if tracking_uri.startswith("sqlite:///"):
        registry = (Path(tracking_uri[len("sqlite:///") :]).parent / "registry").as_uri()
    try:
        return MlflowClient(tracking_uri=tracking_uri, registry_uri=registry)
    except Exception as exc:  # an unknown scheme, an unreachable store
        raise TrackingError(f"cannot open MLflow tracking store {tracking_uri}: {exc}") from exc


def _record_data(record: ResultRecord | Mapping[str, Any] | Path) -> dict[str, Any]:
    if isinstance(record, ResultRecord):
        return record.to_dict()
    if isinstance(record, Path | str):
        return load_record(Path(record)).to_dict()
    return ResultRecord.from_dict(dict(record)).to_dict()


def _file_stem(data: Mapping[str, Any]) -> str:
    return str(data["case_id"]).replace("/", "__")


def _tags(data: Mapping[str, Any]) -> dict[str, str]:
    git = data.get("git") or {}
    return {
        "medxfer.case_id": str(data["case_id"]),
        "medxfer.run_id": str(data["run_id"]),
        "medxfer.timestamp": str(data["timestamp"]),
        "medxfer.model_category": str(data["model"]["category"]),
        "medxfer.semi_synthetic": str(bool(data["dataset"].get("semi_synthetic"))).lower(),
        "mlflow.source.git.commit": str(git.get("commit") or ""),
    }


def _params(data: Mapping[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    preset = data["protocol"].get("preset") or {}
    values: dict[str, Any] = {
        "suite": data["suite"],
        "suite_version": data.get("suite_version"),
        "profile": data["profile"],
        "model": data["model"]["name"],
        "architecture": data["model"]["architecture"],
        "model_category": data["model"]["category"],
        "weights_source": data["model"]["weights_source"],
        "dataset": data["dataset"]["name"],
        "dataset_version": data["dataset"]["version"],
        "protocol": data["protocol"]["name"],
        "protocol_version": data["protocol"]["version"],
        "preset": preset.get("name", "medxfer"),
        "primary_metric": data["primary_metric"],
        "medxfer_version": (data.get("versions") or {}).get("medxfer"),
    }
    for name, value in sorted((data.get("seeds") or {}).items()):
        values[f"seed.{name}"] = value
    for name, value in sorted((data.get("hyperparameters") or {}).items()):
        values[f"hp.{name}"] = value
    return [Param(key, _param_text(value)) for key, value in values.items() if value is not None]


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:MAX_PARAM_CHARS]


def _metrics(data: Mapping[str, Any]) -> list[Any]:
    from mlflow.entities import Metric

    stamp = _millis(str(data["timestamp"]))
    values = dict(data.get("metrics") or {})
    values["primary_value"] = data.get("primary_value")
    return [
        Metric(name, float(value), stamp, 0)
        for name, value in sorted(values.items())
        if value is not None and math.isfinite(float(value))
    ]


def _millis(timestamp: str) -> int:
    from harness.records.results import parse_timestamp

    return int(parse_timestamp(timestamp).timestamp() * 1000)
