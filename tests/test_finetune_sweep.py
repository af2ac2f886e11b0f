"""The full-run sweep (``FinetuneConfig.sweep``) and the ``medmnist-transferability-grid`` preset.

Oracles written from DovileDo/transferability-in-medical-imaging@7e308c4: ``src/fine-tuning.py``
``my_test`` (the val loss: ``sum(batch losses) / number of batches`` over a val
``DataLoader`` of the run's batch size, ``CrossEntropyLoss`` on the logits) and
``finetuned_AUCs.ipynb`` (``df.loc[df.groupby('source_flag')['val_loss'].idxmin()]``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from test_finetune import (
    BINARY,
    PRE,
    TINY,
    _backbone,
    _splits,
    interrupted_and_resumed,
    train_loader_sizes,
)
from torch import nn

from harness.protocols.finetune import FinetuneConfig, fine_tune, run
from harness.protocols.finetune.sweep import selected_index
from harness.protocols.registry import presets_of

pytestmark = pytest.mark.usefixtures("one_thread_home")

SWEEP = {"batch_size": (8, 12), "lr": (1e-5, 0.05), "momentum": (0.0, 0.9)}
# finetuned_AUCs/fined_<flag>.csv @7e308c4, source_flag == "imagenet": the batch sizes of the
# runs; every target's runs share lr {1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1}, momentum {0, 0.9} and
# wd {0, 1e-6, 1e-5, 1e-4, 1e-3}.
PEER_BATCH_SIZES = {
    "bloodmnist": {128, 256},
    "breastmnist": {32, 64},
    "chestmnist": {256, 512},
    "dermamnist": {128, 256},
    "octmnist": {64, 128},
    "organamnist": {128, 256},
    "organcmnist": {128, 256},
    "organsmnist": {128, 256},
    "pathmnist": {128, 256},
    "pneumoniamnist": {32, 64},
    "retinamnist": {64, 128},
    "tissuemnist": {128, 256},
}
PEER_LRS = {1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0}
PEER_MOMENTA = {0.0, 0.9}
PEER_WDS = {0.0, 1e-6, 1e-5, 1e-4, 1e-3}


def _config(**overrides: Any) -> FinetuneConfig:
    return dataclasses.replace(TINY, **{"sweep": tuple(SWEEP.items()), **overrides})


def _peer_val_loss(model: nn.Module, val: Any, batch_size: int) -> float:
    """``my_test``'s loss: the plain mean of per-batch ``CrossEntropyLoss`` on the logits.

    The images are already at the input size: ToTensor + Normalize(0.5, 0.5) on grey
    images repeated to three channels is ``PRE``'s eval transform.
    """
    grey = torch.as_tensor(val.images, dtype=torch.float32) / 255.0
    inputs = ((grey - 0.5) / 0.5).unsqueeze(1).expand(-1, 3, -1, -1)
    targets = torch.as_tensor(val.labels, dtype=torch.int64)
    losses = []
    with torch.no_grad():
        for start in range(0, len(targets), batch_size):
            logits = model.eval()(inputs[start : start + batch_size])
            losses.append(nn.CrossEntropyLoss()(logits, targets[start : start + batch_size]).item())
    return sum(losses) / len(losses)


# ------------------------------------------------------------------ the config


def test_a_sweep_is_the_same_config_whatever_order_it_is_written_in() -> None:
    forward = FinetuneConfig(sweep={"batch_size": [8, 12], "lr": [0.1, 0.01]})
    backward = FinetuneConfig(sweep=[("lr", (0.1, 0.01)), ("batch_size", (8.0, 12.0))])
    assert forward == backward
    assert forward.sweep == (("batch_size", (8, 12)), ("lr", (0.1, 0.01)))
    assert forward.to_dict()["sweep"] == {"batch_size": [8, 12], "lr": [0.1, 0.01]}
    assert FinetuneConfig().to_dict()["sweep"] == {}
    # the last field varies fastest, each field's values in the order given
    assert forward.sweep_points() == [
        {"batch_size": b, "lr": lr} for b, lr in itertools.product((8, 12), (0.1, 0.01))
    ]


@pytest.mark.parametrize(
    ("sweep", "culprit"),
    [
        ({"epochs": [1, 2]}, "'epochs' is not one of"),
        ({"lr": []}, "sweep lr needs distinct values"),
        ({"lr": [0.1, 0.1]}, "sweep lr needs distinct values"),
        ({"lr": [0.0, 0.1]}, "sweep lr values must be > 0"),
        ({"batch_size": [0]}, "sweep batch_size values must be > 0"),
        ({"momentum": [-0.9]}, "sweep momentum values must be >= 0"),
        ({"weight_decay": [math.nan]}, "sweep weight_decay values must be finite"),
    ],
)
def test_a_bad_sweep_is_a_clear_error(sweep: dict[str, list[float]], culprit: str) -> None:
    with pytest.raises(ValueError, match=culprit):
        FinetuneConfig(sweep=sweep)


@pytest.mark.parametrize(
    "other", [{"grid_search": True}, {"lr_finder": True}, {"folds": 3}, {"freeze_stage": True}]
)
def test_a_sweep_excludes_the_other_selection_modes(other: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="sweep excludes"):
        FinetuneConfig(sweep={"lr": [0.1]}, **other)
    with pytest.raises(ValueError, match="sweep_select must be one of"):
        FinetuneConfig(sweep={"lr": [0.1]}, sweep_select="val_auc")


# ------------------------------------------------------------------ selection


def test_selection_is_the_notebooks_idxmin_of_the_val_loss() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        losses = rng.choice([0.2, 0.3, 0.5, math.nan], size=12)  # ties and missing values
        if np.isnan(losses).all():
            continue
        table = [{"val_loss": float(v), "val_score": 0.0} for v in losses]
        frame = pd.DataFrame({"source_flag": "imagenet", "val_loss": losses})
        expected = frame.groupby("source_flag")["val_loss"].idxmin().iloc[0]
        assert selected_index(table, "val_loss") == expected


def test_selection_on_the_metric_keeps_the_first_highest_score() -> None:
    table = [{"val_loss": 0.1, "val_score": v} for v in (0.7, math.nan, 0.9, 0.9, 0.2)]
    assert selected_index(table, "metric") == 2
    with pytest.raises(FloatingPointError, match="no point gave a finite val_loss"):
        selected_index([{"val_loss": math.nan, "val_score": 1.0}], "val_loss")


# ------------------------------------------------------------------ the runs


def test_sweep_trains_every_point_on_train_and_scores_the_lowest_val_loss(monkeypatch) -> None:
    sizes = train_loader_sizes(monkeypatch)
    splits = _splits()
    config = _config()
    fitted = fine_tune(
        _backbone(), splits["train"], splits["val"], BINARY, config, PRE, progress=False
    )
    table = fitted.details["sweep"]
    points = [
        dict(zip(SWEEP, values, strict=True)) for values in itertools.product(*SWEEP.values())
    ]
    assert [{k: row[k] for k in SWEEP} for row in table] == points
    assert [row["nesterov"] for row in table] == [p["momentum"] > 0 for p in points]
    # eight runs and the selected point again, all on train only
    assert sizes == [len(splits["train"])] * 9
    assert fitted.details["fit_split"] == "train" and fitted.details["n_fit"] == len(
        splits["train"]
    )
    losses = [row["val_loss"] for row in table]
    chosen = fitted.details["chosen_index"]
    assert chosen == int(np.nanargmin(losses))
    assert {k: fitted.hyperparameters[k] for k in SWEEP} == points[chosen]
    # the scored model's val loss is the study's, on batches of the chosen batch size
    peer = _peer_val_loss(fitted.model, splits["val"], points[chosen]["batch_size"])
    assert fitted.hyperparameters["val_loss"] == pytest.approx(peer, abs=1e-6)
    assert fitted.details["retrained_val_loss"] == pytest.approx(losses[chosen], abs=1e-6)
    # the lr 1e-5 points cannot learn in 12 steps; the chosen one is an lr 0.05 point
    assert points[chosen]["lr"] == 0.05


def test_the_selected_model_is_the_single_run_at_that_point() -> None:
    splits = _splits()
    config = _config(sweep_select="metric")
    result = run(_backbone(), splits, BINARY, config, PRE, progress=False)
    point = {k: result.hyperparameters[k] for k in SWEEP}
    single = dataclasses.replace(TINY, sweep=(), nesterov=point["momentum"] > 0, **point)
    reference = run(_backbone(), splits, BINARY, single, PRE, progress=False)
    scores = [row["val_score"] for row in result.details["sweep"]]
    assert result.details["chosen_index"] == scores.index(max(scores))
    assert result.metrics == pytest.approx(reference.metrics, abs=1e-6)
    assert result.hyperparameters["steps"] == reference.hyperparameters["steps"]


def test_a_diverged_point_is_recorded_and_never_selected() -> None:
    splits = _splits()
    config = dataclasses.replace(TINY, sweep={"lr": (0.05, 1e30)}, momentum=0.9)
    fitted = fine_tune(
        _backbone(), splits["train"], splits["val"], BINARY, config, PRE, progress=False
    )
    diverged = fitted.details["sweep"][1]
    assert diverged["diverged"] and math.isnan(diverged["val_loss"])
    assert fitted.details["chosen_index"] == 0


def test_an_interrupted_sweep_resumes_without_redoing_finished_points(tmp_path: Path) -> None:
    config = _config(sweep={"lr": (0.05,), "momentum": (0.0, 0.9)})
    reference, resumed, trained = interrupted_and_resumed(config, tmp_path, "sweep001")
    assert {info.run for info in trained} == {"sweep001", "selected"}
    assert min(i.step for i in trained if i.run == "sweep001") == 5  # resumed after step 4
    assert resumed.details["resumed_runs"] == {"sweep000": 0, "sweep001": 4, "selected": 0}
    assert resumed.details["sweep"][0]["val_loss"] == reference.details["sweep"][0]["val_loss"]
    assert resumed.metrics == pytest.approx(reference.metrics, abs=1e-6)


# ------------------------------------------------------------------ the preset


def _case(profile: str, dataset: str) -> Any:
    return SimpleNamespace(
        profile=SimpleNamespace(name=profile),
        case=SimpleNamespace(dataset=SimpleNamespace(name=dataset)),
        task=SimpleNamespace(task="multiclass"),
    )


def _preset(name: str, profile: str, dataset: str) -> FinetuneConfig:
    return presets_of("finetune")[name].configure(_case(profile, dataset))


@pytest.mark.parametrize("flag", sorted(PEER_BATCH_SIZES))
def test_the_grid_preset_sweeps_the_studys_120_points(flag: str) -> None:
    config = _preset("medmnist-transferability-grid", "paper", f"{flag}_224")
    points = config.sweep_points()
    assert len(points) == 120 and config.sweep_select == "val_loss"
    assert {p["batch_size"] for p in points} == PEER_BATCH_SIZES[flag]
    assert {p["lr"] for p in points} == PEER_LRS
    assert {p["momentum"] for p in points} == PEER_MOMENTA
    assert {p["weight_decay"] for p in points} == PEER_WDS
    # every other setting is the single-run preset's
    single = _preset("medmnist-transferability", "paper", f"{flag}_224")
    assert dataclasses.replace(config, sweep=(), nesterov=single.nesterov) == single


def test_the_grid_preset_outside_the_study_and_under_small_profiles() -> None:
    other = _preset("medmnist-transferability-grid", "paper", "demo_modality")
    assert {p["batch_size"] for p in other.sweep_points()} == {32}  # the script's default
    for profile, batch in (("smoke", 16), ("demo", 32)):
        small = _preset("medmnist-transferability-grid", profile, "bloodmnist_224")
        points = small.sweep_points()
        assert len(points) == 8 and {p["batch_size"] for p in points} == {batch}
