"""Models derived in the harness itself (harness/zoo/derived.py, `medxfer derive`): a tiny
timm backbone fine-tuned on a 40-image dataset in a temporary home, nothing downloaded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_cases import tiny_dataset, write_yaml

from harness import cli
from harness.cache.keys import file_sha256
from harness.config.cards import forget_cards, get_model_card, model_card_set
from harness.zoo import derived
from harness.zoo.build import build_model, weights_identity
from harness.zoo.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PARENT = "test_efficientnet.random"
DERIVED = "test_efficientnet.random_ft_tiny_src"
PRE = {"input_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def _parent() -> dict[str, Any]:
    return {
        "name": PARENT,
        "architecture": {"library": "timm", "name": "test_efficientnet"},
        "weights": {"source": "random", "seed": 0},
        "preprocessing": PRE,
        "category": "random-init",
        "pretraining_data": "none",
        "license": "Apache-2.0",
    }


def _derived(name: str = DERIVED, **weights: Any) -> dict[str, Any]:
    spec = {"source": "derived", "parent": PARENT, "dataset": "tiny_src", "seed": 0}
    return {"name": name, "weights": {**spec, **weights}, "category": "in-domain"}


@pytest.fixture
def cards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A card folder with a tiny dataset, a random-init parent and a derived card of it."""
    folder = tmp_path / "cards"
    tiny_dataset(folder, "tiny_src")
    write_yaml(folder / "models" / "tiny.yaml", {"models": [_parent(), _derived()]})
    monkeypatch.setenv("MEDXFER_CARDS", str(folder))
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDXFER_RESULTS", str(tmp_path / "results"))
    forget_cards()
    derived.forget()
    yield folder
    forget_cards()
    derived.forget()


@pytest.fixture(autouse=True)
def short_finetune(monkeypatch: pytest.MonkeyPatch) -> None:
    """Derive with 4 steps of 8 images at 32 px: the smoke profile's 30 steps take seconds."""
    import dataclasses

    real = derived.plan

    def short(card: Any) -> derived.Derivation:
        made = real(card)
        config = dataclasses.replace(
            made.config, steps=4, batch_size=8, val_every=2, input_size=32, eval_batch_size=16
        )
        pre = made.preprocessing.with_input_size(32)
        return dataclasses.replace(made, config=config, preprocessing=pre)

    monkeypatch.setattr(derived, "plan", short)


@pytest.fixture
def derivations(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, torch.Tensor]]:
    """The state of every network fine-tuned by a derivation in the test."""
    made: list[dict[str, torch.Tensor]] = []
    real = derived._derive

    def counting(*args: Any, **kwargs: Any) -> Any:
        state, metadata = real(*args, **kwargs)
        made.append({k: v.clone() for k, v in state.items()})
        return state, metadata

    monkeypatch.setattr(derived, "_derive", counting)
    return made


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata())


def _rewrite_cards(folder: Path, *entries: dict[str, Any]) -> None:
    write_yaml(folder / "models" / "tiny.yaml", {"models": [_parent(), *entries]})
    forget_cards()
    derived.forget()


def test_derived_card_inherits_from_its_parent(cards: Path) -> None:
    card = get_model_card(DERIVED)
    parent = get_model_card(PARENT)
    assert (card.library, card.architecture) == ("timm", "test_efficientnet")
    assert card.preprocessing == parent.preprocessing
    assert card.pretraining_data == "none -> tiny_src (fine-tuned)"
    assert card.weights.batchnorm_stats == "checkpoint"
    assert card.derived_from == {
        "parent": PARENT,
        "dataset": "tiny_src",
        "protocol": "finetune",
        "profile": "smoke",
        "preset": "medxfer",
        "seed": 0,
        "sha256": None,
    }
    assert "derived" not in parent.fingerprint()["weights"]


