"""The fine-tuning dynamics protocol: weight distances, CKA to init and layer importance,
on a tiny CPU network and tiny images (no downloads, seconds)."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from harness.analyses.dynamics import (
    arrays_to_state,
    layer_groups,
    norm_keys,
    randomise,
    reset_to,
    state_to_arrays,
    weight_distances,
)
from harness.cache.runs import RunStore
from harness.config.cards import Preprocessing
from harness.data.npz import SplitData
from harness.protocols.base import TaskInfo
from harness.protocols.dynamics import DynamicsConfig, analyse, run
from harness.protocols.dynamics_tuning import Tuned, initial_classifier
from harness.protocols.finetune import FinetuneConfig
from harness.protocols.finetune.network import clone_state
from harness.protocols.finetune.runtime import Runtime
from harness.protocols.registry import get_protocol
from harness.zoo import LoadedModel

SIZE = 16
PRE = Preprocessing(SIZE, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear", crop_pct=1.0)
TASK = TaskInfo("binary", 2, "accuracy", ("accuracy", "roc_auc"))
CPU = Runtime(torch.device("cpu"))
STAGES = {"stage1": "block1", "stage2": "block2"}
LAYERS = ["stage1", "stage2", "pooled", "head"]
TABLES = ("l2_", "relative_l2_", "cka_init_ft_", "importance_init_", "importance_random_")


class TinyNet(nn.Module):
    """A stem, two stages and a 1x1 conv after the last stage: 8 pooled features."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.block1 = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU())
        self.conv_head = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(torch.relu(self.bn(self.stem(x)))))
        return self.conv_head(x).mean(dim=(2, 3))


def _model() -> LoadedModel:
    torch.manual_seed(0)
    card: Any = None  # the protocol never reads the card
    return LoadedModel(card=card, module=TinyNet().eval(), feature_dim=8, weights_id="tiny")


