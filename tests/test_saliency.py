"""Occlusion saliency (harness.analyses.saliency) and the ``saliency`` protocol."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from harness.analyses.saliency import (
    attentive_diffusion,
    occlusion_saliency,
    peak_window,
    window_starts,
)
from harness.analyses.saliency_render import jet, overlay, pick_images
from harness.config.model_cards import Preprocessing
from harness.data.npz import SplitData
from harness.protocols.saliency import SaliencyConfig, run_saliency

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _peer_reference(forward, image: torch.Tensor, size: int, value: float) -> np.ndarray:
    """The peer's loop written out: one occluded copy per forward, sum, / size**2, crop."""
    _, height, width = image.shape
    with torch.no_grad():
        f0 = forward(image[None]).flatten().numpy().astype(np.float64)
    scores = np.zeros((height, width))
    for i in range(1 + height - size):
        for j in range(1 + width - size):
            copy = image.clone()
            copy[:, i : i + size, j : j + size] = value
            with torch.no_grad():
                f = forward(copy[None]).flatten().numpy().astype(np.float64)
            scores[i : i + size, j : j + size] += np.sqrt(((f0 - f) ** 2).sum()) / np.sqrt(
                (f0**2).sum()
            )
    scores /= size**2
    return scores[size - 1 : height - size + 1, size - 1 : width - size + 1]


def _random_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()
    ).eval()


# --------------------------------------------------------------------------- attentive diffusion


def test_attentive_diffusion_matches_hand_computed_values() -> None:
    # mean 4: only 10 is above -> 1 of 4 pixels
    assert attentive_diffusion(np.array([[1.0, 2.0], [3.0, 10.0]])) == 25.0
    # 0..9, mean 4.5: 5..9 above -> 50 %
    assert attentive_diffusion(np.arange(10.0).reshape(2, 5)) == 50.0
    # a 4x4 map with a 2x2 hot spot of 1 on zeros: mean 0.25, 4 of 16 above
    spot = np.zeros((4, 4))
    spot[1:3, 1:3] = 1.0
    assert attentive_diffusion(spot) == 25.0
    # strictly above: a constant map has none, values equal to the mean do not count
    assert attentive_diffusion(np.full((3, 3), 0.7)) == 0.0
    assert attentive_diffusion(np.array([0.0, 1.0, 2.0])) == pytest.approx(100.0 / 3.0)
    with pytest.raises(ValueError, match="empty"):
        attentive_diffusion(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        attentive_diffusion(np.array([1.0, np.nan]))


# --------------------------------------------------------------------------- the map


def test_batched_map_equals_the_peer_loop_and_is_batch_size_independent() -> None:
    net = _random_net()
    image = torch.rand(3, 14, 12, generator=torch.Generator().manual_seed(1))
    expected = _peer_reference(net, image, size=4, value=0.0)
    one = occlusion_saliency(net, image, size=4, value=0.0, batch_size=1)
    many = occlusion_saliency(net, image, size=4, value=0.0, batch_size=7)
    assert one.shape == (14 - 6, 12 - 6) == expected.shape
    np.testing.assert_allclose(one, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(many, one, rtol=1e-5, atol=1e-7)


def test_window_positions_and_stride_normalisation() -> None:
    assert window_starts(10, 10, 1) == [0]
    assert window_starts(12, 3, 4) == [0, 4, 8, 9]  # the last window is always included
    assert window_starts(13, 3, 5) == [0, 5, 10]
    with pytest.raises(ValueError, match="does not fit"):
        window_starts(5, 6, 1)
    with pytest.raises(ValueError, match="stride"):
        window_starts(5, 2, 0)
    # a feature that is the image's sum: every window moves it by the same amount, so
    # every pixel's mean score is the same whatever the stride
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 1, bias=False))
    nn.init.ones_(net[1].weight)
    image = torch.ones(3, 16, 16)
    for stride in (1, 3, 4):
        saliency = occlusion_saliency(net, image, size=4, value=0.0, stride=stride, crop=False)
        np.testing.assert_allclose(saliency, 16 / 256, rtol=1e-6)


