"""Oracle tests of the invariance presets: each preset against the peer's procedure.

The oracle re-implements jonahanton/SSL_medicalimaging@77fceef:invariances/invariances.py
from its documented steps (pooled train+test, legacy NumPy draws with replacement,
``np.cov`` + 1e-6 I, Cholesky-whitened cosine per image and magnitude,
``nanmean(S, axis=0).mean()``) in a few lines of numpy / torch / PIL, and the preset's
config, run through the protocol's ``run_case`` on a stand-in case, must give the same
per-transform numbers to 1e-6.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.spatial.distance import mahalanobis

from harness.config.cards import get_model_card
from harness.protocols import image_transforms as tr
from harness.protocols import invariance as inv
from harness.protocols import invariance_presets as presets
from harness.protocols import invariance_sampling as sampling
from harness.protocols.registry import get_preset


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path))
    return tmp_path


class ToyModel:
    """A fixed nonlinear feature map of the raw pixels (stands in for a frozen backbone)."""

    def __init__(self, pixels: int, dim: int, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.weights = rng.normal(0, 1 / np.sqrt(pixels), (pixels, dim))
        self.bias = rng.normal(0, 0.3, dim)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = images.reshape(len(images), -1).astype(np.float64) / 255.0 - 0.5
        return np.tanh(x @ self.weights * 3 + self.bias).astype(np.float32)


class FakeCase:
    """The attributes the preset's configure function and ``run_case`` read."""

    def __init__(self, dataset: str, splits: dict[str, np.ndarray], model: ToyModel) -> None:
        self.case = SimpleNamespace(dataset=SimpleNamespace(name=dataset))
        self.model = model
        self._splits = {
            name: SimpleNamespace(images=images, labels=np.zeros(len(images), dtype=np.int64))
            for name, images in splits.items()
        }

    def splits(self) -> dict[str, Any]:
        return self._splits

    def features(self, names: tuple[str, ...]) -> dict[str, Any]:
        return {n: SimpleNamespace(features=self.model(self._splits[n].images)) for n in names}

    def derived_feature_sets(
        self, split: str, prefix: str, sets: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        return {tag: self.model(images) for tag, images in sets.items()}

    def cached_arrays(self, namespace: str, depends_on: dict[str, Any], compute: Any) -> Any:
        return compute(), False


def given_features(config: inv.InvarianceConfig) -> inv.InvarianceConfig:
    """The preset's procedure on the toy model's features as given (eval mode: the toy
    has no batch norm); the training-mode batches are checked in test_batch_statistics.py."""
    assert config.batchnorm == "batch-statistics"
    return dataclasses.replace(config, batchnorm="eval")


def _images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Smooth, asymmetric uint8 images (a random low-frequency field per image)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] / max(shape[:2])
    out = []
    for _ in range(n):
        a, b, c, d = rng.uniform(-3, 3, 4)
        field = 128 + 60 * np.sin(a * xx + b * yy) + 40 * np.cos(c * xx * yy + d) + 30 * xx
        field = field + rng.normal(0, 6, shape[:2])
        if len(shape) == 3:
            field = np.stack([field, 255 - field, 0.5 * field + 60 * np.cos(4 * yy)], axis=-1)
        out.append(np.clip(field, 0, 255))
    return np.stack(out).astype(np.uint8)


# ------------------------------------------------------------------ the peer, re-implemented


def peer_similarity(
    pool: np.ndarray, model: ToyModel, transform: Any, k: int, num_images: int = 100
) -> tuple[float, float]:
    """SSL_medicalimaging's ``invariances.py`` on a pooled dataset: (similarity, distance)."""
    clean = torch.from_numpy(model(pool))  # float32, as the peer's model outputs
    np.random.seed(0)
    if len(pool) < 1000:
        rows = clean
    else:
        rows = clean[np.random.choice(np.arange(len(pool)), max(1000, int(0.1 * len(pool))))]
    mean = rows.mean(dim=0)
    cov_matrix = np.cov(rows, rowvar=False) + 1e-6 * np.eye(rows.shape[1])
    inv_cov = np.linalg.inv(cov_matrix)
    chol = torch.linalg.cholesky(torch.from_numpy(inv_cov).to(torch.float32))
    np.random.seed(0)  # a run whose covariance is cached: the sampler is the first draw
    sampler = np.random.choice(np.arange(len(pool)), num_images)
    S = torch.zeros((num_images, k))
    L = torch.zeros((num_images, k))
    for i, index in enumerate(sampler):
        clean_feature = clean[index][None]
        a = (mean - clean_feature) @ chol
        moved = torch.from_numpy(model(np.stack([transform(pool[index], j) for j in range(k)])))
        for j in range(k):
            b = (mean - moved[j]) @ chol
            S[i, j] = F.cosine_similarity(a, b, dim=-1).mean()
            L[i, j] = mahalanobis(clean_feature[0], moved[j], inv_cov)  # old scipy squeezed
    return float(np.nanmean(S, axis=0).mean()), float(np.nanmean(L, axis=0).mean())


