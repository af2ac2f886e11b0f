"""Every PyTorch-format checkpoint of the zoo, rebuilt in its publisher's on-disk format.

Each test writes a checkpoint as its source writes it (file type, nesting, key names and
prefixes, heads, optimizer and queue entries, dtypes) from a randomly initialised
torchvision network, puts it where the committed card looks for it, loads it through the
card (``build_model``), and checks that every backbone tensor arrives unchanged (only
head / projection keys are absent) and that the features equal the network's own.
The layouts follow the publishers' code, cited in each converter's docstring.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import re
import sys
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from harness.config.cards import ModelCard, WeightsSpec, get_model_card
from harness.zoo import CheckpointError, build_model, weights_identity
from harness.zoo.sources import locate, weights_file_sha256

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HEADS = ("fc.", "classifier.")
IMAGE = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
LIGHTNING_CHECKPOINT = "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh weights cache, offline: every file must be where the card looks."""
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDXFER_OFFLINE", "1")
    return tmp_path / "home"


@functools.cache
def network(architecture: str, seed: int = 1) -> nn.Module:
    """A torchvision network, every tensor moved off its initial value at a trained scale."""
    model = torchvision.models.get_model(architecture, weights=None)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            noise = torch.rand(value.shape, generator=generator)
            if key.endswith("num_batches_tracked"):
                value.fill_(1234)
            elif key.endswith("running_var") or (key.endswith(".weight") and value.ndim == 1):
                value.copy_(0.5 + noise)
            elif key.endswith("running_mean") or key.endswith("bias"):
                value.copy_(0.2 * (noise - 0.5))
            else:
                value.mul_(0.75 + 0.5 * noise)
    return model.eval()


def backbone(architecture: str) -> dict[str, torch.Tensor]:
    """The network's state dict without its classifier: what the card must load."""
    return {k: v for k, v in network(architecture).state_dict().items() if not k.startswith(HEADS)}


def prefixed(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v for k, v in state.items()}


