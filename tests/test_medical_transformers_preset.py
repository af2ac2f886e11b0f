"""The ``medical-transformers`` fine-tune preset: medical_transformers@ecd460a's params.json.

The schedule's oracle is written from its ``LinearWarmup`` and ``MixedLRScheduler``
(utils/_utils.py) and torch's ``CosineAnnealingLR`` in closed form: the warmup adds
``(max_lr - 1e-8) / warmup`` per iteration up to one increment above ``max_lr``, then the
cosine anneals from there to ``eta_min`` over ``iterations - warmup`` steps.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from harness.protocols.finetune.augment import feature_reuse_transform
from harness.protocols.finetune.config import FinetuneConfig
from harness.protocols.finetune.data import train_transform
from harness.protocols.finetune.spec import RunSpec
from harness.protocols.finetune.warmup import WarmupCosine
from harness.protocols.registry import get_preset


def peer_lrs(max_lr: float, warmup: int, iterations: int, floor: float) -> list[float]:
    """The lr of every iteration 1..iterations, as the peer's trainer uses them."""
    eta_min = 1e-8
    delta = (max_lr - eta_min) / warmup
    top = eta_min + (warmup + 1) * delta  # the warmup's last add overshoots max_lr by delta
    span = iterations - warmup
    lrs = []
    for it in range(1, iterations + 1):
        if it <= warmup:  # used before the step that adds the it-th increment
            lrs.append(eta_min + it * delta)
        else:
            t = it - 1 - warmup  # cosine steps taken before this iteration
            lrs.append(floor + (top - floor) * (1 + math.cos(math.pi * t / span)) / 2)
    return lrs


@pytest.mark.parametrize(("warmup", "iterations"), [(5, 40), (500, 1725)])
def test_warmup_cosine_matches_the_peers_schedule(warmup: int, iterations: int) -> None:
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=1e-4)
    schedule = WarmupCosine(optimizer, 1e-4, warmup, 1e-8, iterations, 1e-6)
    ours = []
    for _ in range(iterations):
        ours.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    expected = peer_lrs(1e-4, warmup, iterations, 1e-6)
    np.testing.assert_allclose(ours, expected, rtol=1e-9)
    assert max(ours) > 1e-4  # the overshoot is kept
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-6, rel=1e-9)


def test_a_warmup_as_long_as_the_run_is_refused_naming_the_run() -> None:
    with pytest.raises(ValueError, match="run r0: warmup-cosine needs"):
        RunSpec("r0", 1e-4, 0.0, steps=10, horizon=10, schedule="warmup-cosine", warmup_iters=10)


def case_of(profile: str, dataset: str = "aptos2019") -> SimpleNamespace:
    return SimpleNamespace(
        profile=SimpleNamespace(name=profile),
        case=SimpleNamespace(dataset=SimpleNamespace(name=dataset)),
        task=SimpleNamespace(task="multiclass"),
    )


def test_the_preset_is_feature_reuse_with_the_studys_params() -> None:
    preset = get_preset("finetune", "medical-transformers")
    assert preset is not None and preset.version == 1
    mt = preset.configure(case_of("paper"))
    fr = get_preset("finetune", "feature-reuse").configure(case_of("paper"))
    assert (mt.schedule, mt.warmup_iters, mt.warmup_start, mt.cosine_floor) == (
        "warmup-cosine",
        500,
        1e-8,
        1e-6,
    )
    assert (mt.epochs, mt.val_unit, mt.val_every) == (25, "epochs", 1)
    assert mt.augmentation == "medical-transformers" and mt.crop_scale == (0.8, 1.2)
    assert mt.val_drop_last and not fr.val_drop_last
    changed = {"schedule", "warmup_iters", "cosine_floor", "epochs", "val_every", "augmentation"}
    changed.add("val_drop_last")
    same = [f.name for f in dataclasses.fields(FinetuneConfig) if f.name not in changed]
    assert {name: getattr(mt, name) for name in same} == {name: getattr(fr, name) for name in same}
    smoke = preset.configure(case_of("smoke"))
    assert (smoke.epochs, smoke.warmup_iters, smoke.lr_finder_epochs) == (2, 5, 1)
    assert not smoke.val_drop_last
    overrides = preset.overrides(case_of("paper", "cbis_ddsm"))
    assert overrides["channels"] == "grey-first" and overrides["mean"] == (0.286,) * 3


def test_its_augmentation_jitters_more_and_never_greys() -> None:
    from harness.config.cards import Preprocessing

    pre = Preprocessing(32, (0.5,) * 3, (0.25,) * 3, "bilinear", 0.875, crop_mode="squash")
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)

    def draws(transform: object, n: int = 40) -> torch.Tensor:
        torch.manual_seed(3)
        return torch.stack([transform(image) for _ in range(n)])  # type: ignore[operator]

    ours = draws(train_transform(pre, (0.8, 1.2), augmentation="medical-transformers"))
    assert torch.equal(ours, draws(feature_reuse_transform(pre, (0.8, 1.2), 0.8, 0.0)))
    assert not greyed(ours).any()
    theirs = draws(train_transform(pre, (0.8, 1.2), augmentation="feature-reuse"))
    assert greyed(theirs).any() and not torch.equal(ours, theirs)


def greyed(batch: torch.Tensor) -> torch.Tensor:
    """Which images of a batch have three equal channels (equal mean / std per channel)."""
    flat = batch.flatten(2)
    return ((flat[:, 0] == flat[:, 1]) & (flat[:, 1] == flat[:, 2])).all(1)


@pytest.mark.usefixtures("one_thread_home")
def test_the_schedule_drives_a_training_run() -> None:
    from test_finetune_peer_presets import SIZE, _fine_tune, _split

    train = _split(16, 0)
    config = FinetuneConfig(
        batch_size=4, lr=1e-3, optimizer="adam", weight_decay=1e-5, schedule="warmup-cosine",
        warmup_iters=6, cosine_floor=1e-6, sampling="drop_last", epochs=7, val_unit="epochs",
        val_every=1, val_round=3, patience=None, input_size=SIZE, cpu_threads=1, grad_clip=1.0,
    )  # fmt: skip
    fitted = _fine_tune(config, train, train, validate=lambda net: 0.5)
    assert fitted.details["steps_done"] == 28
    # T_max is the run's 28 iterations less the warmup's 6: the cosine ends at its floor
    assert peer_lrs(1e-3, 6, 28, 1e-6)[-1] > 1e-6
    np.testing.assert_allclose(fitted.details["final_lrs"], [1e-6], rtol=1e-9)
    assert "cosine_floor" not in dataclasses.replace(config, cosine_floor=0.0).to_dict()
    assert config.to_dict()["cosine_floor"] == 1e-6


def test_each_validation_scores_a_fresh_shuffled_set_of_full_batches() -> None:
    from harness.protocols.finetune.validation import DroppedLastBatch

    draws = DroppedLastBatch(150, 64, seed=0)
    first, second = draws.next_indices(), draws.next_indices()
    assert len(first) == len(second) == 128 and len(set(first.tolist())) == 128
    assert set(first.tolist()) != set(second.tolist())  # 22 images left out, a new 22 each time
    again = DroppedLastBatch(150, 64, seed=0)
    assert np.array_equal(again.next_indices(), first)
    with pytest.raises(ValueError, match="40 validation images make no full batch of 64"):
        DroppedLastBatch(40, 64, seed=0)
