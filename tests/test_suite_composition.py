"""Suites made of suites (``include``), the MedMNIST+ ``resolutions`` axis, optional expected
values, and getting a released archive in place (``medxfer prepare NAME --download``)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from harness.config.cards import get_dataset_card
from harness.config.suites import SuiteError, available_suites, load_suite
from harness.data import DatasetError
from harness.data.acquire import download
from harness.data.pipeline import data_root
from harness.data.prepare import load_splits

EMBEDDED = ["tf_efficientnet_lite0.in1k_pip", "mobilenet_v2.random"]


@pytest.fixture
def cards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user card folder (suites/, datasets/) and a private MEDXFER_HOME."""
    folder = tmp_path / "cards"
    for sub in ("suites", "datasets", "expected"):
        (folder / sub).mkdir(parents=True)
    monkeypatch.setenv("MEDXFER_CARDS", str(folder))
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    return folder


def write_suite(folder: Path, name: str, **fields: Any) -> Path:
    path = folder / "suites" / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "version": 1, **fields}), encoding="utf-8")
    return path


def own_suite(folder: Path, name: str, datasets: list[str], **fields: Any) -> Path:
    return write_suite(
        folder, name, models=EMBEDDED, datasets=datasets, protocols=["linear"], **fields
    )


# --------------------------------------------------------------------------- include


def test_included_cases_keep_their_suite_profile_and_expectation(cards: Path) -> None:
    own_suite(cards, "part_a", ["demo_modality"], profile="smoke")
    own_suite(cards, "part_b", ["demo_cxr_lesion"], profile="demo", expected_values="optional")
    write_suite(cards, "both", include=["part_a", "part_b"])
    suite = load_suite("both")
    cases = suite.cases()
    assert suite.suite_names() == ("part_a", "part_b")
    assert [(c.suite, c.dataset.name, c.profile.name, c.expected_required) for c in cases] == [
        ("part_a", "demo_modality", "smoke", True),
        ("part_a", "demo_modality", "smoke", True),
        ("part_b", "demo_cxr_lesion", "demo", False),
        ("part_b", "demo_cxr_lesion", "demo", False),
    ]
    assert {c.profile.name for c in suite.cases("smoke")} == {"smoke"}  # the override wins


def test_a_case_from_two_included_suites_is_an_error(cards: Path) -> None:
    own_suite(cards, "part_a", ["demo_modality"])
    own_suite(cards, "part_b", ["demo_modality"])
    path = write_suite(cards, "both", include=["part_a", "part_b"])
    with pytest.raises(SuiteError, match=r"linear/demo_modality/.* both suite 'part_a' and suite"):
        load_suite(str(path)).cases()


def test_an_include_cycle_is_an_error(cards: Path) -> None:
    write_suite(cards, "loop_a", include=["loop_b"])
    write_suite(cards, "loop_b", include=["loop_a"])
    with pytest.raises(SuiteError, match="cycle"):
        load_suite("loop_a").cases()


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"include": "demo"}, "field 'include' must be a list of names"),
        ({"models": EMBEDDED, "protocols": ["linear"]}, "missing required field 'datasets'"),
        ({}, "missing required field"),
        ({"include": ["demo"], "expected_values": "maybe"}, "'required' or 'optional'"),
        ({"include": ["demo"], "resolutions": [64, "big"]}, "list of sizes"),
    ],
)
def test_malformed_composition_fields_are_named(
    cards: Path, fields: dict[str, Any], message: str
) -> None:
    path = write_suite(cards, "bad", **fields)
    with pytest.raises(SuiteError, match=message) as info:
        load_suite(str(path))
    assert str(path) in str(info.value)


def test_every_committed_suite_loads_and_the_default_covers_the_real_datasets() -> None:
    for name in available_suites():
        assert load_suite(name).cases(), name
    default = load_suite("default")
    names = {case.dataset.name for case in default.cases()}
    assert {"demo_modality", "chexpert", "chestxray14", "isic2019", "pneumoniamnist_64"} <= names
    assert set(default.suite_names()) == {"demo", "real-data", "medmnist"}


# --------------------------------------------------------------------------- resolutions


def test_resolutions_put_the_size_in_the_case_id(cards: Path) -> None:
    own_suite(cards, "sizes", ["pneumoniamnist", "breastmnist"], resolutions=[28, 128])
    ids = [case.case_id for case in load_suite("sizes").cases()]
    assert ids == [
        f"linear/{dataset}_{size}/{model}"
        for dataset in ("pneumoniamnist", "breastmnist")
        for size in (28, 128)
        for model in EMBEDDED
    ]


def test_a_dataset_without_the_size_names_itself(cards: Path) -> None:
    path = own_suite(cards, "sizes", ["pneumoniamnist", "demo_modality"], resolutions=[64])
    with pytest.raises(SuiteError, match="'demo_modality' is not released at size 64"):
        load_suite(str(path)).cases()


def test_medmnist_release_cards_read_their_own_file_in_one_folder(cards: Path) -> None:
    base = get_dataset_card("chestmnist")
    card = get_dataset_card("chestmnist_224")
    assert (card.name, card.resolution, card.task) == ("chestmnist_224", 224, "multilabel")
    assert card.reader.params.file == "chestmnist_224.npz"
    assert card.obtain["md5"] == base.resolutions[224]["md5"] != base.obtain["md5"]
    assert card.obtain["url"].endswith("/chestmnist_224.npz")
    assert data_root(card) == data_root(base)  # every size in the flag's own folder
    assert card.fingerprint() != base.fingerprint()
    with pytest.raises(Exception, match="offers: 28, 64, 128, 224"):
        get_dataset_card("chestmnist_100")


# --------------------------------------------------------------------------- download


