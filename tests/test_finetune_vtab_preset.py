"""Oracle tests of the ``vtab`` fine-tune preset.

Each mechanism is checked against a reference written here from VTAB's code
(google-research/task_adaptation@d7630d3: trainer.py, model.py, data_loader.py) in plain
torch / numpy, on the tiny CPU model and data of the other preset tests.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from test_finetune_presets import BINARY, CPU, PRE, SIZE, TinyNet, _backbone, _splits
from torch import nn

from harness.data.npz import SplitData
from harness.protocols.finetune import FinetuneConfig, run
from harness.protocols.finetune.augment import TF_BILINEAR, tf_resize_transform
from harness.protocols.finetune.data import EvalSet, train_transform
from harness.protocols.finetune.loop import train_run
from harness.protocols.finetune.modes import Context, grid_search
from harness.protocols.finetune.network import Classifier, clone_state, make_criterion
from harness.protocols.finetune.optim import make_scheduler
from harness.protocols.finetune.presets_vtab import VTAB_EVAL
from harness.protocols.finetune.spec import RunSpec, StepInfo
from harness.protocols.finetune.tencrop import tencrop_transform
from harness.protocols.finetune.warmup import step_lr_factor
from harness.protocols.registry import presets_of

TF_PRE = dataclasses.replace(PRE, interpolation=TF_BILINEAR, crop_mode="squash")


pytestmark = pytest.mark.usefixtures("one_thread_home")


def _case(profile: str) -> Any:
    return SimpleNamespace(profile=SimpleNamespace(name=profile))


def _tiny(**overrides: Any) -> FinetuneConfig:
    """The preset's procedure at the tiny test scale."""
    config = presets_of("finetune")["vtab"].configure(_case("smoke"))
    scale = {"batch_size": 8, "input_size": SIZE, "eval_batch_size": 8, "cpu_threads": 1}
    return dataclasses.replace(config, **{"steps": 10, "grid_steps": (4, 10), **scale, **overrides})


# ------------------------------------------------------------------ lr schedule


def _vtab_lr(step: int, base: float, boundaries: list[int], warmup: int) -> float:
    """trainer.get_train_op written out: piecewise_constant (value i while step <= b_i),
    replaced by ``step * base / warmup`` while ``step < warmup``."""
    if warmup > 0 and step < warmup:
        return step * (base / warmup)
    for i, boundary in enumerate(boundaries):
        if step <= boundary:
            return base * 0.1**i
    return base * 0.1 ** len(boundaries)