def peer_hflip(image: np.ndarray, j: int) -> np.ndarray:
    """``[False, True]``: the identity, then PIL's left-right flip."""
    picture = Image.fromarray(image)
    return np.asarray(picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if j else picture)


def peer_rotation(k: int) -> Any:
    """Angles ``360 j / k``; PIL ``rotate`` with its nearest-neighbour default."""

    def rotate(image: np.ndarray, j: int) -> np.ndarray:
        return np.asarray(Image.fromarray(image).rotate(360.0 * j / k, Image.Resampling.NEAREST))

    return rotate


# ------------------------------------------------------------------------------ the tests


def test_preset_is_registered_with_the_peers_preprocessing() -> None:
    preset = get_preset("invariance", "ssl-medicalimaging")
    assert preset is not None and preset.version == 4
    assert preset.source.startswith("jonahanton/SSL_medicalimaging@77fceef:")
    case = FakeCase("shenzhen", {}, ToyModel(4, 2))
    case.case.model = get_model_card("resnet50.moco_v2")
    assert preset.overrides(case) == {
        "input_size": 224,
        "interpolation": "bilinear",
        "crop_pct": 0.875,
        "crop_mode": "center",
        "mean": (0.485, 0.456, 0.406),  # ImageNet's, except for --no-norm runs
        "std": (0.229, 0.224, 0.225),
    }
    config = preset.configure(case)
    assert config == presets.ssl_medical_invariance(case)
    assert (config.num_images, config.cov_images, config.cov_fraction) == (100, 1000, 0.1)
    assert config.epsilon == 1e-6 and config.pool_splits == ("train", "val", "test")
    assert (config.sampling, config.aggregate) == ("numpy-legacy", "name")
    assert config.transform_backend == "torchvision-pil"
    assert config.whitening == "float32-cholesky"
    names = [name for name, _ in config.transforms]
    assert names.count("hflip") == 2 and names.count("rotation") == 256 and names.count("hue") == 5
    angles = [m for n, m in config.transforms if n == "rotation"]
    np.testing.assert_array_equal(angles, 360.0 * np.arange(256) / 256)
    hues = [m for n, m in config.transforms if n == "hue"]
    assert hues == [-0.5, -0.25, 0.0, 0.25, 0.5]
    eyepacs = presets.ssl_medical_invariance(FakeCase("eyepacs", {}, ToyModel(4, 2)))
    np.testing.assert_array_equal(
        [m for n, m in eyepacs.transforms if n == "rotation"], 18.0 * np.arange(20)
    )
    as_dict = eyepacs.to_dict()
    assert inv.InvarianceConfig(**as_dict) == eyepacs


def test_legacy_draws_are_numpys_global_draws() -> None:
    np.random.seed(3)
    expected = np.random.choice(np.arange(1500), max(1000, int(0.1 * 1500)))
    np.testing.assert_array_equal(sampling.legacy_cov_indices(1500, 1000, 0.1, 3), expected)
    np.random.seed(3)
    expected = np.random.choice(np.arange(12345), 1234)
    np.testing.assert_array_equal(sampling.legacy_cov_indices(12345, 1000, 0.1, 3), expected)
    np.testing.assert_array_equal(sampling.legacy_cov_indices(999, 1000, 0.1, 3), np.arange(999))
    np.random.seed(0)
    expected = np.random.choice(np.arange(40), 100)
    np.testing.assert_array_equal(sampling.legacy_image_indices(40, 100, 0), expected)