def medmnist_archive(path: Path, size: int) -> bytes:
    """A MedMNIST-layout archive: {split}_images (N, size, size) uint8, {split}_labels (N, 1)."""
    rng = np.random.default_rng(size)
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 6)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path.read_bytes()


def tiny_card(cards: Path, served: Path, md5_64: str) -> None:
    """A MedMNIST-style card whose release is served from ``served`` (file:// URLs)."""
    card = {
        "name": "tinymnist",
        "version": 1,
        "modality": "chest X-ray",
        "task": "binary",
        "classes": ["normal", "pneumonia"],
        "reader": {"format": "npz", "file": "tinymnist.npz"},
        "primary_metric": "roc_auc",
        "metrics": ["accuracy", "roc_auc"],
        "resolutions": {
            28: {"file": "tinymnist.npz", "md5": "0" * 32},
            64: {"file": "tinymnist_64.npz", "md5": md5_64},
        },
        "obtain": {"url": (served / "tinymnist.npz").as_uri(), "md5": "0" * 32},
    }
    (cards / "datasets" / "tinymnist.yaml").write_text(yaml.safe_dump(card), encoding="utf-8")


def test_download_fetches_verifies_and_loads_a_release(cards: Path, tmp_path: Path) -> None:
    served = tmp_path / "zenodo"
    data = medmnist_archive(served / "tinymnist_64.npz", 64)
    tiny_card(cards, served, hashlib.md5(data).hexdigest())
    card = get_dataset_card("tinymnist_64")
    path = download(card)
    assert path == data_root(card) / "tinymnist_64.npz" and path.read_bytes() == data
    splits = load_splits(card)
    assert {k: v.images.shape for k, v in splits.items()} == {
        "train": (12, 64, 64),
        "val": (4, 64, 64),
        "test": (6, 64, 64),
    }
    assert download(card) == path  # in place: checked, not fetched again


def test_download_with_a_wrong_checksum_keeps_nothing(cards: Path, tmp_path: Path) -> None:
    served = tmp_path / "zenodo"
    medmnist_archive(served / "tinymnist.npz", 28)
    tiny_card(cards, served, "1" * 32)
    card = get_dataset_card("tinymnist")  # the 28 px card's md5 is all zeros
    with pytest.raises(DatasetError, match=r"has md5 .* expects 0{32}; nothing was kept"):
        download(card)
    folder = data_root(card)
    assert not folder.exists() or not any(folder.iterdir())


def test_download_offline_or_of_a_folder_dataset_says_why(
    cards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_card(cards, tmp_path / "nowhere", "1" * 32)
    monkeypatch.setenv("MEDXFER_OFFLINE", "1")
    with pytest.raises(DatasetError, match="MEDXFER_OFFLINE is set; not downloading file://"):
        download(get_dataset_card("tinymnist_64"))
    with pytest.raises(DatasetError, match=r"cannot be downloaded by medxfer.*Unzip"):
        download(get_dataset_card("chexpert"))


# --------------------------------------------------------------------------- presets


def test_suite_presets_reach_the_cases_and_the_command_line_overrides_them(cards: Path) -> None:
    from harness.session import with_presets

    write_suite(
        cards,
        "peers",
        models=EMBEDDED,
        datasets=["demo_modality"],
        protocols=["linear", "knn"],
        presets={"linear": "ssl-transfer"},
    )
    cases = load_suite("peers").cases()
    assert {(c.protocol, c.preset) for c in cases} == {
        ("linear", "ssl-transfer"),
        ("knn", "medxfer"),
    }
    chosen = with_presets(cases, ["linear=ssl-medicalimaging"])
    assert {(c.protocol, c.preset) for c in chosen} == {
        ("linear", "ssl-medicalimaging"),
        ("knn", "medxfer"),
    }
    assert [c.case_id for c in chosen] == [c.case_id for c in cases]  # the id stays


@pytest.mark.parametrize(
    "presets, message",
    [
        ({"linear": "ssl-transfr"}, "has no preset 'ssl-transfr'; known: medxfer, ssl-"),
        ({"finetune": "ssl-transfer"}, "names protocol 'finetune', which the suite does not"),
        ({"linear": 3}, "must map a protocol to a preset name"),
    ],
)
def test_bad_presets_are_named(cards: Path, presets: dict[str, Any], message: str) -> None:
    path = own_suite(cards, "bad", ["demo_modality"], presets=presets)
    with pytest.raises(SuiteError, match=message):
        load_suite(str(path))


@pytest.mark.parametrize("option", ["linear", "linear=", "lineer=ssl-transfer", "linear=nope"])
def test_bad_preset_options_are_named(option: str) -> None:
    from harness.protocols.registry import ProtocolError
    from harness.session import with_presets

    with pytest.raises(ProtocolError, match=r"PROTOCOL=PRESET|unknown protocol|has no preset"):
        with_presets([], [option])


def test_a_preset_changes_the_transform_and_so_the_feature_key(cards: Path, tmp_path: Path) -> None:
    from harness.data.transforms import describe
    from harness.protocols.case import CaseRun

    own_suite(cards, "peers", ["demo_modality"], presets={"linear": "ssl-transfer"})
    own_suite(cards, "mine", ["demo_modality"])
    peer = CaseRun(load_suite("peers").cases()[0], tmp_path)
    ours = CaseRun(load_suite("mine").cases()[0], tmp_path)
    assert peer.preset is not None and ours.preset is None
    assert peer.preset.identity()["name"] == "ssl-transfer"
    pre = peer.preprocessing()
    assert (pre.input_size, pre.interpolation, pre.crop_pct) == (224, "bicubic", 1.0)
    assert describe(pre) != describe(ours.preprocessing())