def test_bad_inputs_raise() -> None:
    net = _random_net()
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        occlusion_saliency(net, torch.rand(1, 3, 12, 12))
    with pytest.raises(ValueError, match="uncovered"):
        occlusion_saliency(net, torch.rand(3, 12, 12), size=3, stride=4)
    with pytest.raises(ValueError, match="nothing after"):
        occlusion_saliency(net, torch.rand(3, 12, 12), size=10)
    zero = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 2))
    nn.init.zeros_(zero[1].weight)
    nn.init.zeros_(zero[1].bias)
    with pytest.raises(ValueError, match="zero or not finite"):
        occlusion_saliency(zero, torch.rand(3, 12, 12), size=3)


def test_peak_window_finds_the_heaviest_block() -> None:
    grid = np.zeros((8, 9))
    grid[5:7, 2:4] = 1.0
    grid[0, 8] = 1.5  # a higher single pixel, but less mass than the block
    assert peak_window(grid, 2) == (5, 2)


# --------------------------------------------------------------------------- planted lesion

SIDE, LESION = 40, 6


def _lesion_batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(n, 3, SIDE, SIDE, generator=generator) * 0.5
    labels = torch.arange(n) % 2
    corners = torch.randint(0, SIDE - LESION + 1, (n, 2), generator=generator)
    for k in range(n):
        if labels[k]:
            r, c = corners[k].tolist()
            images[k, :, r : r + LESION, c : c + LESION] = 1.0
    return images, labels.float()


class _Detector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 5, padding=2),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)).squeeze(1)


