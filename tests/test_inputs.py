"""The shared input validator: every protocol rejects the same bad input the same way."""

from __future__ import annotations

import numpy as np
import pytest

from harness.protocols.base import SplitFeatures, TaskInfo
from harness.protocols.inputs import (
    check_features,
    check_images,
    check_labels,
    check_split,
    require_single_label,
)

MULTICLASS = TaskInfo("multiclass", 3, "accuracy", ("accuracy",))
MULTILABEL = TaskInfo("multilabel", 2, "roc_auc", ("roc_auc",))


def test_good_split_passes_and_labels_become_int64() -> None:
    split = SplitFeatures(np.ones((4, 2), np.float32), np.array([0.0, 1.0, 2.0, 1.0]))
    x, y = check_split("val split", split, MULTICLASS, n_features=2)
    assert x.shape == (4, 2)
    assert y.dtype == np.int64
    assert y.tolist() == [0, 1, 2, 1]


@pytest.mark.parametrize(
    ("features", "match"),
    [
        (np.ones(3), r"val split: features must be 2-D \(N, D\), got shape \(3,\)"),
        (np.ones((0, 2)), "val split is empty"),
        (np.array([[1 + 1j, 0]]), "val split: features must be real numbers"),
        (np.array([[1.0, np.nan], [np.inf, 0], [0, 0]]), r"NaN or inf \(2 rows\)"),
        (np.ones((2, 5)), "val split: features have dimension 5, but train has 2"),
    ],
)
def test_bad_features_name_the_split(features: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_features("val split", features, n_features=2)


@pytest.mark.parametrize(
    ("labels", "task", "match"),
    [
        (np.array([0, 1]), MULTICLASS, r"labels must have shape \(3,\), got \(2,\)"),
        (np.array([0.5, 1, 2]), MULTICLASS, "labels must be integer class ids"),
        (np.array([0, 1, 3]), MULTICLASS, r"labels must lie in \[0, 3\), got range \[0, 3\]"),
        (np.array([[0, 1], [1, 0]]), MULTILABEL, r"multilabel labels must have shape \(3, 2\)"),
        (np.array([[0, 1], [1, 2], [0, 0]]), MULTILABEL, "multilabel labels must be 0/1"),
    ],
)
def test_bad_labels_name_the_split(labels: np.ndarray, task: TaskInfo, match: str) -> None:
    with pytest.raises(ValueError, match=f"test split: {match}"):
        check_labels("test split", labels, 3, task)


def test_images_must_be_uint8_gray_or_rgb() -> None:
    assert check_images("train split", np.zeros((2, 4, 4), np.uint8)).shape == (2, 4, 4)
    assert check_images("train split", np.zeros((2, 4, 4, 3), np.uint8)).shape == (2, 4, 4, 3)
    with pytest.raises(ValueError, match="train split: images must be a uint8 array"):
        check_images("train split", np.zeros((2, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"\(N, H, W\) or \(N, H, W, 3\)"):
        check_images("train split", np.zeros((2, 4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="train split is empty"):
        check_images("train split", np.zeros((0, 4, 4), np.uint8))


def test_single_label_protocols_reject_multilabel_tasks() -> None:
    require_single_label(MULTICLASS, "few-shot")
    with pytest.raises(ValueError, match="few-shot needs single-label classes"):
        require_single_label(MULTILABEL, "few-shot")
