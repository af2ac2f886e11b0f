"""Training-mode batch norm in the peers' batches (SSL_medicalimaging's invariance scripts).

The oracle runs jonahanton/SSL_medicalimaging@77fceef:invariances/invariances_multiview.py
with a real (tiny) backbone left in training mode, as its models/backbones.py leaves it:
``np.random.seed(0)`` / ``torch.manual_seed(0)``, the covariance features from the clean
loader's batches of 256 (a ``SubsetRandomSampler`` over ``np.random.choice`` rows on a pool
of 1000 or more), and each view of the 100 drawn pairs through the model alone.
"""

from __future__ import annotations

import copy
import dataclasses
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_invariance_presets import peer_hflip, peer_rotation
from test_multiview_presets import MultiViews, as_case, chexpert_pool, peer_clean_loader
from torch import nn
from torch.utils.data import DataLoader, SubsetRandomSampler, TensorDataset

from harness.config.model_cards import Preprocessing
from harness.data.npz import SplitData
from harness.data.transforms import eval_transform
from harness.protocols import invariance as inv
from harness.protocols import invariance_presets
from harness.protocols import multiview as mv
from harness.protocols import multiview_presets as presets
from harness.protocols.batch_statistics import batch_features, batch_statistics_module
from harness.protocols.invariance_sampling import legacy_cov_indices
from harness.protocols.pairing import legacy_cov_batches

