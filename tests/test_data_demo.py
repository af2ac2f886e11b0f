"""Demo builders, DICOM reading and dataset preparation (all offline, all fast)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from harness.config.cards import CardError, DatasetCard, load_dataset_card_file
from harness.config.paths import PROJECT_ROOT
from harness.data import DatasetError, DatasetNotPrepared
from harness.data.builders import DemoBuild, build_demo
from harness.data.builders.sources import MODALITY_CLASSES, modality_tag, pip_dicom_path
from harness.data.builders.tiles import kwargs
from harness.data.dicom import read_dicom_frames, to_uint8
from harness.data.npz import SPLITS, read_npz_meta
from harness.data.prepare import (
    dataset_file,
    how_to_prepare,
    is_prepared,
    load_splits,
    prepare,
)
from harness.data.registry import BUILDERS
from harness.data.table import DatasetContext

SMALL = {"train": 40, "val": 20, "test": 20}
NAMES = ("dicom_modality", "cxr_lesion", "fundus_lesion")


@pytest.fixture(scope="module")
def builds() -> dict[tuple[str, int], DemoBuild]:
    """Each builder at seeds 0, 0 again (key -1, for determinism) and 1, on small counts."""
    cache: dict[tuple[str, int], DemoBuild] = {}
    for name in NAMES:
        for key, seed in ((0, 0), (-1, 0), (1, 1)):
            cache[(name, key)] = build_demo(name, seed=seed, counts=SMALL)
    return cache


def test_registry_has_three_builders() -> None:
    assert set(NAMES) <= set(BUILDERS.names())
    entry = BUILDERS.get("cxr_lesion")
    assert entry.version >= 1 and entry.description
    ctx = DatasetContext("x.yaml", "x", "binary", ("normal", "lesion"), Path("."))
    splits = entry.fn(entry.params(seed=0, counts={"train": 4, "val": 2, "test": 2}), ctx)
    assert {k: len(v) for k, v in splits.items()} == {"train": 4, "val": 2, "test": 2}


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_from_seed(builds, name: str) -> None:
    first, again, other = builds[(name, 0)], builds[(name, -1)], builds[(name, 1)]
    for split in SPLITS:
        a, b = first.splits[split], again.splits[split]
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.groups, b.groups)
        assert not np.array_equal(a.images, other.splits[split].images)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes_and_balance(builds, name: str) -> None:
    build = builds[(name, 0)]
    n_classes = 5 if name == "dicom_modality" else 2
    tail = (64, 64, 3) if name == "fundus_lesion" else (64, 64)
    for split, n in SMALL.items():
        data = build.splits[split]
        assert data.images.shape == (n, *tail) and data.images.dtype == np.uint8
        assert data.labels.shape == (n,) and data.labels.dtype == np.int64
        assert data.groups is not None and data.groups.dtype == np.int64
        assert (
            np.bincount(data.labels, minlength=n_classes).tolist() == [n // n_classes] * n_classes
        )
        assert data.images.std() > 5  # not blank


@pytest.mark.parametrize("name", NAMES)
def test_splits_disjoint(builds, name: str) -> None:
    build = builds[(name, 0)]
    digests = {
        split: {hashlib.sha1(image.tobytes()).hexdigest() for image in build.splits[split].images}
        for split in SPLITS
    }
    for i, first in enumerate(SPLITS):
        for second in SPLITS[i + 1 :]:
            assert not digests[first] & digests[second], (first, second)
    # bookkeeping: tiles of different splits never overlap ...
    for i, a in enumerate(build.regions):
        for b in build.regions[i + 1 :]:
            if a.split != b.split:
                assert not a.overlaps(b), (a, b)
    # ... and every patch lies inside a tile of its own split and source
    for split in SPLITS:
        assert len(build.boxes[split]) == len(build.splits[split])
        for (source, _frame, y0, x0, side), index in zip(
            build.boxes[split], build.region_index[split], strict=True
        ):
            region = build.regions[index]
            assert region.split == split and region.source == source
            assert region.contains(int(y0), int(x0), int(side))


@pytest.mark.parametrize("name", ["cxr_lesion", "fundus_lesion"])
def test_lesion_groups_are_tiles_of_one_split(builds, name: str) -> None:
    build = builds[(name, 0)]
    groups = {split: set(build.splits[split].groups.tolist()) for split in SPLITS}
    assert not groups["train"] & groups["val"]
    assert not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]


def test_modality_labels_come_from_dicom_tags(builds) -> None:
    build = builds[("dicom_modality", 0)]
    classes = MODALITY_CLASSES
    tags = [modality_tag(pip_dicom_path(name)) for name in build.sources]
    assert set(tags) == set(classes)
    for split in SPLITS:
        data = build.splits[split]
        np.testing.assert_array_equal(data.groups, build.boxes[split][:, 0])
        for label, source in zip(data.labels, data.groups, strict=True):
            assert classes[label] == tags[source]


def test_modality_rejects_file_outside_classes() -> None:
    with pytest.raises(DatasetError, match=r"SC_rgb\.dcm.*'OT'"):
        build_demo("dicom_modality", files=["SC_rgb.dcm", "CT_small.dcm"], counts=SMALL)


def test_modality_needs_every_class() -> None:
    with pytest.raises(DatasetError, match="no file has modality"):
        build_demo("dicom_modality", files=["693_UNCI.dcm"], classes=["CT", "MR"], counts=SMALL)


def test_bad_builder_params() -> None:
    with pytest.raises(DatasetError, match="bad parameters"):
        build_demo("cxr_lesion", colour="red")
    with pytest.raises(DatasetError, match="unknown dataset builder"):
        build_demo("nope")
    with pytest.raises(DatasetError, match=r"counts\.val"):
        build_demo("cxr_lesion", counts={"train": 4, "val": 3, "test": 2})
    with pytest.raises(DatasetError, match="no such DICOM file"):
        pip_dicom_path("does_not_exist.dcm")


# --------------------------------------------------------------------------- DICOM reading


def _write_dicom(
    path: Path, pixels: np.ndarray | None, photometric: str = "MONOCHROME2", **tags
) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    if pixels is not None:
        bits = pixels.dtype.itemsize * 8
        ds.set_pixel_data(pixels, photometric, bits)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_read_dicom_applies_rescale(tmp_path: Path) -> None:
    pixels = np.arange(12, dtype=np.uint16).reshape(3, 4)
    path = _write_dicom(tmp_path / "ct.dcm", pixels, RescaleSlope=2, RescaleIntercept=-100)
    frames = read_dicom_frames(path)
    assert frames.shape == (1, 3, 4) and frames.dtype == np.float32
    np.testing.assert_allclose(frames[0], pixels * 2.0 - 100)


def test_read_dicom_rgb_to_luminance_and_monochrome1(tmp_path: Path) -> None:
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[1, 1] = (0, 255, 0)
    frames = read_dicom_frames(_write_dicom(tmp_path / "rgb.dcm", rgb, "RGB"))
    assert frames.shape == (1, 2, 2)
    np.testing.assert_allclose(frames[0, 0, 0], 0.299 * 255, rtol=1e-5)
    np.testing.assert_allclose(frames[0, 1, 1], 0.587 * 255, rtol=1e-5)
    mono1 = np.array([[0, 10], [20, 30]], dtype=np.uint16)
    path = _write_dicom(tmp_path / "m1.dcm", mono1, "MONOCHROME1")
    np.testing.assert_allclose(read_dicom_frames(path)[0], 30 - mono1)
    np.testing.assert_allclose(read_dicom_frames(path, invert_monochrome1=False)[0], mono1)


def test_read_dicom_errors_name_the_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.dcm"
    text.write_text("hello")
    no_pixels = _write_dicom(tmp_path / "empty.dcm", None)
    compressed = _write_dicom(tmp_path / "jpeg.dcm", np.zeros((8, 8), dtype=np.uint8))
    ds = pydicom.dcmread(compressed)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8 not really jpeg \xff\xd9"])
    ds.save_as(compressed, enforce_file_format=True)
    for path, message in [
        (tmp_path / "absent.dcm", "not found"),
        (text, "not a readable DICOM"),
        (no_pixels, "no pixel data"),
        (compressed, "cannot decode pixel data"),
    ]:
        with pytest.raises(DatasetError, match=message) as info:
            read_dicom_frames(path)
        assert str(path) in str(info.value)


def test_read_pip_shipped_files() -> None:
    frames = read_dicom_frames(pip_dicom_path("eCT_Supplemental.dcm"))
    assert frames.shape == (2, 512, 512)
    assert frames.min() == -1024  # rescale from the shared functional groups
    us = read_dicom_frames(pip_dicom_path("gdcm-US-ALOKA-16.dcm"))  # palette colour
    assert us.shape == (1, 480, 640)


def test_to_uint8() -> None:
    ramp = np.linspace(-1000, 1000, 1001, dtype=np.float32)
    out = to_uint8(ramp)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    np.testing.assert_array_equal(
        to_uint8(np.array([0.0, 5.0, 10.0]), window=(0, 10)), [0, 128, 255]
    )
    assert not to_uint8(np.full((4, 4), 7.0)).any()


# --------------------------------------------------------------------------- prepare


def _card(tmp_path: Path, **overrides) -> DatasetCard:
    fields = {
        "name": "tiny_cxr",
        "version": 3,
        "modality": "chest X-ray",
        "task": "binary",
        "classes": ("normal", "lesion"),
        "reader": {"format": "npz", "file": "tiny.npz"},
        "primary_metric": "roc_auc",
        "metrics": ("roc_auc",),
        "builder": {"name": "cxr_lesion", "seed": 0, "counts": {"train": 8, "val": 4, "test": 4}},
        "source_file": str(tmp_path / "tiny.yaml"),
    }
    fields.update(overrides)
    return DatasetCard(**fields)


def test_prepare_builds_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    calls = []
    original = BUILDERS.get("cxr_lesion")

    def counting(params, ctx):
        calls.append((params, ctx))
        return original.fn(params, ctx)

    monkeypatch.setitem(BUILDERS.entries, "cxr_lesion", dataclasses.replace(original, fn=counting))
    card = _card(tmp_path)
    expected = tmp_path / "home" / "data" / "tiny_cxr" / "v3" / "tiny.npz"
    assert dataset_file(card) == expected
    assert not is_prepared(card)
    path = prepare(card)
    assert path == expected and is_prepared(card)
    mtime = path.stat().st_mtime_ns
    assert prepare(card) == path
    assert path.stat().st_mtime_ns == mtime
    splits = load_splits(card)
    assert path.stat().st_mtime_ns == mtime
    assert len(calls) == 1
    assert calls[0][1].classes == ("normal", "lesion")
    stored_key = json.loads(read_npz_meta(path)["key"])  # the key lives inside the archive
    assert stored_key["builder"] == "cxr_lesion"
    assert stored_key["builder_version"] == original.version
    assert {k: len(v) for k, v in splits.items()} == {"train": 8, "val": 4, "test": 4}
    assert load_splits(card) is splits  # in-process cache
    assert not splits["train"].images.flags.writeable
    # changed builder parameters (same version) rebuild instead of serving a stale file
    bigger = _card(
        tmp_path,
        builder={"name": "cxr_lesion", "seed": 0, "counts": {"train": 10, "val": 4, "test": 4}},
    )
    assert not is_prepared(bigger)
    assert len(load_splits(bigger)["train"]) == 10
    assert len(calls) == 2
    # another Pillow (it decodes and resizes images) builds again, not trusted by name
    import PIL

    monkeypatch.setattr(PIL, "__version__", "12.3.0")
    assert not is_prepared(card)


def test_unbuildable_card_not_prepared(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path))
    card = load_dataset_card_file(PROJECT_ROOT / "datasets" / "pneumoniamnist.yaml")
    assert not is_prepared(card)
    with pytest.raises(DatasetNotPrepared) as info:
        load_splits(card)
    message = str(info.value)
    assert "zenodo.org" in message and str(dataset_file(card)) in message
    assert how_to_prepare(card) in message and "not prepared" in message
    assert str(dataset_file(card)) in how_to_prepare(card)
    # a miniature copy in MedMNIST's real layout is read by the same reader
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in SMALL.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1)).astype(np.uint8)
    dataset_file(card).parent.mkdir(parents=True)
    np.savez_compressed(dataset_file(card), **arrays)
    splits = load_splits(card)
    assert splits["test"].labels.shape == (SMALL["test"],)


def test_unknown_builder_and_reader_fail_when_the_card_is_made(tmp_path: Path) -> None:
    with pytest.raises(CardError, match=r"field 'builder\.name': unknown builder 'nope'"):
        _card(tmp_path, builder={"name": "nope"})
    with pytest.raises(CardError, match=r"field 'reader\.format': unknown reader 'csv'"):
        _card(tmp_path, reader={"format": "csv", "file": "x.csv"})
    with pytest.raises(CardError, match=r"field 'reader'.*'file' must be a path inside"):
        _card(tmp_path, reader={"format": "npz", "file": "../x.npz"})
    with pytest.raises(CardError, match=r"'reader\.format' must be npz"):
        _card(tmp_path, reader={"format": "image_folder"})


@pytest.mark.parametrize("card_name", ["demo_modality", "demo_cxr_lesion", "demo_fundus_lesion"])
def test_demo_cards_match_their_builders(card_name: str) -> None:
    card = load_dataset_card_file(PROJECT_ROOT / "datasets" / f"{card_name}.yaml")
    assert card.builder is not None and card.builder.name in BUILDERS.names()
    assert card.reader.name == "npz" and card.reader.params.file == f"{card_name}.npz"
    assert card.split.name == "disjoint_regions"
    assert card.split.params.unit == ("source" if card_name == "demo_modality" else "tile")
    assert card.semi_synthetic == (card_name != "demo_modality")
    params = kwargs(card.builder.params)
    tiny = {"train": 10, "val": 10, "test": 10}
    built = build_demo(card.builder.name, **{**params, "counts": tiny}, classes=card.classes)
    assert max(int(s.labels.max()) for s in built.splits.values()) == card.num_classes - 1


def test_demo_build_is_fast() -> None:
    import time

    start = time.perf_counter()
    build_demo("fundus_lesion", seed=3)  # the slowest builder at its default size
    assert time.perf_counter() - start < 20
