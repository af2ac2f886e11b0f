"""Oracle tests of the fine-tuning presets (ssl-transfer, SSL_medicalimaging,
BenchmarkTransferLearning): each mechanism a preset switches on is checked against a
reference written here from the peer's documented procedure, on a tiny CPU model."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from harness.config.cards import Preprocessing, get_model_card
from harness.data.npz import SplitData
from harness.protocols.base import TaskInfo
from harness.protocols.finetune import FinetuneConfig, run
from harness.protocols.finetune.data import EpochBatchSampler, train_loader
from harness.protocols.finetune.loop import train_run
from harness.protocols.finetune.network import (
    Classifier,
    clone_state,
    predict,
    validation_loss,
)
from harness.protocols.finetune.optim import make_optimizer
from harness.protocols.finetune.presets import peer_grid, with_overrides
from harness.protocols.finetune.runtime import Runtime
from harness.protocols.finetune.spec import RunOutcome, RunSpec, StepInfo
from harness.protocols.finetune.tencrop import TenCropSet
from harness.protocols.registry import presets_of
from harness.zoo import LoadedModel

SIZE = 16
PRE = Preprocessing(SIZE, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear", crop_pct=1.0)
BINARY = TaskInfo("binary", 2, "roc_auc", ("accuracy", "roc_auc"))
CPU = Runtime(torch.device("cpu"))


class TinyNet(nn.Module):
    """Conv-BN-ReLU and global average pooling: 4 pooled features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))


def _backbone() -> LoadedModel:
    torch.manual_seed(0)
    card: Any = None  # the protocol never reads the card
    return LoadedModel(card=card, module=TinyNet().eval(), feature_dim=4, weights_id="tiny")


