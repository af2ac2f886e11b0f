"""Tests of the invariance protocols, the image transforms and the feature statistics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis

from harness import features
from harness.cache.arrays import cached_arrays
from harness.config.cards import Preprocessing
from harness.protocols import image_transforms as tr
from harness.protocols import invariance as inv
from harness.protocols import multiview as mv
from harness.protocols import whitening as wh


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path))
    return tmp_path


def _textured(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A smooth, asymmetric test image with mid-range intensities (no flat regions)."""
    rng = np.random.default_rng(seed)
    height, width = shape[:2]
    yy, xx = np.mgrid[0:height, 0:width]
    base = 60 + 100 * (xx / width) + 40 * np.sin(yy / 3.0) + rng.normal(0, 8, (height, width))
    if len(shape) == 2:
        return np.clip(base, 0, 255).astype(np.uint8)
    channels = [base, 255 - base, 0.5 * base + 60 * np.cos(xx / 4.0) + 50]
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


GRAY = _textured((24, 30))
RGB = _textured((24, 30, 3))


# --------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("name", sorted(tr.TRANSFORMS))
@pytest.mark.parametrize("image", [GRAY, RGB], ids=["gray", "rgb"])
def test_transform_is_deterministic_and_keeps_shape_and_dtype(name: str, image: np.ndarray) -> None:
    magnitude = dict(tr.DEFAULT_TRANSFORMS)[name]
    before = image.copy()
    first = tr.TRANSFORMS[name](image, magnitude)
    second = tr.TRANSFORMS[name](image, magnitude)
    assert first.shape == image.shape and first.dtype == np.uint8
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(image, before)  # the input is never modified
    identity = tr.TRANSFORMS[name](image, tr.IDENTITY[name])
    np.testing.assert_array_equal(identity, image)
    assert identity is not image
    changed = not np.array_equal(first, image)
    assert changed == (tr.applicable(name, image) is None)


def test_registry_covers_the_required_transforms_and_defaults_are_known() -> None:
    required = {
        "rotation", "hflip", "vflip", "translation", "scale", "shear", "brightness",
        "contrast", "hue", "saturation", "grayscale", "blur", "windowing", "gamma",
    }  # fmt: skip
    assert required == set(tr.TRANSFORMS) == set(tr.IDENTITY)
    assert {name for name, _ in tr.DEFAULT_TRANSFORMS} == required


@pytest.mark.parametrize("image", [GRAY, RGB], ids=["gray", "rgb"])
def test_flips_are_involutions_and_match_numpy(image: np.ndarray) -> None:
    np.testing.assert_array_equal(tr.hflip(tr.hflip(image, 1), 1), image)
    np.testing.assert_array_equal(tr.vflip(tr.vflip(image, 1), 1), image)
    np.testing.assert_array_equal(tr.hflip(image, 1), image[:, ::-1])
    np.testing.assert_array_equal(tr.vflip(image, 1), image[::-1])


def test_rotation_by_90_on_a_square_image_is_numpys_rot90() -> None:
    square = _textured((20, 20, 3))
    np.testing.assert_array_equal(tr.rotation(square, 90.0), np.rot90(square))


def test_translation_shifts_whole_pixels_and_fills_black() -> None:
    image = _textured((20, 10))
    out = tr.translation(image, 0.1)  # 2 rows down, 1 column right
    np.testing.assert_array_equal(out[2:, 1:], image[:-2, :-1])
    assert not out[:2].any() and not out[:, :1].any()
    back = tr.translation(image, -0.1)
    np.testing.assert_array_equal(back[:-2, :-1], image[2:, 1:])


