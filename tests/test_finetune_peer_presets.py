"""Oracle tests of the feature-reuse, revisiting-transfer and cats-scans fine-tune presets.

Each mechanism is checked against a reference written here from the peer's documented
procedure (plain torch / numpy / scipy / sklearn), on a tiny CPU model and constructed data.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from test_finetune_presets import BINARY, CPU, PRE, SIZE, TinyNet, _backbone
from torch import nn

from harness.data.npz import SplitData
from harness.protocols.finetune import FinetuneConfig
from harness.protocols.finetune import stages as stages_module
from harness.protocols.finetune.data import EpochBatchSampler
from harness.protocols.finetune.keras import (
    BalancedClassLoss,
    KerasAdam,
    balanced_weights,
    keras_matrix,
    keras_warp,
)
from harness.protocols.finetune.kfold import run_kfold
from harness.protocols.finetune.modes import Context, FineTuned, select_on_val
from harness.protocols.finetune.network import Classifier, clone_state, make_criterion, predict
from harness.protocols.finetune.spec import StepInfo
from harness.protocols.finetune.warmup import WarmupPlateau
from harness.protocols.metrics import compute_metrics
from harness.protocols.registry import presets_of


def _split(n: int, seed: int, classes: int = 2) -> SplitData:
    """Grey noise; class c images carry a square of brightness 60 * c."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % classes).astype(np.int64)
    images = rng.integers(0, 120, size=(n, SIZE, SIZE)).astype(np.int64)
    for i, c in enumerate(labels):
        r, col = rng.integers(0, SIZE - 6, size=2)
        images[i, r : r + 6, col : col + 6] += 60 * c
    return SplitData(np.clip(images, 0, 255).astype(np.uint8), labels)


pytestmark = pytest.mark.usefixtures("one_thread_home")


def _inputs(images: np.ndarray) -> torch.Tensor:
    """The eval transform at native size, crop_pct 1, mean = std = 0.5, written out."""
    x = torch.from_numpy(images).float() / 255.0
    return ((x - 0.5) / 0.5).unsqueeze(1).expand(-1, 3, -1, -1)


def _fine_tune(
    config: FinetuneConfig,
    train: SplitData,
    val: SplitData,
    validate: Callable[[nn.Module], float] | None = None,
    callback: Callable[[StepInfo], None] | None = None,
) -> FineTuned:
    """select_on_val with the val split, the context built as the case driver builds it."""
    criterion = make_criterion("binary", None, CPU.device, config.loss)

    def val_metric(net: nn.Module) -> float:
        from harness.protocols.finetune.data import EvalSet

        probs = predict(net, EvalSet(val.images, PRE), "binary", CPU, 64, config.loss)
        return compute_metrics("binary", val.labels, probs, ("roc_auc",))["roc_auc"]

    ctx = Context(
        _backbone(), BINARY, config, PRE, CPU, criterion, validate or val_metric, None,
        callback, False,
    )  # fmt: skip
    return select_on_val(ctx, train, train.labels, val)


# ------------------------------------------------------------------ feature-reuse


def _peer_warmup_plateau_lrs(
    max_lr: float, warmup: int, per_epoch: int, val_every: int, scores: list[float], n: int
) -> list[float]:
    """feature-reuse's LinearWarmup + MixedLRScheduler, written out: the lr of every
    iteration (1..n) as its trainer steps them (step after the update, validation after)."""
    param = nn.Parameter(torch.zeros(1))
    eta_min = 1e-8
    opt = torch.optim.SGD([param], lr=eta_min)  # LinearWarmup.__init__ sets eta_min
    delta = (max_lr - eta_min) / warmup
    opt.param_groups[0]["lr"] += delta  # _LRScheduler.__init__ steps once: last_epoch 0
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.1, patience=3)
    val_target, script, used = 0.0, iter(scores), []
    for it in range(1, n + 1):
        used.append(opt.param_groups[0]["lr"])
        if it <= warmup:  # LinearWarmup.get_lr: last_epoch = it <= warmup_iters
            opt.param_groups[0]["lr"] += delta
        if (it + 1) % per_epoch == 0:  # MixedLRScheduler: ReduceLROnPlateau(val_target)
            plateau.step(val_target)
        if it % val_every == 0:
            val_target = next(script)
    return used


