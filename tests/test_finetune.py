"""Tests of the fine-tuning protocol on a tiny CPU backbone and 16 px synthetic images."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from harness.cache.keys import module_sha256
from harness.cache.runs import RunStore
from harness.config.cards import Preprocessing
from harness.data.npz import SplitData
from harness.protocols import finetune
from harness.protocols.base import TaskInfo
from harness.protocols.finetune import (
    FinetuneConfig,
    FineTuned,
    driver,
    fine_tune,
    loop,
    run,
    score,
)
from harness.protocols.finetune.data import InfiniteSampler, inverse_frequency_weights
from harness.protocols.finetune.loop import train_run
from harness.protocols.finetune.network import (
    Classifier,
    clone_state,
    make_criterion,
    param_groups,
)
from harness.protocols.finetune.runtime import Runtime, resolve_runtime
from harness.protocols.finetune.spec import RunOutcome, RunSpec, StepInfo
from harness.zoo import LoadedModel

SIZE = 16
PRE = Preprocessing(SIZE, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear", crop_pct=1.0)
BINARY = TaskInfo("binary", 2, "roc_auc", ("accuracy", "mean_per_class_accuracy", "roc_auc"))
MULTILABEL = TaskInfo("multilabel", 4, "roc_auc", ("accuracy", "roc_auc"))
CPU = Runtime(torch.device("cpu"))
# Small and single-threaded: fast, and bitwise reproducible within the process.
TINY = FinetuneConfig(
    steps=12, batch_size=8, lr=0.05, val_every=4, patience=None, input_size=SIZE, cpu_threads=1
)


class TinyNet(nn.Module):
    """Conv-BN-ReLU x2 and global average pooling: 8 pooled features."""

    num_features = 8

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(x))).mean(dim=(2, 3))


def _backbone(seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    card: Any = None  # the protocol never reads the card
    return LoadedModel(card=card, module=TinyNet().eval(), feature_dim=8, weights_id="tiny")


def _split(n: int, seed: int, positives: float = 0.5, noise: int = 120) -> SplitData:
    """Grey noise; label 1 images carry a brighter 6x6 square at a random place."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) < round(n * positives)).astype(np.int64)
    rng.shuffle(labels)
    images = rng.integers(0, noise, size=(n, SIZE, SIZE)).astype(np.int64)
    for i in np.flatnonzero(labels):
        r, c = rng.integers(0, SIZE - 6, size=2)
        images[i, r : r + 6, c : c + 6] += 90
    return SplitData(np.clip(images, 0, 255).astype(np.uint8), labels)


def _splits(seed: int = 0) -> dict[str, SplitData]:
    return {"train": _split(48, seed), "val": _split(24, seed + 1), "test": _split(32, seed + 2)}


