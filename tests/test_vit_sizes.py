"""Token models (ViT, DeiT, DINOv2, CLIP, Swin) at a profile's input size; BiomedCLIP; offline hub.

The committed cards are built with random weights (nothing downloads): their modules
must give features of the card's dimension at the smoke (96 px) and demo (160 px)
sizes, rounded to the patch size where needed (DINOv2's patch 14), and compute at the
card's own size exactly what timm's fixed-size model computes. BiomedCLIP's
open_clip checkpoint (written here from a random open_clip-style tower) loads through
its card strictly and gives that tower's features. ``MEDXFER_OFFLINE`` puts the
Hugging Face hub client offline.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch

from harness.config.cards import ModelCard, WeightsSpec, get_model_card
from harness.zoo import CheckpointError, WeightsUnavailable, build_model, weights_identity
from harness.zoo.build import model_input_size, model_preprocessing
from harness.zoo.converters import apply_converter, get_converter
from harness.zoo.hub import sync_hub_offline
from harness.zoo.input_sizes import create_timm_model, patch_size, round_to_patch
from harness.zoo.sources import locate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_card(name: str, architecture: str | None = None) -> ModelCard:
    """A committed card with random weights (and optionally another timm architecture)."""
    card = get_model_card(name)
    return dataclasses.replace(
        card,
        architecture=architecture or card.architecture,
        weights=WeightsSpec(source="random", seed=0),
    )


# card, architecture override, patch side, feature dim
TOKEN_MODELS = {
    "vit_tiny": ("deit_small_patch16_224.fb_in1k", "vit_tiny_patch16_224", 16, 192),
    "deit_s_cls": ("deit_small_patch16_224.fb_in1k", None, 16, 384),
    "dinov2_s14_cls": ("vit_small_patch14_dinov2.lvd142m", None, 14, 384),
    # a tagged name: the embedding size (512) comes from that pretrained config
    "clip_b16_embedding": (
        "vit_base_patch16_clip_quickgelu_224.openai",
        "vit_base_patch16_clip_quickgelu_224.openai",
        16,
        512,
    ),
    "swin_t_mean_tokens": ("swin_tiny_patch4_window7_224.ms_in1k", None, 4, 768),
}
EXPECTED_SIZES = {16: {96: 96, 160: 160}, 14: {96: 98, 160: 154}, 4: {96: 96, 160: 160}}


@pytest.fixture(scope="module", params=sorted(TOKEN_MODELS))
def token_model(request: pytest.FixtureRequest) -> tuple[ModelCard, int, int, torch.nn.Module]:
    name, architecture, patch, dim = TOKEN_MODELS[request.param]
    card = random_card(name, architecture)
    return card, patch, dim, build_model(card).module


@pytest.mark.parametrize("requested", [96, 160])
def test_token_model_runs_at_the_profile_size(
    token_model: tuple[ModelCard, int, int, torch.nn.Module], requested: int
) -> None:
    card, patch, dim, module = token_model
    size = model_input_size(card, requested)
    assert size == EXPECTED_SIZES[patch][requested]
    assert model_preprocessing(card, requested).input_size == size
    assert model_preprocessing(card, requested).mean == card.preprocessing.mean
    image = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(requested))
    with torch.inference_mode():
        features = module(image)
    assert features.shape == (2, dim)
    assert torch.isfinite(features).all()


def test_dynamic_model_equals_fixed_size_model_at_the_card_size() -> None:
    """Same state dict and, at the pretrained size, the same features as timm's default build."""
    card = random_card("deit_small_patch16_224.fb_in1k", "vit_tiny_patch16_224")
    module = build_model(card).module
    assert module.dynamic_img_size
    fixed = timm.create_model("vit_tiny_patch16_224", num_classes=0, global_pool="token").eval()
    fixed.load_state_dict(module.state_dict())
    image = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(module(image), fixed(image))
        with pytest.raises(AssertionError):  # timm's default build accepts 224 px only
            fixed(image[:, :, :160, :160])