def test_photometric_transforms_follow_their_formulas() -> None:
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    window = tr.windowing(ramp, 0.5).ravel()
    assert np.all(window[:64] == 0) and np.all(window[192:] == 255)
    assert np.all(np.diff(window.astype(int)) >= 0)
    expected = np.rint(np.clip((np.arange(256) - 63.75) / 0.5, 0, 255))
    np.testing.assert_array_equal(window, expected)
    np.testing.assert_array_equal(
        tr.gamma(ramp, 0.5).ravel(), np.rint(255 * np.sqrt(np.arange(256) / 255))
    )
    np.testing.assert_array_equal(
        tr.brightness(ramp, 2.0).ravel(), np.minimum(2 * np.arange(256), 255)
    )
    flat = tr.contrast(ramp, 0.0)
    assert np.unique(flat).size == 1 and abs(int(flat[0, 0]) - 127.5) <= 0.5
    gray = tr.grayscale(RGB, 1.0)
    assert np.all(gray[..., 0] == gray[..., 1]) and np.all(gray[..., 1] == gray[..., 2])


@pytest.mark.parametrize(
    ("name", "magnitude"),
    [
        ("hflip", 0.5),
        ("scale", 0.0),
        ("shear", 90.0),
        ("brightness", -1.0),
        ("hue", 0.6),
        ("grayscale", 2.0),
        ("blur", -1.0),
        ("windowing", 0.0),
        ("gamma", 0.0),
        ("rotation", math.nan),
    ],
)
def test_invalid_magnitudes_raise(name: str, magnitude: float) -> None:
    with pytest.raises(ValueError, match=name):
        tr.TRANSFORMS[name](RGB, magnitude)


def test_bad_images_and_unknown_names_raise() -> None:
    with pytest.raises(ValueError, match="uint8"):
        tr.rotation(RGB.astype(np.float32), 10)
    with pytest.raises(ValueError, match="shape"):
        tr.rotation(np.zeros((4, 4, 4), dtype=np.uint8), 10)
    with pytest.raises(KeyError, match="unknown image transform 'twirl'"):
        tr.apply_transform("twirl", RGB[None], 1.0)


def test_batch_application_tags_and_applicability() -> None:
    batch = np.stack([_textured((16, 16), seed) for seed in range(3)])
    out = tr.apply_transform("blur", batch, 1.0)
    np.testing.assert_array_equal(out[1], tr.blur(batch[1], 1.0))
    assert tr.transform_tag("rotation", 10) == "rotation_10"
    assert tr.transform_tag("scale", 1.25) == "scale_1.25"
    assert tr.transform_tag("hue", -0.1) == "hue_-0.1"
    assert "grayscale" in (tr.applicable("hue", batch) or "")
    assert tr.applicable("hue", RGB[None]) is None
    assert tr.applicable("blur", batch) is None
    replicated = np.repeat(batch[..., None], 3, axis=-1)
    assert "channels are equal" in (tr.applicable("saturation", replicated) or "")
    for name in sorted(tr.COLOUR_TRANSFORMS):
        moved = tr.apply_transform(name, replicated, dict(tr.DEFAULT_TRANSFORMS)[name])
        np.testing.assert_array_equal(moved, replicated)


# --------------------------------------------------------------------------- statistics


def _gaussian(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(5, 5))
    cov = a @ a.T + 0.5 * np.eye(5)
    x = rng.multivariate_normal(np.arange(5.0), cov, size=n)
    return x, cov


def test_whitened_features_have_identity_covariance() -> None:
    x, true_cov = _gaussian(20_000)
    stats = wh.feature_stats(x, 1e-6)
    np.testing.assert_allclose(stats["covariance"], np.cov(x, rowvar=False), atol=1e-10)
    np.testing.assert_allclose(stats["covariance"], true_cov, rtol=0.1, atol=0.15)
    white = wh.whiten(x, stats)
    # Exactly diag(lambda / (lambda + epsilon)): identity up to the epsilon shrinkage.
    np.testing.assert_allclose(np.cov(white, rowvar=False), np.eye(5), atol=1e-5)
    np.testing.assert_allclose(white.mean(axis=0), 0, atol=1e-10)
    assert int(stats["n"]) == 20_000 and float(stats["epsilon"]) == 1e-6
    assert int(stats["rank"]) == 5 and int(stats["dims_below_epsilon"]) == 0