def test_checkpoint_is_safetensors_with_provenance(
    cards: Path, derivations: list[dict[str, torch.Tensor]]
) -> None:
    from harness.protocols.finetune import VERSION

    path = derived.derived_checkpoint(get_model_card(DERIVED))
    assert path.suffix == ".safetensors" and path.parent.name == "derived"
    meta = _metadata(path)
    assert {k: meta[k] for k in ("parent", "dataset", "dataset_version", "protocol")} == {
        "parent": PARENT,
        "dataset": "tiny_src",
        "dataset_version": "1",
        "protocol": "finetune",
    }
    assert (meta["protocol_version"], meta["profile"], meta["seed"]) == (str(VERSION), "smoke", "0")
    assert meta["preset"] == "medxfer" and meta["created_by"].startswith("medxfer derive")
    assert 0.0 <= float(meta["val_score"]) <= 1.0 and int(meta["steps"]) >= 1
    assert (meta["n_train"], meta["n_val"]) == ("16", "8")
    assert set(json.loads(meta["versions"])) >= {"torch", "timm", "numpy", "safetensors"}
    key = json.loads(meta["key"])
    assert key["parent"]["name"] == PARENT and key["config"]["seed"] == 0
    assert key["dataset"]["card"]["version"] == 1
    state = derivations[0]
    assert state["head.weight"].shape[0] == 2  # the source head is kept in the file
    assert any(k.startswith("backbone.") for k in state)
    assert len(derivations) == 1


def test_building_twice_reuses_the_checkpoint_and_loads_the_finetuned_backbone(
    cards: Path, derivations: list[dict[str, torch.Tensor]]
) -> None:
    card = get_model_card(DERIVED)
    first = build_model(card)
    derived.forget()  # the second build reads the stored file, checked by content
    second = build_model(card)
    assert len(derivations) == 1
    tuned = {
        k.removeprefix("backbone."): v
        for k, v in derivations[0].items()
        if k.startswith("backbone.")
    }
    loaded = second.module.state_dict()
    assert set(loaded) == set(tuned)
    assert all(torch.equal(loaded[k], tuned[k]) for k in tuned)
    path = derived.derived_checkpoint(card)
    assert first.weights_id == second.weights_id == file_sha256(path)
    assert first.weights_id != weights_identity(get_model_card(PARENT))


def test_a_wrong_pinned_sha256_is_refused_naming_the_card(
    cards: Path, derivations: list[dict[str, torch.Tensor]]
) -> None:
    _rewrite_cards(cards, _derived(sha256="0" * 64))
    with pytest.raises(CheckpointError) as info:
        build_model(get_model_card(DERIVED))
    text = str(info.value)
    assert DERIVED in text and "0" * 64 in text and f"medxfer derive {DERIVED}" in text


def test_a_derived_card_with_an_unknown_parent_or_dataset_fails_alone(cards: Path) -> None:
    _rewrite_cards(
        cards,
        _derived(),
        _derived("test_efficientnet.no_parent", parent="test_efficientnet.nope"),
        _derived("test_efficientnet.no_data", dataset="no_such_dataset"),
        _derived("test_efficientnet.loop_a", parent="test_efficientnet.loop_b"),
        _derived("test_efficientnet.loop_b", parent="test_efficientnet.loop_a"),
        {
            **_derived("test_efficientnet.other_arch"),
            "architecture": {"library": "timm", "name": "test_resnet"},
        },
    )
    found = model_card_set()
    assert DERIVED in found.cards
    problems = {name: str(found.problems[name]) for name in found.problems if "test_eff" in name}
    assert "unknown model 'test_efficientnet.nope'" in problems["test_efficientnet.no_parent"]
    assert (
        "models[test_efficientnet.no_parent].weights.parent"
        in problems["test_efficientnet.no_parent"]
    )
    assert "unknown dataset 'no_such_dataset'" in problems["test_efficientnet.no_data"]
    assert "circular derivation" in problems["test_efficientnet.loop_a"]
    assert "circular derivation" in problems["test_efficientnet.loop_b"]
    assert "differs from parent" in problems["test_efficientnet.other_arch"]
    with pytest.raises(ValueError, match=r"weights\.parent names unknown model"):
        get_model_card("test_efficientnet.no_parent")


def test_a_corrupted_checkpoint_is_not_trusted(
    cards: Path, derivations: list[dict[str, torch.Tensor]]
) -> None:
    card = get_model_card(DERIVED)
    path = derived.derived_checkpoint(card)
    good = file_sha256(path)
    blob = bytearray(path.read_bytes())
    blob[-64:] = bytes(64)  # the last tensors' bytes
    path.write_bytes(bytes(blob))
    derived.forget()
    again = derived.derived_checkpoint(card)
    assert len(derivations) == 2  # derived again, never loaded
    assert again == path and file_sha256(again) == good  # the same network, the same file