def _multilabel_split(n: int, seed: int) -> SplitData:
    """Four labels: squares in the four quadrants, each present with probability 1/2."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=(n, 4)).astype(np.int64)
    images = rng.integers(0, 100, size=(n, SIZE, SIZE)).astype(np.int64)
    corners = [(0, 0), (0, 8), (8, 0), (8, 8)]
    for i in range(n):
        for j, (r, c) in enumerate(corners):
            if labels[i, j]:
                images[i, r + 1 : r + 7, c + 1 : c + 7] += 120
    return SplitData(np.clip(images, 0, 255).astype(np.uint8), labels)


def _spec(**overrides: object) -> RunSpec:
    base = {
        "name": "t",
        "lr": 0.05,
        "weight_decay": 0.0,
        "steps": 20,
        "horizon": 20,
        "batch_size": 8,
        "val_every": 2,
        "patience": 2,
        "crop_scale": (0.5, 1.0),
    }
    base.update(overrides)
    return RunSpec(**base)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the training store logs its events in the cache home
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))


def _runs(folder: Path, case_id: str) -> RunStore:
    return RunStore(folder, {"case_id": case_id})


def _training_folders(folder: Path) -> list[Path]:
    return [path for path in folder.glob("ft-*") if path.is_dir()]


@pytest.fixture(autouse=True)
def _restore_threads():
    # _train runs single-threaded; later tests on this worker get the count back
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _train(spec: RunSpec, validate=None, callback=None) -> RunOutcome:
    data = _splits()["train"]
    torch.set_num_threads(1)
    return train_run(
        spec,
        _backbone().module,
        8,
        2,
        data.images,
        data.labels,
        PRE,
        nn.CrossEntropyLoss(),
        CPU,
        validate=validate,
        callback=callback,
        progress=False,
    )


# ----------------------------------------------------------------- early stopping


def test_early_stopping_restores_a_deep_copy_of_the_best_weights() -> None:
    # Pass 1 (no early stopping) records a weight statistic at every validation.
    trajectory: list[float] = []

    def record(model: nn.Module) -> float:
        trajectory.append(float(model.head.weight[0].detach().double().sum()))
        return 0.0

    _train(_spec(patience=None, steps=12), validate=record)
    peak = trajectory[1]  # the score peaks exactly at the 2nd validation (step 4)

    def validate(model: nn.Module) -> float:
        return -abs(float(model.head.weight[0].detach().double().sum()) - peak)

    outcome = _train(_spec(patience=2, steps=12), validate=validate)
    scores = [s for _, s in outcome.val_curve]
    assert outcome.best_step == 4 and outcome.best_score == max(scores) == 0.0
    # two validations without improvement after the peak, then stop
    assert outcome.stopped_early and outcome.steps_done == 8
    assert len(scores) == 4 and scores[2] < 0 and scores[3] < 0
    # The restored model scores exactly the recorded peak: the best copy was not the
    # live (later-trained) state dict, which the peer's aliasing bug would have returned.
    assert outcome.restored_best
    assert validate(outcome.model) == outcome.best_score
    assert outcome.best_state is not None
    stored = {k: v.clone() for k, v in outcome.best_state.items()}
    live = outcome.model.state_dict()
    assert all(live[k].data_ptr() != outcome.best_state[k].data_ptr() for k in outcome.best_state)
    with torch.no_grad():
        outcome.model.head.weight.add_(1.0)
    assert all(torch.equal(stored[k], outcome.best_state[k]) for k in stored)


def test_a_tie_is_not_an_improvement() -> None:
    outcome = _train(_spec(patience=3, steps=20), validate=lambda model: 0.5)
    assert outcome.best_step == 2  # the first validation; later equal scores never replace it
    assert outcome.stopped_early and outcome.steps_done == 8  # 3 non-improvements after it
    assert [s for _, s in outcome.val_curve] == [0.5] * 4


def test_nan_scores_never_improve() -> None:
    scores = iter([math.nan, 0.3, math.nan, 0.2, 0.3])
    outcome = _train(_spec(patience=None, steps=10), validate=lambda model: next(scores))
    assert outcome.best_step == 4 and outcome.best_score == 0.3


# ----------------------------------------------------------------- resume


def test_interrupted_case_resumes_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    splits = _splits()
    reference = run(_backbone(), splits, BINARY, TINY, PRE, progress=False)
    assert reference.details["resumed_from_step"] == 0

    class Interrupt(Exception):
        pass

    def stop_at_7(info: StepInfo) -> None:
        if info.step == 7:
            raise Interrupt

    ckpt = tmp_path / "case"
    with pytest.raises(Interrupt):
        run(
            _backbone(),
            splits,
            BINARY,
            TINY,
            PRE,
            _runs(ckpt, "case-1"),
            progress=False,
            callback=stop_at_7,
        )
    folders = _training_folders(ckpt)
    assert len(folders) == 1
    checkpoint = folders[0] / "main.pt"
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert payload["step"] == 4 and payload["sampler_position"] == 4 * TINY.batch_size
    for key in ("model", "optimizer", "scheduler", "scaler", "rng", "best_state", "best_score"):
        assert key in payload
    assert set(payload["rng"]) >= {"torch", "numpy", "python"}
    assert payload["bad_evals"] == 0 and payload["best_step"] == 4

    resumed = run(_backbone(), splits, BINARY, TINY, PRE, _runs(ckpt, "case-1"), progress=False)
    assert resumed.details["resumed_from_step"] == 4
    assert resumed.metrics == reference.metrics
    for key in ("final_weights_sha256", "val_curve", "loss_curve", "best_step"):
        assert resumed.details[key] == reference.details[key]
    assert resumed.hyperparameters == reference.hyperparameters
    # the weights are deleted once the case completed; only its result (and its lock) stays
    kept = [p.name for p in ckpt.iterdir() if not p.name.endswith(".lock")]
    assert len(kept) == 1 and kept[0].endswith(".completed.json")
    assert resumed.details["reused_completed_run"] is False


def test_a_finished_case_resumes_at_the_end_without_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    splits = _splits()
    ckpt = tmp_path / "case"
    first = run(_backbone(), splits, BINARY, TINY, PRE, _runs(ckpt, "case-1"), progress=False)

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished case must not train again")

    monkeypatch.setattr(driver, "fine_tune", no_training)
    again = run(_backbone(), splits, BINARY, TINY, PRE, _runs(ckpt, "case-1"), progress=False)
    assert again.metrics == first.metrics and again.details["reused_completed_run"] is True
    assert again.details["final_weights_sha256"] == first.details["final_weights_sha256"]
    with pytest.raises(AssertionError, match="must not train again"):
        run(
            _backbone(),
            splits,
            BINARY,
            TINY,
            PRE,
            _runs(ckpt, "case-1"),
            progress=False,
            reuse_completed=False,
        )
    other_seed = TINY.__class__(**{**TINY.to_dict(), "seed": TINY.seed + 1})
    with pytest.raises(AssertionError, match="must not train again"):
        run(_backbone(), splits, BINARY, other_seed, PRE, _runs(ckpt, "case-1"), progress=False)


def test_a_changed_config_does_not_resume_a_stale_checkpoint(tmp_path: Path) -> None:
    splits = _splits()

    def stop_at_5(info: StepInfo) -> None:
        if info.step == 5:
            raise KeyboardInterrupt

    ckpt = tmp_path / "case"
    with pytest.raises(KeyboardInterrupt):
        run(
            _backbone(),
            splits,
            BINARY,
            TINY,
            PRE,
            _runs(ckpt, "case-1"),
            progress=False,
            callback=stop_at_5,
        )
    (stale,) = _training_folders(ckpt)
    changed = FinetuneConfig(**{**TINY.__dict__, "steps": 8})
    result = run(_backbone(), splits, BINARY, changed, PRE, _runs(ckpt, "case-1"), progress=False)
    assert result.details["resumed_from_step"] == 0
    assert not stale.exists()


def test_sampler_position_is_a_function_of_the_step() -> None:
    whole = InfiniteSampler(10, seed=3)
    stream = [item for _, item in zip(range(35), whole, strict=False)]
    tail = [item for _, item in zip(range(12), InfiniteSampler(10, seed=3, start=23), strict=False)]
    assert stream[23:35] == tail
    assert sorted(i for i, _ in stream[10:20]) == list(range(10))  # each epoch a permutation


# ----------------------------------------------------------------- metrics from probabilities


def test_reported_auc_comes_from_probabilities_not_argmax() -> None:
    # A model whose probabilities rank the classes perfectly but whose argmax says
    # "class 1" for every image: AUC from probabilities is 1, from argmax 0.5.
    class Brightness(nn.Module):
        num_features = 1

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(1, 2, 3)).unsqueeze(1)

    model = Classifier(Brightness(), 1, 2)
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[0.0], [10.0]]))
        model.head.bias.copy_(torch.tensor([0.0, 20.0]))
    test = _split(40, 9)
    fitted = FineTuned(model.eval(), CPU)
    metrics, _, probabilities = score(fitted, test, BINARY, TINY, PRE)
    assert np.all(probabilities.argmax(axis=1) == 1)
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(test.labels, probabilities[:, 1]))
    assert metrics["roc_auc"] > 0.95
    assert roc_auc_score(test.labels, probabilities.argmax(axis=1)) == 0.5
    assert metrics["accuracy"] == 0.5


def test_run_reports_the_auc_of_its_probabilities() -> None:
    splits = _splits()
    fitted = fine_tune(
        _backbone(), splits["train"], splits["val"], BINARY, TINY, PRE, progress=False
    )
    metrics, _, probabilities = score(fitted, splits["test"], BINARY, TINY, PRE)
    result = run(_backbone(), splits, BINARY, TINY, PRE, progress=False)
    assert result.metrics == metrics
    y = splits["test"].labels
    assert metrics["roc_auc"] == roc_auc_score(y, probabilities[:, 1])
    assert metrics["roc_auc"] != roc_auc_score(y, probabilities.argmax(axis=1))


# ----------------------------------------------------------------- grid search


def train_loader_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of images of every training loader built from now on (filled as they are)."""
    sizes: list[int] = []
    original = loop.train_loader

    def spy(images, *args, **kwargs):
        sizes.append(len(images))
        return original(images, *args, **kwargs)

    monkeypatch.setattr(loop, "train_loader", spy)
    return sizes