def _split(n: int, seed: int) -> SplitData:
    """Grey noise; label 1 images carry a brighter 6x6 square."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(np.int64)
    images = rng.integers(0, 120, size=(n, SIZE, SIZE)).astype(np.int64)
    for i in np.flatnonzero(labels):
        r, c = rng.integers(0, SIZE - 6, size=2)
        images[i, r : r + 6, c : c + 6] += 90
    return SplitData(np.clip(images, 0, 255).astype(np.uint8), labels)


def _splits() -> dict[str, SplitData]:
    return {"train": _split(24, 0), "val": _split(12, 1), "test": _split(20, 2)}


def _config(**finetune: Any) -> DynamicsConfig:
    settings = {"steps": 4, "batch_size": 8, "val_every": 2, "input_size": SIZE, "cpu_threads": 1}
    return DynamicsConfig(finetune=FinetuneConfig(**{**settings, **finetune}), seed=3)


def _perturbed(net: nn.Module, seed: int = 1) -> nn.Module:
    """A copy of ``net`` with every float tensor moved by seeded noise (a 'fine-tuned' net)."""
    other = copy.deepcopy(net)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in other.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))
    return other


pytestmark = pytest.mark.usefixtures("one_thread_home")


def test_layers_follow_the_network_order_stem_first_head_last() -> None:
    net = initial_classifier(_model(), TASK, _config().finetune)
    groups = layer_groups(list(net.state_dict()), STAGES)
    assert list(groups) == LAYERS
    assert groups["stage1"][0] == "backbone.stem.weight"
    assert "backbone.bn.running_mean" in groups["stage1"]
    assert groups["stage2"] == ["backbone.block2.0.weight", "backbone.block2.0.bias"]
    assert groups["pooled"] == ["backbone.conv_head.weight", "backbone.conv_head.bias"]
    assert groups["head"] == ["head.weight", "head.bias"]
    with pytest.raises(ValueError, match=r"stage stage2 .* not in network order"):
        layer_groups(list(net.state_dict()), {"stage1": "block2", "stage2": "block1"})


def test_distances_match_a_hand_computation() -> None:
    initial = {
        "backbone.a.weight": torch.tensor([3.0, 4.0]),
        "backbone.a.bias": torch.tensor([0.0]),
        "backbone.bn.weight": torch.tensor([1.0]),
        "head.weight": torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
    }
    tuned = {
        "backbone.a.weight": torch.tensor([3.0, 7.0]),  # moved by (0, 3)
        "backbone.a.bias": torch.tensor([4.0]),  # moved by 4
        "backbone.bn.weight": torch.tensor([9.0]),  # left out: a norm
        "head.weight": torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
    }
    groups = {
        "stage1": ["backbone.a.weight", "backbone.a.bias", "backbone.bn.weight"],
        "head": ["head.weight"],
    }
    counted = {"backbone.a.weight", "backbone.a.bias", "head.weight"}
    out = weight_distances(initial, tuned, groups, counted)
    assert out["stage1"]["l2"] == pytest.approx(5.0)  # sqrt(3^2 + 4^2)
    assert out["stage1"]["relative_l2"] == pytest.approx(1.0)  # / sqrt(3^2 + 4^2 + 0^2)
    assert out["stage1"]["n_params"] == 3
    assert out["head"]["l2"] == 0.0 and out["head"]["relative_l2"] == 0.0
    assert out["total"]["l2"] == pytest.approx(5.0)
    assert out["total"]["relative_l2"] == pytest.approx(5.0 / math.sqrt(27.0))
    with_norm = weight_distances(initial, tuned, groups, {*counted, "backbone.bn.weight"})
    assert with_norm["stage1"]["l2"] == pytest.approx(math.sqrt(25.0 + 64.0))


def test_norm_keys_are_the_normalisation_layers_parameters_and_buffers() -> None:
    net = initial_classifier(_model(), TASK, _config().finetune)
    keys = norm_keys(net)
    assert "backbone.bn.weight" in keys and "backbone.block1.1.running_var" in keys
    assert not any("stem" in k or "conv_head" in k or k.startswith("head") for k in keys)


def test_an_unchanged_network_has_zero_distance_unit_cka_and_no_importance() -> None:
    config = _config()
    initial = initial_classifier(_model(), TASK, config.finetune)
    tuned = Tuned(initial, copy.deepcopy(initial), CPU, {"lr": 0.0}, {}, False)
    result = analyse(tuned, STAGES, _splits()["test"], TASK, config, PRE)
    m = result.metrics
    for layer in LAYERS:
        assert m[f"l2_{layer}"] == 0.0 and m[f"relative_l2_{layer}"] == 0.0
        assert m[f"importance_init_{layer}"] == 0.0
    for layer in ("stage1", "stage2", "pooled"):
        assert m[f"cka_init_ft_{layer}"] == pytest.approx(1.0, abs=1e-6)
    assert m["mean_cka_init_ft"] == pytest.approx(1.0, abs=1e-6)
    assert m["total_l2"] == 0.0
    assert set(result.details["rescored"]["init"]) == set(LAYERS)


def test_resetting_a_layer_changes_only_that_layer() -> None:
    initial = initial_classifier(_model(), TASK, _config().finetune)
    tuned = _perturbed(initial)
    start, final = clone_state(initial), clone_state(tuned)
    groups = layer_groups(list(final), STAGES)
    reset_to(tuned, start, groups["stage2"])
    after = tuned.state_dict()
    for key, value in after.items():
        expected = start[key] if key in groups["stage2"] else final[key]
        assert torch.equal(value, expected), key
    with pytest.raises(ValueError, match="source state has no"):
        reset_to(tuned, {}, groups["stage2"])


@pytest.mark.parametrize("mode", ["gaussian", "reset"])
def test_a_random_reset_is_seeded_and_touches_only_its_layer(mode: str) -> None:
    initial = initial_classifier(_model(), TASK, _config().finetune)
    final = clone_state(_perturbed(initial))
    keys = layer_groups(list(final), STAGES)["stage1"]
    drawn = []
    for seed in (5, 5, 6):
        net = copy.deepcopy(initial)
        net.load_state_dict(final)
        changed = randomise(net, keys, seed, mode)  # type: ignore[arg-type]
        drawn.append(clone_state(net))
        assert changed and set(changed) <= set(keys)
        for key in set(final) - set(keys):
            assert torch.equal(drawn[-1][key], final[key]), key
        assert not torch.equal(drawn[-1]["backbone.stem.weight"], final["backbone.stem.weight"])
    assert all(torch.equal(drawn[0][k], drawn[1][k]) for k in final)
    assert not torch.equal(drawn[0]["backbone.stem.weight"], drawn[2]["backbone.stem.weight"])
    if mode == "gaussian":  # norms keep their fine-tuned values
        assert torch.equal(drawn[0]["backbone.bn.weight"], final["backbone.bn.weight"])


def test_gaussian_draws_keep_each_tensors_mean_and_std() -> None:
    layer = nn.Linear(200, 100)
    with torch.no_grad():
        layer.weight.normal_(0.5, 2.0)
    randomise(layer, ["weight", "bias"], 0, "gaussian")
    assert float(layer.weight.detach().mean()) == pytest.approx(0.5, abs=0.05)
    assert float(layer.weight.detach().std()) == pytest.approx(2.0, rel=0.03)


def test_state_arrays_round_trip() -> None:
    state = {"a.weight": torch.randn(2, 3), "n": torch.tensor(7), "h": torch.ones(2).bfloat16()}
    back = arrays_to_state(state_to_arrays(state))
    assert list(back) == list(state)
    assert all(torch.equal(back[k], state[k]) and back[k].dtype == state[k].dtype for k in state)


def test_a_case_records_every_layer_table_and_reuses_its_kept_weights(tmp_path: Path) -> None:
    runs = RunStore(tmp_path / "case", {"case_id": "dynamics/tiny/tiny"})
    config = _config()
    first = run(_model(), _splits(), TASK, config, PRE, STAGES, runs=runs, progress=False)
    spec = get_protocol("dynamics")
    assert tuple(t.prefix for t in spec.detail_tables) == TABLES
    for prefix in TABLES:
        layers = LAYERS[:3] if prefix == "cka_init_ft_" else LAYERS
        assert all(f"{prefix}{layer}" in first.metrics for layer in layers), prefix
    assert spec.primary_metric in first.metrics and "finetuned_accuracy" in first.metrics
    assert first.metrics["l2_head"] > 0 and first.details["reused_completed_run"] is False
    assert first.hyperparameters["steps"] >= 1
    kept = sorted(p.name for p in (tmp_path / "case").glob("dyn-*.weights.npz"))
    assert len(kept) == 1

    again = run(_model(), _splits(), TASK, config, PRE, STAGES, runs=runs, progress=False)
    assert again.details["reused_completed_run"] is True
    for name, value in first.metrics.items():
        assert again.metrics[name] == pytest.approx(value, abs=1e-9, nan_ok=True), name

    (tmp_path / "case" / kept[0]).unlink()  # weights lost: the training runs again
    third = run(_model(), _splits(), TASK, config, PRE, STAGES, runs=runs, progress=False)
    assert third.details["reused_completed_run"] is False
    assert third.metrics["l2_stage1"] == pytest.approx(first.metrics["l2_stage1"], rel=1e-4)


def test_a_vanishing_learning_rate_leaves_every_counted_weight_in_place() -> None:
    config = _config(lr=1e-30, warmup_start=0.0)
    result = run(_model(), _splits(), TASK, config, PRE, STAGES, progress=False)
    for layer in LAYERS:  # the head too: it is re-created exactly as the training drew it
        assert result.metrics[f"l2_{layer}"] < 1e-12
        assert result.metrics[f"relative_l2_{layer}"] < 1e-12


def test_config_follows_the_fine_tune_profile_and_the_session_seed() -> None:
    smoke = DynamicsConfig.for_profile("smoke")
    assert smoke.finetune == FinetuneConfig.for_profile("smoke")
    seeded = smoke.__class__(**{**smoke.__dict__, "seed": 7})
    assert seeded.finetune.seed == 7
    assert seeded.to_dict()["finetune"]["seed"] == 7
    with pytest.raises(ValueError, match="random_init"):
        DynamicsConfig(random_init="uniform")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="folds"):
        DynamicsConfig(finetune=FinetuneConfig(folds=5))
