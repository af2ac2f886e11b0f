"""Lazy prepared splits (issue 13): a built or decoded archive is written uncompressed and
each split's images load as a read-only memory map of it, checked by content first."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cache import keys, locks
from harness.cache.keys import array_digest, arrays_digest
from harness.cache.store import read_events
from harness.config import paths
from harness.config.cards import DatasetCard, Preprocessing
from harness.config.profiles import Profile
from harness.data import DatasetError
from harness.data.npz import SplitData, read_npz, write_npz
from harness.data.npz_map import archive_digest, members
from harness.data.prepare import is_prepared, load_splits, prepare
from harness.features import extract
from harness.protocols.case import subset_splits

PRE = Preprocessing(24, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear", 1.0)


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("MEDXFER_HOME", str(home))
    monkeypatch.delenv(paths.READONLY_ENV, raising=False)
    monkeypatch.delenv(locks.TIMEOUT_ENV, raising=False)
    return home


def _card(tmp_path: Path) -> DatasetCard:
    return DatasetCard(
        name="lazy_cxr",
        version=1,
        modality="chest X-ray",
        task="binary",
        classes=("normal", "lesion"),
        reader={"format": "npz", "file": "lazy.npz"},
        primary_metric="roc_auc",
        metrics=("roc_auc",),
        builder={"name": "cxr_lesion", "seed": 0, "counts": {"train": 12, "val": 4, "test": 6}},
        source_file=str(tmp_path / "lazy.yaml"),
    )


class _Pool(torch.nn.Module):
    """A backbone stand-in: channel means of 2x2 cells."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 2), 1)


def _eager(path: Path) -> dict[str, SplitData]:
    return read_npz(path, "binary", 2, mmap=False)


def test_loaded_images_are_read_only_memory_maps_of_the_archive(tmp_path: Path) -> None:
    card = _card(tmp_path)
    path = prepare(card)
    before = path.read_bytes()
    assert all(member.stored for member in members(path).values())  # written uncompressed
    eager = _eager(path)
    for name, split in load_splits(card).items():
        images = split.images
        assert isinstance(images, np.memmap) and images.mode == "r"
        assert not images.flags.writeable
        assert type(eager[name].images) is np.ndarray
        np.testing.assert_array_equal(images, eager[name].images)
        np.testing.assert_array_equal(split.labels, eager[name].labels)
        with pytest.raises(ValueError, match="read-only"):
            images[0, 0, 0] = 1
    assert path.read_bytes() == before  # never written through the map


def test_the_archive_digest_streams_and_equals_the_in_memory_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = prepare(_card(tmp_path))
    with np.load(path) as archive:
        whole = {name: archive[name] for name in archive.files if name != "meta_json"}
    monkeypatch.setattr(keys, "_DIGEST_BLOCK", 1000)  # several blocks per images array
    assert archive_digest(path, skip=("meta_json",)) == arrays_digest(whole)
    mapped = load_splits(_card(tmp_path))["train"].images
    assert isinstance(mapped, np.memmap)
    assert array_digest(mapped) == array_digest(np.array(mapped))
    compressed = tmp_path / "compressed.npz"
    write_npz(compressed, _eager(path))
    with np.load(compressed) as archive:
        assert archive_digest(compressed) == arrays_digest(
            {name: archive[name] for name in archive.files}
        )


def _flip_image_byte(path: Path, split: str = "train") -> None:
    member = members(path)[f"{split}_images"]
    data = bytearray(path.read_bytes())
    data[member.offset + 5] ^= 0xFF  # inside the pixel data: only the checksum can tell
    path.write_bytes(bytes(data))