def test_grid_search_selects_on_val_and_retrains_on_train_plus_val(monkeypatch) -> None:
    sizes = train_loader_sizes(monkeypatch)
    config = FinetuneConfig(
        **{**TINY.__dict__, "grid_search": True, "grid_lrs": (1e-5, 0.1), "grid_ws": (0.0, 1e-3)}
    )
    splits = _splits()
    result = run(_backbone(), splits, BINARY, config, PRE, progress=False)
    table = result.details["grid"]
    assert [(row["lr"], row["w"]) for row in table] == [
        (1e-5, 0),
        (1e-5, 1e-3),
        (0.1, 0),
        (0.1, 1e-3),
    ]
    assert all(row["weight_decay"] == row["w"] / row["lr"] for row in table)
    scores = [row["val_score"] for row in table]
    chosen = result.details["chosen_index"]
    assert scores[chosen] == max(scores) and scores.index(max(scores)) == chosen  # first of ties
    assert result.hyperparameters["lr"] == 0.1  # the tiny lr cannot learn in 12 steps
    assert max(scores[2:]) > max(scores[:2])
    assert result.hyperparameters["weight_decay"] == table[chosen]["weight_decay"]
    n_train, n_val = len(splits["train"]), len(splits["val"])
    assert sizes == [n_train] * 4 + [n_train + n_val]
    assert result.details["fit_split"] == "train+val"
    assert result.details["n_fit"] == n_train + n_val
    assert result.hyperparameters["steps"] == table[chosen]["best_step"]
    assert result.details["steps_done"] == table[chosen]["best_step"]


