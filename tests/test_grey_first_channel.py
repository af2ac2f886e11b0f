"""The ``grey-first`` channel rule and the target / ImageNet normalisation of the
feature-reuse and BenchmarkTransferLearning presets.

The oracle is feature-reuse's single-channel network, written here from its
``modify_first_layer`` (ChrisMats/feature-reuse@736d31b:defaults/models.py): the first
layer rebuilt with one input channel, holding ``weight.repeat(1, 4, 1, 1)[:, :1]`` (the
first channel's pretrained weights) and the pretrained bias, fed the grey image
normalised by the target's one-channel mean / std.
"""

from __future__ import annotations

import copy
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision

from harness.config.cards import Preprocessing, get_model_card
from harness.data.transforms import describe, eval_transform, grey_in_first_channel, normalise
from harness.protocols.finetune.augment import feature_reuse_transform
from harness.protocols.finetune.data import train_transform
from harness.protocols.finetune.tencrop import tencrop_transform
from harness.protocols.peer_normalisation import FEATURE_REUSE_STATS, target_normalisation
from harness.protocols.registry import ProtocolError, get_preset, register_preset

DDSM = Preprocessing(
    32, (0.286,) * 3, (0.267,) * 3, "bilinear", 0.875, crop_mode="squash", channels="grey-first"
)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def grey_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 40, 36), dtype=np.uint8)


def single_channel_peer(net: torch.nn.Module, first: str) -> torch.nn.Module:
    """feature-reuse's ``modify_first_layer`` on a copy of ``net`` (``first``: its stem)."""
    peer = copy.deepcopy(net)
    conv = getattr(peer, first)
    cut = torch.nn.Conv2d(
        1,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
    )
    cut.weight.data = conv.weight.data.repeat(1, 4, 1, 1)[:, :1]
    if conv.bias is not None:
        cut.bias.data = conv.bias.data
    setattr(peer, first, cut)
    return peer.eval()


