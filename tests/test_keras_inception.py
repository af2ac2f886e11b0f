"""RadImageNet's Keras InceptionV3 ``.h5``, rebuilt in Keras' legacy HDF5 layout and loaded by its card.

TensorFlow / Keras are not installed, so the reference is a re-implementation of
``keras.applications.InceptionV3(include_top=False, pooling="avg")`` in NHWC (float64):
``conv2d_bn`` (a bias-free convolution, ``BatchNormalization(scale=False)`` with eps
1e-3, ReLU), TF 'valid' / 'same' padding, 'valid' max pools, and 'same' average pools
that divide by the pixels inside the image. The reference creates its layers while it
runs, as Keras does, so the numbered names (``conv2d_N`` / ``batch_normalization_N``)
follow Keras' creation order. Random weights fill an ``.h5`` written with h5py as
Keras writes it; the committed card loads it through converter and architecture
variant, strictly, and its pooled features must equal the reference's.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import timm
import torch

from harness.config.cards import WeightsSpec, get_model_card
from harness.zoo import CheckpointError, build_model, weights_identity
from harness.zoo.converters import get_converter
from harness.zoo.sources import locate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CARD = "keras_inception_v3.radimagenet"
EPS = 1e-3  # Keras' BatchNormalization default
BN = ["beta", "moving_mean", "moving_variance"]
IMAGE = torch.rand(2, 3, 75, 75, generator=torch.Generator().manual_seed(0))  # Keras' min size


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDXFER_OFFLINE", "1")
    return tmp_path / "home"


# --------------------------------------------------------------------------- Keras semantics


def pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Zero padding of NHWC."""
    return torch.nn.functional.pad(x, (0, 0, left, right, top, bottom))


def same_padding(size: int, k: int, stride: int) -> tuple[int, int]:
    """TF 'SAME': total padding split with the extra pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def windows(x: torch.Tensor, kh: int, kw: int, stride: int) -> list[tuple[int, int, torch.Tensor]]:
    """Every kernel offset's strided view of NHWC ``x`` ('valid')."""
    rows, cols = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    return [
        (
            i,
            j,
            x[
                :,
                i : i + stride * (rows - 1) + 1 : stride,
                j : j + stride * (cols - 1) + 1 : stride,
            ],
        )
        for i in range(kh)
        for j in range(kw)
    ]