def interrupted_and_resumed(
    config: FinetuneConfig, folder: Path, second_run: str
) -> tuple[Any, Any, list[StepInfo]]:
    """A sweep case run once through, then interrupted at step 6 of ``second_run`` and resumed.

    Returns:
        The uninterrupted result, the resumed one and the steps the resumed session trained.
    """
    splits = _splits()
    reference = run(_backbone(), splits, BINARY, config, PRE, progress=False)

    def stop_in_second_run(info: StepInfo) -> None:
        if info.run == second_run and info.step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(
            _backbone(),
            splits,
            BINARY,
            config,
            PRE,
            _runs(folder, "g"),
            callback=stop_in_second_run,
        )
    trained: list[StepInfo] = []
    resumed = run(
        _backbone(), splits, BINARY, config, PRE, _runs(folder, "g"), callback=trained.append
    )
    return reference, resumed, trained


def test_an_interrupted_grid_search_resumes_without_redoing_finished_points(
    tmp_path: Path,
) -> None:
    config = FinetuneConfig(
        **{**TINY.__dict__, "grid_search": True, "grid_lrs": (0.1,), "grid_ws": (0.0, 1e-3)}
    )
    reference, resumed, trained = interrupted_and_resumed(config, tmp_path, "grid01")
    assert {info.run for info in trained} == {"grid01", "retrain"}  # grid00 was done
    assert min(i.step for i in trained if i.run == "grid01") == 5  # resumed after step 4
    assert resumed.details["resumed_runs"]["grid01"] == 4
    assert resumed.details["resumed_from_step"] == 4
    assert resumed.details["grid"][0]["val_score"] == reference.details["grid"][0]["val_score"]
    assert resumed.metrics == reference.metrics
    assert resumed.details["final_weights_sha256"] == reference.details["final_weights_sha256"]


# ----------------------------------------------------------------- freeze, layer decay, LR finder


def test_freeze_then_unfreeze() -> None:
    initial = module_sha256(_backbone().module)
    backbones: dict[int, str] = {}
    heads: dict[int, str] = {}

    def watch(info: StepInfo) -> None:
        backbones[info.step] = module_sha256(info.model.backbone)
        heads[info.step] = module_sha256(info.model.head)

    _train(_spec(steps=6, freeze_steps=3, select_best=False, patience=None), callback=watch)
    # parameters and BatchNorm statistics stay put while frozen; the head trains
    assert [backbones[s] for s in (1, 2, 3)] == [initial] * 3
    assert len({heads[s] for s in (1, 2, 3)}) == 3
    assert all(backbones[s] != initial for s in (4, 5, 6))
    assert len({backbones[s] for s in (4, 5, 6)}) == 3


