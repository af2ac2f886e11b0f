"""Checkpoint converters: the registry, the built-in formats loaded through a card, identity."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision

from harness.config.cards import ModelCard, Preprocessing, WeightsSpec
from harness.zoo import CheckpointError, build_model, converters, weights_identity
from harness.zoo.converters import (
    UnknownConverterError,
    apply_converter,
    available_converters,
    converter_names,
    get_converter,
    register_converter,
)

IMAGENET = Preprocessing(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear", 0.875)
BUILT_IN = {"mae_vit", "moco_resnet", "simsiam_resnet", "swav_resnet", "pycontrast_resnet"} | {
    "btl_classifier",
    "covidprognosis_moco",
    "densenet_legacy",
    "hf_dinov2_vit",
    "moco_densenet",
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, converters.Converter]:
    """The live registry, restored after the test (registrations included)."""
    monkeypatch.setattr(converters, "_REGISTRY", dict(converters._REGISTRY))
    return converters._REGISTRY


def make_card(
    path: Path,
    converter: str | None,
    architecture: str = "resnet18",
    library: str = "torchvision",
    **weights: Any,
) -> ModelCard:
    return ModelCard(
        name=f"{architecture}.converted",
        library=library,
        architecture=architecture,
        weights=WeightsSpec(source="file", path=str(path), converter=converter, **weights),
        preprocessing=IMAGENET,
        category="self-supervised",
        pretraining_data="test",
        source_file="converted-card.yaml",
    )


def randomised(state: Mapping[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Copies of ``state``'s tensors, every value distinct from the initialisation."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state.items():
        if value.is_floating_point():
            out[key] = torch.rand(value.shape, generator=generator) + 0.5
        else:
            out[key] = torch.full_like(value, 17)
    return out


@pytest.fixture(scope="module")
def resnet18_backbone() -> dict[str, torch.Tensor]:
    """A torchvision resnet18 state dict without ``fc``: what every ResNet converter must yield."""
    state = randomised(torchvision.models.resnet18(weights=None).state_dict(), 1234)
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def head(seed: int, *shapes: tuple[int, ...]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for shape in shapes]


def assert_loaded(card: ModelCard, expected: Mapping[str, torch.Tensor]) -> None:
    loaded = build_model(card).module.state_dict()
    assert list(loaded) == list(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


# --------------------------------------------------------------------------- registry


def test_registry_lists_built_ins_with_versions_and_descriptions() -> None:
    assert set(converter_names()) >= BUILT_IN
    listed = {name: (version, text) for name, version, text in available_converters()}
    assert [row[0] for row in available_converters()] == sorted(listed)
    for name in BUILT_IN:
        version, text = listed[name]
        assert version == get_converter(name).version >= 1
        assert text and "\n" not in text
    assert "MoCo" in listed["moco_resnet"][1]


def test_unknown_converter_lists_known_names() -> None:
    with pytest.raises(UnknownConverterError) as info:
        get_converter("moco_v9")
    message = str(info.value)
    assert "unknown converter 'moco_v9'" in message
    assert all(name in message for name in BUILT_IN)


def test_register_converter_validates(registry: dict[str, converters.Converter]) -> None:
    @register_converter("test_identity", version=3)
    def identity(state: dict, target: Mapping) -> dict:
        """Returns the checkpoint unchanged.

        More text that the description leaves out.
        """
        return state

    entry = get_converter("test_identity")
    assert (entry.name, entry.version, entry.fn) == ("test_identity", 3, identity)
    assert entry.description == "Returns the checkpoint unchanged."
    register_converter("test_described", version=1, description="given")(lambda s, t: s)
    assert get_converter("test_described").description == "given"
    with pytest.raises(ValueError, match="already registered"):
        register_converter("moco_resnet", version=2)
    with pytest.raises(ValueError, match="lowercase"):
        register_converter("Moco-ResNet", version=1)
    for version in (0, True, "1"):
        with pytest.raises(ValueError, match="positive int"):
            register_converter("test_version", version=version)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a description"):
        register_converter("test_undocumented", version=1)(lambda s, t: s)
    assert "test_undocumented" not in converter_names()


def test_apply_converter_copies_its_input() -> None:
    state = {"module.conv.weight": torch.ones(1)}
    out = apply_converter(get_converter("swav_resnet"), state, {}, "here")
    assert out == {"conv.weight": state["module.conv.weight"]}
    assert list(state) == ["module.conv.weight"]


# --------------------------------------------------------------------------- built-in formats


def moco_v2_checkpoint(backbone: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """What facebookresearch/moco's main_moco.py saves with --mlp (MoCo v2), for resnet18."""
    state: dict[str, torch.Tensor] = {}
    for key, value in backbone.items():
        state[f"module.encoder_q.{key}"] = value
    fc0_w, fc0_b, fc2_w, fc2_b = head(1, (512, 512), (512,), (128, 512), (128,))
    for encoder in ("encoder_q", "encoder_k"):
        state[f"module.{encoder}.fc.0.weight"] = fc0_w
        state[f"module.{encoder}.fc.0.bias"] = fc0_b
        state[f"module.{encoder}.fc.2.weight"] = fc2_w
        state[f"module.{encoder}.fc.2.bias"] = fc2_b
    for key, value in backbone.items():
        state[f"module.encoder_k.{key}"] = torch.zeros_like(value)
    state["module.queue"] = torch.randn(128, 64)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    optimizer = {"state": {}, "param_groups": [{"lr": 0.03, "momentum": 0.9, "params": [0, 1]}]}
    return {"epoch": 200, "arch": "resnet18", "state_dict": state, "optimizer": optimizer}


