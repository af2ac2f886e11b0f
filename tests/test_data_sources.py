"""Folder datasets read through a card: CSV + images (CheXpert layout), ImageFolder, DICOM index.

Every dataset here is written by the test in its real on-disk layout (tiny images); the
cards are YAML files loaded like any other card.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from harness.config.cards import CardError, DatasetCard, load_dataset_card_file
from harness.data import DatasetError, DatasetNotPrepared
from harness.data.npz import read_npz_meta
from harness.data.pipeline import read_raw
from harness.data.prepare import dataset_file, how_to_prepare, is_prepared, load_splits, prepare
from harness.data.registry import READERS
from harness.data.split_rules import (
    PredefinedParams,
    SeededFractionsParams,
    predefined,
    seeded_fractions,
)
from harness.data.table import DatasetContext, SplitInput

CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "Edema", "Pleural Effusion"]
# (patient, view, Edema, Pleural Effusion) of CheXpert-v1.0-small/valid.csv, in file order
VALID_ROWS = [
    (90001, "Frontal", "1.0", "-1.0"),
    (90001, "Lateral", "1.0", "1.0"),  # dropped by where: Frontal
    (90002, "Frontal", "-1.0", ""),
    (90003, "Frontal", "", "0.0"),
    (90004, "Frontal", "0.0", "1.0"),
]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _card(folder: Path, name: str, **fields: Any) -> DatasetCard:
    raw: dict[str, Any] = {
        "name": name,
        "version": 1,
        "modality": "chest X-ray",
        "task": "multilabel",
        "classes": ["Edema", "Pleural Effusion"],
        "primary_metric": "roc_auc",
    }
    raw.update(fields)
    (folder / "datasets").mkdir(parents=True, exist_ok=True)
    path = folder / "datasets" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return load_dataset_card_file(path)


def _png(path: Path, value: int, size: tuple[int, int] = (40, 48), rgb: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if rgb else (size[1], size[0])
    Image.fromarray(np.full(shape, value, dtype=np.uint8)).save(path)


def _write_chexpert(root: Path) -> None:
    """CheXpert-v1.0-small: train.csv / valid.csv and PNGs under patientNNNNN/studyN/."""
    base = root / "CheXpert-v1.0-small"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train_rows = []
    for patient in range(1, 13):
        for study in (1, 2):
            codes = rng.choice(["1.0", "0.0", "-1.0", ""], size=2)
            train_rows.append((patient, study, "Frontal", *codes))
    for split, rows in (("train", train_rows), ("valid", [(p, 1, *r) for p, *r in VALID_ROWS])):
        with open(base / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CHEXPERT_HEADER)
            for index, (patient, study, view, edema, effusion) in enumerate(rows):
                rel = f"CheXpert-v1.0-small/{split}/patient{patient:05d}/study{study}/view1_{view.lower()}.png"
                _png(root / rel, value=10 * index)
                writer.writerow([rel, "Female", 60, view, "AP", edema, effusion])


def _mk(folder: Path) -> Path:
    folder.mkdir(parents=True)
    return folder


def _chexpert_card(tmp_path: Path, uncertain: str, name: str = "chexpert_tiny") -> DatasetCard:
    return _card(
        tmp_path / "cards",
        name,
        reader={
            "format": "csv_images",
            "root": str(tmp_path / "chexpert"),
            "indexes": {
                "train": "CheXpert-v1.0-small/train.csv",
                "valid": "CheXpert-v1.0-small/valid.csv",
            },
            "group_pattern": r"patient(\d+)",
            "where": {"Frontal/Lateral": ["Frontal"]},
            "size": 16,
        },
        label_policy={"name": "uncertain", "uncertain": uncertain, "blank": "zeros"},
        split={"rule": "predefined", "names": {"test": "valid"}, "val_fraction": 0.25, "seed": 0},
    )


def test_chexpert_layout_with_uncertain_ones_and_zeros(tmp_path: Path, home: Path) -> None:
    _write_chexpert(tmp_path / "chexpert")
    ones = load_splits(_chexpert_card(tmp_path, "ones", "chexpert_ones"))
    zeros = load_splits(_chexpert_card(tmp_path, "zeros", "chexpert_zeros"))
    # valid.csv (the test split), lateral view dropped, in file order
    np.testing.assert_array_equal(ones["test"].labels, [[1, 1], [1, 0], [0, 0], [0, 1]])
    np.testing.assert_array_equal(zeros["test"].labels, [[1, 0], [0, 0], [0, 0], [0, 1]])
    assert ones["test"].images.shape == (4, 16, 16) and ones["test"].images.dtype == np.uint8
    # each image is the constant its row was written with (rows 0, 2, 3, 4 of valid.csv)
    assert ones["test"].images.reshape(4, -1).mean(axis=1).tolist() == [0, 20, 30, 40]
    # 24 train rows: val carved out by patient, no patient in both
    assert len(ones["train"]) + len(ones["val"]) == 24
    train_groups, val_groups = set(ones["train"].groups), set(ones["val"].groups)
    assert train_groups and val_groups and not train_groups & val_groups
    assert 4 <= len(ones["val"]) <= 8
    # every train / val row (its image's constant = 10 x its row in train.csv) exactly
    with open(tmp_path / "chexpert" / "CheXpert-v1.0-small" / "train.csv") as handle:
        codes = [(r["Edema"], r["Pleural Effusion"]) for r in csv.DictReader(handle)]
    for policy, uncertain in ((ones, 1), (zeros, 0)):
        found = {}
        for split in ("train", "val"):
            for image, label in zip(policy[split].images, policy[split].labels, strict=True):
                found[int(image[0, 0]) // 10] = label.tolist()
        code = {"1.0": 1, "0.0": 0, "-1.0": uncertain, "": 0}
        assert found == {row: [code[a], code[b]] for row, (a, b) in enumerate(codes)}
    assert any("-1.0" in pair for pair in codes) and any("" in pair for pair in codes)


def test_prepared_cache_is_keyed_by_card_and_index(tmp_path: Path, home: Path) -> None:
    _write_chexpert(tmp_path / "chexpert")
    card = _chexpert_card(tmp_path, "ones")
    path = prepare(card)
    assert path == dataset_file(card) and path.is_relative_to(home / "prepared")
    meta = read_npz_meta(path)
    assert meta is not None and json.loads(meta["key"])["entries"]["label_policy"] == "uncertain v1"
    mtime = path.stat().st_mtime_ns
    assert prepare(card) == path and path.stat().st_mtime_ns == mtime  # current: not rebuilt
    index = tmp_path / "chexpert" / "CheXpert-v1.0-small" / "valid.csv"
    index.write_text(index.read_text().replace("1.0,-1.0", "0.0,-1.0", 1))
    assert load_splits(card)["test"].labels[0].tolist() == [0, 1]  # the index changed: redone
    # a file at the cache path is not trusted by its name alone
    other = _chexpert_card(tmp_path, "zeros")  # same name and version: same cache path
    assert dataset_file(other) == path
    assert load_splits(other)["test"].labels[1].tolist() == [0, 0]
    assert load_splits(card)["test"].labels[1].tolist() == [1, 0]


def test_missing_folder_says_where_to_put_it(tmp_path: Path, home: Path) -> None:
    card = _card(
        tmp_path / "cards",
        "nih_tiny",
        reader={
            "format": "csv_images",
            "index": "Data_Entry_2017.csv",
            "path_column": "Image Index",
        },
        label_policy={"name": "multi_hot", "column": "Finding Labels", "none": ["No Finding"]},
        split={"rule": "seeded_fractions", "fractions": {"train": 0.7, "val": 0.1, "test": 0.2}},
    )
    assert not is_prepared(card)
    with pytest.raises(DatasetNotPrepared) as info:
        load_splits(card)
    expected = home / "data" / "nih_tiny" / "Data_Entry_2017.csv"
    assert str(expected) in str(info.value) and str(expected) in how_to_prepare(card)


def test_nih_layout_multi_hot_and_relative_root(tmp_path: Path, home: Path) -> None:
    cards = tmp_path / "cards"
    root = cards / "data" / "nih"
    rows = []
    for index in range(30):
        name = f"{index:08d}_000.png"
        _png(root / "images" / name, value=index)
        findings = ["No Finding", "Effusion", "Mass|Effusion"][index % 3]
        rows.append({"Image Index": name, "Finding Labels": findings, "Patient ID": index // 2})
    with open(_mk(root / "meta") / "Data_Entry_2017.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    card = _card(
        cards,
        "nih_tiny",
        classes=["Effusion", "Mass"],
        reader={
            "format": "csv_images",
            "root": "data/nih",  # relative to the card folder
            "index": "meta/Data_Entry_2017.csv",
            "path_column": "Image Index",
            "image_root": "images",
            "group_column": "Patient ID",
            "size": 8,
        },
        label_policy={"name": "multi_hot", "column": "Finding Labels", "none": ["No Finding"]},
        split={"rule": "seeded_fractions", "fractions": {"train": 0.6, "val": 0.2, "test": 0.2}},
    )
    assert is_prepared(card)
    splits = load_splits(card)
    assert sum(len(s) for s in splits.values()) == 30
    for data in splits.values():
        for image, label in zip(data.images, data.labels, strict=True):
            assert label.tolist() == [[0, 0], [1, 0], [1, 1]][int(image[0, 0]) % 3]


def test_image_folder_with_split_folders_and_rgb(tmp_path: Path, home: Path) -> None:
    root = home / "data" / "pneumonia_tiny"  # the default root
    counts = {"train": 6, "val": 2, "test": 4}
    for split, n in counts.items():
        for label, value in (("NORMAL", 50), ("PNEUMONIA", 200)):
            for k in range(n):
                _png(root / split / label / f"person{k}_virus_{k}.png", value, rgb=True)
    (root / "train" / "NORMAL" / ".DS_Store").write_text("junk")
    card = _card(
        tmp_path / "cards",
        "pneumonia_tiny",
        task="binary",
        classes=["normal", "pneumonia"],
        reader={
            "format": "image_folder",
            "split_folders": True,
            "group_pattern": r"^(person\d+)_",
            "size": 12,
            "mode": "RGB",
        },
        label_policy={"name": "class_map", "map": {"NORMAL": "normal", "PNEUMONIA": "pneumonia"}},
    )
    splits = load_splits(card)
    for split, n in counts.items():
        data = splits[split]
        assert data.images.shape == (2 * n, 12, 12, 3)
        assert data.labels.tolist() == [0] * n + [1] * n
        assert data.images[:, 0, 0, 0].tolist() == [50] * n + [200] * n


def test_image_folder_seeded_fractions_and_identity_names(tmp_path: Path, home: Path) -> None:
    root = tmp_path / "folder"
    for label in ("benign", "malignant"):
        for k in range(20):
            _png(root / label / f"p{k:02d}_{label}.png", value=k)
    card = _card(
        tmp_path / "cards",
        "skin_tiny",
        task="binary",
        classes=["benign", "malignant"],
        reader={
            "format": "image_folder",
            "root": str(root),
            "group_pattern": r"^p(\d+)_",
            "size": 8,
        },
        split={"rule": "seeded_fractions", "fractions": {"train": 0.5, "val": 0.25, "test": 0.25}},
    )
    splits = load_splits(card)
    assert sum(len(s) for s in splits.values()) == 40
    seen = [set(splits[s].images[:, 0, 0].tolist()) for s in splits]  # pixel value = patient
    assert not seen[0] & seen[1] and not seen[0] & seen[2] and not seen[1] & seen[2]


def _dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **tags: Any) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.set_pixel_data(pixels, photometric, pixels.dtype.itemsize * 8)
    for key, value in tags.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_dicom_index_with_rescale_window_and_many_to_one(tmp_path: Path, home: Path) -> None:
    root = tmp_path / "ct"
    rows = []
    for index, (label, split) in enumerate(
        [("hemorrhage", "train"), ("normal", "train"), ("ischemic", "train"), ("normal", "val"),
         ("hemorrhage", "val"), ("normal", "test"), ("ischemic", "test")]
    ):  # fmt: skip
        raw = np.full((20, 24), 100 + 10 * index, dtype=np.uint16)  # HU = 2 * raw - 200
        _dicom(root / "dcm" / f"{index}.dcm", raw, RescaleSlope=2, RescaleIntercept=-200)
        rows.append({"file": f"dcm/{index}.dcm", "finding": label, "fold": split})
    with open(root / "index.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    card = _card(
        tmp_path / "cards",
        "ct_tiny",
        task="binary",
        classes=["normal", "stroke"],
        reader={
            "format": "dicom",
            "root": str(root),
            "index": "index.csv",
            "path_column": "file",
            "split_column": "fold",
            "window": [0, 255],
            "size": 8,
        },
        label_policy={
            "name": "class_map",
            "column": "finding",
            "map": {"hemorrhage": "stroke", "ischemic": "stroke"},
        },
    )
    splits = load_splits(card)
    assert splits["train"].labels.tolist() == [1, 0, 1]
    assert splits["val"].labels.tolist() == [0, 1] and splits["test"].labels.tolist() == [0, 1]
    expected_hu = [2 * (100 + 10 * i) - 200 for i in range(7)]  # window [0, 255]: HU = value
    values = np.concatenate([splits[s].images[:, 0, 0] for s in ("train", "val", "test")])
    assert values.tolist() == expected_hu
    assert splits["train"].images.shape == (3, 8, 8)


def test_corrupt_and_missing_images_name_the_file_and_card(tmp_path: Path, home: Path) -> None:
    _write_chexpert(tmp_path / "chexpert")
    bad = (
        tmp_path
        / "chexpert"
        / "CheXpert-v1.0-small"
        / "valid"
        / "patient90003"
        / "study1"
        / "view1_frontal.png"
    )
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    card = _chexpert_card(tmp_path, "ones")
    with pytest.raises(DatasetError) as info:
        load_splits(card)
    assert str(bad) in str(info.value) and card.source_file in str(info.value)
    bad.unlink()
    with pytest.raises(DatasetError, match="not found") as info:
        load_splits(card)
    assert str(bad) in str(info.value) and card.source_file in str(info.value)


def test_policy_and_reader_errors_at_prepare_name_the_field(tmp_path: Path, home: Path) -> None:
    _write_chexpert(tmp_path / "chexpert")
    card = _card(
        tmp_path / "cards",
        "chexpert_bad",
        reader={
            "format": "csv_images",
            "root": str(tmp_path / "chexpert"),
            "index": "CheXpert-v1.0-small/train.csv",
            "group_column": "Patient",
        },
        split={"rule": "seeded_fractions", "fractions": {"train": 0.6, "val": 0.2, "test": 0.2}},
    )
    with pytest.raises(DatasetError, match=r"field 'reader.group_column' names column 'Patient'"):
        load_splits(card)


# --------------------------------------------------------------------------- split rules


def _patients(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, size=80)
    groups = np.repeat([f"patient{k:03d}" for k in range(80)], sizes)
    labels = np.repeat(rng.integers(0, 3, size=80), sizes)
    return labels, groups


def _split(seed: int, labels: np.ndarray, groups: np.ndarray) -> dict[str, np.ndarray]:
    params = SeededFractionsParams(fractions={"train": 0.6, "val": 0.2, "test": 0.2}, seed=seed)
    data = SplitInput(labels, groups, None, lambda rows: np.zeros((len(rows), 2, 2), np.uint8))
    ctx = DatasetContext("x.yaml", "x", "multiclass", ("a", "b", "c"), Path("."))
    return seeded_fractions(params, data, ctx)


def test_predefined_numpy_shuffle_val_is_ssl_transfers_carve() -> None:
    # Official test rows interleaved with 40 train rows; val is the first 10 of
    # np.random.seed(3) shuffling the train positions, whole groups following their first row.
    source = np.array(["train", "test"] * 40)[:60]
    source[40:] = "train"
    train = np.flatnonzero(source == "train")
    ctx = DatasetContext("x.yaml", "x", "multiclass", ("a", "b"), Path("."))
    labels = np.arange(60) % 2
    params = PredefinedParams(val_fraction=0.25, seed=3, val_carve="numpy-shuffle")
    split = predefined(params, SplitInput(labels, None, source, lambda r: r), ctx)
    positions = list(range(len(train)))
    np.random.seed(3)
    np.random.shuffle(positions)
    assert split["val"].tolist() == sorted(train[positions[:10]].tolist())
    assert split["train"].tolist() == sorted(set(train.tolist()) - set(split["val"].tolist()))
    assert split["test"].tolist() == np.flatnonzero(source == "test").tolist()
    groups = np.arange(60) // 2  # pairs of rows
    grouped = predefined(params, SplitInput(labels, groups, source, lambda r: r), ctx)
    val_groups = set(groups[grouped["val"]].tolist())
    assert val_groups and not val_groups & set(groups[grouped["train"]].tolist())
    with pytest.raises(DatasetError, match="val_fraction"):
        predefined(
            PredefinedParams(val_fraction=0.01, val_carve="numpy-shuffle"),
            SplitInput(labels, None, source, lambda r: r),
            ctx,
        )


def test_seeded_fractions_grouped_stratified_deterministic() -> None:
    labels, groups = _patients()
    first = _split(0, labels, groups)
    n = len(labels)
    assert sorted(np.concatenate(list(first.values())).tolist()) == list(range(n))
    owners = {}
    for split, rows in first.items():
        for group in set(groups[rows]):
            assert owners.setdefault(group, split) == split, f"{group} in two splits"
    for split, fraction in {"train": 0.6, "val": 0.2, "test": 0.2}.items():
        assert abs(len(first[split]) / n - fraction) < 0.06
        for label in range(3):  # stratified: each class keeps roughly its share
            share = np.mean(labels[first[split]] == label) - np.mean(labels == label)
            assert abs(share) < 0.15
    again = _split(0, labels, groups)
    assert all(np.array_equal(first[s], again[s]) for s in first)
    other = _split(1, labels, groups)
    assert not all(np.array_equal(first[s], other[s]) for s in first)


def test_readers_are_registered_with_versions() -> None:
    assert set(READERS.names()) >= {"npz", "csv_images", "image_folder", "dicom"}
    for name, version, description, params in READERS.available():
        assert version >= 1 and description and params, name


def _write_pcam(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """PatchCamelyon's layout: *_x.h5 with 'x' (N, 96, 96, 3) uint8, *_y.h5 with 'y' (N, 1, 1, 1)."""
    import h5py

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    made = {}
    for split, n in (("train", 6), ("valid", 4), ("test", 4)):
        x = rng.integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8)
        y = np.array([i % 2 for i in range(n)], dtype=np.uint8).reshape(n, 1, 1, 1)
        stem = f"camelyonpatch_level_2_split_{split}"
        with h5py.File(root / f"{stem}_x.h5", "w") as handle:
            handle.create_dataset("x", data=x, chunks=(1, 96, 96, 3), compression="gzip")
        with h5py.File(root / f"{stem}_y.h5", "w") as handle:
            handle.create_dataset("y", data=y)
        made[split] = (x, y.reshape(-1))
    return made


