"""The model card field ``layers`` (name -> module path): parsing, validation, fingerprint,
and the layer-wise protocols reading it (harness/protocols/layer_features.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.cache.keys import stable_hash
from harness.config.card_fields import CardError
from harness.config.model_cards import load_model_card_file

CARD: dict[str, Any] = {
    "name": "resnet18.layers_test",
    "architecture": {"library": "torchvision", "name": "resnet18"},
    "weights": {"source": "random", "seed": 0},
    "preprocessing": {"input_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    "category": "random-init",
    "pretraining_data": "none",
}


def _load(tmp_path: Path, **extra: Any) -> Any:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": [{**CARD, **extra}]}), encoding="utf-8")
    return load_model_card_file(path)[0]


def test_layers_as_mapping_or_pairs_keep_their_order(tmp_path: Path) -> None:
    pairs = (("early", "model.layer1"), ("late", "model.layer4.1"))
    assert (
        _load(tmp_path, layers={"early": "model.layer1", "late": "model.layer4.1"}).layers == pairs
    )
    assert (
        _load(tmp_path, layers=[["early", "model.layer1"], ["late", "model.layer4.1"]]).layers
        == pairs
    )


def test_layers_enter_the_fingerprint_only_when_set(tmp_path: Path) -> None:
    plain = _load(tmp_path)
    assert plain.layers == () and "layers" not in plain.fingerprint()
    named = _load(tmp_path, layers={"early": "model.layer1"})
    assert named.fingerprint()["layers"] == [["early", "model.layer1"]]
    assert stable_hash(named.fingerprint()) != stable_hash(plain.fingerprint())


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([["a", "model.layer1"], ["a", "model.layer2"]], "layer name 'a' is given twice"),
        ({"pooled": "model.layer1"}, "not 'pooled'"),
        ({"bad name": "model.layer1"}, "layer name 'bad name'"),
        ({"a": "model/layer1"}, "module path 'model/layer1'"),
        ("model.layer1", "expected a mapping name -> module path"),
        ([["a", "b", "c"]], "expected a mapping name -> module path"),
    ],
)
def test_bad_layers_name_the_card_and_field(tmp_path: Path, layers: Any, message: str) -> None:
    with pytest.raises(CardError, match="layers") as info:
        _load(tmp_path, layers=layers)
    assert message in str(info.value) and "resnet18.layers_test" in str(info.value)


def test_layer_features_use_the_cards_layers(tmp_path: Path) -> None:
    from harness.protocols.layer_features import resolve_layers

    card = _load(tmp_path, layers={"early": "model.layer1", "late": "model.layer3"})
    assert resolve_layers(card) == {"early": "model.layer1", "late": "model.layer3", "pooled": ""}
    assert resolve_layers(card, ["late"]) == {"late": "model.layer3"}
