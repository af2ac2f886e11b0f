"""Random-init baselines: batch-norm statistics from the target's training images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from harness.config.cards import CardError, get_model_card, load_model_card_file
from harness.features import extract
from harness.protocols.case import feature_scale
from harness.zoo import batchnorm, build_model
from harness.zoo.batchnorm import batchnorm_layers, recalibrate_batchnorm, recalibration_indices

CPU = torch.device("cpu")


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.astype(np.float32) / 255.0)[None].repeat(3, 1, 1)


def _toy() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5)
    )


@pytest.mark.parametrize("chunk", [None, 300])  # 300 values: one image's input per copy
def test_statistics_are_those_of_each_layers_input_over_all_images(
    chunk: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if chunk is not None:
        monkeypatch.setattr(batchnorm, "ACCUMULATION_CHUNK", chunk)
    images = np.random.default_rng(0).integers(0, 255, size=(12, 10, 10), dtype=np.uint8)
    net = _toy()
    summary = recalibrate_batchnorm(net, images, _to_tensor, batch_size=4, device=CPU)
    assert summary == {"layers": 2, "images": 12}
    assert not net.training and all(not layer.training for layer in batchnorm_layers(net))
    # the network is handed back in its own memory format
    assert all(p.is_contiguous() for p in net.parameters())

    # An independent computation: layer 1 sees conv1's output; layer 2 sees conv2 applied
    # to ReLU(train-mode BN1(conv1)), with BN1 normalising by each batch's statistics.
    reference = _toy()
    batch_inputs: list[torch.Tensor] = []
    second_inputs: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, 12, 4):
            x = torch.stack([_to_tensor(img) for img in images[start : start + 4]])
            first = reference[0](x)
            batch_inputs.append(first.double())
            normalised = nn.functional.batch_norm(first, None, None, training=True)
            second_inputs.append(reference[3](torch.relu(normalised)).double())
    for layer, inputs in ((net[1], batch_inputs), (net[4], second_inputs)):
        values = torch.cat(inputs).permute(1, 0, 2, 3).reshape(layer.num_features, -1)
        torch.testing.assert_close(layer.running_mean, values.mean(1).float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.running_var, values.var(1).float(), rtol=1e-4, atol=1e-6)


def test_statistics_do_not_depend_on_the_thread_count() -> None:
    """xdist workers run one torch thread and a plain session two: both must store the same
    statistics. Torch's training-mode batch norm in channels_last reduces differently per
    thread count (104 of these arrays differ); the pass normalises each batch by its own
    float64 statistics instead. Shapes as small as 48 px in batches of 8 are avoided:
    there oneDNN's convolutions themselves change with the thread count."""
    from harness.data.transforms import eval_transform

    card = get_model_card("mobilenet_v2.random")
    transform = eval_transform(card.preprocessing.with_input_size(96))
    images = np.random.default_rng(3).integers(0, 255, size=(32, 96, 96), dtype=np.uint8)
    states = []
    threads_before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            net = build_model(card).module
            recalibrate_batchnorm(net, images, transform, batch_size=16, device=CPU)
            states.append(batchnorm.batchnorm_state(net))
    finally:
        torch.set_num_threads(threads_before)
    assert states[0].keys() == states[1].keys()
    for key, value in states[0].items():
        np.testing.assert_array_equal(value, states[1][key], err_msg=key)


def test_indices_are_whole_batches_of_a_seeded_permutation() -> None:
    index = recalibration_indices(150, batch_size=64)
    assert len(index) == 128 and len(set(index.tolist())) == 128
    np.testing.assert_array_equal(index, recalibration_indices(150, batch_size=64))
    assert not np.array_equal(index, np.arange(128))  # shuffled: every batch mixes classes
    assert len(recalibration_indices(10_000, 64, max_images=2048)) == 2048
    assert sorted(recalibration_indices(20, 64).tolist()) == list(range(20))