def test_saliency_puts_the_most_mass_on_a_planted_lesion_for_a_trained_detector() -> None:
    torch.manual_seed(0)
    model = _Detector()
    generator = torch.Generator().manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(15):
        images, labels = _lesion_batch(16, generator)
        loss = nn.functional.binary_cross_entropy_with_logits(model(images), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    images, labels = _lesion_batch(64, torch.Generator().manual_seed(99))
    with torch.no_grad():
        accuracy = ((model(images) > 0).float() == labels).float().mean().item()
    assert accuracy >= 0.9  # it learned to find the lesion

    image = torch.rand(3, SIDE, SIDE, generator=torch.Generator().manual_seed(5)) * 0.5
    top, left = 18, 20
    image[:, top : top + LESION, left : left + LESION] = 1.0
    saliency = occlusion_saliency(model.body, image, size=10, value=0.0, batch_size=128)
    assert saliency.shape == (SIDE - 18, SIDE - 18)
    # map coordinates: the crop drops the first 9 pixels
    lesion = np.zeros_like(saliency, dtype=bool)
    lesion[top - 9 : top - 9 + LESION, left - 9 : left - 9 + LESION] = True
    row, col = peak_window(saliency, LESION)
    peak = np.zeros_like(lesion)
    peak[row : row + LESION, col : col + LESION] = True
    overlap = (peak & lesion).sum() / lesion.sum()
    assert overlap >= 0.5, (row, col)
    assert saliency[lesion].mean() > 2.0 * saliency[~lesion].mean()
    assert 0.0 < attentive_diffusion(saliency) < 50.0  # concentrated, not diffuse


# --------------------------------------------------------------------------- pictures, choice


def test_jet_endpoints_and_overlay_shape() -> None:
    np.testing.assert_allclose(jet(np.array([0.0, 1.0])), [[0, 0, 0.5], [0.5, 0, 0]])
    # halfway: red 0.15 / 0.31 up its ramp, green full, blue 0.16 / 0.31 down its ramp
    np.testing.assert_allclose(jet(np.array(0.5)), [15 / 31, 1.0, 15 / 31], atol=1e-12)
    picture = overlay(np.full((5, 6), 0.5), np.arange(30.0).reshape(5, 6))
    assert picture.shape == (5, 6, 3) and picture.dtype == np.uint8
    with pytest.raises(ValueError, match="differ"):
        overlay(np.zeros((4, 4)), np.zeros((5, 5)))


def test_pick_images_takes_classes_in_turn_and_is_seeded() -> None:
    labels = np.array([0] * 10 + [1] * 3)
    chosen = pick_images(labels, 4, seed=3)
    assert list(labels[chosen]) == [0, 1, 0, 1]
    assert list(chosen) == list(pick_images(labels, 4, seed=3))
    assert len(set(pick_images(labels, 20, seed=0).tolist())) == 13
    multilabel = np.array([[1, 0], [0, 1], [0, 1]])
    assert sorted(multilabel[pick_images(multilabel, 2, 0)].argmax(1).tolist()) == [0, 1]


# --------------------------------------------------------------------------- the protocol


def _fake_case(tmp_path: Path, module: nn.Module) -> SimpleNamespace:
    rng = np.random.default_rng(0)
    images = (rng.random((6, 24, 24, 3)) * 255).astype(np.uint8)
    labels = np.array([0, 1, 0, 1, 0, 1])
    pre = Preprocessing(input_size=24, mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0)
    return SimpleNamespace(
        splits=lambda: {"test": SplitData(images, labels)},
        preprocessing=lambda: pre,
        backbone=lambda: SimpleNamespace(load=lambda: module),
        device="cpu",
        results_dir=tmp_path,
        case=SimpleNamespace(suite="analyses-images", case_id="saliency/toy/toy"),
    )


def test_protocol_records_scores_and_writes_deterministic_pngs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDXFER_RUN_ID", "run-1")
    config = SaliencyConfig(size=5, stride=2, num_images=3, batch_size=16)
    case = _fake_case(tmp_path, _random_net())
    first = run_saliency(case, config)
    keys = sorted(k for k in first.metrics if k.startswith("ad_"))
    assert len(keys) == 3
    assert first.metrics["attentive_diffusion"] == pytest.approx(
        np.mean([first.metrics[k] for k in keys])
    )
    rows = first.details["images"]
    assert [row["label"] for row in rows] == [0, 1, 0]
    assert rows[0]["map_shape"] == [24 - 8, 24 - 8]
    pngs = sorted((tmp_path / "analyses-images").rglob("*.png"))
    assert len(pngs) == 6 and all("artefacts/run-1" in str(p) for p in pngs)
    assert (tmp_path / rows[0]["overlay"]).is_file()
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in pngs}
    second = run_saliency(case, config)
    assert second.metrics == first.metrics
    assert digest == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in pngs}
    with pytest.raises(ValueError, match="no split"):
        run_saliency(case, SaliencyConfig(split="val"))


def test_profiles_keep_the_peer_window_and_scale_the_stride() -> None:
    smoke, demo, paper = (SaliencyConfig.for_profile(p) for p in ("smoke", "demo", "paper"))
    assert (smoke.size, smoke.value, paper.stride) == (10, 0.0, 1)
    assert smoke.stride > demo.stride > paper.stride
    assert SaliencyConfig().to_dict()["size"] == 10
    with pytest.raises(ValueError):
        SaliencyConfig.for_profile("huge")
    with pytest.raises(ValueError, match="stride"):
        SaliencyConfig(stride=0)


def test_peer_preset_runs_the_peers_geometry() -> None:
    from harness.protocols.registry import get_preset, get_protocol

    spec = get_protocol("saliency")
    assert (spec.primary_metric, spec.display, spec.needs) == (
        "attentive_diffusion",
        "descriptive",
        "images",
    )
    preset = get_preset("saliency", "ssl-medicalimaging")
    assert preset is not None
    overrides = preset.overrides(None)
    # 242 px, no crop margin, ImageNet statistics: a 242 - 18 = 224 px map, as the peer's
    assert (overrides["input_size"], overrides["crop_pct"]) == (242, 1.0)
    assert overrides["mean"] == (0.485, 0.456, 0.406)
    config = preset.configure(None)
    assert (config.size, config.value, config.stride, config.num_images) == (10, 0.0, 1, 1)
