"""Deep-image-prior feature inversion, perceptual distances and the ``inversion`` protocol."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from harness.analyses.inversion import (
    PriorSpec,
    SkipPrior,
    frozen,
    invert,
    normalised,
    spatial_features,
)
from harness.analyses.perceptual import (
    EMBEDDED,
    StagePerceptual,
    embedded_distance,
    lpips_available,
    perceptual_distance,
    select_distance,
)
from harness.config.model_cards import Preprocessing
from harness.data.npz import SplitData
from harness.protocols.inversion import SMOKE_PRIOR, InversionConfig, run_inversion

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = PriorSpec(
    channels_down=(8, 8),
    channels_up=(8, 8),
    channels_skip=(2, 2),
    filters_down=(3, 3),
    filters_up=(3, 3),
    input_depth=4,
)


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDXFER_RUN_ID", "run-1")


def _scene(side: int = 64) -> torch.Tensor:
    """A structured image in [0, 1]: gradients, a disc and stripes."""
    y, x = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    disc = (((x - 0.6) ** 2 + (y - 0.4) ** 2) < 0.05).float()
    stripes = 0.5 + 0.5 * torch.sin(x * 25)
    return torch.stack([0.3 + 0.5 * x, 0.2 + 0.6 * disc, 0.3 * stripes + 0.4 * y]).clamp(0, 1)


def _backbone(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3))


# --------------------------------------------------------------------------- perceptual distance


def test_embedded_distance_is_zero_on_itself_and_grows_with_noise() -> None:
    distance = embedded_distance()
    image = _scene()
    assert perceptual_distance(distance, image, image) == 0.0
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    values = [
        perceptual_distance(distance, image, (image + level * noise).clamp(0, 1))
        for level in (0.02, 0.05, 0.1, 0.2, 0.4)
    ]
    assert values[0] > 0.0
    assert all(b > 1.05 * a for a, b in itertools.pairwise(values)), values
    other = _scene().flip(2)
    assert perceptual_distance(distance, image, other) == pytest.approx(
        perceptual_distance(distance, other, image), rel=1e-5
    )


def test_stage_distance_follows_the_unlearned_lpips_formula() -> None:
    torch.manual_seed(0)
    stages = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 1))
    model = StagePerceptual(stages, (0, 1), mean=(0.0,) * 3, std=(1.0,) * 3)
    a, b = torch.rand(2, 3, 5, 5), torch.rand(2, 3, 5, 5)
    expected = torch.zeros(2)
    fa, fb = a, b
    for stage in stages:
        fa, fb = stage(fa), stage(fb)
        na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        expected += (na - nb).pow(2).sum(1).mean((1, 2))
    torch.testing.assert_close(model(a, b), expected)


def test_lpips_is_used_only_when_it_runs_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    reason = lpips_available("alex")
    assert reason is not None and ("not installed" in reason or "hub cache" in reason)
    name, _ = select_distance("auto")
    assert name == EMBEDDED
    with pytest.raises(RuntimeError, match="unavailable"):
        select_distance("lpips-alex")
    with pytest.raises(ValueError, match="unknown perceptual distance"):
        select_distance("ssim")


# --------------------------------------------------------------------------- the generator


def test_prior_matches_the_peer_network_shape_and_size() -> None:
    spec = PriorSpec()
    assert spec.input_size(224) == 256 and SMOKE_PRIOR.input_size(96) == 96
    # parameters counted level by level from the peer's layer list (skip.py)
    expected, cin = 0, spec.input_depth
    for i in range(spec.depth):
        down, up, skip = spec.channels_down[i], spec.channels_up[i], spec.channels_skip[i]
        fd, fu = spec.filters_down[i], spec.filters_up[i]
        k = spec.channels_up[i + 1] if i + 1 < spec.depth else down
        expected += cin * skip + skip + 2 * skip  # 1x1 skip conv + BN
        expected += cin * down * fd * fd + down + 2 * down  # strided conv + BN
        expected += down * down * fd * fd + down + 2 * down  # conv + BN
        expected += 2 * (skip + k)  # BN of the concatenation
        expected += (skip + k) * up * fu * fu + up + 2 * up  # up conv + BN
        expected += up * up + up + 2 * up  # 1x1 conv + BN
        cin = down
    expected += spec.channels_up[0] * 3 + 3
    net = SkipPrior(spec)
    assert sum(p.numel() for p in net.parameters()) == expected
    out = SkipPrior(TINY)(torch.rand(1, 4, 16, 16))
    assert out.shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="same, non-zero length"):
        PriorSpec(channels_down=(8,))


def test_dip_loop_reduces_the_feature_loss_and_leaves_the_backbone_alone() -> None:
    backbone = _backbone()
    before = [p.detach().clone() for p in backbone.parameters()]
    image = _scene(16)
    result = invert(
        backbone, image, steps=40, lr=0.01, spec=TINY, seed=0, frozen_modules=[backbone]
    )
    assert len(result.losses) == 40
    assert result.losses[-1] < 0.5 * result.losses[0], (result.losses[0], result.losses[-1])
    assert result.image.shape == (3, 16, 16)
    assert float(result.image.min()) >= 0.0 and float(result.image.max()) <= 1.0
    assert all(p.requires_grad and p.grad is None for p in backbone.parameters())
    for old, new in zip(before, backbone.parameters(), strict=True):
        assert torch.equal(old, new)
    again = invert(backbone, image, steps=3, lr=0.01, spec=TINY, seed=0)
    assert again.losses[0] == pytest.approx(result.losses[0], rel=1e-5)
    with pytest.raises(ValueError, match="steps"):
        invert(backbone, image, steps=0, spec=TINY)


def test_frozen_restores_flags_and_normalised_applies_statistics() -> None:
    net = nn.Linear(2, 2)
    net.bias.requires_grad_(False)
    with frozen(net):
        assert not any(p.requires_grad for p in net.parameters())
    assert [p.requires_grad for p in net.parameters()] == [True, False]
    fn = normalised(lambda x: x, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    torch.testing.assert_close(fn(torch.ones(1, 3, 1, 1)), torch.full((1, 3, 1, 1), 2.0))


def test_spatial_features_pick_the_last_map() -> None:
    class Timmish(nn.Module):
        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return x

    assert spatial_features(Timmish())[1] == "forward_features"
    wrapped = SimpleNamespace(model=SimpleNamespace(features=nn.Identity()))
    assert spatial_features(wrapped)[1] == "features"  # type: ignore[arg-type]
    import torchvision

    resnet = torchvision.models.resnet18(weights=None).eval()
    fn, name = spatial_features(SimpleNamespace(model=resnet))  # type: ignore[arg-type]
    assert name == "layer4" and fn(torch.rand(1, 3, 64, 64)).shape == (1, 512, 2, 2)
    assert spatial_features(nn.Linear(1, 1))[1] == "pooled"


# --------------------------------------------------------------------------- the protocol


def test_protocol_records_distances_and_panels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = (rng.random((4, 32, 32, 3)) * 255).astype(np.uint8)
    pre = Preprocessing(input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0)
    case = SimpleNamespace(
        splits=lambda: {"test": SplitData(images, np.array([0, 1, 0, 1]))},
        preprocessing=lambda: pre,
        backbone=lambda: SimpleNamespace(load=_backbone),
        device="cpu",
        results_dir=tmp_path / "results",
        case=SimpleNamespace(suite="analyses-images", case_id="inversion/toy/toy"),
    )
    config = InversionConfig(steps=3, prior=TINY, num_images=2, distance=EMBEDDED)
    result = run_inversion(case, config)
    keys = sorted(k for k in result.metrics if k.startswith("pd_"))
    assert len(keys) == 2 and all(result.metrics[k] > 0 for k in keys)
    assert result.metrics["perceptual_distance"] == pytest.approx(
        np.mean([result.metrics[k] for k in keys])
    )
    details = result.details
    assert details["distance"] == EMBEDDED and details["layer"] == "pooled"
    assert [row["label"] for row in details["images"]] == [0, 1]
    panel = tmp_path / "results" / details["images"][0]["panel"]
    assert panel.is_file() and "artefacts/run-1" in str(panel)
    assert details["images"][0]["loss_curve"][0][0] == 0


def test_config_profiles_and_round_trip() -> None:
    smoke = InversionConfig.for_profile("smoke")
    paper = InversionConfig.for_profile("paper")
    assert smoke.steps < InversionConfig.for_profile("demo").steps < paper.steps == 1001
    assert smoke.prior.depth < paper.prior.depth == 6
    again = InversionConfig(**smoke.to_dict())
    assert again == smoke
    with pytest.raises(ValueError, match="distance"):
        InversionConfig(distance="mse")


def test_peer_preset_feeds_raw_pixels_for_1001_steps() -> None:
    from harness.protocols.registry import get_preset, get_protocol

    assert get_protocol("inversion").primary_metric == "perceptual_distance"
    preset = get_preset("inversion", "ssl-medicalimaging")
    assert preset is not None
    assert preset.overrides(None) == {
        "input_size": 224,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
    }
    config = preset.configure(None)
    assert (config.steps, config.lr, config.raw_pixels) == (1001, 1e-3, True)
    assert config.prior == PriorSpec()