def test_moco_v2_checkpoint_loads_the_query_encoder(
    tmp_path: Path, resnet18_backbone: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "moco_v2_200ep_pretrain.pth.tar"
    torch.save(moco_v2_checkpoint(resnet18_backbone), path)
    assert_loaded(make_card(path, "moco_resnet"), resnet18_backbone)
    # the card's own keys still apply after the converter
    dropped = make_card(path, "moco_resnet", drop_keys=("layer4.1.bn2.",))
    with pytest.raises(CheckpointError, match=r"missing \[layer4\.1\.bn2\.weight"):
        build_model(dropped)


def test_moco_v1_checkpoint_with_linear_head(
    tmp_path: Path, resnet18_backbone: dict[str, torch.Tensor]
) -> None:
    state = {f"module.encoder_q.{k}": v for k, v in resnet18_backbone.items()}
    weight, bias = head(2, (128, 512), (128,))
    state |= {"module.encoder_q.fc.weight": weight, "module.encoder_q.fc.bias": bias}
    state |= {"module.queue": torch.randn(128, 32), "module.queue_ptr": torch.zeros(1)}
    path = tmp_path / "moco_v1_200ep_pretrain.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": state}, path)
    assert_loaded(make_card(path, "moco_resnet"), resnet18_backbone)


def test_moco_v3_checkpoint_keeps_the_base_encoder(
    tmp_path: Path, resnet18_backbone: dict[str, torch.Tensor]
) -> None:
    state = {}
    for key, value in resnet18_backbone.items():
        state[f"module.base_encoder.{key}"] = value
        state[f"module.momentum_encoder.{key}"] = value + 1 if value.is_floating_point() else value
    fc0, fc3, pred = head(3, (4096, 512), (256, 4096), (256, 256))
    state |= {"module.base_encoder.fc.0.weight": fc0, "module.base_encoder.fc.3.weight": fc3}
    state |= {"module.momentum_encoder.fc.0.weight": fc0, "module.predictor.0.weight": pred}
    path = tmp_path / "r-50-100ep.pth.tar"
    torch.save({"epoch": 100, "arch": "resnet18", "state_dict": state, "scaler": {}}, path)
    assert_loaded(make_card(path, "moco_resnet"), resnet18_backbone)


def test_simsiam_checkpoint_drops_projector_and_predictor(
    tmp_path: Path, resnet18_backbone: dict[str, torch.Tensor]
) -> None:
    state = {f"module.encoder.{k}": v for k, v in resnet18_backbone.items()}
    fc0, fc6, p0 = head(4, (512, 512), (2048, 512), (512, 2048))
    state |= {"module.encoder.fc.0.weight": fc0, "module.encoder.fc.6.weight": fc6}
    state |= {"module.encoder.fc.7.running_mean": torch.zeros(2048)}
    state |= {"module.predictor.0.weight": p0}
    path = tmp_path / "simsiam_checkpoint_0099.pth.tar"
    torch.save({"epoch": 100, "arch": "resnet18", "state_dict": state}, path)
    assert_loaded(make_card(path, "simsiam_resnet"), resnet18_backbone)


def test_swav_release_is_a_plain_module_prefixed_state_dict(
    tmp_path: Path, resnet18_backbone: dict[str, torch.Tensor]
) -> None:
    state = {f"module.{k}": v for k, v in resnet18_backbone.items()}
    p0_w, p0_b, p3_w, p3_b, protos = head(5, (2048, 512), (2048,), (128, 2048), (128,), (30, 128))
    state |= {"module.projection_head.0.weight": p0_w, "module.projection_head.0.bias": p0_b}
    state |= {"module.projection_head.1.running_var": torch.ones(2048)}
    state |= {"module.projection_head.3.weight": p3_w, "module.projection_head.3.bias": p3_b}
    state |= {"module.prototypes.weight": protos}
    path = tmp_path / "swav_800ep_pretrain.pth.tar"
    torch.save(state, path)
    assert_loaded(make_card(path, "swav_resnet"), resnet18_backbone)
    # several prototype sets (MultiPrototypes) and a training-checkpoint wrapper
    multi = {k: v for k, v in state.items() if k != "module.prototypes.weight"}
    multi |= {f"module.prototypes.prototypes{i}.weight": protos for i in range(3)}
    wrapped = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 3, "state_dict": multi}, wrapped)
    assert_loaded(make_card(wrapped, "swav_resnet"), resnet18_backbone)