def test_warmup_plateau_matches_feature_reuse_schedule() -> None:
    scores = [0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.55, 0.5, 0.5, 0.5, 0.5]
    per_epoch, val_every, n = 4, 2, 28
    expected = _peer_warmup_plateau_lrs(1e-3, 6, per_epoch, val_every, scores, n)
    assert expected[0] == pytest.approx(1e-8 + (1e-3 - 1e-8) / 6, rel=1e-12)
    assert max(expected) == pytest.approx(1e-3 + (1e-3 - 1e-8) / 6, rel=1e-12)  # overshoot
    assert min(expected[10:]) < 1e-3  # the plateau reduced the lr

    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1e-3)
    sched = WarmupPlateau(opt, 1e-3, 6, 1e-8, per_epoch, factor=0.1, patience=3)
    script, ours = iter(scores), []
    for it in range(1, n + 1):
        ours.append(opt.param_groups[0]["lr"])
        sched.step()
        if it % val_every == 0:
            sched.observe(next(script))
    assert ours == pytest.approx(expected, rel=1e-12)

    # the same schedule inside a training run (val every half epoch of 4 steps)
    train = _split(16, 0)
    config = FinetuneConfig(
        batch_size=4, lr=1e-3, optimizer="adam", weight_decay=1e-5, schedule="warmup-plateau",
        warmup_iters=6, plateau_factor=0.1, plateau_patience=3, sampling="drop_last",
        epochs=7, val_unit="epochs", val_every=0.5, val_round=3, patience=None,
        input_size=SIZE, cpu_threads=1, grad_clip=1.0,
    )  # fmt: skip
    script = iter([s + 0.0004 for s in scores])  # rounded to 3 decimals before use
    fitted = _fine_tune(config, train, train, validate=lambda net: next(script))
    assert fitted.details["steps_done"] == n
    assert [v for _, v in fitted.details["val_curve"]] == pytest.approx(scores, abs=1e-12)
    after = _peer_warmup_plateau_lrs(1e-3, 6, per_epoch, val_every, scores, n + 1)[-1]
    assert fitted.details["final_lrs"] == pytest.approx([after], rel=1e-12)
    assert fitted.hyperparameters["val_primary"] == 0.6  # first best kept: ties do not improve
    assert fitted.details["best_step"] == 4


def test_feature_reuse_lr_finder_picks_the_lowest_batch_mean_val_loss() -> None:
    train, val = _split(16, 0), _split(10, 1)
    finals: dict[str, dict[str, torch.Tensor]] = {}
    steps: dict[str, int] = {}

    def keep(info: StepInfo) -> None:
        finals[info.run], steps[info.run] = clone_state(info.model), info.step

    config = FinetuneConfig(
        batch_size=4, lr=1e-4, optimizer="adam", weight_decay=1e-5, schedule="warmup-plateau",
        warmup_iters=2, sampling="drop_last", epochs=1, val_unit="epochs", val_every=0.5,
        patience=None, lr_finder=True, lr_finder_min=1e-5, lr_finder_max=1e-1,
        lr_finder_points=4, lr_finder_epochs=1, lr_finder_select="val_loss",
        eval_batch_size=4, input_size=SIZE, cpu_threads=1,
    )  # fmt: skip
    fitted = _fine_tune(config, train, val, callback=keep)
    finder = fitted.details["lr_finder"]
    lrs = 10 ** np.linspace(-5, -1, 4)
    assert finder["lrs"] == pytest.approx(lrs, rel=1e-11)

    # the reference: each candidate's val loss, the plain mean of per-batch CE means
    x, y = _inputs(val.images), torch.as_tensor(val.labels)
    losses = []
    for index in range(4):
        name = f"lrfind{index:02d}"
        assert steps[name] == 16 // 4  # 1 epoch of n // B batches
        model = Classifier(TinyNet(), 4, 2)
        model.load_state_dict(finals[name])
        with torch.no_grad():
            logits = model.eval()(x)
        batches = [nn.functional.cross_entropy(logits[i : i + 4], y[i : i + 4]) for i in (0, 4, 8)]
        losses.append(float(torch.stack(batches).mean()))
    assert [-s for s in finder["val_scores"]] == pytest.approx(losses, abs=1e-6)
    best = int(np.argmin(losses))
    assert finder["chosen_index"] == best
    assert fitted.hyperparameters["lr_finder_lr"] == pytest.approx(lrs[best], rel=1e-11)


# ------------------------------------------------------------------ revisiting-transfer


def _keras_early_stop(values: list[float], patience: int, higher: bool) -> tuple[int, int]:
    """Keras EarlyStopping (min_delta 0) written out: (epochs trained, best epoch)."""
    best, wait, best_epoch = -math.inf, 0, 0
    for epoch, v in enumerate(values, start=1):
        v = v if higher else -v
        if v > best:
            best, wait, best_epoch = v, 0, epoch
        else:
            wait += 1
            if wait >= patience:
                return epoch, best_epoch
    return len(values), best_epoch