def _pcam_card(folder: Path, root: Path) -> DatasetCard:
    def spec(kind: str) -> dict[str, str]:
        return {
            split: f"camelyonpatch_level_2_split_{split}_{kind}.h5:{kind}"
            for split in ("train", "valid", "test")
        }

    return _card(
        folder,
        "pcam",
        task="binary",
        classes=["normal", "metastasis"],
        reader={"format": "hdf5", "root": str(root), "images": spec("x"), "labels": spec("y")},
        split={"rule": "predefined", "names": {"val": "valid"}},
    )


def test_hdf5_reader_reads_patchcamelyon_rows_in_order(tmp_path: Path, home: Path) -> None:
    made = _write_pcam(tmp_path / "pcam")
    card = _pcam_card(tmp_path / "cards", tmp_path / "pcam")
    assert is_prepared(card)
    splits = load_splits(card)
    for ours, theirs in (("train", "train"), ("val", "valid"), ("test", "test")):
        images, labels = made[theirs]
        assert np.array_equal(splits[ours].images, images)
        assert splits[ours].labels.tolist() == labels.tolist()
    raw = read_raw(card)
    rows = np.array([13, 0, 7, 7, 2])  # unsorted, repeated, across three files
    everything = np.concatenate([made[s][0] for s in card.reader.params.images])  # card order
    assert np.array_equal(raw.images.take(rows), everything[rows])