def test_hflip_matches_the_peer_on_a_pool_of_more_than_1000_images() -> None:
    """Two values (identity, flip): the peer's (1 + cos) / 2, covariance rows drawn."""
    shape = (6, 5)
    splits = {"train": _images(700, shape, 0), "val": _images(200, shape, 1)}
    splits["test"] = _images(300, shape, 2)
    model = ToyModel(30, 12)
    case = FakeCase("shenzhen", splits, model)
    config = given_features(presets.ssl_medical_invariance(case))
    config = inv.InvarianceConfig(
        **{**config.to_dict(), "transforms": [["hflip", 0], ["hflip", 1]]}
    )
    result = inv.run_case(case, config)
    pool = np.concatenate([splits["train"], splits["val"], splits["test"]])
    similarity, distance = peer_similarity(pool, model, peer_hflip, 2)
    assert result.metrics["cos_hflip"] == pytest.approx(similarity, abs=1e-6)
    assert result.metrics["mahal_hflip"] == pytest.approx(distance, rel=1e-6)
    assert result.metrics["mean_cosine"] == pytest.approx(similarity, abs=1e-6)
    assert result.details["per_magnitude"]["hflip_0"]["cos"] == pytest.approx(1.0, abs=1e-6)
    assert result.details["cov_n"] == 1000 and result.details["n_images"] == 100
    # the flip moves the features: the identity's 1 is half of the number
    assert similarity < 0.99


def test_rotation_sweep_matches_the_peer_with_fewer_images_than_dimensions() -> None:
    """EyePACS' k=20 sweep, nearest-neighbour, on a pool smaller than the feature dimension."""
    splits = {"train": _images(20, (9, 9, 3), 3), "val": _images(6, (9, 9, 3), 4)}
    splits["test"] = _images(10, (9, 9, 3), 5)
    model = ToyModel(243, 48)
    case = FakeCase("eyepacs", splits, model)
    config = given_features(presets.ssl_medical_invariance(case))
    result = inv.run_case(case, config)
    pool = np.concatenate([splits["train"], splits["val"], splits["test"]])
    similarity, distance = peer_similarity(pool, model, peer_rotation(20), 20)
    assert result.metrics["cos_rotation"] == pytest.approx(similarity, abs=1e-6)
    # the peer averages float32 distances in float32: agreement to its precision
    assert result.metrics["mahal_rotation"] == pytest.approx(distance, rel=1e-6)
    assert len(result.details["per_magnitude"]) == 2 + 20 + 5
    hflip, _ = peer_similarity(pool, model, peer_hflip, 2)
    assert result.metrics["cos_hflip"] == pytest.approx(hflip, abs=1e-6)
    assert {"cos_hflip", "cos_rotation", "cos_hue"} <= set(result.metrics)
    # the peer's pooling decides the number here: medxfer's train/test split does not match it
    default = inv.InvarianceConfig(**{**config.to_dict(), "pool_splits": [], "sampling": "medxfer"})
    assert abs(inv.run_case(case, default).metrics["cos_rotation"] - similarity) > 1e-3


def test_pil_backend_is_torchvisions_pil_kernels() -> None:
    rgb = _images(1, (11, 13), 7)[0]
    rgb = np.stack([rgb, 255 - rgb, rgb // 2], axis=-1)
    np.testing.assert_array_equal(
        tr.get_transform("rotation", "torchvision-pil")(rgb, 30.0),
        np.asarray(Image.fromarray(rgb).rotate(30.0, Image.Resampling.NEAREST)),
    )
    assert not np.array_equal(
        tr.get_transform("rotation", "torchvision-pil")(rgb, 30.0), tr.rotation(rgb, 30.0)
    )
    gray = _images(1, (8, 8), 8)[0]
    np.testing.assert_array_equal(tr.get_transform("hue", "torchvision-pil")(gray, 0.25), gray)
    for name in tr.pil.TRANSFORMS:
        np.testing.assert_array_equal(
            tr.get_transform(name, "torchvision-pil")(rgb, tr.IDENTITY[name]), rgb
        )
    with pytest.raises(KeyError, match="has no 'shear'"):
        tr.get_transform("shear", "torchvision-pil")
    with pytest.raises(ValueError, match="transform_backend"):
        inv.InvarianceConfig(transform_backend="opencv")
    with pytest.raises(ValueError, match="sampling"):
        inv.InvarianceConfig(sampling="random")
