"""Oracle tests of the ``medmnist-transferability`` fine-tune preset.

The reference values are read from DovileDo/transferability-in-medical-imaging@7e308c4 and
written out here: ``src/fine-tuning.py`` (the optimizer, schedule, head, EarlyStopping and
``getAUC``), ``finetuned_AUCs/fined_<flag>.csv`` (each target's ``imagenet`` run with the
lowest ``val_loss``, as ``finetuned_AUCs.ipynb`` selects it; its ``test_auc`` is the
``results/AUCs_dataset.csv`` value).
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from test_finetune_presets import _same, _spec, _train

from harness.protocols.finetune import FinetuneConfig
from harness.protocols.finetune.presets_medmnist import SELECTED, flag_of, selected_run
from harness.protocols.metrics import compute_metrics
from harness.protocols.registry import presets_of

NAME = "medmnist-transferability"
# finetuned_AUCs/fined_<flag>.csv @7e308c4: source_flag == "imagenet", min val_loss ->
# (batch_size, lr, momentum, wd, AUCs_dataset.csv value = that run's test_auc up to the last
# printed digit); every run there has epochs 200.
PEER_SELECTED = {
    "bloodmnist": (256, 0.01, 0.9, 1e-05, 0.9984533762023934),
    "breastmnist": (32, 0.01, 0.0, 1e-05, 0.8851294903926483),
    "chestmnist": (512, 0.1, 0.9, 0.001, 0.6858346232118053),
    "dermamnist": (128, 0.1, 0.0, 1e-06, 0.8946454007292657),
    "octmnist": (64, 0.01, 0.9, 0.0001, 0.9258393333333332),
    "organamnist": (256, 0.1, 0.0, 0.001, 0.9904092401281136),
    "organcmnist": (128, 0.01, 0.9, 1e-06, 0.9808796536724718),
    "organsmnist": (256, 0.1, 0.0, 0.0001, 0.9558214521841136),
    "pathmnist": (256, 0.01, 0.9, 1e-05, 0.9896552816370277),
    "pneumoniamnist": (64, 0.01, 0.0, 1e-06, 0.9834538680692526),
    "retinamnist": (128, 0.01, 0.0, 1e-06, 0.8640816277234675),
    "tissuemnist": (128, 0.001, 0.9, 1e-05, 0.8448806030585987),
}
# src/fine-tuning.py @7e308c4: argparse defaults, EarlyStopping(patience=50), the head.
PEER_DEFAULTS = {"batch_size": 32, "epochs": 30, "lr": 0.001, "momentum": 0.9, "wd": 0.001}
PEER_PATIENCE = 50
PEER_DROPOUT = 0.5


pytestmark = pytest.mark.usefixtures("one_thread_home")


def _case(profile: str, dataset: str = "bloodmnist_224", task: str = "multiclass") -> Any:
    return SimpleNamespace(
        profile=SimpleNamespace(name=profile),
        case=SimpleNamespace(dataset=SimpleNamespace(name=dataset)),
        task=SimpleNamespace(task=task),
    )


def _configure(profile: str, dataset: str = "bloodmnist_224") -> FinetuneConfig:
    return presets_of("finetune")[NAME].configure(_case(profile, dataset))


# ------------------------------------------------------------------ the settings


@pytest.mark.parametrize("flag", sorted(PEER_SELECTED))
def test_paper_config_is_the_selected_run_of_the_peer_script(flag: str) -> None:
    batch, lr, momentum, wd, _ = PEER_SELECTED[flag]
    for dataset in (flag, f"{flag}_224"):
        config = _configure("paper", dataset)
        assert (config.batch_size, config.lr, config.momentum, config.weight_decay) == (
            batch, lr, momentum, wd,
        )  # fmt: skip
        # SGD(..., nesterov=False if momentum == 0.0 else True)
        assert config.optimizer == "sgd" and config.nesterov == (momentum != 0.0)
        # CosineAnnealingLR(T_max=epochs), --epochs 200, a DataLoader without drop_last
        # (stepped once an epoch: scheduler.step() after each epoch's batches)
        assert (config.schedule, config.epochs, config.sampling) == (
            "cosine-epoch", 200, "epochs",
        )  # fmt: skip
        # validation every epoch on val AUC; EarlyStopping(patience=50); `score <= best`
        # is no improvement; the best checkpoint is reloaded for test
        assert (config.val_unit, config.val_every, config.patience) == ("epochs", 1, 50)
        assert config.select_on == "metric" and config.primary_metric == "roc_auc"
        assert not config.tie_improves and config.restore_best
        # fc = Sequential(Dropout(0.5), Linear); flip, RandomResizedCrop(224), rotation
        # (0, 5), sharpness, autocontrast, equalize
        assert config.head_dropout == PEER_DROPOUT and config.head_init == "default"
        assert (config.augmentation, config.crop_scale, config.input_size) == (
            "transferability", (0.08, 1.0), 224,
        )  # fmt: skip
        assert config.rotation == 5.0 and config.amp == "none" and config.loss == "auto"
        assert config.patience == PEER_PATIENCE and not config.grid_search and not config.folds


def test_selected_points_and_defaults() -> None:
    assert {k: v[:4] for k, v in PEER_SELECTED.items()} == SELECTED
    assert selected_run("isic2018") == PEER_DEFAULTS
    other = _configure("paper", "isic2018")
    assert (other.batch_size, other.lr, other.momentum, other.weight_decay, other.epochs) == (
        32, 0.001, 0.9, 0.001, 30,
    )  # fmt: skip
    assert [flag_of(n) for n in ("bloodmnist_224", "bloodmnist", "pcam", "octmnist_28")] == [
        "bloodmnist", "bloodmnist", "", "octmnist",
    ]  # fmt: skip


def test_registered_with_source_and_eval_transform() -> None:
    preset = presets_of("finetune")[NAME]
    assert preset.version == 2 and "@7e308c4:src/fine-tuning.py" in preset.source
    # the eval transform: ToTensor + Normalize on the 224 px images (no resize, no crop)
    assert dict(preset.preprocessing) == {
        "input_size": 224, "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "squash",
    }  # fmt: skip


@pytest.mark.parametrize("profile", ["smoke", "demo"])
def test_small_profiles_keep_the_procedure_at_the_profile_scale(profile: str) -> None:
    paper, small = _configure("paper"), _configure(profile)
    base = FinetuneConfig.for_profile(profile)
    assert small.epochs == {"smoke": 2, "demo": 6}[profile] and small.val_every == 1
    assert (small.batch_size, small.input_size, small.cpu_threads) == (
        base.batch_size, base.input_size, base.cpu_threads,
    )  # fmt: skip
    same = ("lr", "momentum", "nesterov", "weight_decay", "patience", "primary_metric",
            "head_dropout", "rotation", "tie_improves", "restore_best", "sampling",
            "schedule", "augmentation")  # fmt: skip
    assert all(getattr(small, f) == getattr(paper, f) for f in same)


# ------------------------------------------------------------------ early stopping


def _peer_early_stopping(scores: list[float], patience: int) -> tuple[int, int]:
    """src/fine-tuning.py's EarlyStopping (delta 0) over validation scores, written out:
    (validations run, index of the checkpointed validation)."""
    best, counter, saved = None, 0, -1
    for k, score in enumerate(scores):
        if best is None:
            best, saved = score, k
        elif score <= best + 0:
            counter += 1
            if counter >= patience:
                return k + 1, saved
        else:
            best, saved, counter = score, k, 0
    return len(scores), saved


def test_early_stopping_ties_do_not_improve_and_the_best_checkpoint_is_scored() -> None:
    scores = [0.6, 0.7, 0.7, 0.65, 0.7, 0.8, 0.8, 0.8]
    runs, saved = _peer_early_stopping(scores, patience=3)
    assert (runs, saved) == (5, 1)  # the tied 0.7s count against patience
    config = _configure("paper")
    script = iter(scores)
    snapshots: dict[int, Any] = {}
    spec = _spec(patience=3, tie_improves=config.tie_improves, restore_best=config.restore_best)
    outcome = _train(spec, lambda model: next(script), snapshots)
    every = spec.val_every
    assert outcome.stopped_early and outcome.steps_done == runs * every
    assert outcome.best_step == (saved + 1) * every and outcome.restored_best
    assert _same(outcome.model.state_dict(), snapshots[(saved + 1) * every])
    assert outcome.val_score == scores[saved]
    # the sequence tells the rules apart: ties improving would have stopped elsewhere
    script = iter(scores)
    ties = _train(_spec(patience=3, tie_improves=True), lambda model: next(script), {})
    assert ties.steps_done != outcome.steps_done or ties.best_step != outcome.best_step


# ------------------------------------------------------------------ the AUC


def _peer_get_auc(y_true: np.ndarray, y_score: np.ndarray, task: str) -> float:
    """MedMNIST's getAUC as src/fine-tuning.py has it, written out."""
    if task == "multi-label, binary-class":
        return float(np.mean([roc_auc_score(y_true[:, i], y_score[:, i])
                              for i in range(y_score.shape[1])]))  # fmt: skip
    if task == "binary-class":
        return float(roc_auc_score(y_true, y_score[:, -1]))
    return float(np.mean([roc_auc_score((y_true == i).astype(float), y_score[:, i])
                          for i in range(y_score.shape[1])]))  # fmt: skip


@pytest.mark.parametrize(
    ("task", "peer_task", "classes"),
    [
        ("binary", "binary-class", 2),
        ("multiclass", "multi-class", 8),
        ("ordinal", "ordinal-regression", 5),
        ("multilabel", "multi-label, binary-class", 14),
    ],
)
def test_roc_auc_is_medmnist_get_auc(task: str, peer_task: str, classes: int) -> None:
    rng = np.random.default_rng(classes)
    n = 300
    logits = rng.normal(size=(n, classes))
    if task == "multilabel":
        labels = (rng.random((n, classes)) < 0.3).astype(np.int64)
        probs = 1 / (1 + np.exp(-(logits + labels)))
    else:
        labels = np.arange(n) % classes
        logits[np.arange(n), labels] += 1.0
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    ours = compute_metrics(task, labels, probs, ("roc_auc",))["roc_auc"]
    assert math.isclose(ours, _peer_get_auc(labels, probs, peer_task), rel_tol=0, abs_tol=1e-12)