@pytest.mark.parametrize(
    ("steps", "boundaries", "warmup"),
    [(2500, [750, 1500, 2250], 0), (10000, [3000, 6000, 9000], 0), (1000, [300, 600, 900], 80)],
)
def test_step_schedule_is_vtabs_piecewise_constant_with_warmup(
    steps: int, boundaries: list[int], warmup: int
) -> None:
    # README's 2500-step run, its 10000-step twin, run_all_tasks.sh's VTAB-1k run
    ours = [step_lr_factor(s, steps, (0.3, 0.6, 0.9), 0.1, warmup) for s in range(steps + 1)]
    expected = [_vtab_lr(s, 1.0, boundaries, warmup) for s in range(steps + 1)]
    assert ours == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # `step <= boundary` keeps the value: the decay applies from the step after it
    assert ours[boundaries[0]] == 1.0 and ours[boundaries[0] + 1] == pytest.approx(0.1)

    # in the optimizer: torch SGD (momentum 0.9, no Nesterov) with the run's LambdaLR
    # against TF's MomentumOptimizer (accum = m * accum + g; w -= lr * accum), step by step
    spec = RunSpec(
        name="s", lr=0.1, weight_decay=0.0, steps=steps, horizon=steps, schedule="step",
        decay_at=(0.3, 0.6, 0.9), decay_factor=0.1, warmup_steps=warmup,
    )  # fmt: skip
    target = torch.linspace(-1.0, 1.0, 5)
    w = nn.Parameter(torch.zeros(5))
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9, nesterov=False)
    sched = make_scheduler(spec, opt)
    w_ref, accum = torch.zeros(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    for s in range(min(steps, 1200)):
        assert opt.param_groups[0]["lr"] == pytest.approx(_vtab_lr(s, 0.1, boundaries, warmup))
        opt.zero_grad()
        ((w - target) ** 2).sum().backward()
        opt.step()
        sched.step()
        accum = 0.9 * accum + 2 * (w_ref - target.double())
        w_ref = w_ref - _vtab_lr(s, 0.1, boundaries, warmup) * accum
    assert w.detach().double().numpy() == pytest.approx(w_ref.numpy(), abs=1e-6)


# ------------------------------------------------------------------ preprocessing


def _tf_resize_reference(image: np.ndarray, size: int) -> np.ndarray:
    """TF1 resize_bilinear (align_corners=False, half_pixel_centers=False), pixel by pixel;
    the source coordinate is ``float(i) * (float(in) / out)`` in float32, as TF's kernel."""
    h, w, c = image.shape
    out = np.zeros((size, size, c), dtype=np.float64)
    for i in range(size):
        y = float(np.float32(i) * (np.float32(h) / np.float32(size)))
        y0, y1 = math.floor(y), min(math.ceil(y), h - 1)
        for j in range(size):
            x = float(np.float32(j) * (np.float32(w) / np.float32(size)))
            x0, x1 = math.floor(x), min(math.ceil(x), w - 1)
            top = image[y0, x0] + (image[y0, x1] - image[y0, x0]) * (x - x0)
            bottom = image[y1, x0] + (image[y1, x1] - image[y1, x0]) * (x - x0)
            out[i, j] = top + (bottom - top) * (y - y0)
    return out


def _normalise(pixels: np.ndarray, pre: Any) -> np.ndarray:
    x = pixels / 255.0
    return ((x - np.array(pre.mean)) / np.array(pre.std)).transpose(2, 0, 1)


def test_preprocessing_is_tf1_bilinear_resize_to_unit_range_then_the_cards_norm() -> None:
    # a known case: 2 x 2 -> 4 x 4 samples 0, 0.5, 1, 1.5 (the last clamped to pixel 1)
    corner = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    pre = dataclasses.replace(TF_PRE, input_size=4, mean=(0.0,) * 3, std=(1.0,) * 3)
    got = tf_resize_transform(pre)(corner)[0].numpy() * 255
    assert got[0] == pytest.approx([0, 50, 100, 100], abs=1e-4)
    assert got[:, 0] == pytest.approx([0, 100, 200, 200], abs=1e-4)
    assert got[1, 1] == pytest.approx(138.75, abs=1e-4)  # (0 + 100 + 200 + 255) / 4

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(7, 5, 3)).astype(np.uint8)
    pre = dataclasses.replace(TF_PRE, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    for size in (3, 4, 11, 16):  # down and up, no antialiasing either way
        pre_s = dataclasses.replace(pre, input_size=size)
        expected = _normalise(_tf_resize_reference(image.astype(np.float64), size), pre_s)
        assert tf_resize_transform(pre_s)(image).numpy() == pytest.approx(expected, abs=1e-6)
        # training uses the same transform (no augmentation), evaluation too
        train = train_transform(pre_s, (0.08, 1.0), augmentation="none")(image)
        assert torch.equal(train, tf_resize_transform(pre_s)(image))
        assert torch.equal(next(EvalSet(image[None], pre_s).batches(1))[0], train)

    gray = rng.integers(0, 256, size=(6, 9)).astype(np.uint8)
    expected = _normalise(_tf_resize_reference(np.repeat(gray[..., None], 3, 2) * 1.0, 5), pre)
    got = tf_resize_transform(dataclasses.replace(pre, input_size=5))(gray).numpy()
    assert got == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("augmentation", ["crop-flip", "feature-reuse"])
def test_tf_bilinear_with_an_augmentation_that_resizes_is_a_clear_error(augmentation: str) -> None:
    with pytest.raises(ValueError, match=f"tf-bilinear.*augmentation '{augmentation}'"):
        train_transform(TF_PRE, (0.08, 1.0), augmentation=augmentation)
    with pytest.raises(ValueError, match=r"tf-bilinear.*test_tencrop"):
        tencrop_transform(TF_PRE)
    # the Keras and transferability augmentations use their own kernels
    image = np.zeros((8, 8), dtype=np.uint8)
    assert train_transform(TF_PRE, (0.08, 1.0), augmentation="keras")(image).shape[0] == 3


# ------------------------------------------------------------------ head init


def test_zero_head_first_step_matches_the_softmax_gradient() -> None:
    """tf.layers.dense(kernel_initializer=zeros) (bias zeros by default): the first step
    moves only the head, by -lr * mean((softmax(0) - onehot) x features)."""
    data: SplitData = _splits()["train"]
    n = len(data.labels)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def keep(info: StepInfo) -> None:
        snapshots[info.step] = clone_state(info.model)

    spec = RunSpec(
        name="z", lr=0.1, weight_decay=0.0, steps=1, horizon=1, schedule="step",
        decay_at=(0.3, 0.6, 0.9), batch_size=n, select_best=False, patience=None,
        augmentation="none", head_init="zeros", nesterov=False,
    )  # fmt: skip
    train_run(
        spec, _backbone().module, 4, 2, data.images, data.labels, TF_PRE,
        nn.CrossEntropyLoss(), CPU, callback=keep, progress=False,
    )  # fmt: skip
    fresh = Classifier(TinyNet(), 4, 2, head_init="zeros")
    assert not fresh.head.weight.any() and not fresh.head.bias.any()

    backbone = _backbone().module.train()
    x = torch.from_numpy(data.images).float() / 255.0
    x = ((x - 0.5) / 0.5).unsqueeze(1).expand(-1, 3, -1, -1)
    with torch.no_grad():
        feats = backbone(x)  # one batch of all n images: BN batch statistics, any order
    residual = torch.full((n, 2), 0.5) - nn.functional.one_hot(torch.as_tensor(data.labels), 2)
    after = snapshots[1]
    assert after["head.weight"].numpy() == pytest.approx(
        (-0.1 * residual.T @ feats / n).numpy(), abs=1e-6
    )
    assert after["head.bias"].numpy() == pytest.approx((-0.1 * residual.mean(0)).numpy(), abs=1e-6)
    start = _backbone().module.state_dict()
    for key in ("conv.weight", "conv.bias", "bn.weight", "bn.bias"):  # no gradient reached
        assert torch.equal(after[f"backbone.{key}"], start[key])


# ------------------------------------------------------------------ sweep and selection


def _context(config: FinetuneConfig, scores: list[float], finals: dict[str, Any]) -> Context:
    script = iter(scores)

    def keep(info: StepInfo) -> None:
        finals[info.run] = (info.step, clone_state(info.model))

    criterion = make_criterion("binary", None, CPU.device)
    return Context(
        _backbone(), BINARY, config, TF_PRE, CPU, criterion, lambda net: next(script), None,
        keep, False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("scores", "chosen"),
    [([0.5, 0.7, 0.7, 0.6], 1), ([0.8, 0.8, 0.8, 0.8], 0), ([0.5, 0.6, 0.6, 0.9], 3)],
)
def test_sweep_picks_the_first_best_val_accuracy_and_retrains_on_train_val(
    scores: list[float], chosen: int
) -> None:
    config = _tiny()
    points = config.grid_points()
    assert [(lr, n) for lr, _, _, n in points] == [(0.1, 4), (0.1, 10), (0.01, 4), (0.01, 10)]
    splits, finals = _splits(), {}
    train, val = splits["train"], splits["val"]
    fitted = grid_search(_context(config, scores, finals), train, val, train.labels, val.labels)
    first_best = scores.index(max(scores))  # argmax: the first point on a tie
    assert fitted.details["chosen_index"] == first_best == chosen
    table = fitted.details["grid"]
    assert [row["steps_done"] for row in table] == [n for *_, n in points]
    assert [finals[f"grid{i:02d}"][0] for i in range(4)] == [n for *_, n in points]
    lr, steps = points[chosen][0], points[chosen][3]
    assert (fitted.hyperparameters["lr"], fitted.hyperparameters["steps"]) == (lr, steps)
    assert fitted.hyperparameters["weight_decay"] == 0.0
    assert fitted.details["retrain_horizon"] == steps and finals["retrain"][0] == steps
    assert fitted.details["n_fit"] == len(train) + len(val)
    # the retrain's schedule spans its own length: its last lr is after the 90% decay
    expected = lr * step_lr_factor(steps, steps, (0.3, 0.6, 0.9), 0.1, 0)
    assert fitted.details["final_lrs"] == pytest.approx([expected], rel=1e-12)


def test_case_selects_on_val_accuracy_and_reports_top1_accuracy() -> None:
    finals: dict[str, dict[str, torch.Tensor]] = {}

    def keep(info: StepInfo) -> None:
        finals[info.run] = clone_state(info.model)

    config = _tiny(steps=6, grid_steps=(2, 6))
    splits = _splits()
    result = run(_backbone(), splits, BINARY, config, TF_PRE, progress=False, callback=keep)
    assert result.primary_metric == "accuracy" and BINARY.primary_metric == "roc_auc"

    def accuracy(state: dict[str, torch.Tensor], split: SplitData) -> float:
        model = Classifier(TinyNet(), 4, 2)
        model.load_state_dict(state)
        x = torch.stack([tf_resize_transform(TF_PRE)(im) for im in split.images])
        with torch.no_grad():
            predicted = model.eval()(x).argmax(dim=1).numpy()
        return float(np.mean(predicted == split.labels))

    table = result.details["grid"]
    reference = [accuracy(finals[f"grid{i:02d}"], splits["val"]) for i in range(4)]
    assert [row["val_score"] for row in table] == pytest.approx(reference, abs=1e-9)
    assert result.details["chosen_index"] == int(np.argmax(reference))
    assert result.metrics["accuracy"] == pytest.approx(
        accuracy(finals["retrain"], splits["test"]), abs=1e-9
    )


# ------------------------------------------------------------------ the preset


def test_vtab_preset_settings() -> None:
    preset = presets_of("finetune")["vtab"]
    assert preset.version == 1
    assert dict(preset.preprocessing) == VTAB_EVAL == {
        "input_size": 224, "interpolation": TF_BILINEAR, "crop_pct": 1.0, "crop_mode": "squash",
    }  # fmt: skip
    c = preset.configure(_case("paper"))
    assert [(lr, n) for lr, _, _, n in c.grid_points()] == [
        (0.1, 2500), (0.1, 10000), (0.01, 2500), (0.01, 10000),
    ]  # fmt: skip
    assert (c.batch_size, c.input_size, c.optimizer, c.momentum, c.nesterov) == (
        512, 224, "sgd", 0.9, False,
    )  # fmt: skip
    assert (c.weight_decay, c.grid_ws, c.grad_clip, c.layer_decay) == (0.0, (0.0,), None, None)
    assert (c.schedule, c.decay_at, c.decay_factor, c.warmup_steps) == (
        "step", (0.3, 0.6, 0.9), 0.1, 0,
    )  # fmt: skip
    assert c.grid_search and c.grid_score == "last" and c.patience is None
    assert (c.augmentation, c.head_init, c.primary_metric, c.loss) == (
        "none", "zeros", "accuracy", "auto",
    )  # fmt: skip
    assert (c.sampling, c.amp, c.head_dropout, c.freeze_steps) == ("stream", "none", 0.0, 0)

    smoke = preset.configure(_case("smoke"))
    base = FinetuneConfig.for_profile("smoke")
    assert smoke.grid_steps == (base.steps // 4, base.steps)
    assert (smoke.batch_size, smoke.input_size) == (base.batch_size, base.input_size)
    assert FinetuneConfig().schedule == "cosine" and FinetuneConfig().head_init == "default"
    with pytest.raises(ValueError, match="decay_at"):
        FinetuneConfig(decay_at=(0.6, 0.3))
    with pytest.raises(ValueError, match="grid_steps"):
        FinetuneConfig(grid_steps=(10,))
