"""The analysis protocols: layer features (cached), similarity, layer-wise probing,
transferability, their registration and the analyses suite."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm  # noqa: F401  (imported once at collection: seconds on a busy machine)
import torch

from harness.config.cards import get_dataset_card, get_model_card
from harness.config.profiles import get_profile
from harness.data.npz import SplitData
from harness.protocols import layerwise, similarity, transferability
from harness.protocols.backbone import Backbone
from harness.protocols.base import SplitFeatures, TaskInfo
from harness.protocols.layer_features import (
    FINAL_LAYER,
    LayerError,
    PooledLayers,
    layer_features,
    resolve_layers,
    stage_modules,
)
from harness.protocols.registry import CaseNotApplicable, discover
from harness.zoo.build import build_model


@dataclass
class _Inner:
    model: Any
    dataset: Any


@dataclass
class FakeCase:
    """What layer_features reads from a CaseRun, with a tiny split and a small input size."""

    case: _Inner
    backbone_: Backbone
    pre: Any
    data: dict[str, SplitData]
    device: str = "cpu"
    precision: str = "fp32"
    feature_cache: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def profile(self) -> Any:
        return get_profile("smoke")

    def splits(self) -> dict[str, SplitData]:
        return self.data

    def backbone(self) -> Backbone:
        return self.backbone_

    def preprocessing(self) -> Any:
        return self.pre

    __hash__ = object.__hash__


@pytest.fixture(scope="module")
def mobilenet() -> Any:
    torch.set_num_threads(1)
    return build_model(get_model_card("mobilenet_v2.random"))


def _case(loaded: Any, n: int = 6) -> FakeCase:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 40, 40, 3), dtype=np.uint8)
    card = loaded.card
    backbone = Backbone("test-weights", lambda: loaded.module, {"rule": "test"})
    data = {"test": SplitData(images, np.arange(n) % 2)}
    return FakeCase(
        _Inner(card, get_dataset_card("demo_modality")),
        backbone,
        card.preprocessing.with_input_size(32),
        data,
    )


def test_stages_of_timm_and_torchvision_cards() -> None:
    timm_stages = stage_modules(get_model_card("tf_efficientnet_lite0.in1k_pip"))
    assert timm_stages == {f"stage{i + 1}": f"blocks.{b}" for i, b in enumerate((0, 1, 2, 4, 6))}
    tv = stage_modules(get_model_card("mobilenet_v2.tv_in1k_pip"))
    assert list(tv.values()) == [f"model.features.{i}" for i in (1, 3, 6, 13, 18)]
    card = get_model_card("mobilenet_v2.random")
    assert resolve_layers(card, ("stage2", FINAL_LAYER, "model.features.4")) == {
        "stage2": "model.features.3",
        FINAL_LAYER: "",
        "model.features.4": "model.features.4",
    }


def test_pooled_layers_are_spatial_means_of_the_stage_outputs(mobilenet: Any) -> None:
    x = torch.randn(2, 3, 32, 32)
    layers = resolve_layers(mobilenet.card, ("stage1", "stage3", FINAL_LAYER))
    module = PooledLayers(mobilenet.module, layers).eval()
    with torch.inference_mode():
        out = module(x)
        final = mobilenet.module(x)
        stage1 = mobilenet.module.model.features[:2](x).mean(dim=(2, 3))
    assert module.widths == {"stage1": 16, "stage3": 32, FINAL_LAYER: 1280}
    assert out.shape == (2, 16 + 32 + 1280)
    torch.testing.assert_close(out[:, :16], stage1)
    torch.testing.assert_close(out[:, -1280:], final)
    with pytest.raises(LayerError, match=r"no module 'model\.nope'"):
        PooledLayers(mobilenet.module, {"x": "model.nope"})


def test_layer_features_are_cached_with_their_layer_in_the_key(
    mobilenet: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path))
    layers = ("stage1", FINAL_LAYER)
    first = layer_features(_case(mobilenet), ("test",), layers)["test"]
    again = _case(mobilenet)
    second = layer_features(again, ("test",), layers)["test"]
    assert again.feature_cache == {"test:layers:mobilenet_v2.random": "hit"}
    assert {k: v.shape for k, v in second.items()} == {"stage1": (6, 16), FINAL_LAYER: (6, 1280)}
    for name in layers:
        np.testing.assert_array_equal(first[name], second[name])
    files = sorted(p.name for p in (tmp_path / "features").rglob("*.npz"))
    assert len(files) == 1 and files[0].startswith("test-layers-")
    other = _case(mobilenet)
    layer_features(other, ("test",), ("stage2",))
    assert other.feature_cache == {"test:layers:mobilenet_v2.random": "miss"}


def test_reference_of_a_model_is_its_random_twin_and_back() -> None:
    pretrained = get_model_card("mobilenet_v2.tv_in1k_pip")
    assert similarity.reference_card(pretrained, "random_twin").name == "mobilenet_v2.random"
    twin = get_model_card("mobilenet_v2.random")
    assert similarity.reference_card(twin, "random_twin").name == pretrained.name
    lite1 = get_model_card("tf_efficientnet_lite1.in1k_pip")
    with pytest.raises(CaseNotApplicable, match="no random-init twin"):
        similarity.reference_card(lite1, "random_twin")


def test_similarity_metrics_of_a_rotated_copy() -> None:
    rng = np.random.default_rng(1)
    x = {"stage1": rng.normal(size=(40, 6)), FINAL_LAYER: rng.normal(size=(40, 4))}
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    y = {"stage1": rng.normal(size=(40, 6)), FINAL_LAYER: 2 * x[FINAL_LAYER] @ q}
    out = similarity.compare(x, y, similarity.SimilarityConfig())
    assert out["linear_cka"] == out["cka_pooled"] == pytest.approx(1.0)
    assert out["rbf_cka"] == pytest.approx(1.0)
    assert out["svcca"] == pytest.approx(1.0)
    assert out["cka_stage1"] < 0.5
    assert out["mean_layer_cka"] == pytest.approx((out["cka_stage1"] + 1.0) / 2)
    with pytest.raises(CaseNotApplicable, match="share no layer"):
        similarity.compare(x, {"other": x[FINAL_LAYER]}, similarity.SimilarityConfig())


def test_layerwise_reports_each_layer_and_the_final_layers_metrics() -> None:
    rng = np.random.default_rng(2)
    task = TaskInfo("binary", 2, "accuracy", ("accuracy", "roc_auc"))

    def split(n: int, signal: float) -> SplitFeatures:
        labels = np.arange(n) % 2
        features = rng.normal(size=(n, 5)) + signal * labels[:, None]
        return SplitFeatures(features.astype(np.float32), labels)

    layers = {
        "stage1": {"train": split(60, 0.0), "val": split(20, 0.0), "test": split(40, 0.0)},
        FINAL_LAYER: {"train": split(60, 9.0), "val": split(20, 9.0), "test": split(40, 9.0)},
    }
    result = layerwise.run_layers(layers, task, layerwise.LayerwiseConfig(k=5))
    assert result.metrics["accuracy"] == result.metrics["layer_pooled"] == 1.0
    assert result.metrics["layer_stage1"] < 0.8
    assert result.details["best_layer"] == FINAL_LAYER
    assert result.hyperparameters["method"] == "knn"


def test_source_head_of_a_pip_checkpoint_and_none_for_a_twin() -> None:
    card = get_model_card("mobilenet_v2.tv_in1k_pip")
    head = transferability.source_head(card, 1280)
    assert not isinstance(head, str)
    weight, bias = head
    assert weight.shape == (1000, 1280) and bias.shape == (1000,)
    twin = transferability.source_head(get_model_card("mobilenet_v2.random"), 1280)
    assert twin == "random initialisation: no source classifier"
    assert "no (classes, 7) weight" in str(transferability.source_head(card, 7))


def test_the_protocols_register_with_their_metadata() -> None:
    specs = discover()
    assert specs["similarity"].primary_metric == "linear_cka"
    assert specs["transferability"].primary_metric == "logme"
    assert specs["layerwise"].primary_metric is None
    assert {specs[n].display for n in ("similarity", "layerwise", "transferability")} == {
        "descriptive"
    }
    assert specs["similarity"].detail_metric_prefixes == ("cka_",)
    assert specs["layerwise"].detail_metric_prefixes == ("layer_",)
    assert similarity.SimilarityConfig.for_profile("smoke").max_images == 64


def test_the_analyses_suite_runs_every_analysis_on_the_demo_data() -> None:
    from harness.config.suites import load_suite

    suite = load_suite("analyses")
    assert not suite.expected_required
    cases = suite.cases()
    by_protocol: dict[str, int] = {}
    for case in cases:
        by_protocol[case.protocol] = by_protocol.get(case.protocol, 0) + 1
    assert by_protocol == {
        "linear": 12,
        "similarity": 6,
        "layerwise": 12,
        "transferability": 12,
        "dynamics": 2,
    }
    assert {c.profile.name for c in cases} == {"smoke"}
