"""Fine-tuning dynamics: how far each layer moves when the case's model is fine-tuned.

One case = (model, dataset). The model is fine-tuned on the train split (selected on val)
by the fine-tune protocol's own machinery (:func:`harness.protocols.finetune.fine_tune`,
``FinetuneConfig`` of the profile), resumable in the case's training store. Then, per
layer (the backbone's stages ``stage1`` ... ``stageK`` as
:mod:`harness.protocols.layer_features` names them, ``pooled`` for parameters after the
last stage, and the new ``head``; see :func:`harness.analyses.dynamics.layer_groups`):

- ``l2_<layer>`` = ``||w_ft - w_0||`` and ``relative_l2_<layer>`` = that over
  ``||w_0||``, over the layer's trainable parameters as one vector. BatchNorm running
  statistics are never included and normalisation layers' affine parameters are left out
  (``include_norm=False``), as feature-reuse leaves out ``bn`` / ``norm`` modules.
  ``total_l2`` / ``total_relative_l2``: the same over every counted parameter.
- ``cka_init_ft_<layer>``: linear CKA between the initial and the fine-tuned model's
  spatially averaged stage outputs (and final ``pooled`` features) on the ``split``
  images (test by default). ``mean_cka_init_ft``, the mean over these layers, is the
  case's primary value: a lower value means the fine-tuned features moved further from
  the initial ones.
- ``importance_init_<layer>`` / ``importance_random_<layer>``: the drop of the split's
  primary metric (fine-tuned score minus re-scored) when that one layer is set back to
  its initial values (parameters and buffers), or re-drawn at random under ``seed``
  (``random_init="gaussian"``: feature-reuse's i.i.d. normal draws with each tensor's
  mean and std; ``"reset"``: the modules' own fresh initialisation), the rest fine-tuned.
- ``finetuned_<metric>``: the fine-tuned model's score on the split (every task metric).

w_0 is the network the fine-tuning starts from: the card's weights (a random twin's as
built, without the BatchNorm recalibration the frozen protocols apply) plus the head the
fine-tune draws under its seed, re-created here the way the training run creates it.

The fine-tuned weights are kept in the case's training store
(:mod:`harness.protocols.dynamics_tuning`), so a finished case is analysed again without
training again.

VERSION 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from harness.analyses.dynamics import (
    RandomInit,
    features_cka,
    layer_groups,
    norm_keys,
    randomise,
    reset_to,
    weight_distances,
)
from harness.config.cards import Preprocessing
from harness.config.profiles import check_profile
from harness.data.npz import SplitData
from harness.precision import compute_precision
from harness.protocols.base import ProtocolResult, TaskInfo
from harness.protocols.dynamics_tuning import Tuned, fine_tuned
from harness.protocols.finetune import FinetuneConfig, score
from harness.protocols.finetune.data import EvalSet
from harness.protocols.finetune.modes import FineTuned
from harness.protocols.finetune.network import Classifier, clone_state, trainable
from harness.protocols.finetune.runtime import Runtime
from harness.protocols.layer_features import (
    FINAL_LAYER,
    TORCHVISION_PREFIX,
    LayerError,
    PooledLayers,
    stage_modules,
)
from harness.protocols.registry import DetailTable, register_protocol
from harness.zoo import LoadedModel, build_model

if TYPE_CHECKING:
    from harness.cache.runs import RunStore
    from harness.protocols.case import CaseRun

VERSION = 1


@dataclass(frozen=True)
class DynamicsConfig:
    """Settings of the dynamics protocol.

    Attributes:
        finetune: How the model is fine-tuned (the fine-tune protocol's profile settings).
        split: The split whose images give the CKA and the (re-)scores.
        include_norm: Count normalisation layers' affine parameters in the distances.
        random_init: ``gaussian`` (feature-reuse) or ``reset`` (see module docstring).
        seed: Seeds the fine-tuning (it replaces ``finetune.seed``) and the random draws.
    """

    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    split: str = "test"
    include_norm: bool = False
    random_init: RandomInit = "gaussian"
    seed: int = 0

    def __post_init__(self) -> None:
        finetune = self.finetune
        if isinstance(finetune, Mapping):
            finetune = FinetuneConfig(**finetune)
        if not isinstance(finetune, FinetuneConfig):
            raise ValueError(f"DynamicsConfig.finetune must be a FinetuneConfig, got {finetune!r}")
        if finetune.folds:
            raise ValueError("DynamicsConfig.finetune: folds needs one fine-tuned model, not k")
        if self.random_init not in ("gaussian", "reset"):
            raise ValueError(
                f"DynamicsConfig.random_init must be gaussian or reset, got {self.random_init!r}"
            )
        object.__setattr__(self, "finetune", replace(finetune, seed=self.seed))

    @classmethod
    def for_profile(cls, profile: str) -> DynamicsConfig:
        """The configuration of a run profile (the fine-tune protocol's for that profile).

        Raises:
            ValueError: On an unknown profile.
        """
        check_profile(profile)
        return cls(finetune=FinetuneConfig.for_profile(profile))

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-friendly data."""
        out = asdict(self)
        out["finetune"] = self.finetune.to_dict()
        return out


def backbone_paths(module: torch.nn.Module, stages: Mapping[str, str]) -> dict[str, str]:
    """Stage paths inside the module a classifier trains (the zoo's torchvision wrapper's
    ``model.`` prefix dropped when the classifier trains the inner network).

    Raises:
        LayerError: When a stage's module is not in the backbone.
    """
    inner = trainable(module)
    out = {}
    for name, path in stages.items():
        candidates = [path]
        if inner is not module and path.startswith(TORCHVISION_PREFIX):
            candidates.insert(0, path[len(TORCHVISION_PREFIX) :])
        for candidate in candidates:
            try:
                inner.get_submodule(candidate)
            except AttributeError:
                continue
            out[name] = candidate
            break
        else:
            raise LayerError(f"stage {name}: the backbone has no module {path!r}")
    return out


def stage_features(
    net: Classifier,
    stages: Mapping[str, str],
    images: np.ndarray,
    pre: Preprocessing,
    runtime: Runtime,
    batch_size: int,
) -> dict[str, np.ndarray]:
    """Pooled outputs of every stage and the final features, in float32 (eval mode).

    Returns:
        Layer -> (N, C) features: the stages, then ``pooled``.
    """
    pooled = PooledLayers(net.backbone, {**stages, FINAL_LAYER: ""})
    data = EvalSet(images, pre)
    chunks = []
    net.eval()
    with runtime.threads(), torch.inference_mode(), compute_precision(runtime.device, "fp32"):
        for x in data.batches(batch_size):
            chunks.append(pooled(runtime.inputs(x)).float().cpu())
    features = torch.cat(chunks).numpy()
    bounds = np.cumsum([0, *pooled.widths.values()])
    return {
        name: features[:, a:b]
        for name, a, b in zip(pooled.widths, bounds[:-1], bounds[1:], strict=True)
    }


def analyse(
    tuned: Tuned,
    stages: Mapping[str, str],
    split: SplitData,
    task: TaskInfo,
    config: DynamicsConfig,
    pre: Preprocessing,
) -> ProtocolResult:
    """Distances, CKA and layer importance of a fine-tuned network (see module docstring).

    Args:
        tuned: The initial and fine-tuned networks.
        stages: Stage name -> module path inside ``tuned.tuned.backbone``.
        split: The images and labels scored.
        task: The target task.
        config: The protocol settings.
        pre: The model's preprocessing.

    Returns:
        The metrics, the fine-tune's hyperparameters, and per-layer details.
    """
    ft = config.finetune
    pre = pre.with_input_size(ft.input_size)
    primary = getattr(ft, "primary_metric", None) or task.primary_metric  # a preset's
    extra = () if primary in task.metrics else (primary,)
    task = replace(task, primary_metric=primary, metrics=(*task.metrics, *extra))
    net, runtime = tuned.tuned, tuned.runtime
    start, final = clone_state(tuned.initial), clone_state(net)
    groups = layer_groups(list(final), stages)
    counted = {k for k, _ in net.named_parameters()}
    if not config.include_norm:
        counted -= norm_keys(net)
    distances = weight_distances(start, final, groups, counted)

    x0 = stage_features(tuned.initial, stages, split.images, pre, runtime, ft.eval_batch_size)
    x1 = stage_features(net, stages, split.images, pre, runtime, ft.eval_batch_size)
    cka = features_cka(x0, x1)

    def scored() -> dict[str, float]:
        return score(FineTuned(net, runtime), split, task, ft, pre)[0]

    base = scored()
    rescored: dict[str, dict[str, dict[str, float]]] = {"init": {}, "random": {}}
    drawn: dict[str, int] = {}
    for layer, keys in groups.items():
        if not keys:
            continue
        reset_to(net, start, keys)
        rescored["init"][layer] = scored()
        net.load_state_dict(final)
        drawn[layer] = len(randomise(net, keys, config.seed, config.random_init))
        rescored["random"][layer] = scored()
        net.load_state_dict(final)

    metrics: dict[str, float] = {f"finetuned_{name}": value for name, value in base.items()}
    metrics["mean_cka_init_ft"] = float(np.mean(list(cka.values())))
    metrics.update({f"cka_init_ft_{layer}": value for layer, value in cka.items()})
    for layer, d in distances.items():
        prefix = "total_" if layer == "total" else ""
        suffix = "" if layer == "total" else f"_{layer}"
        metrics[f"{prefix}l2{suffix}"] = d["l2"]
        metrics[f"{prefix}relative_l2{suffix}"] = d["relative_l2"]
    for mode, by_layer in rescored.items():
        for layer, values in by_layer.items():
            metrics[f"importance_{mode}_{layer}"] = _drop(base[primary], values[primary])
    return ProtocolResult(
        metrics=metrics,
        hyperparameters=dict(tuned.hyperparameters),
        details={
            "split": config.split,
            "n_images": len(split.images),
            "stage_modules": dict(stages),
            "layers": list(groups),
            "n_keys": {layer: len(keys) for layer, keys in groups.items()},
            "n_params_counted": {k: int(v["n_params"]) for k, v in distances.items()},
            "l2_counts": "trainable parameters"
            + (" incl. normalisation layers" if config.include_norm else ", norms left out"),
            "layer_widths": {name: int(v.shape[1]) for name, v in x1.items()},
            "rescored": rescored,
            "randomised_tensors": drawn,
            "random_init": config.random_init,
            "reused_completed_run": tuned.reused,
            "finetune": tuned.details,
        },
    )


def _drop(before: float, after: float) -> float:
    return before - after if math.isfinite(before) and math.isfinite(after) else math.nan


def run(
    model: LoadedModel,
    splits: Mapping[str, SplitData],
    task: TaskInfo,
    config: DynamicsConfig,
    preprocessing: Preprocessing,
    stages: Mapping[str, str],
    runs: RunStore | None = None,
    device: str = "auto",
    progress: bool = True,
    reuse_completed: bool = True,
) -> ProtocolResult:
    """Fine-tune ``model`` and analyse how each layer moved (the whole case).

    Args:
        model: The pretrained backbone.
        splits: ``train``, ``val`` and ``config.split``.
        task: The target task.
        config: The protocol settings.
        preprocessing: The model's preprocessing.
        stages: Stage name -> module path in ``model.module`` (or in the network a
            classifier trains, see :func:`backbone_paths`).
        runs: The case's training store, or None.
        device: "auto", "cpu" or "cuda".
        progress: Show tqdm bars.
        reuse_completed: Reuse a finished training and its stored weights.

    Raises:
        ValueError: On a missing split.
    """
    for name in ("train", "val", config.split):
        if name not in splits:
            raise ValueError(f"dynamics needs a {name!r} split; got {sorted(splits)}")
    paths = backbone_paths(model.module, stages)
    tuned = fine_tuned(
        model, splits, task, config.finetune, preprocessing, runs, device, progress,
        reuse_completed,
    )  # fmt: skip
    return analyse(tuned, paths, splits[config.split], task, config, preprocessing)


_LAYERS = "stage1 ... stageK are the backbone's stages, pooled what follows, head the new head"


@register_protocol(
    "dynamics",
    version=VERSION,
    marker="fine-tuning dynamics: per-layer weight distance, CKA to init, layer importance",
    config=DynamicsConfig,
    primary_metric="mean_cka_init_ft",
    display="descriptive",
    needs="images",
    detail_tables=(
        DetailTable(
            "l2_",
            "Weight distance per layer after fine-tuning",
            f"L2 distance between the fine-tuned and the initial weights of each layer "
            f"(trainable parameters, normalisation layers left out); {_LAYERS}.",
            "mean CKA",
        ),
        DetailTable(
            "relative_l2_",
            "Relative weight distance per layer after fine-tuning",
            "Relative distance between fine-tuned and initial weights: ||w_ft - w_0|| / "
            "||w_0|| per layer.",
            "mean CKA",
        ),
        DetailTable(
            "cka_init_ft_",
            "CKA between initial and fine-tuned features per layer",
            "Linear CKA between the initial and the fine-tuned model's spatially averaged "
            "stage outputs on the test images; 1: fine-tuning left the layer's "
            "representation unchanged up to rotation and scale.",
            "mean CKA",
        ),
        DetailTable(
            "importance_init_",
            "Layer importance (reset to initial) per layer",
            "Drop of the test primary metric between the fine-tuned model and the model "
            "with one layer set back to its initial weights; near 0: the layer's change "
            "did not matter.",
            "mean CKA",
        ),
        DetailTable(
            "importance_random_",
            "Layer importance (re-randomised) per layer",
            "Drop of the test primary metric between the fine-tuned model and the model "
            "with one layer re-drawn at random (normal, each tensor's mean and std, fixed "
            "seed); large: the network relies on that layer's weights.",
            "mean CKA",
        ),
    ),
)
def run_case(case: CaseRun, config: DynamicsConfig) -> ProtocolResult:
    """One dynamics case: fine-tune the case's model on its dataset, then analyse it."""
    size = config.finetune.input_size or case.profile.input_size
    return run(
        build_model(case.case.model),
        case.splits(),
        case.task,
        config,
        case.case.model.preprocessing.with_input_size(size),
        stage_modules(case.case.model),
        runs=case.run_store(),
        device=case.device,
        reuse_completed=not case.retrain,
    )
