"""The model zoo's cards: every card valid and buildable, feature layers, listing, info, offline.

Architectures are built on the meta device (no weights, no memory), so checking every
card takes seconds. Nothing downloads: the conftest refuses network connections.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml

from harness.cli import main
from harness.config.cards import (
    UNPUBLISHED,
    CardError,
    ModelCard,
    Preprocessing,
    WeightsSpec,
    all_model_cards,
    get_model_card,
    load_model_card_file,
    stable_hash,
)
from harness.data.transforms import describe, eval_transform
from harness.zoo import (
    CheckpointError,
    WeightsUnavailable,
    architecture_feature_dim,
    build_model,
)
from harness.zoo.converters import get_converter
from harness.zoo.sources import ensure_weights, locate

pytestmark = pytest.mark.usefixtures("one_torch_thread")
pytest_plugins = ["pytester"]

CARDS = all_model_cards()
# The embedded demo models' card fingerprints and transforms (full size, smoke size):
# the feature-cache keys of every committed result depend on them. The transforms' moved
# with TRANSFORM_VERSION 2 (width-first resizes, the same pixels for these square images).
EMBEDDED_KEYS = {
    "tf_efficientnet_lite0.in1k_pip": ("51068b3c35f2f414", "9c9a348f5c2ef12b", "9eb68bb3b5845f5a"),
    "tf_efficientnet_lite1.in1k_pip": ("07573b5fcdfd28b3", "db7cdc8a97a7379e", "528ad67a6fc1e236"),
    "tf_efficientnet_lite2.in1k_pip": ("196455d54d3544e3", "b1abec3875aeae3c", "b28d454959ab218e"),
    "tf_efficientnet_lite0.random": ("11708b29f09085ab", "9c9a348f5c2ef12b", "9eb68bb3b5845f5a"),
    "tf_efficientnet_lite2.random": ("5465bc21a13c229d", "b1abec3875aeae3c", "b28d454959ab218e"),
    "mobilenet_v2.tv_in1k_pip": ("2eddd037c73c863b", "10b4d646ec3feeb0", "d3f77d27d3fd8d37"),
    "mobilenet_v2.random": ("87d07b9b96c73b03", "10b4d646ec3feeb0", "d3f77d27d3fd8d37"),
    "resnet50.tv_in1k": ("b57e579ddbe3ee6a", "10b4d646ec3feeb0", "d3f77d27d3fd8d37"),
    "resnet18.tv_in1k": ("84a90775a8294d08", "10b4d646ec3feeb0", "d3f77d27d3fd8d37"),
}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MEDXFER_OFFLINE", raising=False)
    return tmp_path / "home"


# --------------------------------------------------------------------------- every card


@pytest.mark.parametrize("name", sorted(CARDS), ids=str)
def test_card_is_complete_and_its_architecture_builds(name: str) -> None:
    card = CARDS[name]
    spec = card.weights
    assert card.name.split(".")[0] == card.architecture
    assert card.category and card.pretraining_data and card.license
    if card.random_twin_of is None:
        assert card.paper
    if spec.converter:
        assert get_converter(spec.converter).version >= 1
    if spec.source in ("url", "file"):
        assert spec.sha256 == UNPUBLISHED or re.fullmatch(r"[0-9a-f]{64}", spec.sha256 or "")
        assert spec.url, "where the file comes from"
    if spec.source == "file":
        assert spec.instructions, "how to obtain a manual download"
    if spec.source == "timm":
        cfg = timm.models.get_pretrained_cfg(spec.hub_id, allow_unregistered=False)
        assert cfg is not None and spec.hub_id == name
        assert card.preprocessing.input_size == cfg.input_size[-1]
        assert (card.preprocessing.mean, card.preprocessing.std) == (
            pytest.approx(cfg.mean),
            pytest.approx(cfg.std),
        )
    if card.random_twin_of:
        twin = CARDS[card.random_twin_of]
        assert card.category == "random-init" and spec.source == "random"
        assert (card.architecture, card.preprocessing.mean, card.feature_layer) == (
            twin.architecture,
            twin.preprocessing.mean,
            twin.feature_layer,
        )
    dim = architecture_feature_dim(card)
    assert dim in (384, 512, 768, 1024, 1280, 2048)


def test_zoo_has_the_studies_models() -> None:
    expected = {
        "resnet18.tv_in1k",
        "resnet50.tv_in1k",
        "densenet121.tv_in1k",
        "resnet50.barlow_twins",
        "resnet50.swav",
        "resnet50.deepcluster_v2",
        "resnet50.sela_v2",
        "resnet50.insdis",
        "resnet50.pirl",
        "resnet50.infomin",
        "resnet50.moco_v1",
        "resnet50.moco_v2",
        "resnet50.pcl_v1",
        "resnet50.pcl_v2",
        "resnet50.inat2021_sup",
        "resnet50.inat2021_mini_sup",
        "resnet50.btl_chestxray14",
        "resnet50.btl_chexpert",
        "resnet50.btl_in1k_chestxray14",
        "resnet50.btl_in1k_chexpert",
        "densenet121.mimic_chexpert_moco_lr0.01",
        "densenet121.mimic_chexpert_moco_lr0.1",
        "densenet121.mimic_chexpert_moco_lr1.0",
        "resnet18.moco_cxr",
        "densenet121.moco_cxr",
        "deit_small_patch16_224.fb_in1k",
        "swin_tiny_patch4_window7_224.ms_in1k",
        "vit_small_patch16_224.dino",
        "resnet50.dino",
        "inception_v3.tv_in1k",
        "vit_small_patch14_dinov2.lvd142m",
        "vit_base_patch14_dinov2.lvd142m",
        "convnext_tiny.fb_in1k",
        "vit_base_patch16_clip_quickgelu_224.openai",
        "vit_base_patch14_dinov2.rad_dino",
    }
    assert expected <= set(CARDS)
    twins = {card.random_twin_of for card in CARDS.values() if card.random_twin_of}
    assert {"resnet50.tv_in1k", "deit_small_patch16_224.fb_in1k", "inception_v3.tv_in1k"} <= twins


@pytest.mark.parametrize("name", sorted(EMBEDDED_KEYS))
def test_embedded_cards_keep_their_cache_keys(name: str) -> None:
    card = get_model_card(name)
    pre = card.preprocessing
    keys = (
        stable_hash(card.fingerprint()),
        stable_hash(describe(pre)),
        stable_hash(describe(pre.with_input_size(96))),
    )
    assert keys == EMBEDDED_KEYS[name]


def test_new_fields_enter_the_fingerprint_only_when_set() -> None:
    card = get_model_card("resnet50.tv_in1k")
    assert "feature_layer" not in card.fingerprint()
    assert "histogram_normalize" not in card.fingerprint()["preprocessing"]
    tokens = dataclasses.replace(card, feature_layer="cls_token")
    assert stable_hash(tokens.fingerprint()) != stable_hash(card.fingerprint())
    histogram = dataclasses.replace(
        card, preprocessing=dataclasses.replace(card.preprocessing, histogram_normalize=True)
    )
    assert stable_hash(histogram.fingerprint()) != stable_hash(card.fingerprint())
    told = dataclasses.replace(card, weights=dataclasses.replace(card.weights, instructions="x"))
    assert stable_hash(told.fingerprint()) == stable_hash(card.fingerprint())


def _card_file(tmp_path: Path, **entry: object) -> Path:
    base = {
        "name": "resnet50.x",
        "architecture": {"library": "torchvision", "name": "resnet50"},
        "weights": {"source": "url", "url": "https://example.org/r.pth", "sha256": "unpublished"},
        "preprocessing": {"input_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3},
        "category": "supervised",
        "pretraining_data": "x",
    }
    path = tmp_path / "cards.yaml"
    path.write_text(yaml.safe_dump({"models": [base | entry]}))
    return path


def test_card_fields_are_validated(tmp_path: Path) -> None:
    (card,) = load_model_card_file(_card_file(tmp_path))
    assert card.weights.sha256 == UNPUBLISHED and card.weights.expected_sha256 is None
    with pytest.raises(CardError, match="64 lowercase hex digits or 'unpublished'"):
        load_model_card_file(
            _card_file(tmp_path, weights={"source": "url", "url": "u", "sha256": "unknown"})
        )
    with pytest.raises(CardError, match="needs field 'sha256'"):
        load_model_card_file(_card_file(tmp_path, weights={"source": "url", "url": "u"}))
    with pytest.raises(CardError, match="feature_layer 'cls_token' needs a timm architecture"):
        load_model_card_file(_card_file(tmp_path, feature_layer="cls_token"))
    with pytest.raises(CardError, match="field 'feature_layer' is 'token'; expected one of"):
        load_model_card_file(_card_file(tmp_path, feature_layer="token"))


# --------------------------------------------------------------------------- feature layers


def vit_card(layer: str, architecture: str = "vit_tiny_patch16_224") -> ModelCard:
    return ModelCard(
        name=f"{architecture}.{layer}",
        library="timm",
        architecture=architecture,
        weights=WeightsSpec(source="random", seed=3),
        preprocessing=Preprocessing(224, (0.5,) * 3, (0.5,) * 3),
        category="random-init",
        pretraining_data="none",
        feature_layer=layer,
        source_file="vit.yaml",
    )


def test_feature_layer_selects_what_the_module_returns() -> None:
    image = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    cls = build_model(vit_card("cls_token"))
    mean = build_model(vit_card("mean_tokens"))
    with torch.inference_mode():
        tokens = cls.module.forward_features(image)
        assert torch.allclose(cls.module(image), tokens[:, 0], atol=1e-6)
        prefix = cls.module.num_prefix_tokens
        assert torch.allclose(mean.module(image), tokens[:, prefix:].mean(1), atol=1e-5)
    assert cls.feature_dim == mean.feature_dim == 192
    # an image embedding keeps the model's head: CLIP's 512-d projection for the zoo's card
    embedding = build_model(vit_card("image_embedding"))
    with torch.inference_mode():
        head = embedding.module.forward_head(embedding.module.forward_features(image))
        assert torch.equal(embedding.module(image), head)
    assert embedding.feature_dim == embedding.module.num_classes == head.shape[-1]
    assert (
        architecture_feature_dim(get_model_card("vit_base_patch16_clip_quickgelu_224.openai"))
        == 512
    )
    with pytest.raises(CheckpointError, match=r"cls_token needs a timm token model .* pools no"):
        build_model(vit_card("cls_token", "convnext_atto"))
    with pytest.raises(CheckpointError, match="cls_token, but vit_medium_patch16_gap_256 has no"):
        build_model(vit_card("cls_token", "vit_medium_patch16_gap_256"))


# --------------------------------------------------------------------------- histogram


def test_histogram_normalize_matches_covidprognosis() -> None:
    rng = np.random.default_rng(0)
    image = (rng.beta(2, 5, size=(80, 96)) * 255).astype(np.uint8)
    card = get_model_card("densenet121.mimic_chexpert_moco_lr0.1")
    out = eval_transform(card.preprocessing)(image)
    plain = eval_transform(dataclasses.replace(card.preprocessing, histogram_normalize=False))
    x = plain(image).numpy()  # resized, cropped, in [0, 1], mean 0 / std 1
    density, edges = np.histogram(x.flatten(), 256, density=True)
    cdf = density.cumsum()
    expected = np.interp(x.flatten(), edges[:-1], 255 * cdf / cdf[-1]).reshape(x.shape)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=1e-4)
    assert float(out.min()) >= 0 and float(out.max()) == pytest.approx(255)
    assert describe(card.preprocessing)["histogram_normalize"] == 256


# --------------------------------------------------------------------------- cli


def test_list_models_shows_every_card_and_filters(capsys: pytest.CaptureFixture[str]) -> None:
    def listed(*args: str) -> set[str]:
        assert main(["list", "models", *args]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == "# models"
        return {line.split()[0] for line in lines[1:]}

    assert listed() == set(CARDS)
    assert listed("--category", "in-domain") == {
        n for n, c in CARDS.items() if c.category == "in-domain"
    }
    assert listed("--architecture", "densenet*", "--pretraining-data", "chexpert") == {
        "densenet121.mimic_chexpert_moco_lr0.01",
        "densenet121.mimic_chexpert_moco_lr0.1",
        "densenet121.mimic_chexpert_moco_lr1.0",
        "densenet121.moco_cxr",
    }
    assert listed("--architecture", "RESNET18") == {
        "resnet18.tv_in1k",
        "resnet18.moco_cxr",
    }
    with pytest.raises(SystemExit):
        main(["list", "models", "--category", "nope"])


def test_info_tells_source_checksum_cache_state_features(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def info(name: str) -> dict[str, str]:
        assert main(["info", name]) == 0
        rows = capsys.readouterr().out.splitlines()
        return {k: v.strip() for k, _, v in (row.partition(":") for row in rows)}

    moco = info("resnet50.moco_v2")
    target = home / "weights" / "resnet50.moco_v2.tar"
    assert moco["card"] == "models/ssl_imagenet_resnet50.yaml"
    assert moco["source"] == f"url {get_model_card('resnet50.moco_v2').weights.url}"
    assert moco["converter"].startswith("moco_resnet v1: MoCo v1/v2/v3")
    assert moco["checksum"].startswith("unpublished")
    assert moco["weights"] == f"not cached: {target}"
    assert moco["features"] == "pooled, 2048-d"
    assert moco["preprocessing"].startswith("224 px (resize 256, center crop), bilinear")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"placed by hand")
    assert info("resnet50.moco_v2")["weights"] == f"cached: {target}"

    assert info("resnet50.tv_in1k")["random twins"] == "resnet50.random"
    assert info("resnet50.random")["random twin of"] == "resnet50.tv_in1k"
    lite = info("tf_efficientnet_lite0.in1k_pip")
    assert lite["checksum"] == f"sha256 {get_model_card(lite['name']).weights.sha256}"
    assert lite["weights"].startswith("cached: ")
    assert info("vit_small_patch16_224.dino")["features"] == "cls_token, 384-d"
    assert (
        "histogram normalisation" in info("densenet121.mimic_chexpert_moco_lr1.0")["preprocessing"]
    )
    inat = info("resnet50.inat2021_sup")
    assert "inat2021_supervised_large.pth.tar" in inat["how to obtain"]
    assert main(["info", "nope.x"]) == 2
    assert "unknown model 'nope.x'" in capsys.readouterr().err


# --------------------------------------------------------------------------- offline


def test_absent_weights_are_unavailable_offline(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("MEDXFER_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hf-hub"))  # an empty hub cache
    moco = get_model_card("resnet50.moco_v2")
    with pytest.raises(WeightsUnavailable) as info:
        ensure_weights(moco)
    target = home / "weights" / "resnet50.moco_v2.tar"
    assert str(info.value) == (
        "model resnet50.moco_v2: weights file moco_v2_800ep_pretrain.pth.tar is not available "
        f"(not in the weights cache and MEDXFER_OFFLINE is set); download {moco.weights.url} "
        f"and put it at {target}"
    )
    dino = get_model_card("vit_small_patch16_224.dino")
    location = locate(dino)
    assert location is not None and not location.present
    with pytest.raises(WeightsUnavailable) as hub:
        ensure_weights(dino)
    message = str(hub.value)
    assert "weights file model.safetensors is not available" in message
    url = "https://huggingface.co/timm/vit_small_patch16_224.dino/resolve/main/model.safetensors"
    assert f"download {url}" in message
    assert location.path == home / "hf-hub" / "models--timm--vit_small_patch16_224.dino"
    assert str(location.path) in message and "hf download" in message
    ensure_weights(get_model_card("mobilenet_v2.random"))  # nothing to fetch


def test_failed_download_is_unavailable_and_not_retried(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib.error

    from harness.zoo import sources

    calls: list[str] = []

    def refuse(url: str, timeout: float) -> None:
        calls.append(url)
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(sources.urllib.request, "urlopen", refuse)
    monkeypatch.setattr(sources, "_FAILED", {})
    card = get_model_card("resnet50.swav")
    for _ in range(2):
        with pytest.raises(WeightsUnavailable, match=r"download failed: URLError.*Name or service"):
            ensure_weights(card)
    assert calls == [card.weights.url]
    assert not any((home / "weights").iterdir())


SUITE = {
    "name": "absent",
    "profile": "smoke",
    "models": ["resnet50.moco_v2", "resnet50.inat2021_sup"],
    "datasets": ["demo_modality"],
    "protocols": ["linear"],
}


@pytest.mark.slow
def test_cases_of_a_model_without_weights_skip_offline(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("MEDXFER_HOME", str(home))
    monkeypatch.setenv("MEDXFER_OFFLINE", "1")
    monkeypatch.delenv("MEDXFER_RUN_ID", raising=False)
    cards = pytester.mkdir("cards")
    (cards / "suites").mkdir()
    (cards / "suites" / "absent.yaml").write_text(yaml.safe_dump(SUITE))
    benchmarks = pytester.mkdir("benchmarks")
    (benchmarks / "test_linear.py").write_text(
        "from harness.plugin import benchmark_test\n\ntest_linear = benchmark_test('linear')\n"
    )
    result = pytester.runpytest_subprocess(
        "benchmarks", "--suite", "absent", "--medxfer-cards", str(cards), "-rs", "-p",
        "no:cacheprovider", "--medxfer-results", str(tmp_path / "results"),
    )  # fmt: skip
    result.assert_outcomes(skipped=2)
    text = result.stdout.str()
    moco = get_model_card("resnet50.moco_v2").weights.url
    assert f"download {moco} and put it at {home / 'weights' / 'resnet50.moco_v2.tar'}" in text
    inat = home / "weights" / "inat2021_supervised_large.pth.tar"
    assert "weights file inat2021_supervised_large.pth.tar is not available" in text
    assert f"put it at {inat}" in text
    assert not (home / "prepared").exists()  # skipped before any data work