def shifted(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Other values under the same keys (a key encoder, an EMA copy)."""
    return {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}


def tensors(seed: int, **shapes: tuple[int, ...]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def sgd_state(**settings: float) -> dict[str, Any]:
    """A real SGD ``state_dict()`` after one step (momentum buffers, param groups)."""
    params = [nn.Parameter(torch.ones(4)), nn.Parameter(torch.ones(2, 2))]
    optimizer = torch.optim.SGD(params, lr=0.03, momentum=0.9, **settings)
    for param in params:
        param.grad = torch.full_like(param, 0.1)
    optimizer.step()
    return optimizer.state_dict()


def place(card: ModelCard, checkpoint: Any) -> Path:
    """Save ``checkpoint`` where the card looks for its weights."""
    location = locate(card)
    assert location is not None and not location.present
    location.path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, location.path)
    return location.path


def assert_card_loads(name: str, checkpoint: Any, architecture: str) -> None:
    """The committed card loads ``checkpoint`` strictly and gives the network's features."""
    card = get_model_card(name)
    assert_placed_card_loads(card, place(card, checkpoint), architecture)


def assert_placed_card_loads(card: ModelCard, path: Path, architecture: str) -> None:
    """As :func:`assert_card_loads`, for a checkpoint already at ``path``."""
    loaded = build_model(card)
    expected = backbone(architecture)
    state = loaded.module.state_dict()
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    reference = network(architecture)
    head = "fc" if hasattr(reference, "fc") else "classifier"
    original = getattr(reference, head)
    setattr(reference, head, nn.Identity())
    try:
        with torch.inference_mode():
            features, wanted = loaded.module(IMAGE), reference(IMAGE)
    finally:
        setattr(reference, head, original)
    assert features.shape == (2, loaded.feature_dim) and torch.isfinite(wanted).all()
    scale = float(wanted.abs().max())
    torch.testing.assert_close(features, wanted, rtol=1e-5, atol=1e-5 * scale)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert weights_file_sha256(card) == digest
    assert loaded.weights_id == weights_identity(card)
    if card.weights.converter is None:
        assert loaded.weights_id == digest


def same_format(name: str, tested: str) -> None:
    """Card ``name`` declares exactly the weights format of the tested card ``tested``."""
    a, b = get_model_card(name), get_model_card(tested)
    assert (a.architecture, a.preprocessing, a.feature_layer) == (
        b.architecture,
        b.preprocessing,
        b.feature_layer,
    )
    assert dataclasses.replace(
        a.weights, url=b.weights.url, path=b.weights.path
    ) == dataclasses.replace(b.weights, instructions=a.weights.instructions)


# --------------------------------------------------------------------------- MoCo and PCL


def moco_checkpoint(architecture: str, head: dict[str, torch.Tensor], queue: int) -> dict:
    """facebookresearch/moco main_moco.py: DDP-wrapped MoCo with both encoders and the queue."""
    state = prefixed(backbone(architecture), "module.encoder_q.")
    state |= prefixed(head, "module.encoder_q.")
    state |= prefixed(shifted(backbone(architecture)), "module.encoder_k.")
    state |= prefixed(head, "module.encoder_k.")
    state["module.queue"] = torch.randn(head_dim(head), queue)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    optimizer = sgd_state(weight_decay=1e-4)
    return {"epoch": 200, "arch": architecture, "state_dict": state, "optimizer": optimizer}


def head_dim(head: Mapping[str, torch.Tensor]) -> int:
    return next(v.shape[0] for k, v in reversed(list(head.items())) if k.endswith("weight"))


LINEAR_FC = {"fc.weight": (128, 2048), "fc.bias": (128,)}
MLP_FC = {"fc.0.weight": (2048, 2048), "fc.0.bias": (2048,)} | {
    "fc.2.weight": (128, 2048),
    "fc.2.bias": (128,),
}


@pytest.mark.parametrize(
    ("name", "fc", "queue"),
    [
        ("resnet50.moco_v1", LINEAR_FC, 64),
        ("resnet50.moco_v2", MLP_FC, 64),
        ("resnet50.pcl_v1", LINEAR_FC, 32),
        ("resnet50.pcl_v2", MLP_FC, 32),
    ],
)
def test_moco_and_pcl_checkpoints(name: str, fc: dict, queue: int) -> None:
    assert_card_loads(name, moco_checkpoint("resnet50", tensors(1, **fc), queue), "resnet50")


def test_moco_cxr_resnet18() -> None:
    fc = {"fc.0.weight": (512, 512), "fc.0.bias": (512,), "fc.2.weight": (128, 512)}
    fc |= {"fc.2.bias": (128,)}
    checkpoint = moco_checkpoint("resnet18", tensors(2, **fc), 16)
    assert_card_loads("resnet18.moco_cxr", checkpoint, "resnet18")


def test_moco_cxr_densenet121_drops_its_classifier_projection() -> None:
    head = tensors(3, **{"classifier.0.weight": (1024, 1024), "classifier.0.bias": (1024,)})
    head |= tensors(4, **{"classifier.2.weight": (128, 1024), "classifier.2.bias": (128,)})
    checkpoint = moco_checkpoint("densenet121", head, 16)
    assert_card_loads("densenet121.moco_cxr", checkpoint, "densenet121")


# --------------------------------------------------------------------------- SwAV family


def swav_release(prototypes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """A dl.fbaipublicfiles.com/deepcluster release: the DDP model's plain state dict."""
    state = prefixed(backbone("resnet50"), "module.")
    head = {"projection_head.0.weight": (2048, 2048), "projection_head.0.bias": (2048,)}
    head |= {"projection_head.1.weight": (2048,), "projection_head.1.bias": (2048,)}
    head |= {"projection_head.1.running_mean": (2048,), "projection_head.1.running_var": (2048,)}
    head |= {"projection_head.3.weight": (128, 2048), "projection_head.3.bias": (128,)}
    state |= prefixed(tensors(5, **head, **prototypes), "module.")
    state["module.projection_head.1.num_batches_tracked"] = torch.tensor(5005)
    return state


def test_swav_deepcluster_v2_and_sela_v2_releases() -> None:
    assert_card_loads("resnet50.swav", swav_release({"prototypes.weight": (300, 128)}), "resnet50")
    several = {f"prototypes.prototypes{i}.weight": (300, 128) for i in range(3)}
    assert_card_loads("resnet50.deepcluster_v2", swav_release(several), "resnet50")
    same_format("resnet50.sela_v2", "resnet50.swav")


# --------------------------------------------------------------------------- PyContrast


def pycontrast_checkpoint(head: dict[str, tuple[int, ...]], ema: bool) -> dict[str, Any]:
    """HobbitLong/PyContrast contrast_trainer.save: model, contrast memory, optimizer, epoch."""
    model = prefixed(backbone("resnet50"), "module.encoder.")
    model |= prefixed(tensors(6, **head), "module.")
    checkpoint: dict[str, Any] = {
        "model": model,
        "contrast": {"memory": torch.randn(64, 128)},
        "optimizer": sgd_state(weight_decay=1e-4),
        "epoch": 200,
    }
    if ema:  # momentum-encoder methods keep the EMA model too; the card unwraps "model"
        checkpoint["model_ema"] = shifted(model)
    return checkpoint


def test_pycontrast_insdis_pirl_infomin() -> None:
    linear = {"head.0.weight": (128, 2048), "head.0.bias": (128,)}
    mlp = {"head.0.weight": (2048, 2048), "head.0.bias": (2048,)}
    mlp |= {"head.2.weight": (128, 2048), "head.2.bias": (128,)}
    jigsaw = {"head_jig.fc1.weight": (128, 2048), "head_jig.fc1.bias": (128,)}
    jigsaw |= {"head_jig.fc2.weight": (128, 128 * 9), "head_jig.fc2.bias": (128,)}
    assert_card_loads("resnet50.insdis", pycontrast_checkpoint(linear, ema=False), "resnet50")
    assert_card_loads("resnet50.pirl", pycontrast_checkpoint(linear | jigsaw, False), "resnet50")
    assert_card_loads("resnet50.infomin", pycontrast_checkpoint(mlp, ema=True), "resnet50")


# --------------------------------------------------------------------------- plain backbones


@pytest.mark.parametrize("name", ["resnet50.barlow_twins", "resnet50.dino"])
def test_plain_backbone_state_dicts(name: str) -> None:
    # barlowtwins main.py: torch.save(model.module.backbone.state_dict()), fc = Identity;
    # dino's "backbone only" file likewise has no fc
    assert_card_loads(name, backbone("resnet50"), "resnet50")


def test_inat2021_supervised_is_a_manual_file_with_a_10000_way_fc(home: Path) -> None:
    card = get_model_card("resnet50.inat2021_sup")
    with pytest.raises(CheckpointError) as info:
        build_model(card)
    target = home / "weights" / "inat2021_supervised_large.pth.tar"
    message = str(info.value)
    assert "weights file inat2021_supervised_large.pth.tar is not available" in message
    assert f"put it at {target}" in message and card.weights.url in message
    state = backbone("resnet50") | tensors(7, **{"fc.weight": (10000, 2048), "fc.bias": (10000,)})
    checkpoint = {"epoch": 90, "arch": "resnet50", "state_dict": state, "best_acc1": 60.1}
    assert_card_loads(card.name, checkpoint, "resnet50")
    same_format("resnet50.inat2021_mini_sup", card.name)


# --------------------------------------------------------------------------- BenchmarkTransferLearning


def btl_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Version1/engine.py save_checkpoint: epoch, lossMIN, state_dict, optimizer, scheduler."""
    params = [nn.Parameter(torch.ones(3))]
    optimizer = torch.optim.Adam(params, lr=2e-4)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=5)
    scheduler.step(0.3)
    return {
        "epoch": 17,
        "lossMIN": 0.152,
        "state_dict": state,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }


def test_btl_in_domain_and_domain_adapted_checkpoints() -> None:
    sigmoid_head = tensors(8, **{"fc.0.weight": (14, 2048), "fc.0.bias": (14,)})
    parallel = prefixed(backbone("resnet50") | sigmoid_head, "module.")
    assert_card_loads("resnet50.btl_chestxray14", btl_checkpoint(parallel), "resnet50")
    # trained on one GPU (no DataParallel prefix) with a plain Linear head
    single = backbone("resnet50") | tensors(9, **{"fc.weight": (14, 2048), "fc.bias": (14,)})
    assert_card_loads("resnet50.btl_in1k_chexpert", btl_checkpoint(single), "resnet50")
    for name in ("resnet50.btl_chexpert", "resnet50.btl_in1k_chestxray14"):
        same_format(name, "resnet50.btl_chestxray14")


# --------------------------------------------------------------------------- CovidPrognosis


@contextlib.contextmanager
def lightning_modules(*qualified: str) -> Iterator[dict[str, type]]:
    """Stand-in pytorch_lightning classes, importable only inside the block (to save a checkpoint).

    Args:
        qualified: Full class names (``package.module.Class``).

    Yields:
        The classes by full name.
    """
    created: list[str] = []
    classes: dict[str, type] = {}
    try:
        for name in qualified:
            module_name, _, class_name = name.rpartition(".")
            parts = module_name.split(".")
            for depth in range(1, len(parts) + 1):
                package = ".".join(parts[:depth])
                if package not in sys.modules:
                    sys.modules[package] = types.ModuleType(package)
                    created.append(package)
            cls = type(class_name, (), {"__module__": module_name})
            setattr(sys.modules[module_name], class_name, cls)
            classes[name] = cls
        yield classes
    finally:
        for package in created:
            sys.modules.pop(package, None)


def lightning_checkpoint(callbacks: dict[Any, Any]) -> dict[str, Any]:
    """A PyTorch Lightning 1.0.8 checkpoint of CovidPrognosis's MoCoModule (DenseNet-121).

    Lightning 1.0 keys the callbacks' state by the callback class itself.
    """
    encoder = backbone("densenet121")
    head = tensors(10, **{"classifier.weight": (128, 1024), "classifier.bias": (128,)})
    state = prefixed(encoder | head, "model.encoder_q.")
    state |= prefixed(shifted(encoder) | head, "model.encoder_k.")
    state["model.queue"] = torch.randn(128, 64)
    state["model.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    optimizer = torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.1, momentum=0.9)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 50)
    return {
        "epoch": 49,
        "global_step": 123450,
        "pytorch-lightning_version": "1.0.8",
        "callbacks": callbacks,
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [schedule.state_dict()],
        "state_dict": state,
    }


COVID = "densenet121.mimic_chexpert_moco_lr0.1"


def test_covidprognosis_lightning_checkpoint() -> None:
    card = get_model_card(COVID)
    with lightning_modules(LIGHTNING_CHECKPOINT) as classes:
        best = {"best_model_score": torch.tensor(0.91), "best_model_path": "/ckpt/epoch=49.ckpt"}
        path = place(card, lightning_checkpoint({classes[LIGHTNING_CHECKPOINT]: best}))
    # the callback class is only a marker: loading neither imports nor runs Lightning code
    assert "pytorch_lightning" not in sys.modules
    assert_placed_card_loads(card, path, "densenet121")
    assert "pytorch_lightning" not in sys.modules
    for other in (
        "densenet121.mimic_chexpert_moco_lr0.01",
        "densenet121.mimic_chexpert_moco_lr1.0",
    ):
        same_format(other, COVID)


_RAN: list[str] = []


def _side_effect(text: str) -> str:
    _RAN.append(text)
    return text


class Payload:
    """Unpickling this would call ``_side_effect``."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_side_effect, ("unpickled",))


TRAINER = "pytorch_lightning.trainer.trainer.Trainer"


@pytest.mark.parametrize("kind", ["reduce", "other_class"])
def test_checkpoint_that_would_run_code_is_refused(kind: str) -> None:
    card = get_model_card(COVID)
    with lightning_modules(LIGHTNING_CHECKPOINT, TRAINER) as classes:
        marker = classes[LIGHTNING_CHECKPOINT]
        if kind == "reduce":
            callbacks = {marker: {"best_model_path": Payload()}}
        else:
            callbacks = {marker: {}, classes[TRAINER]: {}}
        path = place(card, lightning_checkpoint(callbacks))
    _RAN.clear()
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as info:
        build_model(card)
    message = str(info.value)
    assert f"model {COVID} ({path})" in message
    assert ("_side_effect" if kind == "reduce" else TRAINER) in message
    assert _RAN == []


# --------------------------------------------------------------------------- DenseNet key names


def test_densenet_legacy_key_names(tmp_path: Path) -> None:
    """torchvision's first DenseNet files name dense-layer modules ``norm.1`` ... ``conv.2``."""
    legacy = {}
    for key, value in network("densenet121").state_dict().items():
        renamed = re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", key)
        if not key.endswith("num_batches_tracked"):  # saved before PyTorch 0.4.1
            legacy[renamed] = value
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    path = tmp_path / "densenet121-a639ec97.pth"
    torch.save(legacy, path)
    card = ModelCard(
        name="densenet121.legacy",
        library="torchvision",
        architecture="densenet121",
        weights=WeightsSpec(
            source="file", path=str(path), converter="densenet_legacy", drop_keys=("classifier.",)
        ),
        preprocessing=get_model_card("densenet121.tv_in1k").preprocessing,
        category="supervised",
        pretraining_data="ImageNet-1k",
        source_file="legacy.yaml",
    )
    state = build_model(card).module.state_dict()
    for key, value in backbone("densenet121").items():
        if key.endswith("num_batches_tracked"):
            assert state[key].item() == 0, key
        else:
            assert torch.equal(state[key], value), key
    with pytest.raises(
        CheckpointError, match=r"missing \[features\.denseblock1\.denselayer1\.norm1"
    ):
        build_model(
            dataclasses.replace(card, weights=dataclasses.replace(card.weights, converter=None))
        )


# --------------------------------------------------------------------------- RAD-DINO


def hf_dinov2_names(state: Mapping[str, torch.Tensor], dim: int) -> dict[str, torch.Tensor]:
    """timm / original DINOv2 keys -> transformers ``Dinov2Model`` keys (its convert script)."""
    top = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings"}
    top |= {"norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}
    top |= {f"patch_embed.proj.{leaf}": f"embeddings.patch_embeddings.projection.{leaf}"
            for leaf in ("weight", "bias")}  # fmt: skip
    out = {"embeddings.mask_token": torch.zeros(1, dim)}
    for key, value in state.items():
        if key in top:
            out[top[key]] = value
            continue
        block, _, rest = key.removeprefix("blocks.").partition(".")
        layer = f"encoder.layer.{block}"
        if rest.startswith("attn.qkv."):
            leaf = rest.rsplit(".", 1)[1]
            for index, part in enumerate(("query", "key", "value")):
                out[f"{layer}.attention.attention.{part}.{leaf}"] = value[
                    index * dim : (index + 1) * dim
                ]
        elif rest.startswith("attn.proj."):
            out[f"{layer}.attention.output.dense.{rest.rsplit('.', 1)[1]}"] = value
        elif rest in ("ls1.gamma", "ls2.gamma"):
            out[f"{layer}.layer_scale{rest[2]}.lambda1"] = value
        else:
            out[f"{layer}.{rest}"] = value
    return out


def test_rad_dino_transformers_safetensors() -> None:
    import timm
    from safetensors.torch import save_file

    # the committed card on the ViT-S/14 of the same family: ViT-B/14 at 518 px takes
    # half a minute on a CPU and checks nothing more
    committed = get_model_card("vit_base_patch14_dinov2.rad_dino")
    assert committed.architecture == "vit_base_patch14_dinov2"
    card = dataclasses.replace(committed, architecture="vit_small_patch14_dinov2")
    model = timm.create_model(card.architecture, pretrained=False, num_classes=0).eval()
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if name.endswith("gamma"):  # layer scale starts at 1e-5: make the blocks count
                value.copy_(0.5 + torch.rand(value.shape, generator=generator))
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    location = locate(card)
    assert location is not None and location.path.suffix == ".safetensors"
    location.path.parent.mkdir(parents=True, exist_ok=True)
    save_file(hf_dinov2_names(expected, 384), str(location.path), metadata={"format": "pt"})
    loaded = build_model(card)
    state = loaded.module.state_dict()
    assert list(state) == list(expected)
    assert all(torch.equal(state[k], v) for k, v in expected.items())
    image = torch.rand(1, 3, 518, 518, generator=generator)
    with torch.inference_mode():
        features, wanted = loaded.module(image), model.forward_features(image)[:, 0]
    assert loaded.feature_dim == 384
    torch.testing.assert_close(features, wanted, rtol=1e-5, atol=1e-5)
