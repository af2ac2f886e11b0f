"""RadImageNet's Keras ``.h5`` weights, rebuilt in Keras' legacy HDF5 layout and loaded by the cards.

TensorFlow / Keras are not installed, so the reference is a small re-implementation of
``keras.applications`` ResNet50 and DenseNet121 forward semantics in NHWC (float64):
kernels HWIO applied offset by offset, Keras' 'valid' / 'same' padding and
``ZeroPadding2D``, the stride on the first 1x1 conv, conv biases, batch-norm eps
1.001e-5, BGR input. Random weights fill an ``.h5`` written with h5py as Keras writes
it (``layer_names`` / ``backend`` / ``keras_version`` attributes, one group per layer
with ``weight_names`` like ``conv1_conv/kernel:0``, float32 datasets); the committed
card loads it through converter and architecture variant, strictly, and its pooled
features must equal the reference's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from harness.config.cards import WeightsSpec, get_model_card
from harness.zoo import CheckpointError, build_model, weights_identity
from harness.zoo.sources import locate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EPS = 1.001e-5
IMAGE = torch.rand(2, 3, 65, 65, generator=torch.Generator().manual_seed(0))
Weights = dict[str, dict[str, np.ndarray]]  # layer -> {"kernel": ..., "gamma": ...}
Layers = list[tuple[str, list[str]]]  # Keras layer order, weight names per layer
BN = ["gamma", "beta", "moving_mean", "moving_variance"]


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDXFER_OFFLINE", "1")
    return tmp_path / "home"


# --------------------------------------------------------------------------- Keras layouts


def resnet50_layers() -> tuple[Layers, dict[str, tuple[int, ...]]]:
    """keras.applications ResNet50 (include_top=False): layer order and weight shapes."""
    layers: Layers = [("input_1", []), ("conv1_pad", [])]
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, k: int, cin: int, cout: int) -> None:
        layers.append((name, ["kernel", "bias"]))
        shapes[f"{name}/kernel"], shapes[f"{name}/bias"] = (k, k, cin, cout), (cout,)

    def bn(name: str, c: int) -> None:
        layers.append((name, BN))
        shapes.update({f"{name}/{w}": (c,) for w in BN})

    conv("conv1_conv", 7, 3, 64)
    bn("conv1_bn", 64)
    layers += [("conv1_relu", []), ("pool1_pad", []), ("pool1_pool", [])]
    cin = 64
    for stage, filters, blocks in ((2, 64, 3), (3, 128, 4), (4, 256, 6), (5, 512, 3)):
        for block in range(1, blocks + 1):
            p = f"conv{stage}_block{block}"
            conv(f"{p}_1_conv", 1, cin, filters)
            bn(f"{p}_1_bn", filters)
            layers.append((f"{p}_1_relu", []))
            conv(f"{p}_2_conv", 3, filters, filters)
            bn(f"{p}_2_bn", filters)
            layers.append((f"{p}_2_relu", []))
            if block == 1:
                conv(f"{p}_0_conv", 1, cin, 4 * filters)
            conv(f"{p}_3_conv", 1, filters, 4 * filters)
            if block == 1:
                bn(f"{p}_0_bn", 4 * filters)
            bn(f"{p}_3_bn", 4 * filters)
            layers += [(f"{p}_add", []), (f"{p}_out", [])]
            cin = 4 * filters
    return layers, shapes


def densenet121_layers() -> tuple[Layers, dict[str, tuple[int, ...]]]:
    """keras.applications DenseNet121 (include_top=False): layer order and weight shapes."""
    layers: Layers = [("input_1", []), ("zero_padding2d", [])]
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, k: int, cin: int, cout: int) -> None:
        layers.append((name, ["kernel"]))
        shapes[f"{name}/kernel"] = (k, k, cin, cout)

    def bn(name: str, c: int) -> None:
        layers.append((name, BN))
        shapes.update({f"{name}/{w}": (c,) for w in BN})

    conv("conv1/conv", 7, 3, 64)
    bn("conv1/bn", 64)
    layers += [("conv1/relu", []), ("zero_padding2d_1", []), ("pool1", [])]
    c = 64
    for stage, blocks in ((2, 6), (3, 12), (4, 24), (5, 16)):
        for block in range(1, blocks + 1):
            p = f"conv{stage}_block{block}"
            bn(f"{p}_0_bn", c)
            layers.append((f"{p}_0_relu", []))
            conv(f"{p}_1_conv", 1, c, 128)
            bn(f"{p}_1_bn", 128)
            layers.append((f"{p}_1_relu", []))
            conv(f"{p}_2_conv", 3, 128, 32)
            layers.append((f"{p}_concat", []))
            c += 32
        if stage < 5:
            bn(f"pool{stage}_bn", c)
            layers.append((f"pool{stage}_relu", []))
            conv(f"pool{stage}_conv", 1, c, c // 2)
            layers.append((f"pool{stage}_pool", []))
            c //= 2
    bn("bn", c)
    layers.append(("relu", []))
    return layers, shapes


def random_weights(layers: Layers, shapes: dict[str, tuple[int, ...]], seed: int) -> Weights:
    """Random weights at a trained scale, with moving variances near the epsilon.

    Kernels are He-scaled; each batch norm's moving variance is ~1e-5 and its gamma
    scaled by the variance's square root, so activations keep their scale while
    PyTorch's default eps (1e-5) instead of Keras' 1.001e-5 visibly changes the features.
    """
    rng = np.random.default_rng(seed)
    out: Weights = {}
    for layer, names in layers:
        values = out.setdefault(layer, {})
        for name in names:
            shape = shapes[f"{layer}/{name}"]
            if name == "kernel":
                values[name] = rng.normal(0, math.sqrt(2 / np.prod(shape[:3])), shape)
            elif name == "moving_variance":
                values[name] = 1e-5 * (0.5 + rng.random(shape))
            else:
                values[name] = 0.2 * (rng.random(shape) - 0.5)
        if "gamma" in values:
            spread = 0.5 + rng.random(values["gamma"].shape)
            values["gamma"] = spread * np.sqrt(values["moving_variance"] + EPS)
        for name, value in values.items():
            values[name] = np.asarray(value, dtype=np.float32)
    return out


def write_keras_h5(path: Path, layers: Layers, weights: Weights, *, full_model: bool) -> None:
    """Write ``weights`` as Keras 2 ``save_weights`` (or ``model.save``: ``model_weights``) does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        group = handle.create_group("model_weights") if full_model else handle
        if full_model:
            handle.attrs["model_config"] = b'{"class_name": "Functional"}'
        group.attrs["layer_names"] = [name.encode("utf8") for name, _ in layers]
        group.attrs["backend"] = b"tensorflow"
        group.attrs["keras_version"] = b"2.4.0"
        for layer, names in layers:
            layer_group = group.create_group(layer)
            full = [f"{layer}/{name}:0" for name in names]
            layer_group.attrs["weight_names"] = np.array([n.encode("utf8") for n in full], "S")
            for name, dataset in zip(names, full, strict=True):
                layer_group.create_dataset(dataset, data=weights[layer][name])


