"""Layer-wise representation similarity between the case's model and a reference model.

Both models see the same images (the case dataset's ``split``, after the profile's
subset), each under its own preprocessing at the profile's input size. For every layer
the two share by name (``stage1`` ... ``stageK`` and ``pooled``, see
:mod:`harness.protocols.layer_features`) the protocol records linear CKA
(``cka_<layer>``); for the final features also RBF CKA, SVCCA (99% variance) and mean CCA
(:mod:`harness.analyses.similarity`). Two architectures with a different number of stages
are compared stage by stage up to the shallower one's depth.

The reference (``reference`` in the config) is ``random_twin`` by default: the random
initialisation twin of a pretrained case model, or the pretrained model a random twin
stands for (feature-reuse and revisiting-transfer compare pretrained and fine-tuned or
random networks this way). Any model card name works too; the case's own name gives 1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.analyses.similarity import (
    cca_similarity,
    linear_cka,
    rbf_cka,
    svcca,
    svd_reduce,
)
from harness.config.cards import CardError, ModelCard, all_model_cards, get_model_card
from harness.config.profiles import check_profile
from harness.data.subset import stratified_indices
from harness.protocols.base import ProtocolResult
from harness.protocols.layer_features import (
    FINAL_LAYER,
    case_source,
    layer_features,
    reference_source,
)
from harness.protocols.registry import CaseNotApplicable, DetailTable, register_protocol

if TYPE_CHECKING:
    from harness.protocols.case import CaseRun

VERSION = 1
RANDOM_TWIN = "random_twin"


@dataclass(frozen=True)
class SimilarityConfig:
    """Settings of the similarity protocol.

    Attributes:
        reference: ``random_twin`` or a model card name.
        split: The split whose images both models see.
        layers: Layer names or module paths (empty: every stage and ``pooled``).
        max_images: At most this many images (a seeded stratified subset; RBF CKA and the
            SVD cost grow with it).
        rbf_threshold: RBF bandwidth as a fraction of the median distance.
        svcca_keep_variance: Variance each SVD keeps before CCA.
        seed: Seed of the image subset.
    """

    reference: str = RANDOM_TWIN
    split: str = "test"
    layers: tuple[str, ...] = ()
    max_images: int = 1024
    rbf_threshold: float = 1.0
    svcca_keep_variance: float = 0.99
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(str(x) for x in self.layers))
        if self.max_images < 3:
            raise ValueError(f"SimilarityConfig.max_images must be >= 3, got {self.max_images}")
        if not (math.isfinite(self.rbf_threshold) and self.rbf_threshold > 0):
            raise ValueError(
                f"SimilarityConfig.rbf_threshold must be > 0, got {self.rbf_threshold}"
            )
        if not 0 < self.svcca_keep_variance <= 1:
            raise ValueError("SimilarityConfig.svcca_keep_variance must be in (0, 1]")

    @classmethod
    def for_profile(cls, profile: str) -> SimilarityConfig:
        """The configuration of a run profile (smoke: at most 64 images).

        Raises:
            ValueError: On an unknown profile.
        """
        check_profile(profile)
        return cls(max_images=64) if profile == "smoke" else cls()

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-friendly data."""
        out = asdict(self)
        out["layers"] = list(self.layers)
        return out


def reference_card(card: ModelCard, reference: str) -> ModelCard:
    """The reference model of a case model.

    Args:
        card: The case's model card.
        reference: ``random_twin`` or a model card name.

    Returns:
        The reference model's card.

    Raises:
        CaseNotApplicable: When ``random_twin`` is asked and the model has no twin card.
        CardError: When a named card does not exist.
    """
    if reference != RANDOM_TWIN:
        return get_model_card(reference)
    if card.random_twin_of:
        return get_model_card(card.random_twin_of)
    twins = sorted(c.name for c in all_model_cards().values() if c.random_twin_of == card.name)
    if not twins:
        raise CaseNotApplicable(f"model {card.name} has no random-init twin card to compare with")
    return get_model_card(twins[0])


def paired_layers(own: list[str], other: list[str]) -> list[str]:
    """Layers compared: those both models have by name, in the case model's order."""
    return [name for name in own if name in other]