class KerasInceptionV3:
    """keras.applications InceptionV3 forward that creates (random) weights as Keras creates layers.

    ``layers`` lists every layer in creation order with its weight names; ``weights``
    holds each numbered conv / batch norm's values under its creation index.
    """

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.convs: list[np.ndarray] = []
        self.norms: list[dict[str, np.ndarray]] = []
        self.plain: list[str] = ["input_1"]  # weightless layers, creation order
        self.order: list[tuple[str, int]] = [("plain", 0)]
        self.counts: dict[str, int] = {}

    def _plain(self, kind: str) -> None:
        n = self.counts.get(kind, 0)
        self.counts[kind] = n + 1
        self.order.append(("plain", len(self.plain)))
        self.plain.append(kind if n == 0 else f"{kind}_{n}")

    def conv2d_bn(
        self, x: torch.Tensor, filters: int, kh: int, kw: int, stride: int = 1, same: bool = True
    ) -> torch.Tensor:
        index = len(self.convs)
        cin = x.shape[3]
        # He-scaled kernels shrunk by 0.03 and moving variances ~1e-3: each batch norm
        # restores the scale, and its eps (1e-3 vs PyTorch's 1e-5) visibly matters
        kernel = self.rng.normal(0, 0.03 * math.sqrt(2 / (kh * kw * cin)), (kh, kw, cin, filters))
        norm = {
            "beta": 0.2 * (self.rng.random(filters) - 0.5),
            "moving_mean": 0.02 * (self.rng.random(filters) - 0.5),
            "moving_variance": 1e-3 * (0.5 + self.rng.random(filters)),
        }
        self.convs.append(kernel.astype(np.float32))
        self.norms.append({k: v.astype(np.float32) for k, v in norm.items()})
        self.order += [("conv", index), ("bn", index)]
        if same:
            x = pad(x, *same_padding(x.shape[1], kh, stride), *same_padding(x.shape[2], kw, stride))
        w = torch.from_numpy(self.convs[index]).double()
        out = sum(
            torch.einsum("nhwc,co->nhwo", view, w[i, j])
            for i, j, view in windows(x, kh, kw, stride)
        )
        b, m, v = (torch.from_numpy(self.norms[index][k]).double() for k in BN)
        self._plain("activation")
        return torch.relu((out - m) / torch.sqrt(v + EPS) + b)

    def max_pool(self, x: torch.Tensor) -> torch.Tensor:
        self._plain("max_pooling2d")
        return torch.stack([view for _, _, view in windows(x, 3, 3, 2)]).max(0).values

    def avg_pool_same(self, x: torch.Tensor) -> torch.Tensor:
        """AveragePooling2D((3, 3), strides=(1, 1), padding="same"): padding not counted."""
        self._plain("average_pooling2d")
        total = torch.stack([view for _, _, view in windows(pad(x, 1, 1, 1, 1), 3, 3, 1)]).sum(0)
        ones = pad(torch.ones_like(x[:1, :, :, :1]), 1, 1, 1, 1)
        count = torch.stack([view for _, _, view in windows(ones, 3, 3, 1)]).sum(0)
        return total / count

    def concat(self, parts: list[torch.Tensor], name: str | None = None) -> torch.Tensor:
        if name is None:
            self._plain("concatenate")
        else:
            self.order.append(("plain", len(self.plain)))
            self.plain.append(name)
        return torch.cat(parts, dim=3)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv2d_bn
        x = c(x, 32, 3, 3, 2, same=False)
        x = c(x, 32, 3, 3, same=False)
        x = self.max_pool(c(x, 64, 3, 3))
        x = c(x, 80, 1, 1, same=False)
        x = self.max_pool(c(x, 192, 3, 3, same=False))
        for i, pool_filters in enumerate((32, 64, 64)):  # mixed0-2
            b1 = c(x, 64, 1, 1)
            b5 = c(c(x, 48, 1, 1), 64, 5, 5)
            b3 = c(c(c(x, 64, 1, 1), 96, 3, 3), 96, 3, 3)
            bp = c(self.avg_pool_same(x), pool_filters, 1, 1)
            x = self.concat([b1, b5, b3, bp], f"mixed{i}")
        b3 = c(x, 384, 3, 3, 2, same=False)  # mixed3
        bd = c(c(c(x, 64, 1, 1), 96, 3, 3), 96, 3, 3, 2, same=False)
        x = self.concat([b3, bd, self.max_pool(x)], "mixed3")
        for i, f in enumerate((128, 160, 160, 192)):  # mixed4-7
            b1 = c(x, 192, 1, 1)
            b7 = c(c(c(x, f, 1, 1), f, 1, 7), 192, 7, 1)
            bd = c(c(c(c(c(x, f, 1, 1), f, 7, 1), f, 1, 7), f, 7, 1), 192, 1, 7)
            bp = c(self.avg_pool_same(x), 192, 1, 1)
            x = self.concat([b1, b7, bd, bp], f"mixed{4 + i}")
        b3 = c(c(x, 192, 1, 1), 320, 3, 3, 2, same=False)  # mixed8
        b7 = c(c(c(c(x, 192, 1, 1), 192, 1, 7), 192, 7, 1), 192, 3, 3, 2, same=False)
        x = self.concat([b3, b7, self.max_pool(x)], "mixed8")
        for i in range(2):  # mixed9, mixed10
            b1 = c(x, 320, 1, 1)
            b3 = c(x, 384, 1, 1)
            b3 = self.concat([c(b3, 384, 1, 3), c(b3, 384, 3, 1)], f"mixed9_{i}")
            bd = c(c(x, 448, 1, 1), 384, 3, 3)
            bd = self.concat([c(bd, 384, 1, 3), c(bd, 384, 3, 1)])
            bp = c(self.avg_pool_same(x), 192, 1, 1)
            x = self.concat([b1, b3, bd, bp], f"mixed{9 + i}")
        return x.mean(dim=(1, 2))  # pooling="avg"


@dataclasses.dataclass
class Reference:
    net: KerasInceptionV3
    features: torch.Tensor


@pytest.fixture(scope="module")
def reference() -> Reference:
    net = KerasInceptionV3(seed=1)
    with torch.inference_mode():
        # keras.applications sees BGR (imagenet_utils.preprocess_input, "caffe"), channels last
        features = net(IMAGE.flip(1).permute(0, 2, 3, 1).double())
    return Reference(net, features)


def numbered(kind: str, index: int, first: int) -> str:
    n = index + first
    return kind if n == 0 else f"{kind}_{n}"


def write_h5(
    path: Path,
    net: KerasInceptionV3,
    *,
    first: int = 0,
    full_model: bool = False,
    reverse: bool = False,
    skip: str | None = None,
    extra: bool = False,
) -> None:
    """Write the net's weights as Keras 2's ``save_weights`` (``model.save``: ``model_weights``)."""
    layers: list[tuple[str, list[str], list[np.ndarray]]] = []
    for kind, index in net.order:
        if kind == "plain":
            layers.append((net.plain[index], [], []))
        elif kind == "conv":
            layers.append((numbered("conv2d", index, first), ["kernel"], [net.convs[index]]))
        else:
            values = [net.norms[index][k] for k in BN]
            layers.append((numbered("batch_normalization", index, first), BN, values))
    if reverse:  # the file's order is not Keras' creation order: names decide
        layers.reverse()
    if extra:
        rng = np.random.default_rng(5)
        top = [rng.random((2048, 10), dtype=np.float32), np.zeros(10, np.float32)]
        layers += [("avg_pool", [], []), ("predictions", ["kernel", "bias"], top)]
    layers = [layer for layer in layers if layer[0] != skip]
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        group = handle.create_group("model_weights") if full_model else handle
        if full_model:
            handle.attrs["model_config"] = b'{"class_name": "Functional"}'
        group.attrs["layer_names"] = [name.encode("utf8") for name, _, _ in layers]
        group.attrs["backend"] = b"tensorflow"
        group.attrs["keras_version"] = b"2.4.0"
        for name, leaves, values in layers:
            layer_group = group.create_group(name)
            full = [f"{name}/{leaf}:0" for leaf in leaves]
            layer_group.attrs["weight_names"] = np.array([n.encode("utf8") for n in full], "S")
            for dataset, value in zip(full, values, strict=True):
                layer_group.create_dataset(dataset, data=value)


