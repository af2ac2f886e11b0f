"""The peers' split rules against the peers' own calls (pandas, scikit-learn), and their errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import GroupKFold, StratifiedKFold

from harness.config.card_fields import CardError
from harness.data import DatasetError
from harness.data.registry import SPLIT_RULES
from harness.data.table import DatasetContext, SplitInput

CTX = DatasetContext("datasets/x.yaml", "x", "multiclass", ("a", "b", "c"), Path("."))


def run(rule: str, labels: np.ndarray, groups: np.ndarray | None = None, **params: object) -> dict:
    """Parse ``params`` as a card would and run the rule on the rows."""
    spec = SPLIT_RULES.parse({"rule": rule, **params}, "datasets/x.yaml")
    data = SplitInput(np.asarray(labels), groups, None, lambda rows: np.zeros((len(rows), 2, 2)))
    return {k: v.tolist() for k, v in SPLIT_RULES.run(spec, data, CTX).items()}


def assert_partition(splits: dict, n: int) -> None:
    rows = sorted(r for part in splits.values() for r in part)
    assert rows == list(range(n))
    assert all(len(part) for part in splits.values())


def assert_groups_disjoint(splits: dict, groups: np.ndarray) -> None:
    owner: dict[object, str] = {}
    for split, rows in splits.items():
        for group in set(groups[rows].tolist()):
            assert owner.setdefault(group, split) == split, f"{group} in {owner[group]}, {split}"


# --------------------------------------------------------------------------- shuffled_fraction


def ssl_medicalimaging_split(frame: pd.DataFrame, keep: pd.Series | None = None) -> dict:
    """The peer's code path, with pandas: shuffle, 80% head, filter, 20% of train as val."""
    shuffled = frame.sample(frac=1, random_state=42).reset_index(drop=True)
    split_index = int(math.floor(0.8 * len(shuffled)))  # noqa: RUF046  (the peer's code)
    train, test = shuffled.iloc[:split_index, :], shuffled.iloc[split_index:, :]
    if keep is not None:  # a dataset class that drops rows after the split (ChestX)
        train, test = train[train["keep"]], test[test["keep"]]
    indices = list(range(len(train)))
    np.random.seed(0)
    np.random.shuffle(indices)
    n_val = int(np.floor(0.2 * len(train)))
    val = train.iloc[indices[:n_val]]
    rest = train.iloc[indices[n_val:]]
    return {
        s: sorted(d["row"].tolist()) for s, d in (("train", rest), ("val", val), ("test", test))
    }


@pytest.mark.parametrize("n", [10, 11, 138, 662, 1001])
def test_shuffled_fraction_matches_pandas_sample(n: int) -> None:
    frame = pd.DataFrame({"row": np.arange(n), "label": np.arange(n) % 2})
    ours = run("shuffled_fraction", frame["label"].to_numpy())
    assert ours == ssl_medicalimaging_split(frame)
    assert len(ours["test"]) == n - math.floor(0.8 * n)
    assert len(ours["val"]) == math.floor(0.2 * math.floor(0.8 * n))


def test_shuffled_fraction_shuffles_before_the_label_policy_drops_rows() -> None:
    n = 300
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"row": np.arange(n), "keep": rng.random(n) < 0.6})
    expected = ssl_medicalimaging_split(frame, keep=frame["keep"])
    kept = np.flatnonzero(frame["keep"].to_numpy())
    spec = SPLIT_RULES.parse({"rule": "shuffled_fraction"}, "datasets/x.yaml")
    data = SplitInput(
        np.zeros(len(kept), np.int64), None, None, lambda r: r, source_rows=kept, n_source=n
    )
    ours = {s: sorted(kept[v].tolist()) for s, v in SPLIT_RULES.run(spec, data, CTX).items()}
    assert ours == expected
    # shuffling only the kept rows would give another split
    assert run("shuffled_fraction", np.zeros(len(kept), np.int64))["test"] != [
        int(np.searchsorted(kept, r)) for r in expected["test"]
    ]


def test_shuffled_fraction_fixed_train_count_as_chexpert() -> None:
    n = 50
    frame = pd.DataFrame({"row": np.arange(n)}).sample(frac=1, random_state=42)
    ours = run("shuffled_fraction", np.zeros(n, np.int64), train_count=30)
    assert sorted(ours["test"]) == sorted(frame["row"].iloc[30:].tolist())
    assert len(ours["train"]) + len(ours["val"]) == 30


def test_shuffled_fraction_keeps_patients_whole() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(120), rng.integers(1, 5, size=120))
    splits = run("shuffled_fraction", np.zeros(len(groups), np.int64), groups)
    assert_partition(splits, len(groups))
    assert_groups_disjoint(splits, groups)
    assert abs(len(splits["test"]) / len(groups) - 0.2) < 0.06
    # one image per patient: exactly the ungrouped (peer) split
    single = np.arange(200)
    plain = run("shuffled_fraction", np.zeros(200, np.int64))
    assert run("shuffled_fraction", np.zeros(200, np.int64), single) == plain


def test_shuffled_fraction_errors_name_the_card() -> None:
    with pytest.raises(CardError, match=r"datasets/x\.yaml: field 'split'.*train_fraction"):
        run("shuffled_fraction", np.zeros(10, np.int64), train_fraction=1.5)
    with pytest.raises(DatasetError, match=r"datasets/x\.yaml: field 'split.train_count'"):
        run("shuffled_fraction", np.zeros(10, np.int64), train_count=10)
    with pytest.raises(DatasetError, match=r"datasets/x\.yaml: field 'split.val_fraction'"):
        run("shuffled_fraction", np.zeros(4, np.int64))  # 3 train images, 20% is none


