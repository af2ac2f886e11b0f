"""Split rule ``per_class_subsets``: the transferability study's MedMNIST subsets, replayed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.config.cards import CardError, DatasetCard, load_dataset_card_file
from harness.data import DatasetError
from harness.data.prepare import load_splits

DATASETS = Path(__file__).resolve().parent.parent / "datasets"
SIZES = {"train": 1000, "val": 250, "test": 60}  # 8 classes: val 250 > 8 * 25 is subsampled


def _medmnist(path: Path, sizes: dict[str, int]) -> None:
    """A MedMNIST+ archive: ``<split>_images`` (N, 28, 28, 3) and ``<split>_labels`` (N, 1).

    Pixel (0, 0) holds the row's index within its split (low byte, high byte in (0, 1)),
    channel 1 the split's number, so every loaded image says where it came from.
    """
    arrays = {}
    for number, (split, n) in enumerate(sizes.items()):
        images = np.zeros((n, 28, 28, 3), dtype=np.uint8)
        images[:, 0, 0, 0] = np.arange(n) % 256
        images[:, 0, 1, 0] = np.arange(n) // 256
        images[:, 0, 0, 1] = number
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = (np.arange(n) % 8).reshape(-1, 1).astype(np.uint8)
    np.savez(path, **arrays)


def _card(tmp_path: Path, split: dict[str, object]) -> DatasetCard:
    raw = yaml.safe_load((DATASETS / "bloodmnist.yaml").read_text(encoding="utf-8"))
    raw["split"] = split
    written = tmp_path / "bloodmnist.yaml"
    written.write_text(yaml.safe_dump(raw), encoding="utf-8")
    card = load_dataset_card_file(written)
    params = dataclasses.replace(card.reader.params, root=str(tmp_path / "data"))
    return dataclasses.replace(card, reader=dataclasses.replace(card.reader, params=params))


def _rows(images: np.ndarray) -> np.ndarray:
    return images[:, 0, 0, 0].astype(int) + 256 * images[:, 0, 1, 0].astype(int)


@pytest.mark.parametrize("fold", [1, 3])
def test_folds_are_the_studys_legacy_draws(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fold: int
) -> None:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    (tmp_path / "data").mkdir()
    _medmnist(tmp_path / "data" / "bloodmnist.npz", SIZES)
    card = _card(tmp_path, {"rule": "per_class_subsets", "fold": fold})
    splits = load_splits(card)

    # src/data_split.py written out: the global legacy generator, the folds drawn in order
    np.random.seed(24)
    for _ in range(fold):
        train = np.random.choice(SIZES["train"], 8 * 100, replace=False)
        val = np.random.choice(SIZES["val"], 8 * 25, replace=False)
    assert sorted(_rows(splits["train"].images).tolist()) == sorted(train.tolist())
    assert sorted(_rows(splits["val"].images).tolist()) == sorted(val.tolist())
    assert sorted(_rows(splits["test"].images).tolist()) == list(range(SIZES["test"]))
    for name, number in (("train", 0), ("val", 1), ("test", 2)):
        assert (splits[name].images[:, 0, 0, 1] == number).all()  # rows of their own split
        np.testing.assert_array_equal(splits[name].labels, _rows(splits[name].images) % 8)


def test_a_small_val_split_is_kept_whole_and_too_small_a_train_split_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    (tmp_path / "data").mkdir()
    _medmnist(tmp_path / "data" / "bloodmnist.npz", {"train": 1000, "val": 120, "test": 10})
    splits = load_splits(_card(tmp_path, {"rule": "per_class_subsets"}))
    assert sorted(_rows(splits["val"].images).tolist()) == list(range(120))
    np.random.seed(24)
    train = np.random.choice(1000, 800, replace=False)  # no val draw: 120 <= 200
    assert sorted(_rows(splits["train"].images).tolist()) == sorted(train.tolist())

    card = _card(tmp_path, {"rule": "per_class_subsets", "train_per_class": 200})
    with pytest.raises(DatasetError, match="1600 rows, but the train split has 1000"):
        load_splits(dataclasses.replace(card, version=2))


def test_fold_outside_the_study_draws_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CardError, match=r"'fold' must be in 1\.\.5"):
        _card(tmp_path, {"rule": "per_class_subsets", "fold": 6})