def test_mahalanobis_matches_scipy_and_cosine_matches_the_cholesky_formula() -> None:
    x, _ = _gaussian(40)
    eps = 1e-3
    stats = wh.feature_stats(x, eps)
    precision = np.linalg.inv(np.cov(x, rowvar=False) + eps * np.eye(5))
    cosine, distance = wh.similarity(x[:6], x[6:12], stats)
    expected = [mahalanobis(x[i], x[6 + i], precision) for i in range(6)]
    np.testing.assert_allclose(distance, expected, rtol=1e-10)
    # ssl-invariances: cosine of (mu - f) @ cholesky(inv(Sigma)); any W with W W^T =
    # inv(Sigma) gives the same cosine.
    chol = np.linalg.cholesky(precision)
    a, b = (x.mean(0) - x[:6]) @ chol, (x.mean(0) - x[6:12]) @ chol
    si = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    np.testing.assert_allclose(cosine, si, rtol=1e-10)
    same_cosine, same_distance = wh.similarity(x[:3], x[:3], stats)
    np.testing.assert_allclose(same_cosine, 1.0, atol=1e-12)
    np.testing.assert_allclose(same_distance, 0.0, atol=1e-12)


def test_rank_deficient_covariance_is_regularised_not_fatal() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 30))
    stats = wh.feature_stats(x, 1e-6)
    assert int(stats["rank"]) == 9 and int(stats["dims_below_epsilon"]) == 21
    w = stats["whitening"]
    assert np.all(np.isfinite(w))
    reference = np.linalg.inv(np.cov(x, rowvar=False) + 1e-6 * np.eye(30))
    np.testing.assert_allclose(w @ w.T, reference, rtol=1e-6, atol=1e-3)
    with pytest.raises(ValueError, match="singular"):
        wh.feature_stats(x, 0.0)
    with pytest.raises(ValueError, match="at least 2"):
        wh.feature_stats(x[:1], 1e-6)


def test_cached_feature_stats_hits_and_keys_on_the_features() -> None:
    x, _ = _gaussian(50)
    key = {"model": "m", "dataset": "d", "split": "train"}
    first, hit1 = wh.cached_feature_stats(x, 1e-6, key, cached_arrays)
    second, hit2 = wh.cached_feature_stats(x, 1e-6, key, cached_arrays)
    assert (hit1, hit2) == (False, True)
    direct = wh.feature_stats(x, 1e-6)
    for name in ("mean", "covariance", "whitening"):
        np.testing.assert_array_equal(first[name], second[name])
        np.testing.assert_allclose(first[name], direct[name], rtol=1e-12, atol=1e-12)
    assert not wh.cached_feature_stats(x[:-1], 1e-6, key, cached_arrays)[1]
    assert not wh.cached_feature_stats(x, 1e-5, key, cached_arrays)[1]
    changed = x.copy()
    changed[0, 0] += 1.0
    assert not wh.cached_feature_stats(changed, 1e-6, key, cached_arrays)[1]


# --------------------------------------------------------------------------- through extract


class _Net(torch.nn.Module):
    def __init__(self, flip_average: bool) -> None:
        super().__init__()
        self.flip_average = flip_average
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(2),
            torch.nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.flip_average:
            return self.body(x)
        return (self.body(x) + self.body(torch.flip(x, dims=(-1,)))) / 2