def test_recalibrated_random_twin_has_features_of_unit_scale() -> None:
    # MobileNetV2's init statistics leave pooled features of ~1e-9; the target's own
    # statistics bring them to the scale of a trained network.
    card = get_model_card("mobilenet_v2.random")
    assert card.weights.batchnorm_stats == "target_train"
    images = np.random.default_rng(1).integers(0, 255, size=(32, 40, 40), dtype=np.uint8)
    pre = card.preprocessing.with_input_size(40)
    raw = build_model(card).module
    init_scale = feature_scale(extract(raw, images, pre, CPU, batch_size=16))
    recalibrated = build_model(card).module
    from harness.data.transforms import eval_transform

    recalibrate_batchnorm(recalibrated, images, eval_transform(pre), 16, CPU)
    scale = feature_scale(extract(recalibrated, images, pre, CPU, batch_size=16))
    assert init_scale["abs_mean"] < 1e-6
    assert scale["abs_mean"] > 1e-2
    assert scale["near_constant_dims"] == 0 and scale["zero_rows"] == 0


def test_a_network_without_batch_norm_is_left_alone() -> None:
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.GroupNorm(1, 2))
    before = [p.clone() for p in net.state_dict().values()]
    images = np.zeros((4, 8, 8), dtype=np.uint8)
    assert recalibrate_batchnorm(net, images, _to_tensor, 2, CPU) == {"layers": 0, "images": 4}
    assert all(torch.equal(a, b) for a, b in zip(before, net.state_dict().values(), strict=True))


def _card_file(tmp_path: Path, weights: dict) -> Path:
    entry = {
        "name": "mobilenet_v2.test",
        "architecture": {"library": "torchvision", "name": "mobilenet_v2"},
        "weights": weights,
        "preprocessing": {"input_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3},
        "category": "random-init",
        "pretraining_data": "none",
    }
    path = tmp_path / "cards.yaml"
    path.write_text(yaml.safe_dump({"models": [entry]}))
    return path


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ({"source": "random"}, "target_train"),
        ({"source": "random", "batchnorm_stats": "init"}, "init"),
        ({"source": "file", "path": "x.pth"}, "checkpoint"),
        ({"source": "file", "path": "x.pth", "batchnorm_stats": "target_train"}, "target_train"),
    ],
)
def test_card_rule_defaults_and_choices(tmp_path: Path, weights: dict, expected: str) -> None:
    (card,) = load_model_card_file(_card_file(tmp_path, weights))
    assert card.weights.batchnorm_stats == expected


@pytest.mark.parametrize(
    "weights",
    [
        {"source": "random", "batchnorm_stats": "checkpoint"},
        {"source": "file", "path": "x.pth", "batchnorm_stats": "init"},
        {"source": "random", "batchnorm_stats": "running"},
    ],
)
def test_card_rule_that_does_not_fit_the_source_is_refused(tmp_path: Path, weights: dict) -> None:
    with pytest.raises(CardError, match=r"weights: field 'batchnorm_stats'"):
        load_model_card_file(_card_file(tmp_path, weights))


def test_recalibrated_statistics_are_stored_once_and_loaded_exactly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A later case (or another worker) loads the statistics instead of recomputing them."""
    from harness.protocols import backbone as backbone_module

    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    card = get_model_card("mobilenet_v2.random")
    images = np.random.default_rng(2).integers(0, 255, size=(16, 40, 40), dtype=np.uint8)
    pre = card.preprocessing.with_input_size(40)
    monkeypatch.setattr(backbone_module, "_RECALIBRATED", {})
    first = backbone_module.make_backbone(card, lambda: images, pre, 8, "cpu")
    computed = first.load()
    stored = list((tmp_path / "home").rglob("batchnorm-stats/*.npz"))
    assert len(stored) == 1

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the statistics were computed again")

    monkeypatch.setattr(backbone_module, "recalibrate_batchnorm", refuse)
    monkeypatch.setattr(backbone_module, "_RECALIBRATED", {})  # a fresh process
    second = backbone_module.make_backbone(card, lambda: images, pre, 8, "cpu")
    assert second.weights_id == first.weights_id
    loaded = second.load()
    assert loaded is not computed
    for (name, a), (_, b) in zip(
        computed.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_statistics_that_do_not_fit_the_network_are_refused() -> None:
    from harness.zoo.batchnorm import batchnorm_state, load_batchnorm_state

    state = batchnorm_state(_toy())
    assert set(state) == {
        f"{i}.{buffer}"
        for i in (1, 4)
        for buffer in ("running_mean", "running_var", "num_batches_tracked")
    }
    with pytest.raises(ValueError, match="missing"):
        load_batchnorm_state(_toy(), {k: v for k, v in state.items() if not k.startswith("4.")})
    state["1.running_mean"] = np.zeros(7, dtype=np.float32)
    with pytest.raises(ValueError, match="shape"):
        load_batchnorm_state(_toy(), state)
