"""Split rule ``per_class_subsets``: small random subsets of the official splits.

DovileDo/transferability-in-medical-imaging@7e308c4:src/data_split.py (the study "On
dataset transferability in medical image classification") fine-tunes on small subsets of
each MedMNIST+ 224 px flag: after ``np.random.seed(24)``, fold ``i`` (1..5, drawn in
order) takes ``np.random.choice(n_train, n_classes * 100, replace=False)`` rows of the
official train split and, when the val split holds more than ``n_classes * 25`` rows,
``np.random.choice(n_val, n_classes * 25, replace=False)`` of it (else the whole val
split); the test split is the official one, whole. ``n_classes`` is the number of labels
MedMNIST lists (14 for the multilabel ChestMNIST). The study's reported numbers use fold 1.

This rule replays those draws with NumPy's legacy ``RandomState`` (the generator behind
``np.random.seed`` / ``np.random.choice``), so fold ``k`` is the same rows whatever else
the process drew; rows are returned in ascending order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from harness.data import DatasetError
from harness.data.registry import register_split_rule
from harness.data.split_rules import source_split
from harness.data.table import DatasetContext, SplitInput


@dataclass(frozen=True, kw_only=True)
class PerClassSubsetsParams:
    """The sizes, seed and fold of the subsets.

    Attributes:
        train_per_class: train rows drawn per class (``n_classes * train_per_class`` in all).
        val_per_class: val rows drawn per class; a smaller val split is kept whole.
        seed: the legacy global seed (the study's 24).
        fold: which draw, 1..``folds`` (each fold's draws follow the previous folds').
        folds: how many folds the study drew.
    """

    NEEDS_SOURCE_SPLITS: ClassVar[bool] = True
    train_per_class: int = 100
    val_per_class: int = 25
    seed: int = 24
    fold: int = 1
    folds: int = 5

    def validate(self) -> None:
        """Positive sizes; a fold in 1..folds."""
        if self.train_per_class < 1 or self.val_per_class < 1:
            raise ValueError(
                f"'train_per_class' and 'val_per_class' must be >= 1, got "
                f"{self.train_per_class}, {self.val_per_class}"
            )
        if not 1 <= self.fold <= self.folds:
            raise ValueError(f"'fold' must be in 1..{self.folds} (folds), got {self.fold}")


@register_split_rule("per_class_subsets", version=1, params=PerClassSubsetsParams)
def per_class_subsets(
    params: PerClassSubsetsParams, data: SplitInput, ctx: DatasetContext
) -> dict[str, np.ndarray]:
    """Fold ``params.fold`` of the study's train / val subsets; the official test split."""
    source = source_split(data, ctx, "per_class_subsets")
    official = {split: np.flatnonzero(source == split) for split in ("train", "val", "test")}
    for split, rows in official.items():
        if not len(rows):
            raise DatasetError(f"{ctx.card}: split rule per_class_subsets: no {split} split")
    n_classes = len(ctx.classes)
    n_train = n_classes * params.train_per_class
    if n_train > len(official["train"]):
        raise DatasetError(
            f"{ctx.card}: field 'split.train_per_class': {n_classes} classes x "
            f"{params.train_per_class} = {n_train} rows, but the train split has "
            f"{len(official['train'])}"
        )
    n_val = n_classes * params.val_per_class
    draws = np.random.RandomState(params.seed)
    for _ in range(params.fold):
        train = draws.choice(len(official["train"]), n_train, replace=False)
        if len(official["val"]) > n_val:
            val = draws.choice(len(official["val"]), n_val, replace=False)
        else:
            val = np.arange(len(official["val"]))
    return {
        "train": np.sort(official["train"][train]),
        "val": np.sort(official["val"][val]),
        "test": official["test"],
    }
