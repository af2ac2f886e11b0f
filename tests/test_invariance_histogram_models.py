"""SSL_medicalimaging's synthetic invariance on its histogram-normalised models.

jonahanton/SSL_medicalimaging@77fceef:invariances/invariances.py builds the clean images
of its ``mimic-chexpert`` models with ``HistogramNormalize`` and no mean / std, but every
transformed copy, the identity entry of a sweep included, goes through
``ManualTransform.T``: ``pil_to_tensor(image) / 255`` then ImageNet's mean / std. The
oracle below writes both transforms out from the peer's steps (8 px images, so the
``Resize`` / ``CenterCrop`` to 8 px keep every pixel), runs the peer's similarity with
the backbone in training mode (its models/backbones.py) or eval mode, and the preset's
config through the protocol's ``run_case`` must agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_batch_statistics import SyntheticCase, batch_statistics_reference, tiny_backbone
from test_invariance_presets import peer_hflip, peer_rotation
from torch import nn

from harness.config.cards import get_model_card
from harness.config.model_cards import Preprocessing
from harness.data.transforms import eval_transform
from harness.protocols import invariance as inv
from harness.protocols import invariance_presets as presets
from harness.protocols.peer_normalisation import IMAGENET, transformed_preprocessing
from harness.protocols.registry import get_preset

HISTOGRAM = Preprocessing(8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear", 1.0, True)
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
TRANSFORMS = (("hflip", 0.0), ("hflip", 1.0), *(("rotation", a) for a in (0, 90, 180, 270)))


def peer_clean(image: np.ndarray) -> torch.Tensor:
    """``ToTensor`` then CovidPrognosis' ``HistogramNormalize`` (density histogram, 256 bins)."""
    x = torch.from_numpy(image).permute(2, 0, 1).to(torch.float32) / 255
    values = x.numpy().astype(np.float64).ravel()
    density, edges = np.histogram(values, 256, density=True)
    cdf = 255 * density.cumsum() / density.cumsum()[-1]
    return torch.from_numpy(np.interp(values, edges[:-1], cdf).reshape(x.shape)).float()


def peer_manual_t(image: np.ndarray) -> torch.Tensor:
    """``ManualTransform.T`` after the kernel: ``pil_to_tensor / 255``, ImageNet's mean / std."""
    x = torch.from_numpy(np.array(Image.fromarray(image))).permute(2, 0, 1).float() / 255.0
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def peer_similarity(
    pool: np.ndarray, net: nn.Module, kernel: Callable[[np.ndarray, int], np.ndarray], k: int
) -> tuple[float, float]:
    """invariances.py (a cached-covariance run): (similarity, the identity entry's cosine)."""
    clean = torch.stack([peer_clean(image) for image in pool])
    with torch.no_grad():
        rows = torch.cat([net(clean[i : i + 256]) for i in range(0, len(pool), 256)])
        mean = rows.mean(dim=0)
        cov = np.cov(rows, rowvar=False) + 1e-6 * np.eye(rows.shape[1])
        chol = torch.linalg.cholesky(torch.from_numpy(np.linalg.inv(cov)).to(torch.float32))
        np.random.seed(0)
        sampler = np.random.choice(np.arange(len(pool)), 100)
        S = np.zeros((100, k))
        for i, index in enumerate(sampler):
            a = (mean - net(clean[index][None])) @ chol
            copies = torch.stack([peer_manual_t(kernel(pool[index], j)) for j in range(k)])
            moved = net(copies)
            for j in range(k):
                b = (mean - moved[j]) @ chol
                S[i, j] = F.cosine_similarity(a, b, dim=-1).mean().item()
    return float(np.nanmean(S, axis=0).mean()), float(np.nanmean(S[:, 0]))


class HistogramCase(SyntheticCase):
    """A pooled stand-in case whose model card histogram-normalises, with eval-mode features."""

    def __init__(self, splits: dict[str, np.ndarray], net: nn.Module) -> None:
        super().__init__(splits, net)
        self.case.model = SimpleNamespace(preprocessing=HISTOGRAM)
        self.extracted: list[tuple[str, bool]] = []

    def preprocessing(self) -> Preprocessing:
        return HISTOGRAM

    def _eval_features(self, images: np.ndarray, pre: Preprocessing) -> np.ndarray:
        transform = eval_transform(pre)
        with torch.no_grad():
            return self.net.eval()(torch.stack([transform(i) for i in images])).numpy()

    def features(self, names: tuple[str, ...]) -> dict[str, Any]:
        return {
            name: SimpleNamespace(
                features=self._eval_features(self._splits[name].images, HISTOGRAM)
            )
            for name in names
        }

    def derived_feature_sets(
        self, split: str, prefix: str, sets: dict[str, np.ndarray], pre: Any = None
    ) -> dict[str, np.ndarray]:
        pre = pre or HISTOGRAM
        self.extracted.append((prefix, pre.histogram_normalize))
        return {tag: self._eval_features(images, pre) for tag, images in sets.items()}