def compare(
    x_layers: dict[str, np.ndarray], y_layers: dict[str, np.ndarray], config: SimilarityConfig
) -> dict[str, float]:
    """Similarity metrics of two models' layers over the same images.

    Args:
        x_layers: Layer -> (N, C) features of the case's model.
        y_layers: Layer -> (N, C') features of the reference model.
        config: RBF bandwidth and SVCCA variance.

    Returns:
        ``cka_<layer>`` for every shared layer, and for the final layer (``pooled`` when
        shared, else the deepest shared one) ``linear_cka``, ``rbf_cka``, ``svcca``,
        ``cca`` and ``mean_layer_cka``.

    Raises:
        CaseNotApplicable: When the models share no layer.
    """
    shared = paired_layers(list(x_layers), list(y_layers))
    if not shared:
        raise CaseNotApplicable("the model and its reference share no layer name")
    metrics = {f"cka_{name}": linear_cka(x_layers[name], y_layers[name]) for name in shared}
    final = FINAL_LAYER if FINAL_LAYER in shared else shared[-1]
    x, y = x_layers[final], y_layers[final]
    metrics.update(
        linear_cka=metrics[f"cka_{final}"],
        rbf_cka=rbf_cka(x, y, config.rbf_threshold),
        svcca=svcca(x, y, config.svcca_keep_variance),
        cca=cca_similarity(x, y),
        mean_layer_cka=float(np.mean([metrics[f"cka_{n}"] for n in shared])),
    )
    return metrics


def cca_dimensions(x: np.ndarray, y: np.ndarray, config: SimilarityConfig) -> dict[str, Any]:
    """How many directions SVCCA kept, and whether CCA is saturated by construction.

    With ``k_x + k_y >= N - 1`` directions over ``N`` images the column spaces of the two
    (centred) representations must intersect, so some canonical correlations are 1 whatever
    the models: ``cca`` and ``svcca`` then say little (CKA does not have this problem).
    """
    kx = int(svd_reduce(x, config.svcca_keep_variance).shape[1])
    ky = int(svd_reduce(y, config.svcca_keep_variance).shape[1])
    rank_x, rank_y = (
        int(np.linalg.matrix_rank(x - x.mean(0))),
        int(np.linalg.matrix_rank(y - y.mean(0))),
    )
    return {
        "svcca_directions": [kx, ky],
        "svcca_saturated": kx + ky >= len(x) - 1,
        "cca_saturated": rank_x + rank_y >= len(x) - 1,
    }


@register_protocol(
    "similarity",
    version=VERSION,
    marker="layer-wise representation similarity (CKA, SVCCA) to a reference model",
    config=SimilarityConfig,
    primary_metric="linear_cka",
    display="descriptive",
    detail_tables=(
        DetailTable(
            "cka_",
            "Layer-wise CKA to the reference model",
            "Linear CKA (Kornblith et al. 2019) between the stage outputs (spatially "
            "averaged) of each model and its reference (by default the random-init twin) "
            "on the same test images; 1: the same representation up to rotation and scale.",
            "linear CKA (final)",
        ),
    ),
)
def run_case(case: CaseRun, config: SimilarityConfig) -> ProtocolResult:
    """One similarity case: the case model against its reference on one split's images."""
    try:
        other = reference_card(case.case.model, config.reference)
    except CardError as exc:
        raise ValueError(f"similarity: reference {config.reference!r}: {exc}") from exc
    own = layer_features(case, (config.split,), config.layers, case_source(case))[config.split]
    theirs = layer_features(case, (config.split,), config.layers, reference_source(case, other))[
        config.split
    ]
    labels = case.splits()[config.split].labels
    index = np.arange(len(labels))
    if len(index) > config.max_images:
        index = stratified_indices(labels, config.max_images, config.seed)
    if len(index) < 3:
        raise CaseNotApplicable(f"split {config.split} has {len(index)} images; similarity needs 3")
    x_layers = {k: v[index] for k, v in own.items()}
    y_layers = {k: v[index] for k, v in theirs.items()}
    metrics = compare(x_layers, y_layers, config)
    final = FINAL_LAYER if FINAL_LAYER in x_layers and FINAL_LAYER in y_layers else None
    return ProtocolResult(
        metrics=metrics,
        hyperparameters={"reference": other.name},
        details={
            "reference": other.name,
            "reference_category": other.category,
            "layers": paired_layers(list(own), list(theirs)),
            "layer_widths": {k: int(v.shape[1]) for k, v in own.items()},
            "reference_layer_widths": {k: int(v.shape[1]) for k, v in theirs.items()},
            "n_images": len(index),
            "split": config.split,
            **(cca_dimensions(x_layers[final], y_layers[final], config) if final else {}),
        },
    )
