"""Features with batch normalisation on each batch's own statistics, in the peer's batches.

SSL_medicalimaging's invariance scripts run their backbones in training mode:
jonahanton/SSL_medicalimaging@77fceef:models/backbones.py calls ``self.model.train()``
when it builds each backbone, and invariances/invariances.py and
invariances/invariances_multiview.py never call ``eval()`` (their ``linear.py`` and
``few_shot.py`` do). Under ``torch.no_grad`` every BatchNorm then normalises with the
mean and variance of the batch it is in (its running statistics are updated but never
read), so a feature depends on its batchmates, and which images share a batch is part of
the number:

- covariance features: the pooled images through ``DataLoader(batch_size=256)``, in pool
  order below 1000 images, else the drawn rows in ``SubsetRandomSampler`` order;
- multi-view: each view alone (``DataLoader(batch_size=1)``);
- synthetic invariance: each clean image alone, its ``k`` transformed copies together.

On the demo data the difference is large: for 48 ``demo_cxr_lesion`` test images the
mean cosine between eval-mode features and batch-of-one features is 0.31
(EfficientNet-Lite0) and 0.45 (MobileNetV2). ``batchnorm="batch-statistics"`` in a
protocol's config asks for these features; they are computed here, batch by batch with
no padding, and cached by the images, the batches and the preprocessing.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from harness.data.transforms import describe
from harness.features import extract, resolve_device
from harness.protocols.image_transforms import applicable, apply_transform, transform_tag
from harness.protocols.invariance_eval import transformed_images_preprocessing
from harness.protocols.pairing import COV_BATCH_SIZE, legacy_cov_batches
from harness.protocols.whitening import cached_feature_stats, cov_indices

if TYPE_CHECKING:
    from harness.config.cards import Preprocessing
    from harness.protocols.case import CaseRun
    from harness.protocols.invariance import InvarianceConfig
    from harness.protocols.multiview import MultiviewConfig
    from harness.protocols.whitening import CovarianceSettings

#: The values of a config's ``batchnorm`` field.
BATCHNORM_MODES = ("eval", "batch-statistics")


def check_batchnorm_mode(owner: str, mode: str) -> None:
    """Refuse a ``batchnorm`` value other than :data:`BATCHNORM_MODES`."""
    if mode not in BATCHNORM_MODES:
        raise ValueError(f"{owner}.batchnorm must be one of {BATCHNORM_MODES}, got {mode!r}")


def batch_statistics_module(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose batch norms always normalise with the batch's statistics.

    The copy's batch norms keep no running statistics, so they use the batch's whether
    the module is in training or eval mode, and nothing is updated: the original module
    (shared by the case's other extractions) is untouched.
    """
    copied = copy.deepcopy(module)
    for layer in copied.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.track_running_stats = False
            layer.running_mean = None
            layer.running_var = None
            layer.num_batches_tracked = None
    return copied


def batch_features(
    case: CaseRun,
    images: np.ndarray,
    batches: list[np.ndarray],
    purpose: str,
    pre: Preprocessing | None = None,
) -> np.ndarray:
    """Features of ``images[batch]`` for each batch, each batch normalised on its own.

    Args:
        case: The case (its backbone and preprocessing).
        images: The uint8 images (N, H, W, 3) the batches index.
        batches: Row indices of each batch, in order.
        purpose: Names the extraction in the cache key (e.g. ``"covariance"``).
        pre: The images' preprocessing when it is not the case's.

    Returns:
        float32 features, the batches' rows concatenated in order (sum of batch sizes, D).
    """
    pre = pre or case.preprocessing()
    depends_on = {
        "purpose": purpose,
        "preprocessing": describe(pre),
        "images": images,
        "batch_sizes": np.asarray([len(b) for b in batches], dtype=np.int64),
        "rows": np.concatenate(batches).astype(np.int64),
    }

    def compute() -> dict[str, np.ndarray]:
        module = batch_statistics_module(case.backbone().load())
        device = resolve_device(case.device)
        parts = [
            extract(module, images[rows], pre, device, batch_size=len(rows), desc=purpose)
            for rows in batches
        ]
        return {"features": np.concatenate(parts)}

    with torch.inference_mode():
        arrays, _ = case.cached_arrays("batch-statistics-features", depends_on, compute)
    return arrays["features"]


def single_image_features(case: CaseRun, images: np.ndarray, purpose: str) -> np.ndarray:
    """Features of each image in a batch of its own (the peers' ``batch_size=1`` loaders)."""
    return batch_features(case, images, [np.array([i]) for i in range(len(images))], purpose)


def pooled_images(case: CaseRun, names: tuple[str, ...], rows: np.ndarray) -> np.ndarray:
    """The images of ``rows`` of the splits ``names`` concatenated in order (read row by row)."""
    splits = case.splits()
    sizes = np.array([len(splits[name].labels) for name in names])
    starts = np.concatenate([[0], np.cumsum(sizes)])
    which = np.searchsorted(starts, rows, side="right") - 1
    return np.stack(
        [splits[names[k]].images[row - starts[k]] for k, row in zip(which, rows, strict=True)]
    )


