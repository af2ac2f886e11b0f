"""Fine-tune a case's model and keep the fine-tuned weights (for :mod:`.dynamics`).

The fine-tune driver keeps only a finished training's scores and deletes its checkpoints
once the case is scored. :func:`fine_tuned` runs the same training
(:func:`harness.protocols.finetune.fine_tune`, resumable in the case's training store) and
stores the final state dict next to the finished result, in the case's training folder
(``dyn-<key>.weights.npz``: an array value of the cache service, key inside, checksum,
atomic write), while it holds the training's lock and before the result is written. A
later run with the same key loads it; if it is gone the training runs again (recomputing
the weights deterministically would need bit-exact training, which GPUs do not promise).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from harness.analyses.dynamics import arrays_to_state, state_to_arrays
from harness.cache.codecs import NpzArrays
from harness.cache.runs import NAMESPACE as CHECKPOINTS
from harness.cache.store import STORE, Namespace
from harness.config.cards import Preprocessing
from harness.data.npz import SplitData
from harness.protocols.base import TaskInfo
from harness.protocols.finetune import FinetuneConfig, fine_tune, training_depends_on
from harness.protocols.finetune.driver import check_result
from harness.protocols.finetune.modes import FineTuned
from harness.protocols.finetune.network import Classifier, clone_state, num_outputs
from harness.protocols.finetune.runtime import Runtime, resolve_runtime
from harness.zoo import LoadedModel

if TYPE_CHECKING:
    from harness.cache.runs import RunStore

WEIGHTS_FORMAT = 1
WEIGHTS: Namespace[Mapping[str, np.ndarray]] = Namespace(
    CHECKPOINTS, NpzArrays(), suffix=".weights.npz", key_length=16
)


@dataclass
class Tuned:
    """The network before and after fine-tuning, and how the fine-tuning went."""

    initial: Classifier
    tuned: Classifier
    runtime: Runtime
    hyperparameters: dict[str, Any]
    details: dict[str, Any]
    reused: bool


def initial_classifier(model: LoadedModel, task: TaskInfo, config: FinetuneConfig) -> Classifier:
    """The network a fine-tuning run starts from: the backbone and the head drawn under the
    run's seed, built in the order :func:`harness.protocols.finetune.loop.train_run` uses."""
    head_init = getattr(config, "head_init", "default")  # e.g. VTAB's zero head
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = Classifier(
            copy.deepcopy(model.module),
            model.feature_dim,
            num_outputs(task.task, task.num_classes, config.loss),
            **({} if head_init == "default" else {"head_init": head_init}),
        )
    if config.head_dropout:
        net.head = torch.nn.Sequential(torch.nn.Dropout(config.head_dropout), net.head)
    return net.eval()


def fine_tuned(
    model: LoadedModel,
    splits: Mapping[str, SplitData],
    task: TaskInfo,
    config: FinetuneConfig,
    preprocessing: Preprocessing,
    runs: RunStore | None = None,
    device: str = "auto",
    progress: bool = True,
    reuse_completed: bool = True,
) -> Tuned:
    """Fine-tune on train (select on val) and keep the final weights in the training store.

    Args:
        model: The pretrained backbone (copied).
        splits: ``train`` and ``val`` (``test`` is not used here).
        task: The target task.
        config: The fine-tune settings.
        preprocessing: The model's preprocessing.
        runs: The case's training store; None trains without checkpoints or reuse.
        device: "auto", "cpu" or "cuda".
        progress: Show tqdm bars.
        reuse_completed: Reuse a finished training with its stored weights.

    Returns:
        The initial and fine-tuned networks (eval mode, on the run's device).
    """
    runtime = resolve_runtime(device, config.amp, config.channels_last, config.cpu_threads)
    kept: dict[str, Any] = {}

    def train(training: Any) -> FineTuned:
        fitted = fine_tune(
            model, splits["train"], splits["val"], task, config, preprocessing,
            training=training, device=device, progress=progress,
        )  # fmt: skip
        kept["state"] = clone_state(fitted.model)
        return fitted

    initial = initial_classifier(model, task, config).to(runtime.device)
    if runs is None:
        fitted = train(None)
        return Tuned(initial, fitted.model, runtime, fitted.hyperparameters, fitted.details, False)
    pre = preprocessing.with_input_size(config.input_size)
    depends = training_depends_on(
        config, model.weights_id, splits["train"], splits["val"], pre, task, runtime
    )
    training = {**depends, "kept_weights": WEIGHTS_FORMAT}
    entry = STORE.entry(
        WEIGHTS, {"scope": runs.scope, "training": training}, folder=runs.folder, prefix="dyn-"
    )

    def compute(folder: Any) -> dict[str, Any]:
        fitted = train(folder)
        STORE.get_or_compute(WEIGHTS, entry, lambda: state_to_arrays(kept["state"]), refresh=True)
        return {"metrics": {}, "hyperparameters": fitted.hyperparameters, "details": fitted.details}

    scoring = {"weights_file": entry.path.name}
    result, reused = runs.result(
        training, scoring, compute, reuse=reuse_completed, validate=check_result
    )
    if "state" not in kept:
        stored = STORE.load(WEIGHTS, entry)
        if stored is not None:
            kept["state"] = arrays_to_state(stored)
        else:  # the weights file was deleted or damaged: train again
            result, reused = runs.result(training, scoring, compute, reuse=False)
    tuned = initial_classifier(model, task, config)
    tuned.load_state_dict(kept["state"])
    tuned.to(runtime.device).eval()
    return Tuned(initial, tuned, runtime, result["hyperparameters"], result["details"], reused)