# --------------------------------------------------------------------------- kfold


def revisiting_transfer_stratified(labels: np.ndarray, fold: int) -> dict:
    """DovileDo/revisiting-transfer make_dataframe.py's non-patient branch, fold ``fold``."""
    skf = StratifiedKFold(n_splits=5, shuffle=True, random_state=2)
    test_skf = StratifiedKFold(n_splits=5, shuffle=False)
    for number, (train_index, temp_index) in enumerate(
        skf.split(np.zeros(len(labels)), y=labels), start=1
    ):
        for test_index, val_index in test_skf.split(np.zeros(len(temp_index)), labels[temp_index]):
            valid, test = temp_index[val_index], temp_index[test_index]
        if number == fold:
            return {"train": sorted(train_index), "val": sorted(valid), "test": sorted(test)}
    raise AssertionError


@pytest.mark.parametrize("fold", [1, 3, 5])
def test_kfold_matches_the_peers_stratified_kfold(fold: int) -> None:
    labels = np.random.default_rng(fold).integers(0, 3, size=157)
    ours = run("kfold", labels, fold=fold)
    assert ours == {
        k: [int(i) for i in v] for k, v in revisiting_transfer_stratified(labels, fold).items()
    }
    assert_partition(ours, len(labels))


def test_kfold_cats_scans_test_is_the_whole_held_out_fold() -> None:
    labels = np.random.default_rng(0).integers(0, 2, size=100)
    folds = list(StratifiedKFold(5, shuffle=True, random_state=2).split(np.zeros(100), labels))
    ours = run("kfold", labels, fold=2, val="train")
    assert ours["test"] == sorted(folds[1][1].tolist())
    assert sorted(ours["train"] + ours["val"]) == sorted(folds[1][0].tolist())
    assert abs(len(ours["val"]) - 80 / 5) <= 1


def test_kfold_errors_name_the_card() -> None:
    labels = np.array([0] * 20 + [1] * 3)
    with pytest.raises(
        DatasetError, match=r"datasets/x\.yaml: .*'split.n_splits'.*too few: b \(3\)"
    ):
        run("kfold", labels)
    with pytest.raises(
        CardError, match=r"datasets/x\.yaml: field 'split'.*'fold' must be in 1\.\.5"
    ):
        run("kfold", labels, fold=6)
    with pytest.raises(DatasetError, match=r"datasets/x\.yaml: field 'split.stratify'"):
        run("kfold", np.zeros((30, 3), np.int64))
    groups = np.repeat(np.arange(20), 5)  # patients with 5 images each cross the folds
    with pytest.raises(DatasetError, match=r"datasets/x\.yaml: group .* has images in both"):
        run("kfold", np.arange(100) % 2, groups)


# --------------------------------------------------------------------------- group_kfold


def revisiting_transfer_grouped(groups: np.ndarray, fold: int) -> dict:
    """make_dataframe.py's patient branch (chest, thyroid, mammograms, knee), fold ``fold``."""
    gkf, test_gkf = GroupKFold(n_splits=5), GroupKFold(n_splits=4)
    x = np.zeros(len(groups))
    for number, (train_index, temp_index) in enumerate(gkf.split(x, groups=groups), start=1):
        temp_groups = groups[temp_index]
        for test_index, val_index in test_gkf.split(temp_index, groups=temp_groups):
            valid, test = temp_index[val_index], temp_index[test_index]
        if number == fold:
            return {"train": sorted(train_index), "val": sorted(valid), "test": sorted(test)}
    raise AssertionError


@pytest.mark.parametrize("fold", [1, 2, 5])
def test_group_kfold_matches_sklearn_and_keeps_patients_whole(fold: int) -> None:
    rng = np.random.default_rng(fold)
    groups = np.repeat([f"pid{k}" for k in range(60)], rng.integers(1, 6, size=60))
    labels = rng.integers(0, 2, size=len(groups))
    ours = run("group_kfold", labels, groups, fold=fold)
    expected = revisiting_transfer_grouped(groups, fold)
    assert ours == {k: [int(i) for i in v] for k, v in expected.items()}
    assert_partition(ours, len(groups))
    assert_groups_disjoint(ours, groups)


def test_group_kfold_errors_name_the_card() -> None:
    with pytest.raises(DatasetError, match=r"datasets/x\.yaml: .*group_kfold needs groups"):
        run("group_kfold", np.zeros(20, np.int64))
    with pytest.raises(DatasetError, match=r"datasets/x\.yaml: field 'split.n_splits'.* has 3"):
        run("group_kfold", np.zeros(9, np.int64), np.repeat([1, 2, 3], 3))
    with pytest.raises(CardError, match=r"datasets/x\.yaml: field 'split'.*'val_splits'"):
        run("group_kfold", np.zeros(9, np.int64), np.arange(9), val_splits=1)


# --------------------------------------------------------------------------- seeded_fractions


def test_seeded_fractions_too_few_patients_of_a_class_names_card_and_class() -> None:
    labels = np.array([0] * 30 + [2] * 4)
    groups = np.concatenate([np.arange(30), [100, 100, 101, 101]])  # class c: 2 patients
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    with pytest.raises(DatasetError, match=r"datasets/x\.yaml: .*too few: c \(2\)"):
        run("seeded_fractions", labels, groups, fractions=fractions)
    splits = run("seeded_fractions", labels, groups, fractions=fractions, stratify=False)
    assert_groups_disjoint(splits, groups)