def test_mae_checkpoint_drops_the_decoder(tmp_path: Path) -> None:
    import timm

    architecture = "vit_tiny_patch16_224"
    encoder = randomised(timm.create_model(architecture, num_classes=0).state_dict(), 99)
    dim, tokens = encoder["cls_token"].shape[-1], encoder["pos_embed"].shape[1]
    decoder_dim = 64
    e_w, e_b, q_w, n_w, p_w = head(
        6,
        (decoder_dim, dim),
        (decoder_dim,),
        (3 * decoder_dim, decoder_dim),
        (decoder_dim,),
        (768, decoder_dim),
    )
    full = dict(encoder)
    full |= {"mask_token": torch.zeros(1, 1, decoder_dim)}
    full |= {"decoder_embed.weight": e_w, "decoder_embed.bias": e_b}
    full |= {"decoder_pos_embed": torch.zeros(1, tokens, decoder_dim)}
    full |= {"decoder_blocks.0.attn.qkv.weight": q_w, "decoder_norm.weight": n_w}
    full |= {"decoder_pred.weight": p_w}
    path = tmp_path / "mae_visualize_vit_tiny.pth"
    torch.save({"model": full}, path)
    assert_loaded(make_card(path, "mae_vit", architecture, "timm"), encoder)
    without = make_card(path, None, architecture, "timm")
    with pytest.raises(CheckpointError, match=r"unexpected \[mask_token, decoder_embed\.weight"):
        build_model(without)


# --------------------------------------------------------------------------- errors


def test_converter_that_raises_names_model_file_and_converter(
    tmp_path: Path, resnet18_backbone: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "swav.pth"
    torch.save({f"module.{k}": v for k, v in resnet18_backbone.items()}, path)
    with pytest.raises(CheckpointError) as info:
        build_model(make_card(path, "moco_resnet"))
    message = str(info.value)
    assert "model resnet18.converted" in message and str(path) in message
    assert "converter 'moco_resnet' v1 failed: ValueError: no key starts with" in message
    assert "module.conv1.weight" in message


def test_converter_output_that_does_not_fit_names_the_converter(
    tmp_path: Path, resnet18_backbone: dict[str, torch.Tensor]
) -> None:
    checkpoint = moco_v2_checkpoint(resnet18_backbone)
    checkpoint["state_dict"]["module.encoder_q.extra.weight"] = torch.zeros(2)
    path = tmp_path / "moco_extra.pth"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError) as info:
        build_model(make_card(path, "moco_resnet"))
    message = str(info.value)
    assert f"model resnet18.converted ({path}, converter 'moco_resnet' v1)" in message
    assert "missing none; unexpected [extra.weight] (1 keys)" in message


def test_converter_returning_non_tensors_is_refused(
    tmp_path: Path,
    resnet18_backbone: dict[str, torch.Tensor],
    registry: dict[str, converters.Converter],
) -> None:
    register_converter("test_broken", version=1, description="x")(lambda s, t: {"a": 1.0})
    register_converter("test_empty", version=1, description="x")(lambda s, t: {})
    path = tmp_path / "plain.pth"
    torch.save(resnet18_backbone, path)
    with pytest.raises(CheckpointError, match=r"'test_broken' v1 returned non-tensor .*\['a'\]"):
        build_model(make_card(path, "test_broken"))
    with pytest.raises(CheckpointError, match="'test_empty' v1 returned no state dict"):
        build_model(make_card(path, "test_empty"))


def test_unknown_converter_in_a_code_built_card(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"x": torch.zeros(1)}, path)
    card = make_card(path, "nope")
    for call in (build_model, weights_identity):
        with pytest.raises(
            CheckpointError, match=r"converted-card\.yaml\): unknown converter 'nope'"
        ):
            call(card)


def test_converter_on_a_source_without_file_is_refused() -> None:
    card = dataclasses.replace(
        make_card(Path("unused"), None),
        weights=WeightsSpec(source="random", converter="moco_resnet"),
    )
    with pytest.raises(CheckpointError, match="converter applies to checkpoint files"):
        build_model(card)


# --------------------------------------------------------------------------- identity


def test_identity_covers_converter_name_and_version(
    tmp_path: Path,
    resnet18_backbone: dict[str, torch.Tensor],
    registry: dict[str, converters.Converter],
) -> None:
    path = tmp_path / "moco.pth.tar"
    torch.save(moco_v2_checkpoint(resnet18_backbone), path)
    file_sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert weights_identity(make_card(path, None)) == file_sha

    converted = make_card(path, "moco_resnet")
    expected = {"converter": "moco_resnet", "converter_version": 1, "file_sha256": file_sha}
    v1 = weights_identity(converted)
    assert v1 == hashlib.sha256(json.dumps(expected, sort_keys=True).encode()).hexdigest()
    assert build_model(converted).weights_id == v1 != file_sha

    registry["moco_resnet"] = dataclasses.replace(registry["moco_resnet"], version=2)
    v2 = weights_identity(converted)
    assert v2 not in (v1, file_sha)
    assert build_model(converted).weights_id == v2
    registry["moco_other"] = dataclasses.replace(registry["moco_resnet"], name="moco_other")
    assert weights_identity(make_card(path, "moco_other")) not in (v1, v2, file_sha)