def test_revisiting_transfer_freeze_stage_then_fresh_training(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    accuracies = [0.5, 0.6, 0.6, 0.55, 0.5, 0.7, 0.7, 0.6]
    losses = [0.9, 0.8, 0.85, 0.7, 0.7, 0.75, 0.8, 0.9]
    stop1, _ = _keras_early_stop(accuracies, patience=3, higher=True)
    stop2, best2 = _keras_early_stop(losses, patience=3, higher=False)
    assert (stop1, stop2, best2) == (5, 7, 4)

    acc_script, loss_script = iter(accuracies), iter(losses)
    monkeypatch.setattr(stages_module, "val_scorer", lambda ctx, val, q: lambda n: next(acc_script))
    snaps: dict[tuple[str, int], dict[str, torch.Tensor]] = {}

    def keep(info: StepInfo) -> None:
        snaps[(info.run, info.step)] = clone_state(info.model)

    train = _split(12, 0)
    config = FinetuneConfig(
        batch_size=5, lr=1e-3, optimizer="keras-adam", weight_decay=0.0, schedule="constant",
        sampling="epochs", epochs=8, val_unit="epochs", val_every=1, patience=3,
        select_on="loss", freeze_stage=True, freeze_lr=1e-2, freeze_patience=3,
        head_dropout=0.5, augmentation="keras", rotation=10, shift=0.1, shear=0.1, zoom=0.1,
        input_size=SIZE, cpu_threads=1,
    )  # fmt: skip
    fitted = _fine_tune(config, train, train, validate=lambda n: -next(loss_script), callback=keep)
    per_epoch = 3  # ceil(12 / 5), partial last batch
    frozen = fitted.details["freeze_stage"]
    assert frozen["steps_done"] == stop1 * per_epoch and frozen["stopped_early"]
    assert fitted.details["steps_done"] == stop2 * per_epoch
    assert fitted.details["best_step"] == best2 * per_epoch and fitted.details["restored_best"]
    last_frozen = snaps[("freeze", stop1 * per_epoch)]
    start = _backbone().module.state_dict()
    # stage 1 trained the head only: backbone weights and BN statistics untouched
    assert all(torch.equal(last_frozen[f"backbone.{k}"], v) for k, v in start.items())
    # stage 2 started from stage 1's last weights (not its best) and returned its best
    first_main = snaps[("main", 1)]
    assert not torch.equal(first_main["backbone.conv.weight"], start["conv.weight"])
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            fitted.model.state_dict().values(), snaps[("main", best2 * per_epoch)].values(),
            strict=True,
        )
    )  # fmt: skip
    assert fitted.details["final_lrs"] == [1e-3]  # a fresh optimizer at the stage-2 lr


def test_keras_adam_matches_the_keras_update() -> None:
    rng = np.random.default_rng(0)
    theta = rng.normal(size=5)
    grads = [rng.normal(size=5) * 10.0**-k for k in range(6)]
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-7
    m, v, ref = np.zeros(5), np.zeros(5), theta.copy()
    for t, g in enumerate(grads, start=1):  # tf.keras Adam (ResourceApplyAdam)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        lr_t = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        ref = ref - lr_t * m / (np.sqrt(v) + eps)
    p = nn.Parameter(torch.tensor(theta, dtype=torch.float64))
    opt = KerasAdam([p], lr=lr)
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(p.detach().numpy(), ref, rtol=1e-12, atol=1e-15)
    # torch's Adam differs where sqrt(v) is near epsilon
    q = nn.Parameter(torch.tensor(theta, dtype=torch.float64))
    torch_adam = torch.optim.Adam([q], lr=lr)
    for g in grads:
        q.grad = torch.tensor(g)
        torch_adam.step()
    assert not np.allclose(q.detach().numpy(), ref, rtol=1e-9, atol=0)


def test_keras_affine_matches_scipy_affine_transform() -> None:
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 1, size=(3, 11, 14))
    theta, tx, ty, shear, zx, zy = 8.0, 1.3, -0.7, 5.0, 1.08, 0.93
    # apply_affine_transform, written out from keras-preprocessing's definition
    t, s = np.deg2rad(theta), np.deg2rad(shear)
    m = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    m = m @ np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
    m = m @ np.array([[1, -np.sin(s), 0], [0, np.cos(s), 0], [0, 0, 1]])
    m = m @ np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]])
    o_x, o_y = 11 / 2 + 0.5, 14 / 2 + 0.5
    m = (
        np.array([[1, 0, o_x], [0, 1, o_y], [0, 0, 1]])
        @ m
        @ np.array([[1, 0, -o_x], [0, 1, -o_y], [0, 0, 1]])
    )
    ref = np.stack(
        [ndimage.affine_transform(c, m[:2, :2], m[:2, 2], order=1, mode="nearest") for c in image]
    )
    matrix = keras_matrix(theta, tx, ty, shear, zx, zy, 11, 14)
    np.testing.assert_allclose(matrix, m, rtol=1e-12)
    ours = keras_warp(torch.tensor(image), matrix).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-9)


