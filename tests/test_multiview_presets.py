"""Oracle tests of the multiview presets: each preset against the peer's procedure.

The oracle re-implements jonahanton/SSL_medicalimaging@77fceef:invariances/invariances_multiview.py
in its own terms: a pooled list of image paths (train then test), a clean dataset of every
image and a multi-view dataset of each lateral with its study's ``view1_frontal.jpg`` found
by path, ``np.random.seed(0)`` / ``torch.manual_seed(0)``, covariance rows from
``np.random.choice`` through a ``SubsetRandomSampler`` loader, ``np.cov`` + 1e-6 I, float32
Cholesky of the inverse, and 100 ``next(iter(DataLoader(..., shuffle=True)))`` pairs. The
preset's config, run through the protocol's ``run_case`` on a stand-in case, must give the
same ``mean_cosine`` to 1e-6. The stand-in features are taken as given (``batchnorm =
"eval"``); how the preset computes them, with the peer's training-mode batch norm, is
checked against the peer's batches in ``tests/test_batch_statistics.py``.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import mahalanobis
from torch.utils.data import DataLoader, Dataset, SubsetRandomSampler, TensorDataset

from harness.config.cards import get_model_card
from harness.data.npz import SplitData
from harness.protocols import multiview as mv
from harness.protocols import multiview_presets as presets
from harness.protocols.pairing import (
    PairingUnavailable,
    left_right_equal_grade_pairs,
    legacy_draws,
    pooled_split,
)
from harness.protocols.registry import get_preset

SPLITS = ("train", "val", "test")


class FakeCase:
    """The attributes the preset's configure function and ``run_case`` read."""

    def __init__(self, rule: str, splits: dict[str, SplitData], feats: dict[str, np.ndarray]):
        card = SimpleNamespace(name="toy", pairing={"rule": rule}, source_file=None)
        self.case = SimpleNamespace(dataset=card)
        self._splits = splits
        self._feats = feats

    def splits(self) -> dict[str, SplitData]:
        return self._splits

    def features(self, names: tuple[str, ...]) -> dict[str, Any]:
        return {n: SimpleNamespace(features=self._feats[n]) for n in names}

    def cached_arrays(self, namespace: str, depends_on: dict[str, Any], compute: Any) -> Any:
        return compute(), False


def given_features(config: mv.MultiviewConfig) -> mv.MultiviewConfig:
    """The preset's procedure on the stand-in features themselves (no backbone to run)."""
    assert config.batchnorm == "batch-statistics"
    return dataclasses.replace(config, batchnorm="eval")