def test_layer_decay_groups_scale_lr_with_depth() -> None:
    import timm

    backbone = timm.create_model("test_efficientnet", num_classes=0)
    model = Classifier(backbone, backbone.num_features, 3)
    groups = param_groups(model, lr=0.1, weight_decay=1e-4, layer_decay=0.5)
    lrs = [g["lr"] for g in groups]
    assert lrs == sorted(lrs) and lrs[-1] == 0.1 and len(set(lrs)) >= 3
    for earlier, later in itertools.pairwise(lrs):
        assert later in (earlier, pytest.approx(earlier * 2))  # one decay step per layer
    assert groups[-1]["params"] == list(model.head.parameters())
    stem = backbone.conv_stem.weight
    assert any(p is stem for p in groups[0]["params"]) and groups[0]["lr"] < 0.1
    assert all(g["weight_decay"] == 1e-4 for g in groups)
    n = sum(len(g["params"]) for g in groups)
    assert n == len(list(model.parameters()))


def test_layer_decay_on_a_torchvision_backbone_is_a_clear_error() -> None:
    import torchvision

    from harness.zoo.build import _TorchvisionBackbone

    backbone = _TorchvisionBackbone(torchvision.models.mobilenet_v3_small(weights=None))
    model = Classifier(backbone, backbone.num_features, 2)
    with pytest.raises(ValueError, match="torchvision"):
        param_groups(model, 0.1, 0.0, 0.75)


def test_lr_finder_picks_from_its_log_grid() -> None:
    config = FinetuneConfig(
        **{**TINY.__dict__, "lr_finder": True, "lr_finder_points": 3, "lr_finder_steps": 4}
    )
    assert FinetuneConfig().finder_lrs()[0] == 1e-5 and len(FinetuneConfig().finder_lrs()) == 25
    result = run(_backbone(), _splits(), BINARY, config, PRE, progress=False)
    finder = result.details["lr_finder"]
    assert finder["lrs"] == pytest.approx([1e-5, 10**-3.5, 1e-2])
    scores = finder["val_scores"]
    assert finder["chosen_index"] == int(np.nanargmax(scores))
    assert result.hyperparameters["lr"] == finder["lrs"][finder["chosen_index"]]


# ----------------------------------------------------------------- multilabel, class weights


def test_multilabel_trains_bce_and_scores_auroc_over_eval_labels() -> None:
    splits = {"train": _multilabel_split(48, 0), "val": _multilabel_split(24, 1)}
    test = _multilabel_split(40, 2)
    config = FinetuneConfig(**{**TINY.__dict__, "eval_labels": (0, 2)})
    fitted = fine_tune(
        _backbone(), splits["train"], splits["val"], MULTILABEL, config, PRE, progress=False
    )
    assert fitted.details["loss"] == "bce" and fitted.details["eval_labels"] == [0, 2]
    metrics, notes, probabilities = score(fitted, test, MULTILABEL, config, PRE)
    assert probabilities.shape == (40, 4)
    assert not np.allclose(probabilities.sum(axis=1), 1.0)  # sigmoid per label, not softmax
    expected = np.mean([roc_auc_score(test.labels[:, j], probabilities[:, j]) for j in (0, 2)])
    assert metrics["roc_auc"] == pytest.approx(expected, abs=1e-15)
    assert notes["roc_auc_n_scored"] == 2
    all_labels = np.mean([roc_auc_score(test.labels[:, j], probabilities[:, j]) for j in range(4)])
    assert metrics["roc_auc"] != all_labels
    with pytest.raises(ValueError, match="multilabel"):
        fine_tune(_backbone(), _split(8, 0), _split(8, 1), BINARY, config, PRE)


def test_inverse_frequency_weights() -> None:
    labels = np.array([0] * 30 + [1] * 10 + [2] * 20)
    weights = inverse_frequency_weights(labels, 3, "multiclass")
    inverse = np.array([1 / 30, 1 / 10, 1 / 20])
    np.testing.assert_allclose(weights, inverse / inverse.mean())
    assert weights.mean() == pytest.approx(1.0)
    multilabel = np.array([[1, 0], [1, 1], [0, 0], [0, 0]])
    np.testing.assert_allclose(inverse_frequency_weights(multilabel, 2, "multilabel"), [1.0, 3.0])
    with pytest.raises(ValueError, match="class"):
        inverse_frequency_weights(np.array([0, 0, 2]), 3, "multiclass")


