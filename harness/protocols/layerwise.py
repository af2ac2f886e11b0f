"""Layer-wise probing: how well each stage's pooled features classify the target.

For every layer of the case's model (``stage1`` ... ``stageK`` and the final ``pooled``,
see :mod:`harness.protocols.layer_features`) the case's target is classified from that
layer's spatially averaged features, by the weighted k-NN of :mod:`harness.protocols.knn`
(memory bank train+val, queries test; the default) or by the linear probe of
:mod:`harness.protocols.linear`. This is feature-reuse's layer-wise k-NN analysis
(Matsoukas et al., CVPR 2022, section 4.3: k-NN accuracy from each stage's pooled
features, ImageNet initialisation against random), run on the harness's cached layers.

Metrics: ``layer_<name>`` is the dataset's primary metric from layer ``<name>``; the
case's own metrics (every metric of the task) are those of the final layer, so the primary
value of a case equals what the ``knn`` (or ``linear``) protocol gives on the same
features. ``details["best_layer"]`` names the layer with the highest primary value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from harness.config.profiles import check_profile
from harness.protocols import knn, linear
from harness.protocols.base import ProtocolResult, SplitFeatures, TaskInfo
from harness.protocols.layer_features import FINAL_LAYER, layer_features
from harness.protocols.registry import DetailTable, register_protocol

if TYPE_CHECKING:
    from harness.protocols.case import CaseRun

VERSION = 1
Method = Literal["knn", "linear"]
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LayerwiseConfig:
    """Settings of the layer-wise protocol.

    Attributes:
        method: ``knn`` (weighted cosine votes) or ``linear`` (the linear probe).
        layers: Layer names or module paths (empty: every stage and ``pooled``).
        k: Neighbours of the k-NN vote.
        temperature: Vote temperature of the k-NN.
        profile: The run profile (the linear probe's sweep follows it).
    """

    method: Method = "knn"
    layers: tuple[str, ...] = ()
    k: int = 20
    temperature: float = 0.07
    profile: str = "demo"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(str(x) for x in self.layers))
        if self.method not in ("knn", "linear"):
            raise ValueError(f"LayerwiseConfig.method must be knn or linear, got {self.method!r}")
        if self.k < 1:
            raise ValueError(f"LayerwiseConfig.k must be >= 1, got {self.k}")

    @classmethod
    def for_profile(cls, profile: str) -> LayerwiseConfig:
        """The configuration of a run profile (the same k-NN for every profile).

        Raises:
            ValueError: On an unknown profile.
        """
        check_profile(profile)
        return cls(profile=profile)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-friendly data."""
        out = asdict(self)
        out["layers"] = list(self.layers)
        return out


def probe(
    splits: dict[str, SplitFeatures], task: TaskInfo, config: LayerwiseConfig
) -> ProtocolResult:
    """Classify the test split from one layer's features with the configured method.

    Args:
        splits: ``train``, ``val`` and ``test`` features of one layer.
        task: The target task.
        config: Method and its settings.

    Returns:
        The method's result (test metrics of every task metric).
    """
    if config.method == "linear":
        settings = linear.LinearConfig.for_profile(config.profile)
        return linear.run(splits["train"], splits["val"], splits["test"], task, settings)
    settings = knn.KnnConfig(ks=(config.k,), temperature=config.temperature, primary_k=config.k)
    return knn.run(splits["train"], splits["val"], splits["test"], task, settings)


def run_layers(
    layers: dict[str, dict[str, SplitFeatures]], task: TaskInfo, config: LayerwiseConfig
) -> ProtocolResult:
    """Probe every layer and collect the per-layer primary values.

    Args:
        layers: Layer -> split -> features.
        task: The target task.
        config: Method and its settings.

    Returns:
        ``metrics``: the final layer's (``pooled``, else the last) metrics plus
        ``layer_<name>`` per layer. ``details``: per-layer metrics, chosen
        hyperparameters, the best layer and the feature widths.
    """
    results = {name: probe(splits, task, config) for name, splits in layers.items()}
    final = FINAL_LAYER if FINAL_LAYER in results else list(results)[-1]
    per_layer = {name: r.metrics[task.primary_metric] for name, r in results.items()}
    finite = {name: value for name, value in per_layer.items() if value == value}
    metrics = dict(results[final].metrics)
    metrics.update({f"layer_{name}": value for name, value in per_layer.items()})
    return ProtocolResult(
        metrics=metrics,
        hyperparameters={"method": config.method, **results[final].hyperparameters},
        details={
            "final_layer": final,
            "best_layer": max(finite, key=finite.__getitem__) if finite else None,
            "metrics_per_layer": {name: r.metrics for name, r in results.items()},
            "hyperparameters_per_layer": {name: r.hyperparameters for name, r in results.items()},
            "layer_widths": {
                name: int(splits["train"].features.shape[1]) for name, splits in layers.items()
            },
        },
    )


@register_protocol(
    "layerwise",
    version=VERSION,
    marker="layer-wise k-NN / linear probing of each stage's pooled features",
    config=LayerwiseConfig,
    display="descriptive",
    detail_tables=(
        DetailTable(
            "layer_",
            "Layer-wise k-NN",
            "The dataset's primary metric of a weighted k-NN (k = 20, train+val as memory "
            "bank) on each stage's spatially averaged features (feature-reuse's layer-wise "
            "analysis); pooled is the model's final features.",
            "final layer",
        ),
    ),
)
def run_case(case: CaseRun, config: LayerwiseConfig) -> ProtocolResult:
    """One layer-wise case: every stage of the case's model probed on the target."""
    features = layer_features(case, SPLITS, config.layers)
    data = case.splits()
    names = list(features["train"])
    layers = {
        name: {
            split: SplitFeatures(features[split][name], data[split].labels, data[split].groups)
            for split in SPLITS
        }
        for name in names
    }
    return run_layers(layers, case.task, config)
