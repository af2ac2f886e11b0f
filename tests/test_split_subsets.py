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


def _suite_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, split: object) -> Path:
    """A user card folder with a copy of bloodmnist (its 28 px file under tmp data) and a
    suite that runs it at 28 px under a split override."""
    folder = tmp_path / "cards"
    (folder / "datasets").mkdir(parents=True)
    (folder / "suites").mkdir()
    raw = yaml.safe_load((DATASETS / "bloodmnist.yaml").read_text(encoding="utf-8"))
    raw["name"] = "tinymnist"  # a user folder cannot redefine the project's bloodmnist
    raw["reader"]["root"] = str(tmp_path / "data")
    (folder / "datasets" / "tinymnist.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    suite = {
        "name": "subsets",
        "profile": "smoke",
        "models": ["tf_efficientnet_lite0.in1k_pip"],
        "datasets": ["tinymnist"],
        "protocols": ["linear", "finetune"],
        "resolutions": [28],
        "only": {"finetune": {"datasets": ["tinymnist"]}},
        "split": split,
    }
    (folder / "suites" / "subsets.yaml").write_text(yaml.safe_dump(suite), encoding="utf-8")
    monkeypatch.setenv("MEDXFER_CARDS", str(folder))
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    return folder


def test_a_suite_split_override_runs_every_dataset_on_the_study_subsets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.config.suites import load_suite

    _suite_folder(tmp_path, monkeypatch, {"name": "fold2", "rule": "per_class_subsets", "fold": 2})
    (tmp_path / "data").mkdir()
    _medmnist(tmp_path / "data" / "bloodmnist.npz", SIZES)
    cases = load_suite("subsets").cases()
    assert [c.case_id for c in cases] == [
        "linear/tinymnist_28_fold2/tf_efficientnet_lite0.in1k_pip",
        "finetune/tinymnist_28_fold2/tf_efficientnet_lite0.in1k_pip",  # 'only' still matches
    ]
    card = cases[0].dataset
    assert card.split.name == "per_class_subsets" and card.split.params.fold == 2
    assert card.fingerprint()["split"]["name"] == "per_class_subsets"  # in every cache key
    assert card.data_name == "tinymnist"  # the base card's data folder
    splits = load_splits(card)
    np.random.seed(24)
    for _ in range(2):
        train = np.random.choice(SIZES["train"], 8 * 100, replace=False)
        np.random.choice(SIZES["val"], 8 * 25, replace=False)
    assert sorted(_rows(splits["train"].images).tolist()) == sorted(train.tolist())
    assert len(splits["test"]) == SIZES["test"]


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ({"rule": "per_class_subsets"}, r"'split\.name' must name the override"),
        ({"name": "f1", "fold": 1}, r"field 'split' must be a mapping with 'name'"),
        ({"name": "f1", "rule": "per_class_subset"}, r"field 'split' on dataset tinymnist_28"),
        ({"name": "f1", "rule": "per_class_subsets", "fold": 9}, r"'fold' must be in 1\.\.5"),
    ],
)
def test_a_bad_split_override_names_the_suite_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, split: dict, message: str
) -> None:
    from harness.config.suites import SuiteError, load_suite

    folder = _suite_folder(tmp_path, monkeypatch, split)
    with pytest.raises(SuiteError, match=message) as raised:
        load_suite("subsets").cases()
    assert str(folder / "suites" / "subsets.yaml") in str(raised.value)
