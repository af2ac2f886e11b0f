"""Fine-tuning on label-smoothed targets (CheXpert LSR-Ones): a fresh draw per image load."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_finetune import BINARY, MULTILABEL, PRE, TINY, _backbone, _multilabel_split

from harness.cache.keys import module_sha256
from harness.data.table import SoftTargets
from harness.protocols.finetune import fine_tune
from harness.protocols.finetune.data import ImageDataset, train_loader

LOW, HIGH = 0.55, 0.85


def _identity(image: np.ndarray) -> torch.Tensor:
    return torch.zeros(1)


def test_each_load_draws_a_fresh_seeded_target_for_marked_entries() -> None:
    labels = np.array([[1.0, np.nan], [0.0, 1.0]], dtype=np.float32)
    dataset = ImageDataset(np.zeros((2, 4, 4), np.uint8), labels, _identity, (LOW, HIGH))
    draws = [float(dataset[(0, seed)][1][1]) for seed in range(200)]
    assert all(LOW <= d <= HIGH for d in draws) and len(set(draws)) == 200
    assert abs(np.mean(draws) - 0.7) < 0.03  # U(0.55, 0.85): mean 0.7, sd of the mean 0.006
    assert float(dataset[(0, 7)][1][1]) == float(dataset[(0, 7)][1][1])  # seeded
    assert dataset[(0, 7)][1][0] == 1.0 and torch.equal(
        dataset[(1, 7)][1], torch.tensor([0.0, 1.0])
    )
    with pytest.raises(ValueError, match="soft_range"):
        ImageDataset(np.zeros((2, 4, 4), np.uint8), labels, _identity)


def test_training_batches_carry_fresh_draws_every_epoch() -> None:
    split = _multilabel_split(16, 0)
    mask = np.zeros(split.labels.shape, dtype=bool)
    mask[:, 1] = True
    coded = split.labels.astype(np.float32)
    coded[mask] = np.nan
    loader = train_loader(
        split.images, coded, PRE, (0.5, 1.0), 16, seed=3, start=0, sampling="epochs",
        soft_range=(LOW, HIGH),
    )  # fmt: skip
    batches = iter(loader)
    first, second = next(batches)[1], next(batches)[1]  # two epochs of one batch
    for targets in (first, second):
        assert torch.all((targets[:, 1] >= LOW) & (targets[:, 1] <= HIGH))
        assert set(targets[:, [0, 2, 3]].unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(torch.sort(first[:, 1]).values, torch.sort(second[:, 1]).values)


def test_fine_tune_trains_on_soft_targets_and_records_them() -> None:
    train, val = _multilabel_split(48, 0), _multilabel_split(24, 1)
    mask = np.zeros(train.labels.shape, dtype=bool)
    mask[::3, 0] = True  # a third of label 0 is "uncertain" (hard label kept for metrics)
    soft = dataclasses.replace(train, soft=SoftTargets(mask, LOW, HIGH))
    smoothed = fine_tune(_backbone(), soft, val, MULTILABEL, TINY, PRE, progress=False)
    hard = fine_tune(_backbone(), train, val, MULTILABEL, TINY, PRE, progress=False)
    assert smoothed.details["label_smoothing"] == {"range": [LOW, HIGH], "entries": 16}
    assert hard.details["label_smoothing"] is None
    assert module_sha256(smoothed.model) != module_sha256(hard.model)  # the targets mattered
    again = fine_tune(_backbone(), soft, val, MULTILABEL, TINY, PRE, progress=False)
    assert module_sha256(again.model) == module_sha256(smoothed.model)  # draws are seeded


def test_soft_targets_need_a_sigmoid_loss() -> None:
    train, val = _multilabel_split(16, 0), _multilabel_split(8, 1)
    binary = dataclasses.replace(
        train, labels=train.labels[:, 0], soft=SoftTargets(np.ones(16, dtype=bool), LOW, HIGH)
    )
    val = dataclasses.replace(val, labels=val.labels[:, 0])
    with pytest.raises(ValueError, match="need a BCE loss"):
        fine_tune(_backbone(), binary, val, BINARY, TINY, PRE, progress=False)
