"""Suites: the committed suite files, expansion into cases, ids, exclusions, profiles, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import harness.config.cards
from harness.config.cards import DATASET_CARD_DIR, dataset_cards, get_model_card
from harness.config.profiles import PROFILES
from harness.config.suites import (
    SUITE_DIR,
    Case,
    SuiteError,
    available_suites,
    load_suite,
    suite_path,
)

DEMO_MODELS = [
    "tf_efficientnet_lite0.in1k_pip",
    "tf_efficientnet_lite0.random",
    "mobilenet_v2.tv_in1k_pip",
    "mobilenet_v2.random",
]
DEMO_DATASETS = ["demo_modality", "demo_cxr_lesion", "demo_fundus_lesion"]


def dataset_card(name: str, classes: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "version": 1,
        "modality": "X-ray",
        "task": "binary" if len(classes) == 2 else "multiclass",
        "classes": classes,
        "reader": {"format": "npz", "file": f"{name}.npz"},
        "primary_metric": "accuracy",
    }


@pytest.fixture
def card_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Dataset cards for every dataset the committed suites name, in a folder of their own."""
    folder = tmp_path / "datasets"
    folder.mkdir()
    cards = {
        "demo_modality": ["CR", "CT", "MR", "NM", "US"],
        "demo_cxr_lesion": ["normal", "lesion"],
        "demo_fundus_lesion": ["normal", "lesion"],
        "pneumoniamnist": ["normal", "pneumonia"],
        "tiny_ct": ["a", "b", "c"],
    }
    for name, classes in cards.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(dataset_card(name, classes)))
    monkeypatch.setattr(harness.config.cards, "DATASET_CARD_DIR", folder)
    yield folder
    harness.config.cards._dataset_cards.cache_clear()


def write_suite(folder: Path, name: str = "mine", **fields: Any) -> Path:
    raw: dict[str, Any] = {
        "name": name,
        "version": 1,
        "profile": "demo",
        "models": ["tf_efficientnet_lite0.in1k_pip", "mobilenet_v2.random"],
        "datasets": ["demo_cxr_lesion", "tiny_ct"],
        "protocols": ["linear", "knn"],
    }
    raw.update(fields)
    raw = {key: value for key, value in raw.items() if value is not None}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- committed suites


def test_committed_suites_are_listed() -> None:
    assert set(available_suites()) >= {"demo", "smoke", "medmnist"}
    assert available_suites() == sorted(available_suites())


@pytest.mark.parametrize("name", ["demo", "smoke", "medmnist"])
def test_committed_suite_loads_and_models_resolve(name: str) -> None:
    suite = load_suite(name)
    assert suite.name == name
    assert suite.path == SUITE_DIR / f"{name}.yaml"
    assert suite.version == (2 if name == "medmnist" else 1)
    assert "linear" in suite.protocols
    assert suite.profile in PROFILES
    assert suite.description
    for model in suite.models:
        assert get_model_card(model).name == model


def test_committed_demo_and_smoke_list_the_embedded_default() -> None:
    demo, smoke = load_suite("demo"), load_suite("smoke")
    assert list(demo.models) == DEMO_MODELS and list(demo.datasets) == DEMO_DATASETS
    assert (smoke.models, smoke.datasets) == (demo.models, demo.datasets)
    assert (demo.profile, smoke.profile) == ("demo", "smoke")
    assert load_suite("medmnist").profile == "paper"