def _extract(module: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    # crop_pct 1 at the images' own size: resize and crop are exact no-ops, so the
    # preprocessing commutes with the flip.
    pre = Preprocessing(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic", 1.0)
    return features.extract(module, images, pre, torch.device("cpu"), batch_size=8)


@pytest.mark.parametrize("flip_average", [True, False], ids=["invariant", "random-conv"])
def test_hflip_invariance_through_feature_extraction(flip_average: bool) -> None:
    torch.manual_seed(0)
    module = _Net(flip_average)
    rng = np.random.default_rng(0)
    images = np.stack([_textured((32, 32, 3), seed) for seed in range(56)])
    images = images[rng.permutation(56)]
    cov_images, test_images = images[:40], images[40:]
    stats = wh.feature_stats(_extract(module, cov_images), 1e-6)
    clean = _extract(module, test_images)
    flipped = _extract(module, tr.apply_transform("hflip", test_images, 1.0))
    config = inv.InvarianceConfig(transforms=(("hflip", 1.0),), num_images=16)
    result = inv.run_synthetic(clean, {"hflip_1": flipped}, stats, config)
    cosine = result.metrics["cos_hflip_1"]
    if flip_average:
        assert cosine == pytest.approx(1.0, abs=1e-6)
        assert result.metrics["mahal_hflip_1"] < 1e-3
    else:
        assert cosine < 0.9
        assert result.metrics["mahal_hflip_1"] > 1.0
    assert result.metrics["mean_cosine"] == cosine
    assert result.details["n_images"] == 16 and result.details["feature_dim"] == 32


# --------------------------------------------------------------------------- pairs


GROUPS = np.array([3, 3, 7, 1, 3, 7, 9, 1, 1, 1])


def test_pairs_from_groups_lists_every_same_group_pair() -> None:
    pairs = mv.pairs_from_groups(GROUPS, 1000, seed=0)
    expected = {
        (i, j)
        for i in range(len(GROUPS))
        for j in range(i + 1, len(GROUPS))
        if GROUPS[i] == GROUPS[j]
    }
    assert {tuple(p) for p in pairs.tolist()} == expected and len(pairs) == len(expected) == 10
    assert pairs.dtype == np.int64 and np.all(pairs[:, 0] < pairs[:, 1])


def test_pairs_from_groups_samples_distinct_valid_pairs_deterministically() -> None:
    groups = np.repeat(np.array(["a", "b", "c"]), [2000, 3, 1])
    pairs = mv.pairs_from_groups(groups, 500, seed=1)
    assert pairs.shape == (500, 2)
    assert np.all(groups[pairs[:, 0]] == groups[pairs[:, 1]])
    assert np.all(pairs[:, 0] < pairs[:, 1])
    assert len({tuple(p) for p in pairs.tolist()}) == 500
    np.testing.assert_array_equal(pairs, mv.pairs_from_groups(groups, 500, seed=1))
    assert not np.array_equal(pairs, mv.pairs_from_groups(groups, 500, seed=2))


def test_pairs_from_groups_without_shared_groups_raises() -> None:
    with pytest.raises(ValueError, match="no two of the 4 images share a group"):
        mv.pairs_from_groups(np.arange(4), 10, seed=0)
    with pytest.raises(ValueError, match="1-D"):
        mv.pairs_from_groups(np.zeros((2, 2)), 10, seed=0)


def test_pairs_across_groups_pair_different_groups() -> None:
    pairs = mv.pairs_across_groups(GROUPS, 200, seed=0)
    assert pairs.shape == (200, 2)
    assert np.all(GROUPS[pairs[:, 0]] != GROUPS[pairs[:, 1]])
    np.testing.assert_array_equal(pairs, mv.pairs_across_groups(GROUPS, 200, seed=0))
    assert mv.pairs_across_groups(np.zeros(5), 10, seed=0).shape == (0, 2)


def test_pairing_rule_reads_the_card() -> None:
    assert mv.pairing_rule({}, "datasets/x.yaml") == "same_group"
    assert mv.pairing_rule({"rule": "same_group"}, "datasets/x.yaml") == "same_group"
    with pytest.raises(ValueError, match=r"datasets/x\.yaml: pairing rule 'lateral'"):
        mv.pairing_rule({"rule": "lateral"}, "datasets/x.yaml")


# --------------------------------------------------------------------------- protocols


def test_run_synthetic_metrics_and_details() -> None:
    rng = np.random.default_rng(0)
    cov = rng.normal(size=(200, 6))
    clean = rng.normal(size=(20, 6))
    stats = wh.feature_stats(cov, 1e-6)
    mirrored = 2 * stats["mean"] - clean  # whitened vector exactly negated
    transformed = {"blur_1": clean + 0.01 * rng.normal(size=clean.shape), "flip": mirrored}
    config = inv.InvarianceConfig()
    result = inv.run_synthetic(clean, transformed, stats, config, skipped={"hue_0.1": "gray"})
    m = result.metrics
    assert m["cos_blur_1"] > 0.99 and m["cos_flip"] == pytest.approx(-1.0, abs=1e-12)
    assert m["mean_cosine"] == pytest.approx((m["cos_blur_1"] + m["cos_flip"]) / 2)
    assert m["mean_mahalanobis"] == pytest.approx((m["mahal_blur_1"] + m["mahal_flip"]) / 2)
    d = result.details
    assert d["skipped_transforms"] == {"hue_0.1": "gray"} and d["transforms"] == list(transformed)
    assert (d["cov_n"], d["epsilon"], d["n_images"]) == (200, 1e-6, 20)
    json.dumps(result.metrics), json.dumps(result.details)
    with pytest.raises(ValueError, match="no transformed"):
        inv.run_synthetic(clean, {}, stats, config)
    with pytest.raises(ValueError, match="rows"):
        inv.run_synthetic(clean, {"x": clean[:5]}, stats, config)


def test_run_multiview_same_group_pairs_beat_the_chance_baseline() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), 4)
    centres = rng.normal(size=(30, 8))
    feats = centres[groups] + 0.3 * rng.normal(size=(120, 8))
    stats = wh.feature_stats(feats, 1e-6)
    config = mv.MultiviewConfig()
    pairs = mv.pairs_from_groups(groups, config.num_pairs, config.seed)
    result = mv.run_multiview(feats, pairs, stats, config, groups=groups)
    d = result.details
    assert result.metrics["n_pairs"] == 100
    assert result.metrics["mean_cosine"] > 0.8 and abs(d["baseline_cosine"]) < 0.2
    assert d["cosine_gap"] == pytest.approx(result.metrics["mean_cosine"] - d["baseline_cosine"])
    assert d["n_baseline_pairs"] == 100
    no_baseline = mv.run_multiview(feats, pairs, stats, config)
    assert math.isnan(no_baseline.details["baseline_cosine"])
    with pytest.raises(ValueError, match="itself"):
        mv.run_multiview(feats, np.array([[1, 1]]), stats, config)


