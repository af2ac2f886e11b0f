"""The eval-mode features of a synthetic-invariance case: clean and transformed, cached.

With ``batchnorm="eval"`` (the default) every feature is a plain forward of the frozen
backbone, so the clean images and all their transformed copies go through the feature
cache as one derived set (small sets would each be one padded batch). A transform entry
at its identity magnitude reuses the clean features, unless the transformed images are
normalised differently (``transformed_normalisation``): then the clean images are a set
of their own and the identity entries are the untransformed images under the transformed
images' preprocessing, as SSL_medicalimaging's ``ManualTransform`` computes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.protocols.image_transforms import (
    IDENTITY,
    applicable,
    apply_transform,
    transform_tag,
)
from harness.protocols.invariance_sampling import eval_source, invariance_stats, is_default
from harness.protocols.peer_normalisation import transformed_preprocessing

if TYPE_CHECKING:
    from harness.config.cards import Preprocessing
    from harness.protocols.case import CaseRun
    from harness.protocols.invariance import InvarianceConfig

#: The set name of the untransformed images among the derived sets.
IDENTITY_SET = "identity"


def transformed_images_preprocessing(
    case: CaseRun, config: InvarianceConfig
) -> Preprocessing | None:
    """The transformed images' preprocessing when it is not the clean images' one, else None.

    Args:
        case: The invariance case (its preprocessing is read only under a rule other than
            ``same``).
        config: Its config (``transformed_normalisation``).
    """
    if config.transformed_normalisation == "same":
        return None
    clean = case.preprocessing()
    pre = transformed_preprocessing(clean, config.transformed_normalisation)
    return None if pre == clean else pre


def eval_mode_features(
    case: CaseRun, config: InvarianceConfig, subset: np.ndarray
) -> tuple[dict[str, np.ndarray], bool, np.ndarray, dict[str, np.ndarray], dict[str, str]]:
    """Statistics, clean features and transformed features of the evaluated images.

    Args:
        case: The invariance case.
        config: Its config (``transforms``, ``transform_backend``, the draws and
            ``transformed_normalisation``).
        subset: The distinct evaluated uint8 images.

    Returns:
        (feature statistics, whether they came from the cache, clean features (n, D),
        features of each applicable transform tag (n, D), skipped tags with the reason).
    """
    stats, stats_hit = invariance_stats(case, config)
    pre = transformed_images_preprocessing(case, config)
    sets, skipped, identities = {IDENTITY_SET: subset}, {}, []
    for name, magnitude in config.transforms:
        tag = transform_tag(name, magnitude)
        reason = applicable(name, subset)
        if reason is not None:
            skipped[tag] = reason
        elif magnitude == IDENTITY[name]:
            identities.append(tag)
        else:
            sets[tag] = apply_transform(name, subset, magnitude, config.transform_backend)
    prefix = f"subset{len(subset)}-seed{config.seed}"
    if not is_default(config) or config.transform_backend != "medxfer":
        prefix += f"-{config.sampling}-{config.transform_backend}"
    split = eval_source(config)
    if pre is None:
        features = case.derived_feature_sets(split, prefix, sets)
        clean = identity = features.pop(IDENTITY_SET)
    else:
        own = {IDENTITY_SET: subset}
        clean = case.derived_feature_sets(split, prefix, own)[IDENTITY_SET]
        features = case.derived_feature_sets(split, prefix, sets, pre=pre)
        identity = features.pop(IDENTITY_SET)
    transformed = {tag: identity for tag in identities} | features
    return stats, stats_hit, clean, transformed, skipped