def test_position_embeddings_are_interpolated_not_cropped() -> None:
    """At 160 px a patch-16 ViT uses a 10x10 grid resampled from its 14x14 table."""
    card = random_card("deit_small_patch16_224.fb_in1k", "vit_tiny_patch16_224")
    module = build_model(card).module
    assert tuple(module.pos_embed.shape) == (1, 1 + 14 * 14, 192)  # parameters unchanged
    seen: list[torch.Tensor] = []
    handle = module.pos_drop.register_forward_hook(lambda _m, _a, out: seen.append(out))
    with torch.inference_mode():
        module(torch.zeros(1, 3, 160, 160))
    handle.remove()
    assert seen[0].shape == (1, 1 + 10 * 10, 192)


def test_cnns_keep_the_requested_size_and_take_no_dynamic_argument() -> None:
    card = get_model_card("inception_v3.random")
    assert model_input_size(card, 160) == 160
    assert model_input_size(card) == card.preprocessing.input_size == 299
    assert model_input_size(get_model_card("keras_inception_v3.radimagenet"), 97) == 97
    resnet = create_timm_model("resnet18", False, num_classes=0)
    assert patch_size(resnet) is None


def test_paper_profile_keeps_the_card_size() -> None:
    card = get_model_card("vit_small_patch14_dinov2.lvd142m")
    assert model_input_size(card, None) == 518 == model_input_size(card, 518)
    assert model_preprocessing(card, None) == card.preprocessing


@pytest.mark.parametrize(
    ("size", "patch", "wanted"),
    [(160, 14, 154), (96, 14, 98), (224, 16, 224), (161, 14, 168), (5, 14, 14), (100, None, 100)],
)
def test_round_to_patch(size: int, patch: int | None, wanted: int) -> None:
    assert round_to_patch(size, patch) == wanted


# --------------------------------------------------------------------------- BiomedCLIP (open_clip)

BIOMEDCLIP = "open_clip_vit_base_patch16_224.biomedclip"