# --------------------------------------------------------------------------- configs


def test_configs_profiles_round_trip_and_validate() -> None:
    smoke, demo = (
        inv.InvarianceConfig.for_profile("smoke"),
        inv.InvarianceConfig.for_profile("demo"),
    )
    assert smoke.num_images == 16 and demo.num_images == 32 and demo.epsilon == 1e-6
    assert inv.InvarianceConfig.for_profile("paper").num_images == 100
    assert demo.transforms == tr.DEFAULT_TRANSFORMS and len(demo.tags()) == len(set(demo.tags()))
    as_dict = json.loads(json.dumps(demo.to_dict()))
    assert inv.InvarianceConfig(**as_dict) == demo
    multiview = mv.MultiviewConfig.for_profile("paper")
    assert mv.MultiviewConfig(**json.loads(json.dumps(multiview.to_dict()))) == multiview
    with pytest.raises(ValueError, match="unknown profile"):
        inv.InvarianceConfig.for_profile("huge")
    with pytest.raises(ValueError, match="twirl"):
        inv.InvarianceConfig(transforms=(("twirl", 1.0),))
    with pytest.raises(ValueError, match="hue"):
        inv.InvarianceConfig(transforms=(("hue", 2.0),))
    with pytest.raises(ValueError, match="duplicates"):
        inv.InvarianceConfig(transforms=(("blur", 1.0), ("blur", 1)))
    with pytest.raises(ValueError, match="pairing_rule"):
        mv.MultiviewConfig(pairing_rule="lateral")


def test_covariance_sample_rule() -> None:
    assert wh.cov_sample_size(600, 1000, 0.1) == 600
    assert wh.cov_sample_size(5000, 1000, 0.1) == 1000
    assert wh.cov_sample_size(50_000, 1000, 0.1) == 5000
    assert wh.cov_sample_size(50_000, None, 0.1) == 50_000
    config = inv.InvarianceConfig()
    index = wh.cov_indices(5000, config)
    assert len(index) == len(np.unique(index)) == 1000
    np.testing.assert_array_equal(index, wh.cov_indices(5000, config))
    np.testing.assert_array_equal(wh.cov_indices(600, config), np.arange(600))
    sample = wh.sample_indices(300, 100, seed=0)
    assert len(np.unique(sample)) == 100 and np.all(np.diff(sample) > 0)
