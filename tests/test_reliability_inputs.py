"""Issue 16: names as data, card errors that stay local, clear messages.

Each test reproduces one defect: a card name that climbs out of ``MEDXFER_HOME``, one
malformed card breaking every suite, ``fewshot.n_way: two`` failing only at run time,
constant images scoring chance silently, ``medxfer cache clear --model <typo>``
removing nothing and exiting 0.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from tiny_cases import benchmark_files, prepare_inprocess, suite, tiny_dataset, write_yaml

from harness.config.cards import (
    DATASET_CARD_DIR,
    CardError,
    get_dataset_card,
    get_model_card,
    load_dataset_card_file,
)
from harness.config.names import did_you_mean
from harness.config.safe_paths import UnsafePath, inside
from harness.config.suites import SuiteError, UnusableCase, load_suite
from harness.data.npz import SplitData
from harness.data.pipeline import ConstantImagesWarning, warn_constant_images
from harness.protocols.registry import ProtocolError, get_preset, get_protocol

pytest_plugins = ["pytester"]


def _demo_card(**changes: Any) -> dict[str, Any]:
    card = yaml.safe_load((DATASET_CARD_DIR / "demo_modality.yaml").read_text())
    card.update(changes)
    return card


# --------------------------------------------------------------------------- 1. path escape


def test_a_dataset_name_that_climbs_out_of_the_home_is_refused_naming_the_card(
    tmp_path: Path,
) -> None:
    path = write_yaml(tmp_path / "evil.yaml", _demo_card(name="../../../escaped_ds"))
    with pytest.raises(CardError) as info:
        load_dataset_card_file(path)
    message = str(info.value)
    assert str(path) in message and "field 'name'" in message and "../../../escaped_ds" in message
    # a card made in code cannot take such a name either (the check is the card's own)
    good = load_dataset_card_file(write_yaml(tmp_path / "good.yaml", _demo_card()))
    for bad in ("../escaped", "a/b", "..", "/abs", ""):
        with pytest.raises(CardError, match="field 'name'"):
            dataclasses.replace(good, name=bad)


def test_a_built_dataset_file_must_be_a_plain_file_name(tmp_path: Path) -> None:
    card = _demo_card(reader={"format": "npz", "file": "sub/demo.npz"})
    path = write_yaml(tmp_path / "nested.yaml", card)
    with pytest.raises(CardError, match=r"field 'reader\.file' must be a plain file name"):
        load_dataset_card_file(path)


def test_model_and_suite_names_are_checked_when_their_cards_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = {
        "name": "-x./../y",
        "architecture": {"library": "timm", "name": "resnet18"},
        "weights": {"source": "random"},
        "preprocessing": {"input_size": 224, "mean": [0, 0, 0], "std": [1, 1, 1]},
        "category": "random-init",
        "pretraining_data": "none",
    }
    models = write_yaml(tmp_path / "cards" / "models" / "evil.yaml", {"models": [entry]})
    suite = write_yaml(
        tmp_path / "cards" / "suites" / "evil.yaml",
        {"name": "../up", "models": ["x.y"], "datasets": ["d"], "protocols": ["linear"]},
    )
    monkeypatch.setenv("MEDXFER_CARDS", str(tmp_path / "cards"))
    with pytest.raises(CardError) as info:
        get_model_card("-x./../y")
    assert str(models) in str(info.value) and "must be 'arch.tag'" in str(info.value)
    with pytest.raises(SuiteError, match=r"field 'name' must be a plain name"):
        load_suite(str(suite))


def test_inside_keeps_paths_under_their_root(tmp_path: Path) -> None:
    root = tmp_path / "home"
    root.mkdir()
    assert inside(root, "data", "demo_modality") == root / "data" / "demo_modality"
    for parts in (("..", "x"), ("data", "../../x"), ("/etc",)):
        with pytest.raises(UnsafePath, match="leaves"):
            inside(root, *parts)
    for parts in (("data", ".."), ("x/../..",)):
        with pytest.raises(UnsafePath):
            inside(root, *parts)
    (root / "link").symlink_to(tmp_path)  # links the harness placed itself are kept
    assert inside(root, "link", "x") == root / "link" / "x"


# --------------------------------------------------------------------------- 2. local errors


def test_a_malformed_card_is_named_by_its_cases_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cards = tmp_path / "cards"
    broken = write_yaml(cards / "datasets" / "broken_ds.yaml", "name: broken_ds\nversion: 1\n")
    write_yaml(cards / "datasets" / "also_bad.yaml", "name: [unclosed\n")  # unused: no effect
    suite = write_yaml(
        cards / "suites" / "mixed.yaml",
        {
            "name": "mixed",
            "models": ["mobilenet_v2.tv_in1k_pip"],
            "datasets": ["demo_modality", "broken_ds"],
            "protocols": ["linear", "knn"],
        },
    )
    monkeypatch.setenv("MEDXFER_CARDS", str(cards))
    assert get_dataset_card("demo_modality").name == "demo_modality"  # others still load
    unusable: list[UnusableCase] = []
    cases = load_suite(str(suite)).cases("smoke", unusable)
    assert [c.case_id for c in cases] == [
        "linear/demo_modality/mobilenet_v2.tv_in1k_pip",
        "knn/demo_modality/mobilenet_v2.tv_in1k_pip",
    ]
    assert [c.case_id for c in unusable] == [
        "linear/broken_ds/mobilenet_v2.tv_in1k_pip",
        "knn/broken_ds/mobilenet_v2.tv_in1k_pip",
    ]
    assert unusable[0].error.startswith(f"{broken}: ")
    assert "missing required field" in unusable[0].error
    with pytest.raises(SuiteError, match="missing required field"):
        load_suite(str(suite)).cases("smoke")  # without a list to collect into: an error


def test_unknown_names_suggest_the_closest(tmp_path: Path) -> None:
    with pytest.raises(CardError, match=r"did you mean 'mobilenet_v2\.tv_in1k_pip'"):
        get_model_card("mobilenet_v2.tv_in1k_pi")
    with pytest.raises(CardError, match=r"did you mean 'demo_modality'"):
        get_dataset_card("demo_modalty")
    with pytest.raises(SuiteError, match=r"did you mean 'smoke'"):
        load_suite("smoek")
    with pytest.raises(ProtocolError, match=r"did you mean 'fewshot'"):
        get_protocol("fewshots")
    with pytest.raises(ProtocolError, match=r"did you mean 'ssl-transfer'"):
        get_preset("linear", "ssl-transfr")
    assert did_you_mean("zzz", ["linear"]) == ""


def test_a_malformed_card_fails_its_cases_once_named_and_the_session_goes_on(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cards = tmp_path / "cards"
    tiny_dataset(cards)
    broken = write_yaml(cards / "datasets" / "broken_ds.yaml", "name: broken_ds\nversion: 1\n")
    suite(cards, "mixed", ["tiny_ds", "broken_ds"], ["knn", "linear"])
    benchmark_files(pytester, ["knn", "linear"])
    prepare_inprocess(pytester, monkeypatch, cards, tmp_path / "home")
    ran = pytester.runpytest_inprocess(
        "benchmarks", "--suite", "mixed", "--medxfer-results", str(tmp_path / "results")
    )
    ran.assert_outcomes(passed=2, errors=2)  # the good cases ran, the broken card's failed
    out = ran.stdout.str()
    assert "Traceback" not in out and "UsageError" not in out
    assert "errors during collection" not in out
    summary = f"unusable card (2 cases failed): {broken}: missing required field 'task'"
    assert out.count(summary) == 1
    assert len(list((tmp_path / "results").rglob("*.json"))) == 2


def test_an_unreadable_suite_is_one_usage_error_not_one_per_module(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cards = tmp_path / "cards"
    write_yaml(cards / "suites" / "bad.yaml", {"name": "bad", "models": ["x.y"]})
    benchmark_files(pytester, ["linear", "knn", "fewshot"])
    prepare_inprocess(pytester, monkeypatch, cards, tmp_path / "home")
    result = pytester.runpytest_inprocess("benchmarks", "--suite", "bad", "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    out = result.stdout.str() + result.stderr.str()
    assert out.count("missing required field 'datasets', 'protocols'") == 1
    assert "ERROR: medxfer: " in out and "errors during collection" not in out


# --------------------------------------------------------------------------- 3. clear messages


def test_fewshot_n_way_is_checked_when_the_card_loads(tmp_path: Path) -> None:
    for value, expected in (
        ("two", r"field 'fewshot\.n_way' must be an integer .* got str \('two'\)"),
        (9, r"field 'fewshot\.n_way' must lie in \[2, 5\] .* got 9"),
        (True, r"field 'fewshot\.n_way' must be an integer"),
    ):
        path = write_yaml(tmp_path / "fs.yaml", _demo_card(fewshot={"n_way": value}))
        with pytest.raises(CardError, match=expected) as info:
            load_dataset_card_file(path)
        assert str(info.value).startswith(str(path))
    path = write_yaml(tmp_path / "fs.yaml", _demo_card(fewshot={"n_ways": 2}))
    with pytest.raises(CardError, match=r"field 'fewshot' has unknown field\(s\) n_ways"):
        load_dataset_card_file(path)
    ok = load_dataset_card_file(write_yaml(tmp_path / "fs.yaml", _demo_card(fewshot={"n_way": 3})))
    assert ok.fewshot == {"n_way": 3}


def test_constant_images_warn_once_per_dataset_split() -> None:
    labels = np.array([0, 1, 0, 1])
    flat = SplitData(np.zeros((4, 8, 8), np.uint8), labels)
    varied = SplitData(np.arange(256, dtype=np.uint8).reshape(4, 8, 8), labels)
    splits = {"train": flat, "val": varied, "test": flat}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert warn_constant_images("flat_ds_issue16", splits) == ["train", "test"]
        assert warn_constant_images("flat_ds_issue16", splits) == ["train", "test"]
    messages = [str(w.message) for w in caught if w.category is ConstantImagesWarning]
    assert len(messages) == 2  # once per split, not once per call
    assert "dataset 'flat_ds_issue16', split 'train': all 4 images are constant" in messages[0]
    assert "split 'test'" in messages[1] and "score chance" in messages[1]


def test_a_case_on_constant_images_warns_naming_the_dataset_split(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cards = tmp_path / "cards"
    tiny_dataset(cards, "flat_issue16_ds", constant=True)
    suite(cards, "flat", ["flat_issue16_ds"], ["knn"])
    benchmark_files(pytester, ["knn"])
    prepare_inprocess(pytester, monkeypatch, cards, tmp_path / "home")
    ran = pytester.runpytest_inprocess(
        "benchmarks", "--suite", "flat", "--medxfer-results", str(tmp_path / "results")
    )
    ran.assert_outcomes(passed=1)  # other warnings (pytester's own) are not counted here
    out = ran.stdout.str()
    for split in ("train", "val", "test"):
        assert f"dataset 'flat_issue16_ds', split '{split}': all" in out
    assert "ConstantImagesWarning" in out


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from harness.cli import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cache_clear_of_an_unknown_model_is_an_error_with_a_suggestion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path))
    features = tmp_path / "features" / "mobilenet_v2.tv_in1k_pip" / "demo_modality"
    features.mkdir(parents=True)
    (features / "train-abc.npz").write_bytes(b"x")
    code, _, err = _cli(capsys, "cache", "clear", "--model", "mobilenet_v2.tv_in1k_pi")
    assert code != 0
    assert "unknown model 'mobilenet_v2.tv_in1k_pi'" in err
    assert "did you mean 'mobilenet_v2.tv_in1k_pip'" in err
    assert features.is_dir()  # nothing removed
    code, _, err = _cli(capsys, "cache", "clear", "--model", "../features")
    assert code != 0 and "leaves" in err and features.is_dir()
    code, out, err = _cli(capsys, "cache", "clear", "--model", "mobilenet_v2.tv_in1k_pip")
    assert code == 0, err
    assert "removed 1 feature files" in out and not features.exists()