def test_hdf5_reader_names_the_missing_dataset_and_file(tmp_path: Path, home: Path) -> None:
    _write_pcam(tmp_path / "pcam")
    card = _pcam_card(tmp_path / "cards", tmp_path / "pcam")
    bad = dataclasses.replace(
        card.reader,
        params=dataclasses.replace(
            card.reader.params,
            labels={**card.reader.params.labels, "test": "camelyonpatch_level_2_split_test_y.h5:z"},
        ),
    )
    with pytest.raises(DatasetError, match=r"test_y\.h5: no dataset 'z' \(datasets: y\)"):
        read_raw(dataclasses.replace(card, reader=bad))
    (tmp_path / "pcam" / "camelyonpatch_level_2_split_valid_x.h5").unlink()
    assert not is_prepared(card)
    with pytest.raises(DatasetNotPrepared, match=r"valid_x\.h5 does not exist"):
        load_splits(card)
    with pytest.raises(CardError, match=r"reader.*'images' splits \['test', 'train'\] differ"):
        _card(
            tmp_path / "cards",
            "pcam_bad",
            task="binary",
            classes=["normal", "metastasis"],
            reader={
                "format": "hdf5",
                "images": {"train": "a.h5:x", "test": "b.h5:x"},
                "labels": {"train": "a.h5:y"},
            },
        )
