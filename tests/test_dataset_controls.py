"""Natural-image controls (CIFAR-10, STL-10, DTD) and CT volumes (STOIC), on miniature copies.

Each test writes the official download's file names and byte layout under ``tmp_path``
(CIFAR's label-then-planes records, STL-10's column-major planes and 1-based labels,
DTD's class folders and fold lists, STOIC's MetaImage volumes and reference.csv), points
the committed card at it and loads it through ``load_splits``.
"""

from __future__ import annotations

import csv
import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from harness.config.card_fields import CardError
from harness.config.cards import DatasetCard, load_dataset_card_file
from harness.data import DatasetError
from harness.data.npz import SplitData
from harness.data.prepare import load_splits

DATASETS = Path(__file__).resolve().parent.parent / "datasets"
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]  # fmt: skip
STL10 = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def committed(name: str, root: Path, **changes: object) -> DatasetCard:
    """The committed card ``name`` with its reader pointed at ``root`` (and ``changes``)."""
    card = load_dataset_card_file(DATASETS / f"{name}.yaml")
    params = dataclasses.replace(card.reader.params, root=str(root), **changes)
    return dataclasses.replace(card, reader=dataclasses.replace(card.reader, params=params))


def lookup(splits: dict[str, SplitData]) -> dict[bytes, tuple[str, int]]:
    """Image bytes -> (split, label) over all splits."""
    out = {}
    for split, data in splits.items():
        for picture, label in zip(data.images, data.labels, strict=True):
            out[picture.tobytes()] = (split, int(label))
    return out


# --------------------------------------------------------------------------- CIFAR-10


def cifar_record(label: int, picture: np.ndarray) -> bytes:
    """One record: the label byte, then the red, green and blue planes, each row by row."""
    return bytes([label]) + picture.transpose(2, 0, 1).tobytes()


def write_cifar(root: Path, per_batch: int = 20) -> dict[str, list[tuple[int, np.ndarray]]]:
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    made: dict[str, list[tuple[int, np.ndarray]]] = {"train": [], "test": []}
    names = [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]
    for name in names:
        records = []
        for row in range(per_batch):
            label = (row * 7 + len(name)) % 10
            picture = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
            records.append(cifar_record(label, picture))
            made["test" if name == "test_batch.bin" else "train"].append((label, picture))
        (folder / name).write_bytes(b"".join(records))
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10) + "\n\n")  # as shipped
    (folder / "readme.html").write_text("<html></html>")
    return made


def test_cifar10_binary_batches(tmp_path: Path) -> None:
    made = write_cifar(tmp_path / "cifar")
    splits = load_splits(committed("cifar10", tmp_path / "cifar"))
    test = splits["test"]
    assert test.images.shape == (20, 32, 32, 3)
    assert [(int(y), x.tobytes()) for y, x in zip(test.labels, test.images, strict=True)] == [
        (label, picture.tobytes()) for label, picture in made["test"]
    ]
    found = lookup({s: splits[s] for s in ("train", "val")})
    assert found == {
        picture.tobytes(): (found[picture.tobytes()][0], label) for label, picture in made["train"]
    }
    assert len(splits["train"]) == 80 and len(splits["val"]) == 20
    # ssl-transfer's carve: np.random.seed(0), shuffle the train positions, first 20% val.
    positions = list(range(100))
    np.random.RandomState(0).shuffle(positions)
    assert {found[p.tobytes()][0] for _, p in made["train"]} == {"train", "val"}
    assert sorted(
        i for i, (_, picture) in enumerate(made["train"]) if found[picture.tobytes()][0] == "val"
    ) == sorted(positions[:20])