def _splits(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        name: rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
        for name, n in (("train", 30), ("val", 6), ("test", 14))
    }


def test_transformed_images_drop_the_histogram_for_imagenets_mean_and_std() -> None:
    swapped = transformed_preprocessing(HISTOGRAM, "imagenet-if-histogram")
    assert swapped == dataclasses.replace(HISTOGRAM, histogram_normalize=False, **IMAGENET)
    plain = Preprocessing(8, (0.5,) * 3, (0.25,) * 3)
    assert transformed_preprocessing(plain, "imagenet-if-histogram") is plain
    assert transformed_preprocessing(HISTOGRAM, "same") is HISTOGRAM
    with pytest.raises(ValueError, match="transformed_normalisation must be one of"):
        transformed_preprocessing(HISTOGRAM, "imagenet")
    with pytest.raises(ValueError, match="transformed_normalisation must be one of"):
        inv.InvarianceConfig(transformed_normalisation="imagenet")
    assert "transformed_normalisation" not in inv.InvarianceConfig().to_dict()


def test_preset_swaps_the_normalisation_for_the_mimic_chexpert_models_only() -> None:
    preset = get_preset("invariance", "ssl-medicalimaging")
    assert preset is not None and preset.version == 4
    case = HistogramCase(_splits(0), tiny_backbone())
    for name, rule in (
        ("densenet121.mimic_chexpert_moco_lr0.01", "imagenet-if-histogram"),
        ("resnet50.moco_v2", "same"),
        ("densenet121.moco_cxr", "same"),
    ):
        case.case.model = get_model_card(name)
        config = preset.configure(case)
        assert config.transformed_normalisation == rule, name
        assert inv.InvarianceConfig(**config.to_dict()) == config


def test_batch_statistics_features_match_the_peer_on_a_histogram_model() -> None:
    splits = _splits(1)
    net = tiny_backbone(3)
    case = HistogramCase(splits, net)
    config = presets.ssl_medical_invariance(case)
    assert config.transformed_normalisation == "imagenet-if-histogram"
    config = dataclasses.replace(config, transforms=TRANSFORMS)
    result = inv.run_case(case, config)
    pool = np.concatenate([splits["train"], splits["val"], splits["test"]])
    model = batch_statistics_reference(net)
    hflip, identity = peer_similarity(pool, model, peer_hflip, 2)
    rotation, _ = peer_similarity(pool, model, peer_rotation(4), 4)
    assert result.metrics["cos_hflip"] == pytest.approx(hflip, abs=1e-5)
    assert result.metrics["cos_rotation"] == pytest.approx(rotation, abs=1e-5)
    assert result.details["per_magnitude"]["hflip_0"]["cos"] == pytest.approx(identity, abs=1e-5)
    described = result.details["transformed_preprocessing"]
    assert "histogram_normalize" not in described and described["mean"] == [0.485, 0.456, 0.406]
    same = inv.run_case(case, dataclasses.replace(config, transformed_normalisation="same"))
    assert abs(same.metrics["cos_rotation"] - rotation) > 1e-3
    assert "transformed_preprocessing" not in same.details


def test_eval_mode_features_match_the_peer_and_identities_are_not_the_clean_features() -> None:
    splits = _splits(2)
    net = tiny_backbone(4)
    case = HistogramCase(splits, net)
    config = dataclasses.replace(
        presets.ssl_medical_invariance(case), transforms=TRANSFORMS, batchnorm="eval"
    )
    result = inv.run_case(case, config)
    pool = np.concatenate([splits["train"], splits["val"], splits["test"]])
    hflip, identity = peer_similarity(pool, net.eval(), peer_hflip, 2)
    rotation, _ = peer_similarity(pool, net.eval(), peer_rotation(4), 4)
    assert result.metrics["cos_hflip"] == pytest.approx(hflip, abs=1e-5)
    assert result.metrics["cos_rotation"] == pytest.approx(rotation, abs=1e-5)
    assert result.details["per_magnitude"]["hflip_0"]["cos"] == pytest.approx(identity, abs=1e-5)
    assert identity < 0.999  # ImageNet-normalised identity copies move off the clean features
    # the clean images alone under the histogram, every copy (identity included) under ImageNet
    assert [histogram for _, histogram in case.extracted] == [True, False]
    case.extracted.clear()
    same = inv.run_case(case, dataclasses.replace(config, transformed_normalisation="same"))
    assert case.extracted[0][1] is True and len(case.extracted) == 1
    assert same.details["per_magnitude"]["hflip_0"]["cos"] == pytest.approx(1.0, abs=1e-6)