def chexpert_pool(n_studies: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Shuffled CheXpert-like paths (a frontal per study, a lateral in 60% of them) and
    float32 features sharing a per-study component."""
    rng = np.random.default_rng(seed)
    paths: list[str] = []
    for study in range(n_studies):
        patient = study // 2
        paths.append(f"patient{patient}/study{study}/view1_frontal.jpg")
        if rng.random() < 0.6:
            paths.append(f"patient{patient}/study{study}/view2_lateral.jpg")
    order = rng.permutation(len(paths))
    paths = [paths[i] for i in order]
    dim = 6
    study_part = rng.normal(0, 1, (n_studies, dim))
    mixing = rng.normal(0, 1, (dim, dim))
    study_of = np.array([int(p.split("/")[1][5:]) for p in paths])
    feats = study_part[study_of] + 0.8 * rng.normal(0, 1, (len(paths), dim))
    return paths, (feats @ mixing).astype(np.float32)


def as_case(paths: list[str], feats: np.ndarray) -> FakeCase:
    """Cut the pooled rows into train / val / test SplitData (the pool order is kept)."""
    n = len(paths)
    cuts = [0, int(0.6 * n), int(0.75 * n), n]
    views = np.array(["lateral" if p.endswith("lateral.jpg") else "frontal" for p in paths])
    studies = np.array([int(p.split("/")[1][5:]) for p in paths], dtype=np.int64)
    groups = np.array([int(p.split("/")[0][7:]) for p in paths], dtype=np.int64)
    splits, per_split = {}, {}
    for name, lo, hi in zip(SPLITS, cuts[:-1], cuts[1:], strict=True):
        splits[name] = SplitData(
            images=np.zeros((hi - lo, 2, 2), np.uint8),
            labels=np.zeros(hi - lo, dtype=np.int64),
            groups=groups[lo:hi],
            views=views[lo:hi],
            studies=studies[lo:hi],
        )
        per_split[name] = feats[lo:hi]
    return FakeCase("frontal_lateral", splits, per_split)


class MultiViews(Dataset):
    """The peer's ``group_front_lateral`` dataset: laterals, each with its study's frontal."""

    def __init__(self, paths: list[str], feats: np.ndarray) -> None:
        self.row = {p: i for i, p in enumerate(paths)}
        self.laterals = [p for p in paths if p.endswith("lateral.jpg")]
        self.feats = torch.from_numpy(feats)

    def __len__(self) -> int:
        return len(self.laterals)

    def __getitem__(self, idx: int) -> tuple[tuple[torch.Tensor, torch.Tensor], float]:
        path = self.laterals[idx]
        frontal = "/".join([*path.split("/")[:-1], "view1_frontal.jpg"])
        return (self.feats[self.row[path]], self.feats[self.row[frontal]]), 0.0


def peer_clean_loader(clean: Dataset) -> DataLoader:
    """The peer's seeds, then its covariance loader: in order below 1000 images, else
    ``np.random.choice`` rows through a ``SubsetRandomSampler``; batches of 256."""
    np.random.seed(0)
    torch.manual_seed(0)
    if len(clean) < 1000:
        return DataLoader(clean, batch_size=256)
    idx = np.random.choice(np.arange(len(clean)), max(1000, int(0.1 * len(clean))))
    return DataLoader(clean, batch_size=256, sampler=SubsetRandomSampler(idx))


def peer_multiview(paths: list[str], feats: np.ndarray, num_images: int = 100) -> dict:
    """SSL_medicalimaging's multi-view similarity and distance, step by step."""
    clean = TensorDataset(torch.from_numpy(feats), torch.zeros(len(feats)))
    multi = MultiViews(paths, feats)
    rows = torch.cat([x for x, _ in peer_clean_loader(clean)])
    mean = rows.mean(dim=0)
    cov = np.cov(rows, rowvar=False) + 1e-6 * np.eye(rows.shape[1])
    inv = np.linalg.inv(cov)
    chol = torch.linalg.cholesky(torch.from_numpy(inv).to(torch.float32))
    sims, dists = torch.zeros(num_images), torch.zeros(num_images)
    views = DataLoader(multi, batch_size=1, shuffle=True)
    for i in range(num_images):
        (v1, v2), _ = next(iter(views))
        a, b = (mean - v1) @ chol, (mean - v2) @ chol
        sims[i] = F.cosine_similarity(a, b, dim=-1).mean()
        dists[i] = mahalanobis(v1[0], v2[0], inv)
    return {"cosine": float(np.nanmean(sims)), "mahalanobis": float(np.nanmean(dists))}


@pytest.mark.parametrize(("n_studies", "seed"), [(900, 3), (160, 4)])
def test_ssl_medicalimaging_preset_matches_the_peer(n_studies: int, seed: int) -> None:
    """Pools of >= 1000 images (covariance drawn with replacement) and < 1000 (all)."""
    paths, feats = chexpert_pool(n_studies, seed)
    assert (len(paths) >= 1000) == (n_studies == 900)
    case = as_case(paths, feats)
    config = given_features(presets.ssl_medical_multiview(case))
    state = torch.get_rng_state()
    result = mv.run_case(case, config)
    assert torch.equal(state, torch.get_rng_state())  # the protocol leaves torch's RNG alone
    expected = peer_multiview(paths, feats)
    assert result.metrics["mean_cosine"] == pytest.approx(expected["cosine"], abs=1e-6)
    assert result.metrics["mean_mahalanobis"] == pytest.approx(expected["mahalanobis"], rel=1e-4)
    assert result.metrics["n_pairs"] == 100.0
    assert result.details["cov_n"] == (1000 if len(paths) >= 1000 else len(paths))
    assert result.details["n_distinct_pairs"] < 100  # drawn with replacement


def test_few_candidates_are_drawn_with_replacement_like_the_peer() -> None:
    paths, feats = chexpert_pool(40, 5)
    case = as_case(paths, feats)
    n_laterals = sum(p.endswith("lateral.jpg") for p in paths)
    assert n_laterals < 40
    result = mv.run_case(case, given_features(presets.ssl_medical_multiview(case)))
    assert result.metrics["n_pairs"] == 100.0
    assert result.details["n_distinct_pairs"] <= n_laterals
    assert result.metrics["mean_cosine"] == pytest.approx(
        peer_multiview(paths, feats)["cosine"], abs=1e-6
    )


def test_pooled_medxfer_sampling_differs_from_legacy_and_default_is_unchanged() -> None:
    paths, feats = chexpert_pool(300, 6)
    case = as_case(paths, feats)
    default = mv.MultiviewConfig(pairing_rule="frontal_lateral")
    assert default.pool_splits == () and default.sampling == "medxfer"
    assert default.to_dict()["pool_splits"] == []
    plain = mv.run_case(case, default)
    assert plain.metrics["n_pairs"] <= 100 and "pool_splits" not in plain.details
    pooled = mv.run_case(
        case, mv.MultiviewConfig(pairing_rule="frontal_lateral", pool_splits=SPLITS)
    )
    assert pooled.details["n_distinct_pairs"] == pooled.metrics["n_pairs"]  # no repeats
    assert pooled.details["pool_splits"] == list(SPLITS)


def test_preset_is_registered_with_the_peers_transform() -> None:
    preset = get_preset("multiview", "ssl-medicalimaging")
    assert preset is not None
    simclr = SimpleNamespace(case=SimpleNamespace(model=get_model_card("resnet50.simclr_v1")))
    assert preset.overrides(simclr) == {
        "input_size": 224,
        "interpolation": "bicubic",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": (0.0, 0.0, 0.0),  # the runner's --no-norm
        "std": (1.0, 1.0, 1.0),
    }
    assert "invariances_multiview.py" in preset.source
    paths, feats = chexpert_pool(20, 1)
    config = preset.configure(as_case(paths, feats))
    assert (config.num_pairs, config.sampling, config.pool_splits) == (100, "legacy", SPLITS)
    assert config.batchnorm == "batch-statistics" and preset.version == 3
    assert config.whitening == "float32-cholesky"
    assert config.pairing_rule == "frontal_lateral"


def test_config_rejects_unknown_sampling_and_duplicate_pools() -> None:
    with pytest.raises(ValueError, match="sampling"):
        mv.MultiviewConfig(sampling="numpy")
    with pytest.raises(ValueError, match="duplicates"):
        mv.MultiviewConfig(pool_splits=("train", "train"))


def test_legacy_draws_follow_numpy_then_torch_streams() -> None:
    rows, picks = legacy_draws(1500, 7, 50, 1000, 0.1, 0)
    np.testing.assert_array_equal(rows, np.random.RandomState(0).choice(1500, 1000))
    assert picks.min() >= 0 and picks.max() < 7 and len(picks) == 50
    rows_small, _ = legacy_draws(999, 7, 5, 1000, 0.1, 0)
    np.testing.assert_array_equal(rows_small, np.arange(999))
    again = legacy_draws(1500, 7, 50, 1000, 0.1, 0)[1]
    np.testing.assert_array_equal(picks, again)


def test_pooled_split_needs_ids_on_every_split() -> None:
    with_views = SplitData(np.zeros((2, 1, 1), np.uint8), np.zeros(2), views=np.array(["a", "b"]))
    without = SplitData(np.zeros((1, 1, 1), np.uint8), np.zeros(1))
    with pytest.raises(PairingUnavailable, match="views"):
        pooled_split({"a": with_views, "b": without}, ["a", "b"])
    pooled = pooled_split({"a": with_views, "b": with_views}, ["a", "b"])
    assert len(pooled) == 4 and pooled.images.shape == (4, 0)


def test_eyepacs_pool_pairs_are_the_peers_equal_grade_pairs() -> None:
    """The peer keeps row pairs (``::2`` left, ``1::2`` right of trainLabels.csv) whose
    ``level`` agrees; medxfer pairs the pooled left / right eyes of a patient by grade."""
    rng = np.random.default_rng(7)
    ids = np.arange(10, 40)
    levels = rng.integers(0, 3, (len(ids), 2))
    csv = [
        (f"{i}_{side}", int(levels[k, s]))
        for k, i in enumerate(ids)
        for s, side in enumerate(("left", "right"))
    ]
    peer = {
        int(left[0].split("_")[0])
        for left, right in zip(csv[::2], csv[1::2], strict=True)
        if left[1] == right[1]
    }
    order = rng.permutation(len(csv))  # medxfer's rows need not follow the CSV
    names = [csv[i][0] for i in order]
    split = SplitData(
        images=np.zeros((len(csv), 1, 1), np.uint8),
        labels=np.array([csv[i][1] for i in order], dtype=np.int64),
        groups=np.array([int(n.split("_")[0]) for n in names], dtype=np.int64),
        views=np.array([n.split("_")[1] for n in names]),
    )
    pairs = left_right_equal_grade_pairs(pooled_split({"train": split}, ["train"]))
    assert {int(names[a].split("_")[0]) for a, _ in pairs} == peer
    assert all(names[a].endswith("left") and names[b].endswith("right") for a, b in pairs)