def test_balanced_class_loss_is_keras_weighted_batch_mean() -> None:
    labels = np.array([0, 0, 0, 1, 2, 2])
    w = balanced_weights(labels, 3)
    np.testing.assert_allclose(w, [6 / 9, 6 / 3, 6 / 6])  # n / (C * n_c)
    # a batch of 4 of the 6 images: Keras divides by 4, torch's weighted CE by the weights
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    y = torch.as_tensor(labels[2:])
    per = -torch.log_softmax(logits, 1)[torch.arange(4), y]
    expected = float((per * torch.tensor(w, dtype=torch.float32)[y]).sum() / 4)
    assert float(BalancedClassLoss(w, bce=False)(logits, y)) == pytest.approx(expected, rel=1e-6)
    torch_weighted = nn.CrossEntropyLoss(weight=torch.tensor(w, dtype=torch.float32))
    assert float(torch_weighted(logits, y)) != pytest.approx(expected, rel=1e-3)
    # binary: one sigmoid output, weight of each sample's class
    wb = balanced_weights(np.array([0, 0, 0, 1]), 2)
    z, t = torch.tensor([[0.3], [-1.0], [2.0], [0.5]]), torch.tensor([[0.0], [0.0], [0.0], [1.0]])
    bce = nn.functional.binary_cross_entropy_with_logits(z, t, reduction="none")[:, 0]
    ref = float((bce * torch.tensor([wb[0]] * 3 + [wb[1]], dtype=torch.float32)).mean())
    assert float(BalancedClassLoss(wb, bce=True)(z, t)) == pytest.approx(ref, rel=1e-6)


def test_drop_last_epochs_are_full_batches_of_a_fresh_permutation() -> None:
    stream = iter(EpochBatchSampler(10, 4, seed=3, drop_last=True))
    batches = [next(stream) for _ in range(6)]
    assert [len(b) for b in batches] == [4] * 6
    for epoch in range(3):
        indices = [i for b in batches[2 * epoch : 2 * epoch + 2] for i, _ in b]
        assert len(set(indices)) == 8
        order = np.random.default_rng([3, epoch]).permutation(10)
        assert indices == order[:8].tolist()


# ------------------------------------------------------------------ cats-scans


def test_cats_scans_kfold_reports_the_fold_mean_of_held_out_aucs() -> None:
    splits = {"train": _split(14, 0), "val": _split(6, 1), "test": _split(10, 2)}
    finals: dict[str, dict[str, torch.Tensor]] = {}

    def keep(info: StepInfo) -> None:
        finals[info.run] = clone_state(info.model)

    config = FinetuneConfig(
        batch_size=8, lr=1e-3, optimizer="keras-adam", weight_decay=0.0, schedule="constant",
        sampling="drop_last", epochs=1, val_unit="epochs", val_every=1, patience=None,
        folds=5, fold_seed=2, auc_average="weighted", class_weighting="balanced", loss="bce",
        head_dropout=0.5, augmentation="keras", rotation=10, shift=0.1, input_size=SIZE,
        cpu_threads=1,
    )  # fmt: skip
    result = run_kfold(_backbone(), splits, BINARY, config, PRE, progress=False, callback=keep)

    images = np.concatenate([splits[s].images for s in ("train", "val", "test")])
    labels = np.concatenate([splits[s].labels for s in ("train", "val", "test")])
    folds = StratifiedKFold(5, shuffle=True, random_state=2).split(np.zeros(30), labels)
    aucs, accs = [], []
    for k, (fit, held) in enumerate(folds, start=1):
        model = Classifier(TinyNet(), 4, 1)
        model.head = nn.Sequential(nn.Dropout(0.5), model.head)
        model.load_state_dict(finals[f"fold{k}"])
        with torch.no_grad():
            p = torch.sigmoid(model.eval()(_inputs(images[held])))[:, 0].numpy()
        aucs.append(roc_auc_score(labels[held], p))
        accs.append(float(np.mean((p > 0.5) == labels[held])))
        row = result.details["folds"][k - 1]
        assert row["n_test"] == len(held) and row["steps_done"] == len(fit) // 8
        assert row["metrics"]["roc_auc"] == pytest.approx(aucs[-1], abs=1e-6)
    assert result.metrics["roc_auc"] == pytest.approx(np.mean(aucs), abs=1e-6)
    assert result.metrics["accuracy"] == pytest.approx(np.mean(accs), abs=1e-6)
    assert result.details["metric_std"]["roc_auc"] == pytest.approx(np.std(aucs), abs=1e-6)
    assert result.hyperparameters["folds"] == 5