def multiview_batch_statistics(
    case: CaseRun,
    config: MultiviewConfig,
    names: tuple[str, ...],
    pairs: np.ndarray,
    cov_names: tuple[str, ...],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The peer's training-mode features: each paired view alone, the covariance in batches.

    Args:
        case: The multi-view case.
        config: Its config (``sampling``, ``cov_images``, ``cov_fraction``, ``seed``).
        names: The pooled splits the pairs index, in order.
        pairs: (P, 2) rows of the pool.
        cov_names: The splits the covariance images come from, in order.

    Returns:
        (features of the paired images, the pairs as rows of them, covariance features).
    """
    unique, inverse = np.unique(pairs, return_inverse=True)
    views = single_image_features(case, pooled_images(case, names, unique), "multiview-views")
    legacy = config.sampling == "legacy"
    cov_features = covariance_features(case, config, cov_names, legacy, "multiview-covariance")
    return views, inverse.reshape(pairs.shape), cov_features


def covariance_features(
    case: CaseRun,
    config: CovarianceSettings,
    names: tuple[str, ...],
    legacy: bool,
    purpose: str,
) -> np.ndarray:
    """Features of the covariance images in the peer's loader batches (repeats kept).

    Args:
        case: The case.
        config: Its covariance settings (``cov_images``, ``cov_fraction``, ``seed``).
        names: The splits the covariance images come from, in order.
        legacy: The peers' draws (:func:`~harness.protocols.pairing.legacy_cov_batches`);
            else medxfer's rows (:func:`~harness.protocols.whitening.cov_indices`), 256 at
            a time.
        purpose: Names the extraction in the cache key.

    Returns:
        One float32 row per covariance row, in loader order.
    """
    n_cov = sum(len(case.splits()[name].labels) for name in names)
    if legacy:
        batches = legacy_cov_batches(n_cov, config.cov_images, config.cov_fraction, config.seed)
    else:
        rows = cov_indices(n_cov, config)
        batches = [rows[i : i + COV_BATCH_SIZE] for i in range(0, len(rows), COV_BATCH_SIZE)]
    drawn, position = np.unique(np.concatenate(batches), return_inverse=True)
    local = np.split(position, np.cumsum([len(b) for b in batches])[:-1])
    return batch_features(case, pooled_images(case, names, drawn), local, purpose)


def invariance_batch_statistics(
    case: CaseRun, config: InvarianceConfig, subset: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray], dict[str, str]]:
    """The peer's training-mode features of a synthetic-invariance case.

    Each clean image goes through the model alone; the ``k`` entries of one transform
    name (the identity included, transformed by the same kernel and normalised by
    ``config.transformed_normalisation``) of one image go through together, as
    ``ManualTransform`` stacks them; the covariance images in the clean loader's batches.

    Args:
        case: The invariance case.
        config: Its config (``transforms``, ``transform_backend``, the pooling and draws).
        subset: The distinct evaluated images.

    Returns:
        (statistics of the covariance features, clean features (n, D), features of each
        applicable transform tag (n, D), skipped tags with the reason).
    """
    names = config.pool_splits or (config.cov_split,)
    legacy = config.sampling == "numpy-legacy"
    cov = covariance_features(case, config, names, legacy, "invariance-covariance")
    rule = {
        "split": "+".join(names),
        "cov_rule": [config.sampling, config.cov_images, config.cov_fraction, config.seed],
        "batchnorm": config.batchnorm,
    }
    stats, _ = cached_feature_stats(cov, config.epsilon, rule, case.cached_arrays, config.whitening)
    clean = single_image_features(case, subset, "invariance-clean")
    entries: dict[str, list[tuple[str, float]]] = {}
    skipped: dict[str, str] = {}
    for name, magnitude in config.transforms:
        tag = transform_tag(name, magnitude)
        reason = applicable(name, subset)
        if reason is not None:
            skipped[tag] = reason
        else:
            entries.setdefault(name, []).append((tag, magnitude))
    transformed: dict[str, np.ndarray] = {}
    pre = transformed_images_preprocessing(case, config)
    for name, sweep in entries.items():
        copies = np.stack(
            [apply_transform(name, subset, m, config.transform_backend) for _, m in sweep], axis=1
        )
        k = len(sweep)
        batches = [np.arange(u * k, (u + 1) * k) for u in range(len(subset))]
        flat = copies.reshape(-1, *copies.shape[2:])
        features = batch_features(case, flat, batches, f"invariance-{name}", pre)
        features = features.reshape(len(subset), k, -1)
        for j, (tag, _) in enumerate(sweep):
            transformed[tag] = features[:, j]
    return stats, clean, transformed, skipped