def test_cifar10_record_layout_is_label_then_row_major_planes(tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar", per_batch=10)
    planes = np.zeros((3, 32, 32), dtype=np.uint8)
    planes[0, 0, :] = 200  # red: the first 32 pixel bytes are the top row
    planes[1, :, 0] = 100  # green: the left column
    planes[2, 31, 31] = 50  # blue: the last byte
    (tmp_path / "cifar/cifar-10-batches-bin/test_batch.bin").write_bytes(
        bytes([3]) + planes.tobytes() + cifar_record(9, np.zeros((32, 32, 3), np.uint8))
    )
    splits = load_splits(committed("cifar10", tmp_path / "cifar"))
    picture = splits["test"].images[0]
    assert splits["test"].labels.tolist() == [CIFAR10.index("cat"), CIFAR10.index("truck")]
    assert (picture[0, :, 0] == 200).all() and (picture[1:, :, 0] == 0).all()
    assert (picture[:, 0, 1] == 100).all() and (picture[:, 1:, 1] == 0).all()
    assert picture[31, 31, 2] == 50 and picture[..., 2].sum() == 50


def test_cifar10_truncated_batch_names_the_file(tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar", per_batch=10)
    batch = tmp_path / "cifar/cifar-10-batches-bin/data_batch_3.bin"
    batch.write_bytes(batch.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"data_batch_3\.bin holds 30630 bytes, not a whole"):
        load_splits(committed("cifar10", tmp_path / "cifar"))


def test_cifar10_label_without_a_name_names_the_names_file(tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar", per_batch=10)
    batch = tmp_path / "cifar/cifar-10-batches-bin/test_batch.bin"
    batch.write_bytes(cifar_record(10, np.zeros((32, 32, 3), np.uint8)) + batch.read_bytes()[3073:])
    with pytest.raises(DatasetError, match=r"label 10 has no name in .*batches\.meta\.txt"):
        load_splits(committed("cifar10", tmp_path / "cifar"))


def test_cifar10_names_file_must_match_the_card(tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar", per_batch=10)
    meta = tmp_path / "cifar/cifar-10-batches-bin/batches.meta.txt"
    meta.write_text(meta.read_text().replace("automobile", "car"))
    with pytest.raises(DatasetError, match="car"):
        load_splits(committed("cifar10", tmp_path / "cifar"))


# --------------------------------------------------------------------------- STL-10


def stl_bytes(pictures: np.ndarray) -> bytes:
    """STL-10's image file: per image, the red, green, blue planes, each column by column."""
    return np.ascontiguousarray(pictures.transpose(0, 3, 2, 1)).tobytes()


def write_stl(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    made = {}
    for split, n in (("train", 50), ("test", 20)):
        pictures = rng.integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8)
        labels = (np.arange(n) % 10 + 1).astype(np.uint8)  # 1..10
        (folder / f"{split}_X.bin").write_bytes(stl_bytes(pictures))
        (folder / f"{split}_y.bin").write_bytes(labels.tobytes())
        made[split] = (pictures, labels)
    (folder / "unlabeled_X.bin").write_bytes(b"\x00" * 1000)  # not read (not even sized)
    (folder / "class_names.txt").write_text("\n".join(STL10) + "\n")
    (folder / "fold_indices.txt").write_text("0 1 2\n")
    return made


def test_stl10_binary_column_major_planes_and_one_based_labels(tmp_path: Path) -> None:
    made = write_stl(tmp_path / "stl")
    splits = load_splits(committed("stl10", tmp_path / "stl"))
    pictures, labels = made["test"]
    assert np.array_equal(splits["test"].images, pictures)
    assert splits["test"].labels.tolist() == (labels.astype(int) - 1).tolist()
    pictures, labels = made["train"]
    found = lookup({s: splits[s] for s in ("train", "val")})
    expected = {p.tobytes(): int(y) - 1 for p, y in zip(pictures, labels, strict=True)}
    assert {key: label for key, (_, label) in found.items()} == expected
    assert len(splits["val"]) == 10 and len(splits["train"]) == 40


def test_stl10_first_bytes_are_the_left_column(tmp_path: Path) -> None:
    write_stl(tmp_path / "stl")
    first = np.zeros(3 * 96 * 96, dtype=np.uint8)
    first[:96] = 255  # red plane, first column
    first[96 * 96 + 96 : 96 * 96 + 192] = 7  # green plane, second column
    test_x = tmp_path / "stl/stl10_binary/test_X.bin"
    test_x.write_bytes(first.tobytes() + test_x.read_bytes()[first.size :])
    (tmp_path / "stl/stl10_binary/test_y.bin").write_bytes(bytes([3] + [1] * 19))
    splits = load_splits(committed("stl10", tmp_path / "stl"))
    picture = splits["test"].images[0]
    assert (picture[:, 0, 0] == 255).all() and (picture[:, 1:, 0] == 0).all()
    assert (picture[:, 1, 1] == 7).all() and picture[..., 1].sum() == 7 * 96
    assert splits["test"].labels[:2].tolist() == [STL10.index("car"), STL10.index("airplane")]


def test_stl10_label_count_mismatch_names_both_files(tmp_path: Path) -> None:
    write_stl(tmp_path / "stl")
    (tmp_path / "stl/stl10_binary/train_y.bin").write_bytes(bytes([1] * 49))
    with pytest.raises(DatasetError, match=r"train_X\.bin holds 50 images but .*train_y\.bin 49"):
        load_splits(committed("stl10", tmp_path / "stl"))


# --------------------------------------------------------------------------- DTD


def texture(path: Path, value: int) -> None:
    """A flat JPEG of one grey ``value`` (a multiple of 4, robust to JPEG rounding)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 48, 3), value, dtype=np.uint8)).save(path, quality=95)


def write_dtd(root: Path, classes: tuple[str, ...]) -> dict[str, dict[int, int]]:
    """dtd/images/<class>/<class>_NNNN.jpg, labels/{train,val,test}{1,2}.txt; split -> {value: class}."""
    folds: dict[str, list[str]] = {f"{s}{k}": [] for k in (1, 2) for s in ("train", "val", "test")}
    fold1: dict[str, dict[int, int]] = {"train": {}, "val": {}, "test": {}}
    value = 0
    for label, name in enumerate(classes):
        for k, split in enumerate(("train", "val", "test", "train")):
            entry = f"{name}/{name}_{k + 1:04d}.jpg"
            texture(root / "images" / entry, 4 * value)
            fold1[split][value] = label
            folds[f"{split}1"].append(entry)
            folds[f"{('test', 'train', 'val', 'test')[k]}2"].append(entry)
            value += 1
        texture(root / "images" / name / f"{name}_0099.jpg", 252)  # in no list: left out
    (root / "images" / classes[0] / ".directory").write_text("[Dolphin]\n")
    for fold, entries in folds.items():
        (root / "labels").mkdir(exist_ok=True)
        (root / "labels" / f"{fold}.txt").write_text("\n".join(entries) + "\n")
    (root / "labels" / "labels_joint_anno.txt").write_text("banded/banded_0001.jpg banded\n")
    return fold1


def test_dtd_fold1_lists(tmp_path: Path) -> None:
    card = committed("dtd", tmp_path / "dtd", size=16)
    fold1 = write_dtd(tmp_path / "dtd", card.classes[::4])  # 12 of the 47 classes
    splits = load_splits(card)
    for split, data in splits.items():
        values = np.rint(data.images.reshape(len(data), -1).mean(axis=1) / 4).astype(int)
        assert dict(zip(values.tolist(), data.labels.tolist(), strict=True)) == {
            v: card.classes.index(card.classes[::4][label]) for v, label in fold1[split].items()
        }
    assert [len(splits[s]) for s in ("train", "val", "test")] == [24, 12, 12]
    assert splits["train"].images.shape[1:] == (16, 16, 3)


def test_dtd_list_naming_a_missing_image_names_the_list(tmp_path: Path) -> None:
    card = committed("dtd", tmp_path / "dtd", size=16)
    write_dtd(tmp_path / "dtd", card.classes[:3])
    listing = tmp_path / "dtd/labels/val1.txt"
    listing.write_text(listing.read_text() + "banded/banded_0500.jpg\n")
    with pytest.raises(DatasetError, match=r"val1\.txt line 4 lists 'banded/banded_0500\.jpg'"):
        load_splits(card)


def test_dtd_image_in_two_lists_names_both(tmp_path: Path) -> None:
    card = committed("dtd", tmp_path / "dtd", size=16)
    write_dtd(tmp_path / "dtd", card.classes[:3])
    listing = tmp_path / "dtd/labels/test1.txt"
    listing.write_text(listing.read_text() + "banded/banded_0001.jpg\n")  # already in train1
    with pytest.raises(DatasetError, match=r"listed in both labels/train1\.txt and labels/test1"):
        load_splits(card)


def test_image_folder_split_lists_exclude_split_folders(tmp_path: Path) -> None:
    card = load_dataset_card_file(DATASETS / "dtd.yaml")
    reader = {"format": "image_folder", "split_folders": True, "split_lists": {"test": "t.txt"}}
    with pytest.raises(CardError, match=r"field 'reader': 'split_lists' names the splits"):
        DatasetCard(**{**_fields(card), "reader": reader})


def _fields(card: DatasetCard) -> dict[str, object]:
    return {f.name: getattr(card, f.name) for f in dataclasses.fields(card)}


# --------------------------------------------------------------------------- STOIC 2021

IDS = [0, 2, 5, 9, 13, 14, 21, 30, 33, 38, 40, 41, 47, 52, 58, 60, 64, 71, 75, 80]


def volume(row: int, depth: int) -> np.ndarray:
    """A (z, y, x) HU volume whose middle axial slice (z = depth // 2) has four row bands.

    Rows 0-4: -2000 HU (clipped to 0); 5-9: 3000 HU (clipped to 255); 10-14: -500 HU
    (102); 15-19: -1000 + 25 * row HU (5.1 * row). Every other slice is 0 HU.
    """
    array = np.zeros((depth, 20, 20), dtype=np.int16)
    middle = array[depth // 2]
    middle[0:5], middle[5:10], middle[10:15] = -2000, 3000, -500
    middle[15:20] = -1000 + 25 * row
    return array


@pytest.fixture
def sitk() -> Any:
    """SimpleITK (the ``volumes`` extra, part of ``dev``)."""
    return pytest.importorskip("SimpleITK")


def write_stoic(sitk: Any, root: Path) -> dict[int, int]:
    """stoic2021-training/{data/mha/<id>.mha, metadata/reference.csv}; id -> probCOVID."""
    base = root / "stoic2021-training"
    (base / "data" / "mha").mkdir(parents=True)
    labels = {}
    for k, patient in enumerate(IDS):
        image = sitk.GetImageFromArray(volume(k, 7 + k % 2))
        image.SetSpacing((0.7, 0.7, 1.5))
        sitk.WriteImage(image, str(base / "data" / "mha" / f"{patient}.mha"), k % 2 == 0)
        labels[patient] = int(k % 3 != 0)
    (base / "metadata").mkdir()
    with open(base / "metadata" / "reference.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["PatientID", "probCOVID", "probSevere"])
        writer.writerows([p, labels[p], int(p % 4 == 0 and labels[p])] for p in IDS)
    return labels


def test_stoic_middle_axial_slice_clipped_to_the_hu_window(sitk: Any, tmp_path: Path) -> None:
    labels = write_stoic(sitk, tmp_path / "stoic")
    splits = load_splits(committed("stoic", tmp_path / "stoic", size=20))
    seen = {}
    for data in splits.values():
        assert data.images.shape[1:] == (20, 20)
        for picture, label in zip(data.images, data.labels, strict=True):
            assert (picture[0:5] == 0).all() and (picture[5:10] == 255).all()
            assert (picture[10:15] == 102).all()  # (-500 + 1000) * 255 / 1250
            row = int(np.rint(picture[15:20].mean() / 5.1))
            assert np.abs(picture[15:20].astype(float) - 5.1 * row).max() <= 0.51
            seen[IDS[row]] = int(label)
    assert seen == labels  # probCOVID, every patient once
    assert sum(len(d) for d in splits.values()) == 20 and len(splits["test"]) == 4


def test_stoic_reader_reads_nifti_too(sitk: Any, tmp_path: Path) -> None:
    from harness.data.readers.volumes import axial_slice

    array = volume(3, 9)
    array[3] = 77
    for name in ("v.nii", "v.nii.gz", "v.mha"):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / name))
        assert np.array_equal(axial_slice(tmp_path / name), array[4])
        assert np.array_equal(axial_slice(tmp_path / name, position=0.34), array[3])  # 9 * 0.34


@pytest.mark.parametrize("fault", ["corrupt", "missing", "flat"])
def test_stoic_bad_volume_names_its_path(sitk: Any, tmp_path: Path, fault: str) -> None:
    write_stoic(sitk, tmp_path / "stoic")
    path = tmp_path / "stoic/stoic2021-training/data/mha/13.mha"
    if fault == "corrupt":
        path.write_bytes(b"ObjectType = Image\nNDims = 3\n garbage")
    elif fault == "missing":
        path.unlink()
    else:
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 20), np.int16)), str(path))
    message = {"corrupt": "cannot read image", "missing": "not found", "flat": "not a 3-D"}[fault]
    with pytest.raises(DatasetError, match=rf"13\.mha.*{message}|{message}.*13\.mha"):
        load_splits(committed("stoic", tmp_path / "stoic", size=20))


def test_stoic_without_simpleitk_names_the_extra(
    sitk: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_stoic(sitk, tmp_path / "stoic")
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # import SimpleITK -> ImportError
    with pytest.raises(DatasetError, match=r'needs SimpleITK.*pip install "medxfer\[volumes\]"'):
        load_splits(committed("stoic", tmp_path / "stoic", size=20))