# ------------------------------------------------------------------ the presets


def _case(profile: str, dataset: str = "isic2018", task: str = "binary") -> Any:
    return SimpleNamespace(
        profile=SimpleNamespace(name=profile),
        case=SimpleNamespace(dataset=SimpleNamespace(name=dataset)),
        task=SimpleNamespace(task=task),
    )


def test_new_presets_are_registered_with_the_peers_settings() -> None:
    presets = presets_of("finetune")
    fr = presets["feature-reuse"].configure(_case("paper"))
    assert (fr.optimizer, fr.lr, fr.weight_decay, fr.batch_size) == ("adam", 1e-4, 1e-5, 64)
    assert (fr.schedule, fr.warmup_iters, fr.warmup_start) == ("warmup-plateau", 1000, 1e-8)
    assert (fr.plateau_factor, fr.plateau_patience, fr.grad_clip) == (0.1, 3, 1.0)
    assert (fr.sampling, fr.val_every, fr.val_round, fr.patience) == ("drop_last", 0.5, 3, None)
    assert fr.lr_finder and fr.lr_finder_select == "val_loss" and fr.lr_finder_epochs == 5
    assert len(fr.finder_lrs()) == 25 and fr.finder_lrs()[0] == 1e-5
    assert fr.augmentation == "feature-reuse" and fr.crop_scale == (0.8, 1.2)

    rt = presets["revisiting-transfer"].configure(_case("paper"))
    assert (rt.optimizer, rt.lr, rt.batch_size, rt.epochs, rt.input_size) == (
        "keras-adam", 1e-5, 128, 200, 112,
    )  # fmt: skip
    assert not rt.freeze_stage and rt.patience == 30  # the FT columns: no --freeze
    assert rt.primary_metric == "roc_auc_keras"  # the peer scores with keras.metrics.AUC()
    assert presets["revisiting-transfer"].version == 2
    rtf = presets["revisiting-transfer-freeze"].configure(_case("paper"))
    assert rtf.freeze_stage and (rtf.freeze_lr, rtf.freeze_patience) == (1e-3, 10)
    assert dataclasses.replace(rtf, freeze_stage=False) == rt  # the freeze stage only
    assert rt.select_on == "loss" and rt.restore_best and rt.head_dropout == 0.5
    assert (rt.rotation, rt.shift, rt.shear, rt.zoom, rt.hflip) == (10, 0.1, 0.1, 0.1, True)
    chest = presets["revisiting-transfer"].configure(_case("paper", "pediatric_pneumonia"))
    assert not chest.hflip
    assert dict(presets["revisiting-transfer"].preprocessing)["interpolation"] == "nearest"

    cs = presets["cats-scans"].configure(_case("paper"))
    assert (cs.folds, cs.fold_seed, cs.auc_average, cs.epochs) == (5, 2, "weighted", 50)
    assert (cs.class_weighting, cs.loss, cs.sampling, cs.patience) == (
        "balanced", "bce", "drop_last", None,
    )  # fmt: skip
    assert presets["cats-scans"].configure(_case("paper", task="multiclass")).loss == "auto"
    smoke = presets["cats-scans"].configure(_case("smoke"))
    assert smoke.epochs == 2 and smoke.batch_size == FinetuneConfig.for_profile("smoke").batch_size


def test_modes_needing_val_or_folds_fail_clearly_outside_their_path() -> None:
    train = _split(8, 0)
    kfold = FinetuneConfig(folds=5, input_size=SIZE, cpu_threads=1)
    with pytest.raises(ValueError, match="run_kfold"):
        _fine_tune(kfold, train, train)
    staged = FinetuneConfig(
        freeze_stage=True, sampling="epochs", epochs=1, val_unit="epochs", val_every=1,
        input_size=SIZE, cpu_threads=1,
    )  # fmt: skip
    criterion = make_criterion("binary", None, CPU.device)
    ctx = Context(
        _backbone(), BINARY, staged, PRE, CPU, criterion, lambda n: 0.0, None, None, False
    )
    with pytest.raises(ValueError, match="needs the val split"):
        select_on_val(ctx, train, train.labels)
    with pytest.raises(ValueError, match="balanced"):
        FinetuneConfig(class_weighting="balanced")