def test_committed_demo_suite_expands(card_dir: Path) -> None:
    suite = load_suite("demo")
    cases = suite.cases()
    frozen = [p for p in suite.protocols if p != "finetune"]
    assert len(cases) == len(suite.models) * len(suite.datasets) * len(frozen) + 2
    expected = [
        f"{protocol}/{dataset}/{model}"
        for protocol in frozen
        for dataset in suite.datasets
        for model in suite.models
    ]
    assert [c.case_id for c in cases if c.protocol != "finetune"] == expected
    assert [c.case_id for c in cases if c.protocol == "finetune"] == [
        "finetune/demo_cxr_lesion/tf_efficientnet_lite0.in1k_pip",
        "finetune/demo_cxr_lesion/tf_efficientnet_lite0.random",
    ]
    assert cases[0].case_id == "linear/demo_modality/tf_efficientnet_lite0.in1k_pip"
    assert len({(c.protocol, c.param_id) for c in cases}) == len(cases)
    assert {c.profile.name for c in cases} == {"demo"}
    assert {c.suite for c in cases} == {"demo"}
    assert cases[0].dataset.source_file == str(card_dir / "demo_modality.yaml")


def test_committed_smoke_suite_runs_small(card_dir: Path) -> None:
    cases = load_suite("smoke").cases()
    assert len(cases) == len(load_suite("demo").cases())
    profile = cases[0].profile
    assert profile.name == "smoke" and profile.input_size == 96
    assert profile.max_per_split == {"train": 96, "val": 48, "test": 64}


def test_committed_medmnist_suite_expands() -> None:
    suite = load_suite("medmnist")
    cases = suite.cases()
    assert len(suite.datasets) == 12 and suite.resolutions == (28, 64, 128, 224)
    assert len(cases) == len(suite.models) * 12 * 4 * len(suite.protocols)
    assert {c.dataset.name for c in cases if c.dataset.name.startswith("pneumonia")} == {
        f"pneumoniamnist_{size}" for size in (28, 64, 128, 224)
    }


def test_committed_suites_against_committed_dataset_cards() -> None:
    """With the real ``datasets/`` folder: expands, or names the suite file and missing card."""
    known = set(dataset_cards(DATASET_CARD_DIR))
    for name in available_suites():
        suite = load_suite(name)
        missing = [d for d in suite.datasets if d not in known]
        if missing:
            with pytest.raises(SuiteError) as info:
                suite.cases()
            assert str(suite.path) in str(info.value)
            assert f"unknown dataset {missing[0]!r}" in str(info.value)
        elif not suite.include:
            cases = suite.cases()
            sizes = len(suite.resolutions) or 1
            full = len(suite.models) * len(suite.datasets) * len(suite.protocols) * sizes
            kept = full - len(suite.exclude)
            assert len(cases) == kept or (suite.only and 0 < len(cases) < kept)


# --------------------------------------------------------------------------- expansion


def test_cases_ids_and_order(tmp_path: Path, card_dir: Path) -> None:
    cases = load_suite(str(write_suite(tmp_path))).cases()
    assert [c.case_id for c in cases] == [
        "linear/demo_cxr_lesion/tf_efficientnet_lite0.in1k_pip",
        "linear/demo_cxr_lesion/mobilenet_v2.random",
        "linear/tiny_ct/tf_efficientnet_lite0.in1k_pip",
        "linear/tiny_ct/mobilenet_v2.random",
        "knn/demo_cxr_lesion/tf_efficientnet_lite0.in1k_pip",
        "knn/demo_cxr_lesion/mobilenet_v2.random",
        "knn/tiny_ct/tf_efficientnet_lite0.in1k_pip",
        "knn/tiny_ct/mobilenet_v2.random",
    ]
    first = cases[0]
    assert isinstance(first, Case)
    assert first.param_id == "demo_cxr_lesion-tf_efficientnet_lite0.in1k_pip"
    assert first.group == "tf_efficientnet_lite0.in1k_pip@demo_cxr_lesion"
    # the same (model, dataset) under two protocols shares one xdist group
    assert first.group == cases[4].group and first.param_id == cases[4].param_id
    assert cases[2].dataset.num_classes == 3
    assert first.suite == "mine"


