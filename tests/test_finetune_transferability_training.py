"""Oracles of the transferability preset's training augmentation and lr schedule.

The references are written here from DovileDo/transferability-in-medical-imaging@7e308c4:
``src/fine-tuning.py``: ``load_data``'s ``train_transform`` (a ``torchvision.transforms.v2``
pipeline on the PIL image converted to RGB) and ``fine_tune``'s
``CosineAnnealingLR(optimizer, T_max=epochs)`` with ``scheduler.step()`` once at the end
of ``train_epoch``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from harness.config.cards import Preprocessing
from harness.protocols.finetune.config import FinetuneConfig
from harness.protocols.finetune.data import train_transform
from harness.protocols.finetune.spec import RunSpec

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _peer_train_transform(size: int) -> v2.Compose:
    return v2.Compose(
        [
            v2.ToTensor(),
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomResizedCrop(size=(size, size), antialias=True),
            v2.RandomRotation(degrees=(0, 5)),
            v2.RandomAdjustSharpness(sharpness_factor=2),
            v2.RandomAutocontrast(),
            v2.RandomEqualize(),
            v2.Normalize(mean=list(MEAN), std=list(STD)),
        ]
    )


@pytest.mark.filterwarnings("ignore::UserWarning")  # v2.ToTensor is deprecated
@pytest.mark.parametrize("grey", [True, False])
def test_augmentation_equals_the_study_pipeline_draw_for_draw(grey: bool) -> None:
    rng = np.random.default_rng(0)
    shape = (40, 40) if grey else (40, 40, 3)
    pre = Preprocessing(input_size=32, interpolation="bilinear", mean=MEAN, std=STD)
    ours = train_transform(pre, (0.08, 1.0), 5.0, "transferability")
    peer = _peer_train_transform(32)
    for seed in range(40):
        image = rng.integers(0, 256, size=shape, dtype=np.uint8)
        torch.manual_seed(seed)
        expected = peer(Image.fromarray(image).convert("RGB"))
        torch.manual_seed(seed)
        got = ours(image)
        assert got.shape == (3, 32, 32) and got.dtype == torch.float32
        # The same draws and operations; only the normalisation rounds differently.
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_rotation_turns_one_way_only() -> None:
    # A full-image crop and one bright pixel right of the centre (angle 0): a turn from
    # [0, 45] degrees counter-clockwise puts it at an angle in [0, 45], or in [180, 225]
    # when the flip moved it left first. A two-sided turn would also reach [-45, 0).
    pre = Preprocessing(input_size=33, interpolation="bilinear", mean=(0.0,) * 3, std=(1.0,) * 3)
    ours = train_transform(pre, (1.0, 1.0), 45.0, "transferability")
    image = np.zeros((33, 33), dtype=np.uint8)
    image[16, 30] = 255
    angles = []
    for seed in range(60):
        torch.manual_seed(seed)
        for row, col in torch.nonzero(ours(image)[0] > 0.5).tolist():
            angles.append(math.degrees(math.atan2(16 - row, col - 16)) % 360.0)
    unflipped = [a for a in angles if a < 90.0 or a > 270.0]
    flipped = [a for a in angles if 90.0 <= a <= 270.0]
    assert unflipped and flipped
    assert all(a <= 50.0 for a in unflipped) and max(unflipped) > 15.0
    assert all(175.0 <= a <= 230.0 for a in flipped) and max(flipped) > 195.0


def _peer_lrs(epochs: int, steps_per_epoch: int, lr: float) -> list[float]:
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    lrs = []
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize(("epochs", "per_epoch"), [(5, 3), (200, 2), (7, 1)])
def test_cosine_epoch_is_cosine_annealing_stepped_once_an_epoch(epochs: int, per_epoch: int):
    spec = RunSpec(
        name="t", lr=0.1, weight_decay=0.0, steps=epochs * per_epoch,
        horizon=epochs * per_epoch, schedule="cosine-epoch", steps_per_epoch=per_epoch,
    )  # fmt: skip
    ours = [0.1 * spec.lr_factor(step) for step in range(epochs * per_epoch)]
    np.testing.assert_allclose(ours, _peer_lrs(epochs, per_epoch, 0.1), rtol=1e-9, atol=1e-12)
    # The per-step cosine differs inside an epoch: the schedules are not the same curve.
    per_step = RunSpec(name="t", lr=0.1, weight_decay=0.0, steps=10, horizon=10)
    assert per_step.lr_factor(1) < 1.0 == spec.lr_factor(1) or per_epoch == 1
    assert math.isclose(spec.lr_factor(epochs * per_epoch), 0.0, abs_tol=1e-12)


def test_cosine_epoch_needs_epochs() -> None:
    with pytest.raises(ValueError, match=r"cosine-epoch.*steps_per_epoch"):
        RunSpec(name="t", lr=0.1, weight_decay=0.0, steps=4, horizon=4, schedule="cosine-epoch")
    with pytest.raises(ValueError, match=r"cosine-epoch.*epoch sampling"):
        FinetuneConfig(schedule="cosine-epoch", sampling="stream")
