"""The peers' float32 whitening arithmetic (``whitening = "float32-cholesky"``).

The oracle is SSL_medicalimaging's ``invariances.py`` loop, written here from its
documented steps: a torch float32 mean, ``np.cov`` + eps, ``np.linalg.inv``, the float32
``torch.linalg.cholesky`` of the inverse, one image at a time ``(mean - f) @ cholesky``,
``F.cosine_similarity`` and ``scipy.spatial.distance.mahalanobis``, stored in float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import mahalanobis

from harness.protocols import invariance as inv
from harness.protocols import multiview as mv
from harness.protocols.whitening import cached_feature_stats, feature_stats, similarity


def low_rank_features(n: int, dim: int, rank: int, noise: float, seed: int) -> np.ndarray:
    """Float32 features near a ``rank``-dimensional subspace (ill-conditioned covariance)."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(rank, dim)) / np.sqrt(dim)
    x = rng.normal(size=(n, rank)) @ basis + noise * rng.normal(size=(n, dim)) / np.sqrt(dim)
    return x.astype(np.float32)


def moved(x: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (x + 0.3 * rng.normal(size=x.shape) / np.sqrt(x.shape[1])).astype(np.float32)


def peer_loop(cov_rows: np.ndarray, clean: np.ndarray, other: np.ndarray) -> tuple[Any, Any]:
    rows = torch.from_numpy(cov_rows)
    mean = rows.mean(dim=0)
    inv_cov = np.linalg.inv(np.cov(rows, rowvar=False) + 1e-6 * np.eye(rows.shape[1]))
    chol = torch.linalg.cholesky(torch.from_numpy(inv_cov).to(torch.float32))
    S, L = torch.zeros(len(clean)), torch.zeros(len(clean))
    for i in range(len(clean)):
        f1, f2 = torch.from_numpy(clean[i][None]), torch.from_numpy(other[i])
        S[i] = F.cosine_similarity((mean - f1) @ chol, (mean - f2) @ chol, dim=-1).mean()
        L[i] = mahalanobis(f1[0], f2, inv_cov)
    return S.numpy().astype(np.float64), L.numpy().astype(np.float64)


@pytest.mark.parametrize(("n", "dim", "rank", "noise"), [(50, 64, 8, 0.5), (100, 96, 16, 0.2)])
def test_float32_cholesky_matches_the_peers_loop(n: int, dim: int, rank: int, noise: float) -> None:
    """Fewer images than dimensions: the float32 factor moves cosines; medxfer follows it."""
    x = low_rank_features(n, dim, rank, noise, seed=n)
    y = moved(x, seed=1)
    peer_cos, peer_dist = peer_loop(x, x[:30], y[:30])
    stats = feature_stats(x, 1e-6, "float32-cholesky")
    cosine, distance = similarity(x[:30], y[:30], stats)
    np.testing.assert_allclose(cosine, peer_cos, rtol=0, atol=1e-6)
    np.testing.assert_allclose(distance, peer_dist, rtol=1e-6)
    exact, exact_distance = similarity(x[:30], y[:30], feature_stats(x, 1e-6))
    assert np.abs(exact - peer_cos).max() > 2e-5  # the field changes the digits
    np.testing.assert_allclose(exact_distance, peer_dist, rtol=1e-5)
    assert stats["cholesky32"].dtype == np.float32 and "whitening" not in stats
    assert str(stats["arithmetic"]) == "float32-cholesky"
    assert int(stats["rank"]) == int(feature_stats(x, 1e-6)["rank"]) <= min(n - 1, dim)


def test_a_factor_the_peers_cannot_compute_falls_back_and_says_so() -> None:
    x = low_rank_features(60, 128, 8, 0.05, seed=3) * 30
    with pytest.raises(RuntimeError):  # the peer's own step fails on these statistics
        peer_loop(x, x[:2], x[2:4])
    stats = feature_stats(x, 1e-6, "float32-cholesky")
    assert str(stats["arithmetic"]) == "float64-eigh"
    assert "not positive definite in float32" in str(stats["whitening_note"])
    default = feature_stats(x, 1e-6)
    y = moved(x, seed=2)
    np.testing.assert_array_equal(similarity(x, y, stats)[0], similarity(x, y, default)[0])
    details = inv.run_synthetic(x[:5], {"hflip_1": y[:5]}, stats, inv.InvarianceConfig()).details
    assert (
        details["whitening"] == "float64-eigh" and "float64-eigh used" in details["whitening_note"]
    )


def test_the_cache_keys_the_arithmetic_and_round_trips_it() -> None:
    x = low_rank_features(50, 64, 8, 0.5, seed=50)
    saved: dict[str, Any] = {}

    def store(namespace: str, payload: dict, compute: Any) -> tuple[dict, bool]:
        key = repr(sorted((k, v) for k, v in payload.items() if k != "features"))
        hit = key in saved
        if not hit:
            saved[key] = {name: np.array(value) for name, value in compute().items()}
        return saved[key], hit

    peer, hit = cached_feature_stats(x, 1e-6, {"split": "train"}, store, "float32-cholesky")
    default, _ = cached_feature_stats(x, 1e-6, {"split": "train"}, store)
    again, hit_again = cached_feature_stats(x, 1e-6, {"split": "train"}, store, "float32-cholesky")
    assert not hit and hit_again and len(saved) == 2
    y = moved(x, seed=4)
    np.testing.assert_array_equal(similarity(x, y, again)[0], similarity(x, y, peer)[0])
    assert not np.array_equal(similarity(x, y, default)[0], similarity(x, y, peer)[0])
    with pytest.raises(ValueError, match="whitening must be one of"):
        cached_feature_stats(x, 1e-6, {}, store, "float16")


@pytest.mark.parametrize("config_type", [inv.InvarianceConfig, mv.MultiviewConfig])
def test_configs_validate_the_field_and_key_it_only_when_set(config_type: Any) -> None:
    assert "whitening" not in config_type().to_dict()  # old case keys unchanged
    assert config_type(whitening="float32-cholesky").to_dict()["whitening"] == "float32-cholesky"
    with pytest.raises(ValueError, match=f"{config_type.__name__}.whitening must be one of"):
        config_type(whitening="float32")