class OpenClipTimmTower(torch.nn.Module):
    """open_clip's ``TimmModel`` image tower as BiomedCLIP configures it (written for the test).

    ``timm.create_model(name)``, its classifier reset (``timm_pool: ""`` keeps the
    ViT's class-token pooling), then ``head.proj = Linear(width, 512, bias=False)``.
    """

    def __init__(self, name: str, embed_dim: int = 512) -> None:
        super().__init__()
        self.trunk = timm.create_model(name)
        self.trunk.reset_classifier(0)
        self.head = torch.nn.Sequential()
        self.head.add_module("drop", torch.nn.Dropout(0.0))
        self.head.add_module(
            "proj", torch.nn.Linear(self.trunk.num_features, embed_dim, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def open_clip_state(tower: OpenClipTimmTower) -> dict[str, torch.Tensor]:
    """A whole open_clip CLIP state dict: ``visual.*``, a (tiny) text tower, ``logit_scale``."""
    state = {f"visual.{k}": v for k, v in tower.state_dict().items()}
    state["text.transformer.embeddings.word_embeddings.weight"] = torch.zeros(8, 4)
    state["text.proj.0.weight"] = torch.zeros(4, 4)
    state["logit_scale"] = torch.tensor(4.6052)
    return state


@pytest.fixture(scope="module")
def biomedclip_tower() -> OpenClipTimmTower:
    torch.manual_seed(3)
    return OpenClipTimmTower("vit_base_patch16_224").eval()


@pytest.fixture
def biomedclip_file(
    biomedclip_tower: OpenClipTimmTower, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The tower's open_clip checkpoint where the BiomedCLIP card's url source keeps it."""
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDXFER_OFFLINE", "1")
    path = locate(get_model_card(BIOMEDCLIP)).path
    assert path.suffix == ".bin"  # read with torch.load(weights_only=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(open_clip_state(biomedclip_tower), path)
    return path


@pytest.mark.parametrize("size", [224, 160])
def test_biomedclip_card_gives_open_clips_image_embedding(
    biomedclip_tower: OpenClipTimmTower, biomedclip_file: Path, size: int
) -> None:
    card = get_model_card(BIOMEDCLIP)
    loaded = build_model(card)  # converter + variant, strict
    assert loaded.feature_dim == 512
    image = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.inference_mode():
        features = loaded.module(image)
        if size == 224:  # open_clip's tower takes its own size only
            wanted = biomedclip_tower(image)
        else:  # its trunk at another size, as timm interpolates the position embeddings
            dynamic = timm.create_model(
                "vit_base_patch16_224", num_classes=0, dynamic_img_size=True
            )
            dynamic.load_state_dict(biomedclip_tower.trunk.state_dict())
            wanted = biomedclip_tower.head(dynamic.eval()(image))
    assert features.shape == (2, 512)
    torch.testing.assert_close(features, wanted, rtol=1e-4, atol=1e-5)
    assert loaded.weights_id == weights_identity(card)


def test_biomedclip_cls_token_layer_is_the_trunks_pooled_token(
    biomedclip_tower: OpenClipTimmTower, biomedclip_file: Path
) -> None:
    card = dataclasses.replace(get_model_card(BIOMEDCLIP), feature_layer="cls_token")
    loaded = build_model(card)  # the projection is dropped: strict load still passes
    assert loaded.feature_dim == 768
    image = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(
            loaded.module(image), biomedclip_tower.trunk(image), rtol=1e-4, atol=1e-5
        )


def test_open_clip_converter_refuses_foreign_keys_and_a_missing_projection() -> None:
    torch.manual_seed(0)
    tower = OpenClipTimmTower("vit_tiny_patch16_224", embed_dim=32)
    state = open_clip_state(tower)
    converter = get_converter("open_clip_timm_vit")
    target = timm.create_model("vit_tiny_patch16_224", num_classes=32).state_dict()
    out = apply_converter(converter, state, target, "model x (open_clip.bin)")
    assert set(out) == set(target) - {"head.bias"}
    assert torch.equal(out["head.weight"], state["visual.head.proj.weight"])
    with pytest.raises(CheckpointError, match=r"visual\.attnpool\.weight.*neither"):
        apply_converter(converter, {**state, "visual.attnpool.weight": torch.zeros(1)}, target, "x")
    no_proj = {k: v for k, v in state.items() if k != "visual.head.proj.weight"}
    with pytest.raises(CheckpointError, match=r"no visual\.head\.proj\.weight"):
        apply_converter(converter, no_proj, target, "x")
    with pytest.raises(CheckpointError, match="not an open_clip model"):
        apply_converter(converter, {"logit_scale": torch.tensor(1.0)}, target, "x")


# --------------------------------------------------------------------------- offline hub


@pytest.fixture
def hub_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """An empty Hugging Face cache; the hub's offline switch restored afterwards."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", hf_constants.HF_HUB_OFFLINE)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield
    monkeypatch.delenv("MEDXFER_OFFLINE", raising=False)
    sync_hub_offline()


def test_medxfer_offline_puts_the_hub_client_offline(
    hub_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("MEDXFER_OFFLINE", "1")
    card = get_model_card("deit_small_patch16_224.fb_in1k")
    started = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as info:
        build_model(card)
    assert time.perf_counter() - started < 20
    message = str(info.value)
    assert "huggingface.co/timm/deit_small_patch16_224.fb_in1k" in message
    assert "test tried to open a network connection" not in message  # no request was made
    assert os.environ["HF_HUB_OFFLINE"] == "1" and hf_constants.HF_HUB_OFFLINE is True
    # the hub client itself refuses requests now, without touching the network
    with pytest.raises(huggingface_hub.errors.LocalEntryNotFoundError):
        huggingface_hub.hf_hub_download("timm/deit_small_patch16_224.fb_in1k", "model.safetensors")

    monkeypatch.delenv("MEDXFER_OFFLINE")
    assert sync_hub_offline() is False
    assert "HF_HUB_OFFLINE" not in os.environ and hf_constants.HF_HUB_OFFLINE is False