PRE = Preprocessing(8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear", 1.0)


def tiny_backbone(seed: int = 0) -> nn.Module:
    """Conv, batch norm with non-trivial running statistics, pooled features."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    net[1].running_mean.uniform_(-0.5, 0.5)
    net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


class ImageCase:
    """A multi-view stand-in case with images, a backbone and a pass-through cache."""

    def __init__(self, paths: list[str], images: np.ndarray, net: nn.Module) -> None:
        stand_in = as_case(paths, np.zeros((len(paths), 1), np.float32))
        self.case = stand_in.case
        self._splits = {}
        start = 0
        for name, split in stand_in.splits().items():
            n = len(split.labels)
            self._splits[name] = SplitData(
                images=images[start : start + n],
                labels=split.labels,
                groups=split.groups,
                views=split.views,
                studies=split.studies,
            )
            start += n
        self.net = net
        self.device = "cpu"
        self.computed: list[str] = []

    def splits(self) -> dict[str, SplitData]:
        return self._splits

    def preprocessing(self) -> Preprocessing:
        return PRE

    def backbone(self) -> SimpleNamespace:
        return SimpleNamespace(load=lambda: self.net)

    def features(self, names: tuple[str, ...]) -> Any:
        raise AssertionError("batch statistics never reads the eval-mode feature cache")

    def cached_arrays(self, namespace: str, depends_on: dict[str, Any], compute: Any) -> Any:
        self.computed.append(namespace)
        return compute(), False


def study_images(paths: list[str], seed: int) -> np.ndarray:
    """12x12 RGB images sharing a per-study pattern, so a lateral resembles its frontal."""
    rng = np.random.default_rng(seed)
    studies = np.array([int(p.split("/")[1][5:]) for p in paths])
    pattern = rng.integers(0, 256, size=(studies.max() + 1, 12, 12, 3))
    noise = rng.integers(-40, 40, size=(len(paths), 12, 12, 3))
    return np.clip(pattern[studies] + noise, 0, 255).astype(np.uint8)


def peer_multiview(
    paths: list[str], images: np.ndarray, net: nn.Module, train_mode: bool = True
) -> float:
    """invariances_multiview.py's similarity, the backbone in training mode as the peer's."""
    transform = eval_transform(PRE)
    tensors = torch.stack([transform(image) for image in images])
    model = batch_statistics_reference(net) if train_mode else net.eval()
    clean = TensorDataset(tensors, torch.zeros(len(tensors)))
    multi = MultiViews(paths, tensors.numpy())
    loader = peer_clean_loader(clean)
    with torch.no_grad():
        rows = torch.cat([model(x) for x, _ in loader])
        mean = rows.mean(dim=0)
        cov = np.cov(rows, rowvar=False) + 1e-6 * np.eye(rows.shape[1])
        chol = torch.linalg.cholesky(torch.from_numpy(np.linalg.inv(cov)).to(torch.float32))
        sims = torch.zeros(100)
        views = DataLoader(multi, batch_size=1, shuffle=True)
        for i in range(100):
            (v1, v2), _ = next(iter(views))
            a, b = (mean - model(v1)) @ chol, (mean - model(v2)) @ chol
            sims[i] = F.cosine_similarity(a, b, dim=-1).mean()
    return float(np.nanmean(sims))


def batch_statistics_reference(net: nn.Module) -> nn.Module:
    """The peer's model: a copy in training mode (its running statistics are never read)."""
    return copy.deepcopy(net).train()


@pytest.mark.parametrize(("n_studies", "seed"), [(160, 4), (900, 3)])
def test_preset_features_are_the_peers_training_mode_batches(n_studies: int, seed: int) -> None:
    paths, _ = chexpert_pool(n_studies, seed)
    images = study_images(paths, seed)
    net = tiny_backbone(seed)
    case = ImageCase(paths, images, net)
    config = presets.ssl_medical_multiview(case)
    assert config.batchnorm == "batch-statistics"
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = mv.run_case(case, config)
    expected = peer_multiview(paths, images, net)
    assert result.metrics["mean_cosine"] == pytest.approx(expected, abs=1e-5)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # untouched
    # the mode is acted on: the same procedure on eval-mode features gives another number
    assert abs(peer_multiview(paths, images, net, train_mode=False) - expected) > 1e-3


def test_batches_are_normalised_on_their_own() -> None:
    net = tiny_backbone(1)
    images = np.random.default_rng(0).integers(0, 256, size=(5, 12, 12, 3), dtype=np.uint8)
    case = ImageCase(["patient0/study0/view1_frontal.jpg"], images[:1], net)
    together = batch_features(case, images, [np.arange(5)], "test")
    alone = batch_features(case, images, [np.array([i]) for i in range(5)], "test")
    split = batch_features(case, images, [np.array([0, 1]), np.array([2, 3, 4])], "test")
    transform = eval_transform(PRE)
    with torch.no_grad():
        model = batch_statistics_reference(net)
        batch = torch.stack([transform(image) for image in images])
        np.testing.assert_allclose(together, model(batch).numpy(), atol=1e-5)
        np.testing.assert_allclose(split[:2], model(batch[:2]).numpy(), atol=1e-5)
        np.testing.assert_allclose(alone[3], model(batch[3:4]).numpy()[0], atol=1e-5)
    assert np.abs(together - alone).max() > 1e-2  # batchmates change the features
    module = batch_statistics_module(net).eval()  # eval mode, still the batch's statistics
    with torch.no_grad():
        np.testing.assert_allclose(module(batch).numpy(), together, atol=1e-5)


def test_covariance_batches_replay_the_peers_loader() -> None:
    small = legacy_cov_batches(600, 1000, 0.1, 0)
    assert [len(b) for b in small] == [256, 256, 88]
    assert np.array_equal(np.concatenate(small), np.arange(600))
    large = legacy_cov_batches(1500, 1000, 0.1, 0)
    rows = legacy_cov_indices(1500, 1000, 0.1, 0)
    assert [len(b) for b in large] == [256, 256, 256, 232]
    assert sorted(np.concatenate(large).tolist()) == sorted(rows.tolist())  # repeats kept
    torch.manual_seed(0)
    replay = [b.numpy() for b in DataLoader(range(1500), 256, sampler=SubsetRandomSampler(rows))]
    assert all(np.array_equal(a, b) for a, b in zip(large, replay, strict=True))
    state = torch.get_rng_state()
    legacy_cov_batches(1500, 1000, 0.1, 0)
    assert torch.equal(state, torch.get_rng_state())


def test_batch_statistics_needs_the_peers_pooling() -> None:
    with pytest.raises(ValueError, match="batchnorm must be one of"):
        mv.MultiviewConfig(batchnorm="train")
    with pytest.raises(ValueError, match="needs pool_splits or legacy sampling"):
        mv.MultiviewConfig(batchnorm="batch-statistics")
    assert "batchnorm" not in mv.MultiviewConfig().to_dict()  # old case keys unchanged


class SyntheticCase(ImageCase):
    """A synthetic-invariance stand-in: pooled splits of images, no pairing ids."""

    def __init__(self, splits: dict[str, np.ndarray], net: nn.Module) -> None:
        self.case = SimpleNamespace(dataset=SimpleNamespace(name="toy"))
        self._splits = {
            name: SplitData(images=images, labels=np.zeros(len(images), np.int64))
            for name, images in splits.items()
        }
        self.net = net
        self.device = "cpu"
        self.computed = []


def peer_invariance_train_mode(
    pool: np.ndarray, net: nn.Module, kernel: Any, k: int, num_images: int = 100
) -> float:
    """invariances.py's similarity (a cached-covariance run), the backbone in training mode."""
    transform = eval_transform(PRE)
    model = batch_statistics_reference(net)
    tensors = torch.stack([transform(image) for image in pool])
    with torch.no_grad():
        np.random.seed(0)
        torch.manual_seed(0)
        assert len(pool) < 1000  # the clean loader in pool order, 256 at a time
        rows = torch.cat([model(x) for (x,) in DataLoader(TensorDataset(tensors), 256)])
        mean = rows.mean(dim=0)
        cov = np.cov(rows, rowvar=False) + 1e-6 * np.eye(rows.shape[1])
        chol = torch.linalg.cholesky(torch.from_numpy(np.linalg.inv(cov)).to(torch.float32))
        np.random.seed(0)
        sampler = np.random.choice(np.arange(len(pool)), num_images)
        S = np.zeros((num_images, k))
        for i, index in enumerate(sampler):
            clean = model(tensors[index][None])  # a batch of one
            data = torch.stack([transform(kernel(pool[index], j)) for j in range(k)])
            features = model(data)  # the k transformed copies together
            a = (mean - clean) @ chol
            for j in range(k):
                b = (mean - features[j]) @ chol
                S[i, j] = F.cosine_similarity(a, b, dim=-1).mean().item()
    return float(np.nanmean(S, axis=0).mean())


def test_synthetic_preset_features_are_the_peers_training_mode_batches() -> None:
    rng = np.random.default_rng(5)
    splits = {
        name: rng.integers(0, 256, size=(n, 12, 12, 3), dtype=np.uint8)
        for name, n in (("train", 30), ("val", 6), ("test", 14))
    }
    net = tiny_backbone(2)
    case = SyntheticCase(splits, net)
    config = invariance_presets.ssl_medical_invariance(case)
    assert config.batchnorm == "batch-statistics"
    four = tuple(("rotation", a) for a in (0.0, 90.0, 180.0, 270.0))
    config = dataclasses.replace(config, transforms=(("hflip", 0.0), ("hflip", 1.0), *four))
    result = inv.run_case(case, config)
    pool = np.concatenate([splits["train"], splits["val"], splits["test"]])
    hflip = peer_invariance_train_mode(pool, net, peer_hflip, 2)
    rotation = peer_invariance_train_mode(pool, net, peer_rotation(4), 4)
    assert result.metrics["cos_hflip"] == pytest.approx(hflip, abs=1e-5)
    assert result.metrics["cos_rotation"] == pytest.approx(rotation, abs=1e-5)
    # the identity entry comes from the transformed batch: not the clean feature's 1
    assert result.details["per_magnitude"]["hflip_0"]["cos"] < 0.999
    assert result.details["batchnorm"] == "batch-statistics"
    with pytest.raises(ValueError, match="needs pool_splits or numpy-legacy"):
        inv.InvarianceConfig(batchnorm="batch-statistics")