# --------------------------------------------------------------------------- Keras semantics


def pad(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """ZeroPadding2D on NHWC."""
    return torch.nn.functional.pad(x, (0, 0, before, after, before, after))


def conv(
    x: torch.Tensor, w: dict[str, np.ndarray], stride: int = 1, same: bool = False
) -> torch.Tensor:
    """Keras Conv2D on NHWC with an HWIO kernel, 'valid' or TF 'same', bias when present."""
    kernel = torch.from_numpy(w["kernel"]).double()
    k = kernel.shape[0]
    if same:
        size = x.shape[1]
        total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        x = pad(x, total // 2, total - total // 2)
    rows = (x.shape[1] - k) // stride + 1
    cols = (x.shape[2] - k) // stride + 1
    out = x.new_zeros(x.shape[0], rows, cols, kernel.shape[3])
    for i in range(k):
        for j in range(k):
            patch = x[
                :,
                i : i + stride * (rows - 1) + 1 : stride,
                j : j + stride * (cols - 1) + 1 : stride,
            ]
            out += torch.einsum("nhwc,co->nhwo", patch, kernel[i, j])
    if "bias" in w:
        out = out + torch.from_numpy(w["bias"]).double()
    return out


def bn(x: torch.Tensor, w: dict[str, np.ndarray]) -> torch.Tensor:
    """Keras BatchNormalization at inference, eps 1.001e-5."""
    g, b, m, v = (torch.from_numpy(w[n]).double() for n in BN)
    return (x - m) / torch.sqrt(v + EPS) * g + b


def pool(x: torch.Tensor, k: int, stride: int, reduce: Callable[..., torch.Tensor]) -> torch.Tensor:
    """'valid' pooling on NHWC."""
    rows, cols = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
    windows = [
        x[:, i : i + stride * (rows - 1) + 1 : stride, j : j + stride * (cols - 1) + 1 : stride]
        for i in range(k)
        for j in range(k)
    ]
    return reduce(torch.stack(windows), 0)


def max_pool(x: torch.Tensor) -> torch.Tensor:
    return pool(x, 3, 2, lambda t, d: t.max(d).values)


def keras_stem(x: torch.Tensor, w: Weights, conv_name: str, bn_name: str) -> torch.Tensor:
    x = torch.relu(bn(conv(pad(x, 3, 3), w[conv_name], 2), w[bn_name]))
    return max_pool(pad(x, 1, 1))


def keras_resnet50(image_bgr_nhwc: torch.Tensor, w: Weights) -> torch.Tensor:
    """keras.applications ResNet50(include_top=False, pooling='avg') forward."""
    x = keras_stem(image_bgr_nhwc, w, "conv1_conv", "conv1_bn")
    for stage, blocks in ((2, 3), (3, 4), (4, 6), (5, 3)):
        for block in range(1, blocks + 1):
            p, stride = f"conv{stage}_block{block}", 2 if block == 1 and stage > 2 else 1
            shortcut = bn(conv(x, w[f"{p}_0_conv"], stride), w[f"{p}_0_bn"]) if block == 1 else x
            y = torch.relu(bn(conv(x, w[f"{p}_1_conv"], stride), w[f"{p}_1_bn"]))
            y = torch.relu(bn(conv(y, w[f"{p}_2_conv"], 1, same=True), w[f"{p}_2_bn"]))
            y = bn(conv(y, w[f"{p}_3_conv"]), w[f"{p}_3_bn"])
            x = torch.relu(shortcut + y)
    return x.mean(dim=(1, 2))


def keras_densenet121(image_bgr_nhwc: torch.Tensor, w: Weights) -> torch.Tensor:
    """keras.applications DenseNet121(include_top=False, pooling='avg') forward."""
    x = keras_stem(image_bgr_nhwc, w, "conv1/conv", "conv1/bn")
    for stage, blocks in ((2, 6), (3, 12), (4, 24), (5, 16)):
        for block in range(1, blocks + 1):
            p = f"conv{stage}_block{block}"
            y = conv(torch.relu(bn(x, w[f"{p}_0_bn"])), w[f"{p}_1_conv"])
            y = conv(torch.relu(bn(y, w[f"{p}_1_bn"])), w[f"{p}_2_conv"], same=True)
            x = torch.cat([x, y], dim=3)
        if stage < 5:
            x = conv(torch.relu(bn(x, w[f"pool{stage}_bn"])), w[f"pool{stage}_conv"])
            x = pool(x, 2, 2, lambda t, d: t.mean(d))
    return torch.relu(bn(x, w["bn"])).mean(dim=(1, 2))


# --------------------------------------------------------------------------- tests

MODELS = {
    "keras_resnet50.radimagenet": (resnet50_layers, keras_resnet50),
    "keras_densenet121.radimagenet": (densenet121_layers, keras_densenet121),
}


@pytest.mark.parametrize("full_model", [False, True], ids=["save_weights", "model_save"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_card_loads_keras_h5_and_computes_keras_features(name: str, full_model: bool) -> None:
    layout, forward = MODELS[name]
    layers, shapes = layout()
    weights = random_weights(layers, shapes, seed=1)
    card = get_model_card(name)
    location = locate(card)
    assert location is not None and location.path.suffix == ".h5"
    write_keras_h5(location.path, layers, weights, full_model=full_model)

    loaded = build_model(card)  # converter + variant + strict key / shape check
    with torch.inference_mode():
        features = loaded.module(IMAGE).double()
        # keras.applications sees BGR (preprocess_input, "caffe" mode), channels last
        wanted = forward(IMAGE.flip(1).permute(0, 2, 3, 1).double(), weights)
    assert features.shape == (2, loaded.feature_dim) == wanted.shape
    assert torch.isfinite(wanted).all() and float(wanted.std()) > 0
    scale = float(wanted.abs().max())
    torch.testing.assert_close(features, wanted, rtol=1e-4, atol=1e-4 * scale)
    assert loaded.weights_id == weights_identity(card)


def test_card_architecture_is_the_keras_variant() -> None:
    """The builder acts on the variant: v1 strides and Keras' batch-norm eps."""
    card = get_model_card("keras_resnet50.radimagenet")
    variant = build_model(dataclasses.replace(card, weights=WeightsSpec(source="random"))).module
    first = variant.layer2[0]
    assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1)
    assert all(m.eps == EPS for m in variant.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_h5_missing_a_layer_names_the_layer_and_the_file() -> None:
    layers, shapes = resnet50_layers()
    weights = random_weights(layers, shapes, seed=2)
    kept = [(name, names) for name, names in layers if name != "conv3_block2_2_bn"]
    card = get_model_card("keras_resnet50.radimagenet")
    path = locate(card).path
    write_keras_h5(path, kept, weights, full_model=True)
    with pytest.raises(CheckpointError) as info:
        build_model(card)
    message = str(info.value)
    assert "conv3_block2_2_bn" in message and str(path) in message
    assert "keras_resnet50" in message


def test_h5_with_a_classifier_top_is_refused_listing_it() -> None:
    layers, shapes = resnet50_layers()
    layers = [*layers, ("avg_pool", []), ("predictions", ["kernel", "bias"])]
    shapes = {**shapes, "predictions/kernel": (1, 1, 2048, 10), "predictions/bias": (10,)}
    card = get_model_card("keras_resnet50.radimagenet")
    write_keras_h5(locate(card).path, layers, random_weights(layers, shapes, 3), full_model=False)
    with pytest.raises(CheckpointError, match="predictions"):
        build_model(card)


def test_not_a_keras_file_is_refused(tmp_path: Path) -> None:
    card = get_model_card("keras_resnet50.radimagenet")
    path = locate(card).path
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("x", data=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a Keras weights file"):
        build_model(card)