def test_weighted_loss_is_used_and_recorded() -> None:
    splits = {"train": _split(48, 0, positives=0.25), "val": _split(24, 1), "test": _split(16, 2)}
    config = FinetuneConfig(**{**TINY.__dict__, "steps": 4, "class_weighting": "inverse_frequency"})
    result = run(_backbone(), splits, BINARY, config, PRE, progress=False)
    np.testing.assert_allclose(result.details["class_weights"], [0.5, 1.5])  # 36 vs 12 images
    criterion = make_criterion("binary", np.array([0.5, 1.5]), torch.device("cpu"))
    assert torch.equal(criterion.weight, torch.tensor([0.5, 1.5]))
    unweighted = run(
        _backbone(),
        splits,
        BINARY,
        FinetuneConfig(**{**config.__dict__, "class_weighting": "none"}),
        PRE,
        progress=False,
    )
    assert unweighted.details["class_weights"] is None
    assert unweighted.details["loss_curve"] != result.details["loss_curve"]


# ----------------------------------------------------------------- config, runtime


def test_profiles_and_record_format() -> None:
    paper = FinetuneConfig.for_profile("paper")
    assert (paper.steps, paper.batch_size, paper.lr, paper.weight_decay) == (5000, 64, 1e-2, 1e-8)
    assert (paper.val_every, paper.patience, paper.momentum, paper.nesterov) == (200, 3, 0.9, True)
    assert len(paper.grid()) == 20 and paper.grid()[1] == (0.1, 1e-6, 1e-6 / 0.1)
    smoke = FinetuneConfig.for_profile("smoke")
    assert smoke.steps < FinetuneConfig.for_profile("demo").steps < paper.steps
    json.dumps(paper.to_dict())
    with pytest.raises(ValueError, match="unknown profile"):
        FinetuneConfig.for_profile("huge")
    with pytest.raises(ValueError, match="freeze_steps"):
        FinetuneConfig(steps=10, freeze_steps=10)
    with pytest.raises(ValueError, match="alternatives"):
        FinetuneConfig(grid_search=True, lr_finder=True)


def test_runtime_resolution() -> None:
    cpu = resolve_runtime("cpu", "auto", True)
    assert cpu.precision == "fp32" and cpu.channels_last
    assert resolve_runtime("cpu", "bf16", False).precision == "bf16"
    with pytest.raises(ValueError, match="fp16"):
        resolve_runtime("cpu", "fp16", False)


def test_run_leaves_the_callers_rng_and_model_alone() -> None:
    backbone = _backbone()
    before = clone_state(backbone.module)
    torch.manual_seed(123)
    np.random.seed(123)
    expected_torch = torch.rand(1)
    expected_numpy = np.random.rand()
    torch.manual_seed(123)
    np.random.seed(123)
    run(
        backbone,
        _splits(),
        BINARY,
        FinetuneConfig(**{**TINY.__dict__, "steps": 2}),
        PRE,
        progress=False,
    )
    assert torch.equal(torch.rand(1), expected_torch) and np.random.rand() == expected_numpy
    after = backbone.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert finetune.VERSION >= 1


def test_val_drop_last_scores_each_validation_on_a_fresh_subset_of_full_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from harness.protocols.finetune import validation

    drawn: list[np.ndarray] = []
    original = validation.DroppedLastBatch.next_indices

    def record(self: validation.DroppedLastBatch) -> np.ndarray:
        drawn.append(original(self))
        return drawn[-1]

    monkeypatch.setattr(validation.DroppedLastBatch, "next_indices", record)
    config = FinetuneConfig(**{**TINY.__dict__, "val_drop_last": True, "eval_batch_size": 8})
    fitted = fine_tune(_backbone(), _split(32, 0), _split(20, 1), BINARY, config, PRE)
    assert len(drawn) == len(fitted.details["val_curve"]) >= 2
    assert all(len(kept) == 16 for kept in drawn)  # 20 images, batches of 8: 2 full ones
    assert any(set(a.tolist()) != set(b.tolist()) for a, b in itertools.pairwise(drawn))
    plain = fine_tune(_backbone(), _split(32, 0), _split(20, 1), BINARY, TINY, PRE)
    assert len(drawn) == len(plain.details["val_curve"])  # the plain run draws nothing