# --------------------------------------------------------------------------- tests


def test_reference_creates_keras_inception_v3_layer_count(reference: Reference) -> None:
    assert len(reference.net.convs) == 94 == len(reference.net.norms)
    assert reference.features.shape == (2, 2048)
    assert torch.isfinite(reference.features).all() and float(reference.features.std()) > 0


@pytest.mark.parametrize(
    ("first", "full_model", "reverse"),
    [(0, False, False), (1, True, False), (95, False, True)],
    ids=["tf2_names", "keras22_names_model_save", "later_session_file_order_reversed"],
)
def test_card_loads_keras_h5_and_computes_keras_features(
    reference: Reference, first: int, full_model: bool, reverse: bool
) -> None:
    card = get_model_card(CARD)
    path = locate(card).path
    assert path.name == "RadImageNet-InceptionV3_notop.h5"
    write_h5(path, reference.net, first=first, full_model=full_model, reverse=reverse)

    loaded = build_model(card)  # converter + variant + strict key / shape check
    with torch.inference_mode():
        features = loaded.module(IMAGE).double()
    wanted = reference.features
    assert features.shape == (2, loaded.feature_dim) == wanted.shape
    scale = float(wanted.abs().max())
    torch.testing.assert_close(features, wanted, rtol=1e-4, atol=1e-4 * scale)
    assert loaded.weights_id == weights_identity(card)


def test_timm_inception_v3_with_the_same_weights_is_not_keras(reference: Reference) -> None:
    """The variant matters: timm's padded average (and PyTorch's BN eps) change the features."""
    card = get_model_card(CARD)
    write_h5(locate(card).path, reference.net)
    keras_like = build_model(card).module
    plain = timm.create_model("inception_v3", num_classes=0).eval()
    plain.load_state_dict(keras_like.state_dict())
    with torch.inference_mode():
        features = plain(IMAGE).double()
    gap = float((features - reference.features).abs().max())
    assert gap > 0.05 * float(reference.features.abs().max())


def test_card_architecture_is_the_keras_variant() -> None:
    card = get_model_card(CARD)
    module = build_model(dataclasses.replace(card, weights=WeightsSpec(source="random"))).module
    norms = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 94 and all(m.eps == EPS for m in norms)
    # a constant image stays constant through a padding-excluding 'same' average
    pool_conv = module.Mixed_5b.branch_pool
    seen: list[torch.Tensor] = []
    handle = pool_conv.conv.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.inference_mode():
        module.Mixed_5b(torch.full((1, 192, 5, 5), 2.0))
    handle.remove()
    torch.testing.assert_close(seen[0], torch.full((1, 192, 5, 5), 2.0))


def test_converter_pairs_layers_by_creation_number(reference: Reference) -> None:
    card = get_model_card(CARD)
    write_h5(locate(card).path, reference.net, first=1)
    state = build_model(card).module.state_dict()
    # conv2d_1 is the stem's first conv (input channels flipped from BGR to RGB)
    stem = torch.from_numpy(reference.net.convs[0]).permute(3, 2, 0, 1).flip(1)
    torch.testing.assert_close(state["Conv2d_1a_3x3.conv.weight"], stem)
    # the last one (conv2d_94) is mixed10's pool-branch conv
    last = torch.from_numpy(reference.net.convs[93]).permute(3, 2, 0, 1)
    torch.testing.assert_close(state["Mixed_7c.branch_pool.conv.weight"], last)
    torch.testing.assert_close(state["Mixed_7c.branch_pool.bn.weight"], torch.ones(192))
    beta = torch.from_numpy(reference.net.norms[93]["beta"])
    torch.testing.assert_close(state["Mixed_7c.branch_pool.bn.bias"], beta)
    assert get_converter("keras_inception_v3").version == 1


def test_h5_missing_a_conv_names_the_counts_and_the_file(reference: Reference) -> None:
    card = get_model_card(CARD)
    path = locate(card).path
    write_h5(path, reference.net, skip="conv2d_40")
    with pytest.raises(CheckpointError) as info:
        build_model(card)
    message = str(info.value)
    assert "found 93 and 94" in message and str(path) in message
    assert "keras_inception_v3" in message


def test_h5_with_a_classifier_top_is_refused_listing_it(reference: Reference) -> None:
    card = get_model_card(CARD)
    write_h5(locate(card).path, reference.net, extra=True)
    with pytest.raises(CheckpointError, match="predictions"):
        build_model(card)
