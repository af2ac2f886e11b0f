"""Split rule ``tfds_record_order``: VTAB-1k's PatchCamelyon subsets in TFDS record order.

The golden orders below were computed by TFDS's own code, not by the rule: in a scratch
venv with ``pip install tensorflow-datasets`` (4.9.10; TensorFlow not installed, the
in-memory shuffle needs none), ``tensorflow_datasets.core.shuffle.Shuffler(tmpdir,
hash_salt=<tfds split>)`` was fed ``add("%s_%d" % (split, i), str(i).encode())`` for
every row ``i`` of a split (the key of ``patch_camelyon._generate_examples``, ``split``
being ``train`` / ``valid`` / ``test``) and iterated. The hashing.py + shuffle.py of the
PyPI wheels 1.2.0, 1.3.0, 2.0.0 and 3.2.1 (VTAB's era; loaded with a shim for
``tf.compat.as_bytes``) gave the identical order over all 262,144 / 32,768 / 32,768 keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest

from harness.config.cards import CardError, DatasetCard, load_dataset_card_file
from harness.data import DatasetError
from harness.data.prepare import load_splits
from harness.data.registry import SPLIT_RULES, load_entries
from harness.data.split_tfds import tfds_record_order

DATASETS = Path(__file__).resolve().parent.parent / "datasets"

# TFDS order over the full splits (train 262,144 keys, validation 32,768): first 10 rows.
TFDS_TRAIN_FIRST = [251464, 132287, 133786, 86259, 230288, 147029, 25346, 233085, 61402, 72893]
TFDS_VALIDATION_FIRST = [3270, 10310, 20603, 11608, 13337, 4338, 11223, 31659, 3437, 20479]
# sha256 of ",".join(sorted rows) of train[:800] and validation[:200], from the same run.
TFDS_TRAIN800_SHA256 = "8244cfcb7055cc9bcd11f14a82dfaf4b7a18e177a72f827fee58a8e67cef7a33"
TFDS_VAL200_SHA256 = "7140fb2e93352f37c4fbec2d4b2d9edbac32dbec6c2446be7b50413d795f5297"
# TFDS order of the keys of the first 64 train / 32 valid / 8 test rows only.
TFDS_TRAIN_64 = [7, 49, 9, 42, 60, 30, 41, 34, 23, 24, 44, 12, 47, 15, 33, 13, 5, 21, 51, 63]
TFDS_VALID_32 = [25, 24, 5, 19, 17, 8, 22, 20, 2, 9, 7, 1, 10, 15, 31, 29, 16, 13, 3, 28]
SIZES = {"train": 64, "valid": 32, "test": 8}


def _digest(rows: np.ndarray) -> str:
    return hashlib.sha256(",".join(map(str, sorted(rows.tolist()))).encode()).hexdigest()


def test_pure_python_order_is_tfds_order_over_the_full_splits() -> None:
    train = tfds_record_order("train", [f"train_{i}" for i in range(262_144)])
    val = tfds_record_order("validation", [f"valid_{i}" for i in range(32_768)])
    assert train[:10].tolist() == TFDS_TRAIN_FIRST
    assert val[:10].tolist() == TFDS_VALIDATION_FIRST
    assert _digest(train[:800]) == TFDS_TRAIN800_SHA256
    assert _digest(val[:200]) == TFDS_VAL200_SHA256
    assert sorted(train.tolist()) == list(range(262_144))  # a permutation
    assert tfds_record_order("train", [f"train_{i}" for i in range(64)])[:20].tolist() == (
        TFDS_TRAIN_64
    )
    assert tfds_record_order("test", [f"test_{i}" for i in range(8)]).tolist() == [
        4, 0, 7, 5, 2, 1, 3, 6
    ]  # fmt: skip


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _write_pcam(root: Path) -> None:
    """The six official files, tiny: pixel (0, 0) holds the row (low, high byte) and split."""
    h5py = pytest.importorskip("h5py")
    root.mkdir(parents=True)
    for number, (split, n) in enumerate(SIZES.items()):
        x = np.zeros((n, 96, 96, 3), dtype=np.uint8)
        x[:, 0, 0, 0], x[:, 0, 0, 1], x[:, 0, 0, 2] = (
            np.arange(n) % 256,
            np.arange(n) // 256,
            number,
        )
        y = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1)
        for kind, data in (("x", x), ("y", y)):
            with h5py.File(root / f"camelyonpatch_level_2_split_{split}_{kind}.h5", "w") as f:
                f.create_dataset(kind, data=data)


def card_reading(root: Path, name: str = "pcam_vtab1k", **split: object) -> DatasetCard:
    """The committed card ``name`` reading ``root``, its split parameters changed."""
    card = load_dataset_card_file(DATASETS / f"{name}.yaml")
    reader = dataclasses.replace(card.reader.params, root=str(root))
    rule = dataclasses.replace(card.split, params=dataclasses.replace(card.split.params, **split))
    return dataclasses.replace(
        card, reader=dataclasses.replace(card.reader, params=reader), split=rule
    )


def _rows(images: np.ndarray) -> list[int]:
    return sorted((images[:, 0, 0, 0].astype(int) + 256 * images[:, 0, 0, 1].astype(int)).tolist())


def test_card_loads_the_tfds_first_rows_of_the_official_files(tmp_path: Path) -> None:
    card = load_dataset_card_file(DATASETS / "pcam_vtab1k.yaml")
    assert (card.split.name, card.split.params.train, card.split.params.val) == (
        "tfds_record_order",
        800,
        200,
    )
    _write_pcam(tmp_path / "pcam")
    splits = load_splits(card_reading(tmp_path / "pcam", train=5, val=3))
    assert _rows(splits["train"].images) == sorted(TFDS_TRAIN_64[:5])
    assert _rows(splits["val"].images) == sorted(TFDS_VALID_32[:3])
    assert _rows(splits["test"].images) == list(range(SIZES["test"]))
    for name, number in (("train", 0), ("val", 1), ("test", 2)):
        assert (splits[name].images[:, 0, 0, 2] == number).all()  # rows of their own file
        np.testing.assert_array_equal(splits[name].labels, np.array(_rows(splits[name].images)) % 2)


def test_too_few_rows_or_a_missing_split_is_a_clear_error(tmp_path: Path) -> None:
    _write_pcam(tmp_path / "pcam")
    with pytest.raises(DatasetError, match=r"pcam_vtab1k.*'split\.train': 800 records asked for, "
                       r"but source split 'train' has 64 rows"):  # fmt: skip
        load_splits(card_reading(tmp_path / "pcam"))
    with pytest.raises(DatasetError, match=r"'split\.val': 33 records .* 'valid' has 32 rows"):
        load_splits(card_reading(tmp_path / "pcam", train=5, val=33))
    with pytest.raises(DatasetError, match=r"no source split 'validation' \(for val\)"):
        load_splits(card_reading(tmp_path / "pcam", train=5, val=3, names={"val": "validation"}))


@pytest.mark.parametrize(
    "body, message",
    [
        ({"train": 0}, r"'train' and 'val' must be >= 1"),
        ({"names": {"valid": "valid"}}, r"'names' keys must be among"),
        ({"key_format": "{split}_{row}"}, r"may use only \{split\}, \{index\} and \{stem\}"),
        ({"key_format": "{split}"}, r"must hold \{index\} or \{stem\}"),
    ],
)
def test_bad_parameters_are_refused_when_the_card_loads(
    body: dict[str, object], message: str
) -> None:
    load_entries()
    with pytest.raises(CardError, match=message):
        SPLIT_RULES.parse({"rule": "tfds_record_order", **body}, "pcam_vtab1k.yaml")