def test_profile_override(tmp_path: Path, card_dir: Path) -> None:
    suite = load_suite(str(write_suite(tmp_path)))
    assert {c.profile.name for c in suite.cases()} == {"demo"}
    smoke = suite.cases("smoke")
    assert {c.profile.name for c in smoke} == {"smoke"}
    assert smoke[0].profile.input_size == 96
    with pytest.raises(SuiteError) as info:
        suite.cases("huge")
    assert str(suite.path) in str(info.value) and "'huge'" in str(info.value)


def test_exclude_drops_exactly_one_triple(tmp_path: Path, card_dir: Path) -> None:
    exclude = [{"model": "mobilenet_v2.random", "dataset": "tiny_ct", "protocol": "knn"}]
    suite = load_suite(str(write_suite(tmp_path, exclude=exclude)))
    assert suite.exclude == (("mobilenet_v2.random", "tiny_ct", "knn"),)
    ids = [c.case_id for c in suite.cases()]
    assert len(ids) == 7
    assert "knn/tiny_ct/mobilenet_v2.random" not in ids
    assert "linear/tiny_ct/mobilenet_v2.random" in ids
    assert "knn/demo_cxr_lesion/mobilenet_v2.random" in ids


def test_timm_model_in_suite_and_exclude_by_either_name(tmp_path: Path, card_dir: Path) -> None:
    models = ["timm:resnet50.a1_in1k", "mobilenet_v2.random"]
    listed = [{"model": "timm:resnet50.a1_in1k", "dataset": "tiny_ct", "protocol": "linear"}]
    by_card = [{"model": "resnet50.a1_in1k", "dataset": "tiny_ct", "protocol": "linear"}]
    for exclude in (listed, by_card):
        suite = load_suite(str(write_suite(tmp_path, models=models, exclude=exclude)))
        ids = [c.case_id for c in suite.cases()]
        assert len(ids) == 7
        assert "linear/tiny_ct/resnet50.a1_in1k" not in ids
        assert "knn/tiny_ct/resnet50.a1_in1k" in ids


def test_exclude_naming_nothing_listed_is_an_error(tmp_path: Path, card_dir: Path) -> None:
    typo = [{"model": "mobilenet_v2.randm", "dataset": "tiny_ct", "protocol": "knn"}]
    suite = load_suite(str(write_suite(tmp_path, exclude=typo)))
    with pytest.raises(SuiteError) as info:
        suite.cases()
    assert str(suite.path) in str(info.value) and "'mobilenet_v2.randm'" in str(info.value)
    other_protocol = [{"model": "mobilenet_v2.random", "dataset": "tiny_ct", "protocol": "fewshot"}]
    with pytest.raises(SuiteError, match="names protocol 'fewshot'"):
        load_suite(str(write_suite(tmp_path, exclude=other_protocol)))


# --------------------------------------------------------------------------- errors


def test_unknown_model_names_file(tmp_path: Path, card_dir: Path) -> None:
    path = write_suite(tmp_path, models=["tf_efficientnet_lite0.in1k_pip", "resnet50.ghost"])
    suite = load_suite(str(path))
    with pytest.raises(SuiteError) as info:
        suite.cases()
    assert str(path) in str(info.value) and "unknown model 'resnet50.ghost'" in str(info.value)


def test_unknown_timm_model_names_file(tmp_path: Path, card_dir: Path) -> None:
    path = write_suite(tmp_path, models=["timm:no_such_net_xyz"])
    with pytest.raises(SuiteError) as info:
        load_suite(str(path)).cases()
    assert str(path) in str(info.value) and "no_such_net_xyz" in str(info.value)


def test_unknown_dataset_names_file(tmp_path: Path, card_dir: Path) -> None:
    path = write_suite(tmp_path, datasets=["tiny_ct", "chexpert"])
    with pytest.raises(SuiteError) as info:
        load_suite(str(path)).cases()
    message = str(info.value)
    assert str(path) in message and "unknown dataset 'chexpert'" in message
    assert str(card_dir) in message  # the folder that was searched