def test_list_and_info_show_the_provenance(
    cards: Path, capsys: pytest.CaptureFixture[str], derivations: list[dict[str, torch.Tensor]]
) -> None:
    assert cli.main(["list", "models"]) == 0
    line = f"derived: {PARENT} -> tiny_src (finetune, smoke, seed 0, not derived yet)"
    assert line in capsys.readouterr().out
    path = derived.derived_checkpoint(get_model_card(DERIVED))
    assert cli.main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert (
        f"derived: {PARENT} -> tiny_src (finetune, smoke, seed 0, sha256 {file_sha256(path)[:12]})"
        in out
    )
    assert cli.main(["info", DERIVED]) == 0
    out = capsys.readouterr().out
    assert f"derived: {PARENT} fine-tuned on tiny_src" in out and "cached" in out


def test_medxfer_derive_writes_a_pinned_card_in_the_home(
    cards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["derive", "--parent", PARENT, "--dataset", "tiny_src", "--seed", "1"]
    assert cli.main(args) == 0
    name = f"{PARENT}_ft_tiny_src_s1"
    written = tmp_path / "home" / "cards" / "models" / "derived.yaml"
    assert f"card written to {written}" in capsys.readouterr().out
    card = get_model_card(name)
    assert card.source_file == str(written) and card.category == "in-domain"
    assert card.weights.seed == 1
    assert card.weights.sha256 == file_sha256(derived.derived_checkpoint(card))
    assert cli.main(["derive", name]) == 0
    assert card.weights.sha256 in capsys.readouterr().out
    assert cli.main(["derive", "--parent", PARENT, "--dataset", "tiny_src", "--name", DERIVED]) == 2
    assert "already defined" in capsys.readouterr().err


def test_records_carry_derived_from_and_the_table_its_columns(
    cards: Path, tmp_path: Path, derivations: list[dict[str, torch.Tensor]]
) -> None:
    from harness.config.cards import get_dataset_card
    from harness.config.cases import Case
    from harness.config.profiles import get_profile
    from harness.protocols.case import CaseRun
    from harness.records.table import load_records

    results = tmp_path / "results"
    for model in (DERIVED, PARENT):
        case = Case(
            get_model_card(model), get_dataset_card("tiny_src"), "linear", "t", get_profile("smoke")
        )
        run = CaseRun(case, results, device="cpu")
        run.ensure_weights()
        record = json.loads(run.run().read_text())
        info = record["model"]["derived_from"]
        if model == PARENT:
            assert info is None
            continue
        assert (info["parent"], info["dataset"], info["profile"], info["seed"]) == (
            PARENT,
            "tiny_src",
            "smoke",
            0,
        )
        assert info["checkpoint_sha256"] == record["model"]["weights_file_sha256"]
        assert isinstance(info["steps"], int) and 0.0 <= info["val_score"] <= 1.0
    table = load_records(results).set_index("model")
    assert table.loc[DERIVED, ["derived_parent", "derived_source"]].tolist() == [PARENT, "tiny_src"]
    assert table.loc[PARENT, ["derived_parent", "derived_source"]].isna().all()
    assert len(derivations) == 1


def test_a_read_only_home_derives_without_writing_there(
    cards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDXFER_CACHE_READONLY", "1")
    monkeypatch.setattr(derived.tempfile, "tempdir", str(tmp_path / "private"))
    path = derived.derived_checkpoint(get_model_card(DERIVED))
    assert path.is_relative_to(tmp_path / "private") and _metadata(path)["parent"] == PARENT
    assert not list((tmp_path / "home").rglob("*.safetensors"))


def test_an_absent_source_dataset_makes_the_model_unavailable(cards: Path) -> None:
    from harness.zoo.errors import WeightsUnavailable
    from harness.zoo.sources import ensure_weights

    (cards / "data" / "tiny_src.npz").unlink()
    with pytest.raises(WeightsUnavailable, match="source dataset") as info:
        ensure_weights(get_model_card(DERIVED))
    assert DERIVED in str(info.value) and "tiny_src" in str(info.value)