def _split(n: int, seed: int) -> SplitData:
    """Grey noise; label 1 images carry a brighter 6x6 square."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(np.int64)
    images = rng.integers(0, 120, size=(n, SIZE, SIZE)).astype(np.int64)
    for i in np.flatnonzero(labels):
        r, c = rng.integers(0, SIZE - 6, size=2)
        images[i, r : r + 6, c : c + 6] += 90
    return SplitData(np.clip(images, 0, 255).astype(np.uint8), labels)


def _splits() -> dict[str, SplitData]:
    return {"train": _split(20, 0), "val": _split(12, 1), "test": _split(12, 2)}


pytestmark = pytest.mark.usefixtures("one_thread_home")


def _train(
    spec: RunSpec, validate: Callable[[nn.Module], float] | None, snapshots: dict[int, Any]
) -> RunOutcome:
    """train_run on the train split, keeping a copy of the weights after every step."""
    data = _splits()["train"]

    def keep(info: StepInfo) -> None:
        snapshots[info.step] = clone_state(info.model)

    return train_run(
        spec,
        _backbone().module,
        4,
        2,
        data.images,
        data.labels,
        PRE,
        nn.CrossEntropyLoss(),
        CPU,
        validate=validate,
        callback=keep,
        progress=False,
    )


def _spec(**overrides: Any) -> RunSpec:
    base: dict[str, Any] = {
        "name": "t",
        "lr": 0.05,
        "weight_decay": 0.0,
        "steps": 16,
        "horizon": 16,
        "batch_size": 8,
        "val_every": 2,
        "patience": 2,
        "crop_scale": (0.5, 1.0),
    }
    return RunSpec(**{**base, **overrides})


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def _images_to_inputs(images: np.ndarray) -> torch.Tensor:
    """The eval transform at native size, crop_pct 1, mean = std = 0.5, written out."""
    x = torch.from_numpy(images).float() / 255.0
    return ((x - 0.5) / 0.5).unsqueeze(1).expand(-1, 3, -1, -1)


# ------------------------------------------------------- SSL_medicalimaging early stopping


def _ssl_medical_stop(scores: list[float], patience: int, every: int, steps: int) -> int:
    """SSL_medicalimaging's FinetuneModel.tune early stopping, written out: the step whose
    (live, never restored) weights are scored."""
    best, counter = None, 0
    for k, score in enumerate(scores):
        step = (k + 1) * every
        if step > steps:
            break
        if best is None:
            best = score
        elif score < best:
            counter += 1
            if counter >= patience:
                return step
        else:  # a tie is an improvement
            best, counter = score, 0
    return steps


def test_ssl_medicalimaging_ties_improve_and_the_last_weights_are_scored() -> None:
    scores = [0.5, 0.5, 0.4, 0.5, 0.3, 0.2, 0.1, 0.1]
    expected_stop = _ssl_medical_stop(scores, patience=2, every=2, steps=16)
    assert expected_stop == 12  # ties at validations 2 and 4 reset the counter

    script = iter(scores)
    snapshots: dict[int, Any] = {}
    spec = _spec(patience=2, tie_improves=True, restore_best=False)
    outcome = _train(spec, lambda model: next(script), snapshots)
    assert outcome.stopped_early and outcome.steps_done == expected_stop
    assert not outcome.restored_best and outcome.best_state is None
    # the weights scored are those after the stopping step, not the best validation's
    assert _same(outcome.model.state_dict(), snapshots[expected_stop])
    assert not _same(outcome.model.state_dict(), snapshots[8])
    assert outcome.best_step == expected_stop and outcome.val_score == scores[5]

    # the medxfer default on the same scores: a tie does not improve, the best is restored
    script = iter(scores)
    default = _train(_spec(patience=2), lambda model: next(script), {})
    assert default.steps_done == 6 and default.best_step == 2 and default.restored_best


def test_ssl_medicalimaging_without_early_stop_scores_the_final_step() -> None:
    scores = [0.1, 0.2, 0.2, 0.3, 0.3, 0.4, 0.4, 0.5]
    assert _ssl_medical_stop(scores, patience=2, every=2, steps=16) == 16
    script = iter(scores)
    snapshots: dict[int, Any] = {}
    spec = _spec(patience=2, tie_improves=True, restore_best=False)
    outcome = _train(spec, lambda model: next(script), snapshots)
    assert not outcome.stopped_early and outcome.steps_done == 16
    assert _same(outcome.model.state_dict(), snapshots[16])


# ------------------------------------------------------- BenchmarkTransferLearning


def _btl_run(losses: list[float], patience: int) -> tuple[int, int, list[float]]:
    """BTL's classification_engine epoch loop written out with torch's own scheduler:
    (stopping epoch, best epoch, lr after every epoch)."""
    optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=2e-4)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=0.5, patience=patience // 2, mode="min", threshold=1e-4, min_lr=0
    )
    best_loss, best_epoch, counter, lrs = 1e6, 0, 0, []
    for epoch, loss in enumerate(losses, start=1):
        scheduler.step(loss)
        lrs.append(optimizer.param_groups[0]["lr"])
        if loss < best_loss:
            best_loss, best_epoch, counter = loss, epoch, 0
        else:
            counter += 1
        if counter > patience:
            return epoch, best_epoch, lrs
    return len(losses), best_epoch, lrs


def test_benchmark_transfer_plateau_and_loss_early_stopping_match_the_peer_loop() -> None:
    losses = [0.9, 0.8, 0.80001, 0.81, 0.7, 0.75, 0.76, 0.77, 0.78, 0.79, 0.8, 0.8]
    stop, best, lrs = _btl_run(losses, patience=4)  # BTL's --patience 4: stop after 5 bad
    assert (stop, best) == (10, 5) and lrs[-1] < 2e-4

    # 20 images, batch 8: an epoch is 3 steps (8, 8, 4)
    script = iter(losses)
    snapshots: dict[int, Any] = {}
    spec = _spec(
        lr=2e-4,
        optimizer="adam",
        schedule="plateau",
        plateau_factor=0.5,
        plateau_patience=2,
        plateau_threshold=1e-4,
        select_on="loss",
        sampling="epochs",
        steps=3 * len(losses),
        horizon=3 * len(losses),
        val_every=3,
        patience=5,  # BTL's `counter > 4`
    )
    outcome = _train(spec, lambda model: -next(script), snapshots)
    assert outcome.steps_done == 3 * stop and outcome.best_step == 3 * best
    assert outcome.restored_best and _same(outcome.model.state_dict(), snapshots[3 * best])
    assert outcome.lrs == pytest.approx([lrs[stop - 1]], rel=1e-12)


def test_adam_matches_torch_adam() -> None:
    torch.manual_seed(1)
    model = Classifier(TinyNet(), 4, 2)
    twin = Classifier(TinyNet(), 4, 2)
    twin.load_state_dict(model.state_dict())
    ours = make_optimizer(_spec(optimizer="adam", lr=1e-3, weight_decay=1e-4), model)
    reference = torch.optim.Adam(twin.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(3):
        for a, b in zip(model.parameters(), twin.parameters(), strict=True):
            g = torch.randn_like(a)
            a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        reference.step()
    assert all(
        torch.allclose(a, b, rtol=1e-6, atol=1e-7)
        for a, b in zip(model.parameters(), twin.parameters(), strict=True)
    )


def test_validation_loss_is_btl_batch_weighted_bce() -> None:
    rng = np.random.default_rng(0)
    probs = rng.uniform(0.01, 0.99, size=(13, 3))
    labels = rng.integers(0, 2, size=(13, 3))
    total, count = 0.0, 0
    for begin in range(0, 13, 4):  # BTL's evaluate(): batch means weighted by batch size
        p = torch.tensor(probs[begin : begin + 4], dtype=torch.float32)
        y = torch.tensor(labels[begin : begin + 4], dtype=torch.float32)
        total += nn.BCELoss()(p, y).item() * len(p)
        count += len(p)
    ours = validation_loss("multilabel", "bce", labels, probs)
    assert ours == pytest.approx(total / count, rel=1e-6)
    # binary under BCE: one sigmoid output, the loss of column 1
    binary = np.stack([1 - probs[:, 0], probs[:, 0]], axis=1)
    expected = -np.mean(
        labels[:, 0] * np.log(probs[:, 0]) + (1 - labels[:, 0]) * np.log(1 - probs[:, 0])
    )
    assert validation_loss("binary", "bce", labels[:, 0], binary) == pytest.approx(expected, 1e-6)


def test_tencrop_averages_the_ten_crops_probabilities() -> None:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 255, size=(3, 20, 20)).astype(np.uint8)
    # resize side = floor(16 / 0.8) = 20: the images keep their size, crops are slices
    pre = Preprocessing(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear", crop_pct=0.8)
    torch.manual_seed(0)
    model = Classifier(TinyNet(), 4, 1).eval()
    probs = predict(model, TenCropSet(images, pre), "binary", CPU, batch_size=2, loss="bce")

    x = _images_to_inputs(images)
    windows = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]
    crops = [x[:, :, r : r + 16, c : c + 16] for r, c in windows]
    crops += [torch.flip(x, dims=(3,))[:, :, r : r + 16, c : c + 16] for r, c in windows]
    with torch.no_grad():
        p1 = torch.stack([torch.sigmoid(model(crop))[:, 0] for crop in crops]).mean(0)
    expected = np.stack([1 - p1.numpy(), p1.numpy()], axis=1)
    assert probs.shape == (3, 2)
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    # not the centre crop alone
    with torch.no_grad():
        centre = torch.sigmoid(model(crops[4]))[:, 0].numpy()
    assert not np.allclose(probs[:, 1], centre, atol=1e-6)


# ------------------------------------------------------- epochs with partial batches


def test_epoch_batches_are_partial_and_resume_exactly() -> None:
    sampler = EpochBatchSampler(10, 4, seed=5)
    stream = iter(sampler)
    batches = [next(stream) for _ in range(6)]
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    for epoch in range(2):  # every epoch is a permutation of the 10 images
        indices = [i for b in batches[3 * epoch : 3 * epoch + 3] for i, _ in b]
        assert sorted(indices) == list(range(10))
    resumed = iter(EpochBatchSampler(10, 4, seed=5, start_step=4))
    assert [next(resumed) for _ in range(2)] == batches[4:6]

    data = _splits()["train"]
    loader = train_loader(data.images, data.labels, PRE, (0.5, 1), 8, 0, 0, sampling="epochs")
    shapes = [x.shape[0] for x, _ in (batch for _, batch in zip(range(4), loader, strict=False))]
    assert shapes == [8, 8, 4, 8]


def test_epoch_based_config_runs_bce_and_tencrop_end_to_end() -> None:
    config = FinetuneConfig(
        batch_size=8,
        lr=1e-3,
        optimizer="adam",
        schedule="plateau",
        sampling="epochs",
        epochs=2,
        val_unit="epochs",
        val_every=1,
        patience=None,
        select_on="loss",
        loss="bce",
        test_tencrop=True,
        input_size=SIZE,
        cpu_threads=1,
    )
    result = run(_backbone(), _splits(), BINARY, config, PRE, progress=False)
    assert result.details["steps_done"] == 6  # 2 epochs of ceil(20 / 8) = 3 steps
    assert [step for step, _ in result.details["val_curve"]] == [3, 6]
    assert all(score < 0 for _, score in result.details["val_curve"])  # negated losses
    assert result.details["loss"] == "bce" and result.details["test_eval"] == "tencrop"
    assert 0.0 <= result.metrics["roc_auc"] <= 1.0


# ------------------------------------------------------- ssl-transfer grid


def test_ssl_transfer_grid_scores_last_weights_and_retrains_all_steps() -> None:
    finals: dict[str, dict[str, torch.Tensor]] = {}

    def keep(info: StepInfo) -> None:
        finals[info.run] = clone_state(info.model)

    config = FinetuneConfig(
        steps=6,
        batch_size=8,
        val_every=2,
        patience=2,  # ignored by grid_score="last": no validation, no early stop
        grid_search=True,
        grid_score="last",
        grid_lrs=(1e-4, 0.1),
        grid_ws=(0.0, 1e-3),
        sampling="epochs",
        input_size=SIZE,
        cpu_threads=1,
    )
    splits = _splits()
    result = run(_backbone(), splits, BINARY, config, PRE, progress=False, callback=keep)
    table = result.details["grid"]
    assert all(row["steps_done"] == 6 and not row["stopped_early"] for row in table)

    # the reference: each point's val AUROC from its last weights, scored by hand
    val = splits["val"]
    reference = []
    for index in range(len(table)):
        model = Classifier(TinyNet(), 4, 2)
        model.load_state_dict(finals[f"grid{index:02d}"])
        with torch.no_grad():
            p = model.eval()(_images_to_inputs(val.images)).softmax(dim=1)[:, 1].numpy()
        reference.append(roc_auc_score(val.labels, p))
    assert [row["val_score"] for row in table] == pytest.approx(reference, abs=1e-9)
    best = int(np.argmax(reference))  # first of ties, as the peer's strict `>`
    assert result.details["chosen_index"] == best
    assert result.hyperparameters["steps"] == 6 and result.details["steps_done"] == 6
    assert result.details["n_fit"] == len(splits["train"]) + len(splits["val"])


# ------------------------------------------------------- the presets themselves


def _case(profile: str) -> Any:
    return SimpleNamespace(profile=SimpleNamespace(name=profile))


def test_presets_are_registered_with_the_peers_settings() -> None:
    presets = presets_of("finetune")
    assert {"ssl-transfer", "ssl-medicalimaging", "benchmark-transfer"} <= set(presets)

    st = presets["ssl-transfer"].configure(_case("paper"))
    assert (st.steps, st.batch_size, st.lr, st.input_size) == (5000, 64, 1e-2, 224)
    assert st.grid_search and st.grid_score == "last" and st.sampling == "epochs"
    assert st.grid_lrs == (0.1, 0.01, 0.001, 0.0001)
    assert st.grid_ws == (0.0, 1e-6, 1e-5, 1e-4, 1e-3)
    assert (st.optimizer, st.schedule, st.nesterov, st.momentum) == ("sgd", "cosine", True, 0.9)
    moco = SimpleNamespace(case=SimpleNamespace(model=get_model_card("resnet50.moco_v2")))
    assert presets["ssl-transfer"].overrides(moco) == {
        "input_size": 224,
        "interpolation": "bicubic",
        "crop_pct": 1.0,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    }

    sm = presets["ssl-medicalimaging"].configure(_case("paper"))
    assert (sm.lr, sm.weight_decay, sm.val_every, sm.patience) == (1e-2, 1e-8, 200, 3)
    assert sm.tie_improves and not sm.restore_best and not sm.grid_search

    btl = presets["benchmark-transfer"].configure(_case("paper"))
    assert (btl.optimizer, btl.lr, btl.weight_decay, btl.batch_size) == ("adam", 2e-4, 0.0, 32)
    assert (btl.schedule, btl.plateau_factor, btl.plateau_patience) == ("plateau", 0.5, 5)
    assert (btl.epochs, btl.val_unit, btl.val_every, btl.patience) == (1000, "epochs", 1, 11)
    assert btl.select_on == "loss" and btl.loss == "bce" and btl.test_tencrop
    assert btl.rotation == 7.0 and not btl.tie_improves and btl.restore_best

    smoke = presets["benchmark-transfer"].configure(_case("smoke"))
    assert smoke.epochs == 2 and smoke.input_size == FinetuneConfig.for_profile("smoke").input_size
    st_smoke = presets["ssl-transfer"].configure(_case("smoke"))
    assert len(st_smoke.grid()) == 6 and st_smoke.grid_score == "last"


def test_peer_grid_and_preprocessing_overrides() -> None:
    # ssl-transfer: lr = logspace(-4, -1, g).flip(), w = [0] + logspace(-6, -3, g)
    lrs, ws = peer_grid(2)
    assert lrs == (0.1, 0.0001) and ws == (0.0, 1e-6, 1e-3)
    ref = torch.logspace(-4, -1, 4).flip(dims=(0,)).tolist()
    assert peer_grid(4)[0] == pytest.approx(ref, rel=1e-6)
    pre = with_overrides(PRE, {"input_size": 224, "crop_pct": 1.0, "interpolation": "bicubic"})
    assert (pre.input_size, pre.crop_pct, pre.interpolation, pre.mean) == (
        224,
        1.0,
        "bicubic",
        PRE.mean,
    )
    with pytest.raises(ValueError, match="no field"):
        with_overrides(PRE, {"sharpness": 1})