SUITE_ERRORS: dict[str, tuple[dict[str, Any], str]] = {
    "unknown_protocol": ({"protocols": ["linear", "segmentation"]}, "unknown protocol(s)"),
    "unknown_profile": ({"profile": "huge"}, "unknown profile 'huge'"),
    "profile_list": ({"profile": ["demo"]}, "unknown profile"),
    "missing_models": ({"models": None}, "missing required field 'models'"),
    "missing_name": ({"name": None}, "missing required field 'name'"),
    "models_string": ({"models": "mobilenet_v2.random"}, "field 'models' must be a list"),
    "datasets_numbers": ({"datasets": [1, 2]}, "field 'datasets' must be a list"),
    "unknown_field": ({"seeds": [1, 2]}, "unknown field(s) seeds"),
    "version_string": ({"version": "one"}, "field 'version' must be an integer"),
    "repeated_model": (
        {"models": ["mobilenet_v2.random", "mobilenet_v2.random"]},
        "lists mobilenet_v2.random more than once",
    ),
    "exclude_incomplete": (
        {"exclude": [{"model": "mobilenet_v2.random", "dataset": "tiny_ct"}]},
        "each 'exclude' entry needs model, dataset and protocol",
    ),
}


@pytest.mark.parametrize("case", sorted(SUITE_ERRORS), ids=str)
def test_malformed_suite_names_file(tmp_path: Path, case: str) -> None:
    fields, expected = SUITE_ERRORS[case]
    path = write_suite(tmp_path, **fields)
    with pytest.raises(SuiteError) as info:
        load_suite(str(path))
    assert str(path) in str(info.value)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("name: [unclosed\n", "not valid YAML"), ("- a\n- b\n", "a suite is a mapping")],
    ids=["yaml", "list"],
)
def test_unreadable_suite(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SuiteError) as info:
        load_suite(str(path))
    assert str(path) in str(info.value) and expected in str(info.value)


def test_same_card_listed_twice_through_timm(tmp_path: Path, card_dir: Path) -> None:
    path = write_suite(tmp_path, models=["timm:resnet50", "timm:resnet50.a1_in1k"])
    with pytest.raises(SuiteError, match=r"resnet50\.a1_in1k listed twice"):
        load_suite(str(path)).cases()


def test_unknown_suite_name_lists_known() -> None:
    with pytest.raises(SuiteError) as info:
        load_suite("no_such_suite")
    message = str(info.value)
    assert "'no_such_suite'" in message and "demo" in message and "smoke" in message


def test_suite_path() -> None:
    assert suite_path("demo") == SUITE_DIR / "demo.yaml"
    assert suite_path("elsewhere/custom.yml") == Path("elsewhere/custom.yml")


def test_only_limits_a_protocol_to_a_subset(tmp_path: Path, card_dir: Path) -> None:
    path = write_suite(
        tmp_path,
        protocols=["linear", "finetune"],
        only={"finetune": {"models": ["mobilenet_v2.random"], "datasets": ["demo_cxr_lesion"]}},
    )
    cases = load_suite(str(path)).cases()
    finetune = [c for c in cases if c.protocol == "finetune"]
    assert [c.case_id for c in finetune] == ["finetune/demo_cxr_lesion/mobilenet_v2.random"]
    linear = [c for c in cases if c.protocol == "linear"]
    assert len(linear) == len({c.case_id for c in linear}) > 1


def test_only_must_name_listed_protocols_and_cards(tmp_path: Path) -> None:
    bad_protocol = write_suite(tmp_path, name="a", only={"finetune": {"models": []}})
    with pytest.raises(SuiteError, match="'only' names protocol 'finetune'"):
        load_suite(str(bad_protocol))
    bad_model = write_suite(tmp_path, name="b", only={"linear": {"models": ["resnet50.nope"]}})
    with pytest.raises(SuiteError, match=r"only.linear.models must list models of the suite"):
        load_suite(str(bad_model))