class PatchStem(torch.nn.Module):
    """A ViT-like stem: a patch embedding with a bias, then a linear read-out."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.proj = torch.nn.Conv2d(3, 8, 4, stride=4)
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.proj(x).flatten(2).mean(-1))


@pytest.mark.parametrize("stem", ["resnet18", "patch"])
def test_grey_first_input_equals_the_peers_single_channel_network(stem: str) -> None:
    torch.manual_seed(0)
    net = (torchvision.models.resnet18(num_classes=4) if stem == "resnet18" else PatchStem()).eval()
    first = "conv1" if stem == "resnet18" else "proj"
    peer = single_channel_peer(net, first)
    transform = eval_transform(DDSM)
    images = grey_images(3)
    ours = torch.stack([transform(image) for image in images])
    # the peer's input: the same resize / crop, ToTensor on the grey image, Normalize((m,), (s,))
    plain = eval_transform(
        dataclasses.replace(DDSM, mean=(0.0,) * 3, std=(1.0,) * 3, channels="rgb")
    )
    grey = torch.stack([plain(image)[:1] for image in images])
    theirs = (grey - 0.286) / 0.267
    np.testing.assert_allclose(ours[:, :1].numpy(), theirs.numpy(), rtol=1e-6, atol=1e-6)
    assert torch.count_nonzero(ours[:, 1:]) == 0
    with torch.no_grad():
        np.testing.assert_allclose(net(ours).numpy(), peer(theirs).numpy(), rtol=1e-5, atol=1e-6)
        # the rule matters: the replicated grey image through all three channels differs
        replicated = (grey.repeat(1, 3, 1, 1) - 0.286) / 0.267
        assert not np.allclose(net(replicated).numpy(), peer(theirs).numpy(), atol=1e-3)


def test_colour_images_become_pillows_luma_and_grey_stays_exact() -> None:
    rgb = torch.rand(3, 5, 6)
    out = grey_in_first_channel(rgb, (0.1, 0.2, 0.3))
    np.testing.assert_allclose(out[0], 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2], rtol=1e-6)
    assert torch.equal(out[1], torch.full((5, 6), 0.2)) and torch.equal(
        out[2], torch.full((5, 6), 0.3)
    )
    grey = torch.rand(1, 5, 6).repeat(3, 1, 1)
    assert torch.equal(grey_in_first_channel(grey, (0.1, 0.2, 0.3))[0], grey[0])
    normalised = normalise(rgb, dataclasses.replace(DDSM, mean=(0.1, 0.2, 0.3)))
    assert torch.count_nonzero(normalised[1:]) == 0


def test_every_finetune_path_feeds_grey_in_the_first_channel_only() -> None:
    image = grey_images(1)[0]
    torch.manual_seed(0)
    pre = dataclasses.replace(DDSM, input_size=24)
    outputs = {
        "crop-flip": train_transform(pre, (0.5, 1.0))(image),
        "feature-reuse": feature_reuse_transform(pre, (0.8, 1.2))(image),
        "tencrop": tencrop_transform(pre)(image),
    }
    for name, out in outputs.items():
        channels = out.shape[-3]
        assert channels == 3, name
        zeros = out[..., 1:, :, :]
        assert torch.count_nonzero(zeros) == 0, name
        assert torch.count_nonzero(out[..., :1, :, :]) > 0, name


def test_the_rule_enters_the_cache_key_only_when_set() -> None:
    rgb = dataclasses.replace(DDSM, channels="rgb")
    assert "channels" not in describe(rgb) and "channels" not in rgb.key_payload()
    assert describe(DDSM)["channels"] == "grey-first"
    assert DDSM.key_payload()["channels"] == "grey-first"
    with pytest.raises(ValueError, match="channels must be one of"):
        describe(dataclasses.replace(DDSM, channels="bgr"))
    with pytest.raises(ProtocolError, match="channels must be one of"):
        register_preset("knn", "bad-channels", version=1, preprocessing={"channels": "bgr"})


def case_of(model: str, dataset: str) -> SimpleNamespace:
    inner = SimpleNamespace(model=get_model_card(model), dataset=SimpleNamespace(name=dataset))
    return SimpleNamespace(case=inner)


# medxfer dataset -> feature-reuse's defaults/datasets.py class attributes
PEER_CLASSES = {
    "aptos2019": ((0.415, 0.221, 0.073), (0.275, 0.150, 0.081), "rgb"),
    "isic2019": (
        (0.66776717, 0.52960888, 0.52434725),
        (0.22381877, 0.20363036, 0.21538623),
        "rgb",
    ),
    "cbis_ddsm": ((0.286,) * 3, (0.267,) * 3, "grey-first"),
    "chexpert": ((0.503,) * 3, (0.292,) * 3, "grey-first"),
    "pcam": ((0.69991202, 0.53839318, 0.69108667), (0.2308955, 0.27435492, 0.20865005), "rgb"),
}


@pytest.mark.parametrize("protocol", ["finetune", "knn"])
@pytest.mark.parametrize("dataset", sorted(PEER_CLASSES))
def test_feature_reuse_normalises_by_the_target_not_the_model(protocol: str, dataset: str) -> None:
    preset = get_preset(protocol, "feature-reuse")
    assert preset is not None and preset.version == 2
    mean, std, channels = PEER_CLASSES[dataset]
    for model in ("deit_small_patch16_224.fb_in1k", "inception_v3.tv_in1k"):
        overrides = preset.overrides(case_of(model, dataset))
        assert tuple(overrides["mean"]) == mean and tuple(overrides["std"]) == std, model
        assert overrides.get("channels", "rgb") == channels
        assert overrides["histogram_normalize"] is False
        assert overrides["crop_mode"] == "squash" and overrides["interpolation"] == "bilinear"


def test_a_target_the_peer_never_used_keeps_the_cards_normalisation() -> None:
    assert target_normalisation("demo_cxr_lesion", FEATURE_REUSE_STATS) == {}
    overrides = get_preset("finetune", "feature-reuse").overrides(
        case_of("inception_v3.tv_in1k", "demo_cxr_lesion")
    )
    assert "mean" not in overrides and "channels" not in overrides


@pytest.mark.parametrize(
    "model", ["resnet50.simclr_v1", "resnet50.moco_v2", "densenet121.mimic_chexpert_moco_lr0.1"]
)
def test_benchmark_transfer_feeds_every_model_imagenet_statistics(model: str) -> None:
    preset = get_preset("finetune", "benchmark-transfer")
    assert preset is not None and preset.version == 2
    overrides = preset.overrides(case_of(model, "chestxray14"))
    assert (tuple(overrides["mean"]), tuple(overrides["std"])) == IMAGENET
    pre = dataclasses.replace(get_model_card(model).preprocessing, **overrides)
    assert not pre.histogram_normalize