def test_a_flipped_pixel_is_detected_and_the_archive_rebuilt(tmp_path: Path, _home: Path) -> None:
    card = _card(tmp_path)
    path = prepare(card)
    good = {name: np.array(split.images) for name, split in load_splits(card).items()}
    _flip_image_byte(path)
    with pytest.raises(DatasetError, match="CRC"):
        _eager(path)  # the zip layer's CRC catches it on a whole read...
    with pytest.raises(DatasetError, match=r"train_images\.npy' fails its CRC-32"):
        read_npz(path, "binary", 2, mmap=True)  # ...and a map checks it (a user's archive)
    mapped = read_npz(path, "binary", 2, mmap=True, check_crc=False)["train"].images
    assert not np.array_equal(mapped, good["train"])  # a cache archive: its sha256 must tell
    assert not is_prepared(card)
    assert prepare(card) == path
    assert [event["event"] for event in read_events(_home / "data")][-2:] == ["corrupt", "store"]
    for name, split in load_splits(card).items():
        assert isinstance(split.images, np.memmap)
        np.testing.assert_array_equal(split.images, good[name])


def test_a_damaged_npy_header_names_the_archive_and_member(tmp_path: Path) -> None:
    path = prepare(_card(tmp_path))
    member = members(path)["val_images"]
    data = bytearray(path.read_bytes())
    data[member.offset - 40 : member.offset - 30] = b"\xff" * 10  # inside the .npy header
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        read_npz(path, "binary", 2, mmap=True)


def test_a_compressed_archive_is_read_whole_with_a_note(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    splits = _eager(prepare(_card(tmp_path)))
    compressed = tmp_path / "compressed.npz"
    write_npz(compressed, splits)
    assert not members(compressed)["train_images"].stored
    with caplog.at_level(logging.INFO, logger="medxfer.data"):
        loaded = read_npz(compressed, "binary", 2, mmap=True)
    assert type(loaded["train"].images) is np.ndarray
    np.testing.assert_array_equal(loaded["train"].images, splits["train"].images)
    assert "stored compressed" in caplog.text and "train_images" in caplog.text


def test_subsets_and_features_are_the_same_with_lazy_and_eager_loads(tmp_path: Path) -> None:
    card = _card(tmp_path)
    path = prepare(card)
    lazy, eager = load_splits(card), _eager(path)
    profile = Profile("tiny", input_size=None, max_per_split={"train": 7, "test": 3}, seed=2)
    lazy_sub, eager_sub = subset_splits(lazy, profile), subset_splits(eager, profile)
    for name in lazy:
        np.testing.assert_array_equal(lazy_sub[name].images, eager_sub[name].images)
        np.testing.assert_array_equal(lazy_sub[name].labels, eager_sub[name].labels)
        assert array_digest(lazy_sub[name].images) == array_digest(eager_sub[name].images)
        assert array_digest(lazy[name].images) == array_digest(eager[name].images)
    device = torch.device("cpu")
    for images_lazy, images_eager in ((lazy["train"].images, eager["train"].images),
                                      (lazy_sub["train"].images, eager_sub["train"].images)):  # fmt: skip
        got = extract(_Pool(), images_lazy, PRE, device, batch_size=4)
        want = extract(_Pool(), images_eager, PRE, device, batch_size=4)
        assert got.shape == (len(images_eager), 12)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_fine_tuning_datasets_and_transforms_accept_the_read_only_map(tmp_path: Path) -> None:
    from harness.data.transforms import eval_transform
    from harness.protocols.finetune.data import EvalSet, ImageDataset, train_transform

    card = _card(tmp_path)
    lazy, eager = load_splits(card)["train"], _eager(prepare(card))["train"]
    assert isinstance(lazy.images, np.memmap)
    train = [
        ImageDataset(split.images, split.labels, eval_transform(PRE)) for split in (lazy, eager)
    ]
    for index in (0, len(lazy) - 1, (3, 17)):
        (image_lazy, label_lazy), (image_eager, label_eager) = (data[index] for data in train)
        assert torch.equal(image_lazy, image_eager) and torch.equal(label_lazy, label_eager)
    evals = [torch.cat(list(EvalSet(split.images, PRE).batches(5))) for split in (lazy, eager)]
    assert torch.equal(*evals)
    augment = train_transform(PRE, (0.5, 1.0), rotation=10.0)
    torch.manual_seed(1)
    first = augment(lazy.images[2])
    torch.manual_seed(1)
    assert torch.equal(first, augment(eager.images[2]))
