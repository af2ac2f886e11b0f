"""The MedMNIST .npz reader / writer: round trips, real layout, malformed files, atomicity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.cache.atomic import is_temporary
from harness.data import DatasetError
from harness.data.npz import SPLITS, SplitData, read_npz, write_npz

SIZES = {"train": 12, "val": 4, "test": 6}


def _splits(rgb: bool = False, groups: bool = True, n_classes: int = 3) -> dict[str, SplitData]:
    rng = np.random.default_rng(0)
    out = {}
    for split, n in SIZES.items():
        shape = (n, 8, 8, 3) if rgb else (n, 8, 8)
        out[split] = SplitData(
            images=rng.integers(0, 256, size=shape, dtype=np.uint8),
            labels=rng.integers(0, n_classes, size=n).astype(np.int64),
            groups=np.arange(n, dtype=np.int64) // 2 if groups else None,
        )
    return out


def _medmnist_arrays() -> dict[str, np.ndarray]:
    """Arrays exactly as MedMNIST stores them: uint8 images (N, 28, 28), uint8 labels (N, 1)."""
    rng = np.random.default_rng(1)
    arrays = {}
    for split, n in SIZES.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, size=(n, 1)).astype(np.uint8)
    return arrays


@pytest.mark.parametrize("rgb", [False, True])
def test_round_trip(tmp_path: Path, rgb: bool) -> None:
    splits = _splits(rgb=rgb)
    path = tmp_path / "data.npz"
    write_npz(path, splits)
    back = read_npz(path, "multiclass", 3)
    assert set(back) == set(SPLITS)
    for split in SPLITS:
        np.testing.assert_array_equal(back[split].images, splits[split].images)
        np.testing.assert_array_equal(back[split].labels, splits[split].labels)
        np.testing.assert_array_equal(back[split].groups, splits[split].groups)
        assert back[split].labels.dtype == np.int64 and back[split].labels.ndim == 1
        assert len(back[split]) == SIZES[split]
    with np.load(path) as raw:  # stored like MedMNIST: labels (N, 1)
        assert raw["train_labels"].shape == (SIZES["train"], 1)


def test_round_trip_without_groups(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    write_npz(path, _splits(groups=False))
    assert all(s.groups is None for s in read_npz(path, "binary", 3).values())


def test_reads_medmnist_layout(tmp_path: Path) -> None:
    path = tmp_path / "pneumoniamnist.npz"
    arrays = _medmnist_arrays()
    np.savez_compressed(path, **arrays)
    splits = read_npz(path, "binary", 2)
    for split, n in SIZES.items():
        assert splits[split].images.shape == (n, 28, 28)
        assert splits[split].labels.shape == (n,)
        assert splits[split].labels.dtype == np.int64
        assert splits[split].groups is None
        np.testing.assert_array_equal(splits[split].labels, arrays[f"{split}_labels"][:, 0])


def test_reads_multilabel(tmp_path: Path) -> None:
    path = tmp_path / "chest.npz"
    arrays = _medmnist_arrays()
    for split, n in SIZES.items():
        arrays[f"{split}_labels"] = (np.arange(n * 4).reshape(n, 4) % 3 == 0).astype(np.uint8)
    np.savez_compressed(path, **arrays)
    splits = read_npz(path, "multilabel", 4)
    assert splits["train"].labels.shape == (SIZES["train"], 4)
    with pytest.raises(DatasetError, match="train_labels"):
        read_npz(path, "multilabel", 5)


def _mutate(arrays: dict[str, np.ndarray], case: str) -> str:
    """Break ``arrays`` in one way; return the key the error must name."""
    if case == "missing_key":
        del arrays["val_labels"]
        return "val_labels"
    if case == "float_images":
        arrays["train_images"] = arrays["train_images"].astype(np.float32)
        return "train_images"
    if case == "bad_ndim":
        arrays["test_images"] = arrays["test_images"][:, :, :, None].repeat(2, axis=3)
        return "test_images"
    if case == "length_mismatch":
        arrays["test_labels"] = arrays["test_labels"][:-1]
        return "test_labels"
    if case == "label_out_of_range":
        arrays["val_labels"] = arrays["val_labels"].copy()
        arrays["val_labels"][0, 0] = 2
        return "val_labels"
    if case == "negative_label":
        arrays["train_labels"] = arrays["train_labels"].astype(np.int64) - 1
        return "train_labels"
    if case == "float_labels":
        arrays["train_labels"] = arrays["train_labels"].astype(np.float32)
        return "train_labels"
    if case == "wide_labels":
        arrays["val_labels"] = np.zeros((SIZES["val"], 2), dtype=np.uint8)
        return "val_labels"
    if case == "image_shape_mismatch":
        arrays["val_images"] = arrays["val_images"][:, :20, :20]
        return "val_images"
    if case == "bad_groups":
        arrays["train_groups"] = np.zeros(SIZES["train"] + 1, dtype=np.int64)
        return "train_groups"
    if case == "float_groups":
        arrays["test_groups"] = np.zeros(SIZES["test"], dtype=np.float64)
        return "test_groups"
    raise AssertionError(case)


MALFORMED = [
    "missing_key",
    "float_images",
    "bad_ndim",
    "length_mismatch",
    "label_out_of_range",
    "negative_label",
    "float_labels",
    "wide_labels",
    "image_shape_mismatch",
    "bad_groups",
    "float_groups",
]


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_names_file_and_key(tmp_path: Path, case: str) -> None:
    arrays = _medmnist_arrays()
    key = _mutate(arrays, case)
    path = tmp_path / f"{case}.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError) as info:
        read_npz(path, "binary", 2)
    assert str(path) in str(info.value)
    assert f"'{key}'" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.npz"
    with pytest.raises(DatasetError, match="not found") as info:
        read_npz(path, "binary", 2)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [b"not a zip at all", b""])
def test_not_an_npz(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.npz"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=r"not an \.npz") as info:
        read_npz(path, "binary", 2)
    assert str(path) in str(info.value)


def test_pickled_object_array_is_refused(tmp_path: Path) -> None:
    arrays = _medmnist_arrays()
    arrays["train_labels"] = np.array([[0]] * SIZES["train"], dtype=object)
    path = tmp_path / "pickled.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match="train_labels") as info:
        read_npz(path, "binary", 2)
    assert str(path) in str(info.value)


def test_dataset_error_is_value_error() -> None:
    assert issubclass(DatasetError, ValueError)


def test_write_needs_all_splits(tmp_path: Path) -> None:
    splits = _splits()
    del splits["val"]
    with pytest.raises(DatasetError, match="val"):
        write_npz(tmp_path / "x.npz", splits)


def test_split_data_checks_lengths() -> None:
    with pytest.raises(ValueError, match="labels"):
        SplitData(np.zeros((3, 4, 4), np.uint8), np.zeros(2, np.int64))


def test_atomic_write_leaves_no_partial_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "data.npz"
    write_npz(path, _splits())
    before = path.read_bytes()

    def broken_savez(handle, **arrays) -> None:
        handle.write(b"PK\x03\x04 partial archive")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        write_npz(path, _splits(rgb=True))
    with pytest.raises(OSError, match="disk full"):
        write_npz(tmp_path / "new.npz", _splits())
    assert path.read_bytes() == before
    assert not (tmp_path / "new.npz").exists()
    assert not [p for p in tmp_path.iterdir() if is_temporary(p)]
