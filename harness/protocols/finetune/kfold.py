"""cats-scans' k-fold fine-tuning: one fine-tune per fold, scored on its held-out fold.

vcheplygina/cats-scans@9bc5d8a:src/transfer_experiments.py pools the target dataset,
folds it with ``StratifiedKFold(n_splits=5, shuffle=True, random_state=2)`` on the class
column (src/models/model_preparation_saving.py), and for every fold trains a new model on
the other four folds for all ``epochs`` (no early stopping, no checkpoint: the last
weights), then predicts the held-out fold and scores its AUC
(src/evaluation/auc_evaluation.py: ``roc_auc_score`` of P(class 1) for binary targets,
one-vs-rest ``average="weighted"`` for multi-class ones). It reports the mean over the
folds (``np.mean(auc_per_fold)``, with ``np.std``).

Here the case's train, val and test splits are pooled in that order and folded the same
way (``FinetuneConfig.folds``, ``fold_seed``); since the pooled order is the harness's,
not the peer's dataframe order, the fold membership is the peer's rule, not its exact
rows. ``metrics`` is the mean over folds of each of the task's metrics (``roc_auc`` as
``auc_average`` says); ``details["folds"]`` keeps every fold's values and
``details["metric_std"]`` the population standard deviation the peer prints.

The case driver calls :func:`run_kfold` instead of its own train/val/test run when
``config.folds`` is set (``harness.protocols.finetune.driver.run``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from harness.config.cards import Preprocessing
from harness.data.npz import SplitData
from harness.data.pil_resize import pillow_resizes
from harness.protocols.base import ProtocolResult, TaskInfo
from harness.protocols.finetune.config import VERSION, FinetuneConfig
from harness.protocols.finetune.data import EvalSet, inverse_frequency_weights
from harness.protocols.finetune.keras import BalancedClassLoss, balanced_weights
from harness.protocols.finetune.modes import Context, _require_usable, as_targets
from harness.protocols.finetune.network import make_criterion, predict, uses_bce
from harness.protocols.finetune.runtime import deterministic, resolve_runtime, seeded
from harness.protocols.finetune.spec import StepInfo
from harness.protocols.inputs import check_images, check_labels
from harness.protocols.metrics import check_metric_names, compute_metrics_with_notes
from harness.zoo import LoadedModel

if TYPE_CHECKING:
    from harness.cache.runs import RunStore, Training


def fold_indices(labels: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (train, held-out) indices of every fold: ``StratifiedKFold(folds, shuffle=True,
    random_state=seed)`` on the labels, as cats-scans.

    Raises:
        ValueError: When a class has fewer images than folds.
    """
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels)
    if np.any((counts > 0) & (counts < folds)):
        raise ValueError(
            f"k-fold fine-tune: every class needs at least {folds} images; counts {counts.tolist()}"
        )
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels))


def peer_auc(task: TaskInfo, labels: np.ndarray, probabilities: np.ndarray, average: str) -> float:
    """cats-scans' ``calculate_AUC``: binary ``roc_auc_score(y, P(1))``; multi-class
    ``roc_auc_score(y, P, multi_class="ovr", average=average)``."""
    from sklearn.metrics import roc_auc_score

    if task.task == "binary":
        return float(roc_auc_score(labels, probabilities[:, 1]))
    return float(roc_auc_score(labels, probabilities, multi_class="ovr", average=average))


def run_kfold(
    model: LoadedModel,
    splits: Mapping[str, SplitData],
    task: TaskInfo,
    config: FinetuneConfig,
    preprocessing: Preprocessing,
    runs: RunStore | None = None,
    device: str = "auto",
    progress: bool = True,
    callback: Callable[[StepInfo], None] | None = None,
    reuse_completed: bool = True,
) -> ProtocolResult:
    """Fine-tune once per fold of the pooled splits; report the mean over the folds.

    Args:
        model: The pretrained backbone (copied for every fold).
        splits: "train", "val" and "test" (pooled in that order).
        task: A binary, multiclass or ordinal task.
        config: Settings with ``folds >= 2``.
        preprocessing: The model's preprocessing (the config's input size applies).
        runs: The case's training store (checkpoints and the finished result), or None.
        device: "auto", "cpu" or "cuda".
        progress: Show tqdm bars.
        callback: Called after every training step.
        reuse_completed: Return a stored finished result of the same key.

    Returns:
        ``metrics``: the fold mean of each metric. ``details["folds"]``: per fold.

    Raises:
        ValueError: On a multilabel task, ``folds < 2`` or malformed inputs.
    """
    if config.folds < 2:
        raise ValueError(f"run_kfold needs config.folds >= 2, got {config.folds}")
    if task.task == "multilabel":
        raise ValueError("k-fold fine-tuning folds by class: not for multilabel tasks")
    check_metric_names(task.task, (task.primary_metric, *task.metrics))
    parts = [splits[name] for name in ("train", "val", "test")]
    for name, part in zip(("train", "val", "test"), parts, strict=True):
        check_images(f"{name} split", part.images)
    images = np.concatenate([p.images for p in parts])
    labels = np.concatenate(
        [
            check_labels(f"{n} split", p.labels, len(p), task)
            for n, p in zip(("train", "val", "test"), parts, strict=True)
        ]
    )
    pre = preprocessing.with_input_size(config.input_size)
    runtime = resolve_runtime(device, config.amp, config.channels_last, config.cpu_threads)

    def train_and_score(training: Training | None) -> dict[str, Any]:
        return _all_folds(
            model, images, labels, task, config, pre, runtime, training, callback, progress
        )

    if runs is None:
        result = train_and_score(None)
    else:
        key = {
            "version": VERSION,
            "mode": "kfold",
            "config": config.to_dict(),
            "weights_id": model.weights_id,
            "data": [images, labels],
            "preprocessing": pre.key_payload(),
            "augmentation_resizes": pillow_resizes(),  # Pillow resizes its crops
            "task": [task.task, task.num_classes, task.primary_metric, list(task.metrics)],
            "runtime": runtime.describe(),
        }
        result, reused = runs.result(
            key,
            {"libraries": [torch.__version__, np.__version__]},
            train_and_score,
            reuse=reuse_completed,
        )
        if reused:
            result = {**result, "details": {**result["details"], "reused_completed_run": True}}
    return ProtocolResult(result["metrics"], result["hyperparameters"], result["details"])


def _all_folds(
    model: LoadedModel,
    images: np.ndarray,
    labels: np.ndarray,
    task: TaskInfo,
    config: FinetuneConfig,
    pre: Preprocessing,
    runtime: Any,
    training: Training | None,
    callback: Callable[[StepInfo], None] | None,
    progress: bool,
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with (
        runtime.threads(),
        seeded(config.seed, runtime.device),
        deterministic(config.deterministic, runtime.device),
    ):
        for k, (fit, held) in enumerate(fold_indices(labels, config.folds, config.fold_seed), 1):
            y_fit = labels[fit]
            criterion = _criterion(config, task, y_fit, runtime.device)

            def no_validation(net: torch.nn.Module) -> float:
                raise AssertionError("k-fold runs train blind")

            ctx = Context(model, task, config, pre, runtime, criterion, no_validation,
                          training, callback, progress)  # fmt: skip
            spec = ctx.spec(f"fold{k}", config.lr, config.weight_decay, n=len(fit),
                            select_best=False, patience=None)  # fmt: skip
            outcome = ctx.train(spec, images[fit], as_targets(y_fit, task, config.loss))
            _require_usable(outcome, spec)
            probs = predict(outcome.model, EvalSet(images[held], pre), task.task, runtime,
                            config.eval_batch_size, config.loss)  # fmt: skip
            metrics, notes = compute_metrics_with_notes(
                task.task, labels[held], probs, task.metrics
            )
            if "roc_auc" in metrics:
                metrics["roc_auc"] = peer_auc(task, labels[held], probs, config.auc_average)
            rows.append(
                {
                    "fold": k,
                    "n_train": len(fit),
                    "n_test": len(held),
                    "metrics": metrics,
                    "metric_notes": notes,
                    "steps_done": outcome.steps_done,
                    "loss_curve": outcome.loss_curve,
                    "resumed_from_step": outcome.resumed_from_step,
                    "class_weights": getattr(criterion, "class_weights_list", None),
                }
            )
            if training is not None:
                training.discard(f"fold{k}")
    names = list(rows[0]["metrics"])
    values = {m: [row["metrics"][m] for row in rows] for m in names}
    return {
        "metrics": {m: float(np.mean(v)) for m, v in values.items()},
        "hyperparameters": {
            "lr": config.lr,
            "weight_decay": config.weight_decay,
            "steps": rows[0]["steps_done"],
            "folds": config.folds,
        },
        "details": {
            "mode": "kfold",
            "fold_rule": f"StratifiedKFold({config.folds}, shuffle=True, "
            f"random_state={config.fold_seed}) over train+val+test pooled",
            "folds": rows,
            "metric_std": {m: float(np.std(v)) for m, v in values.items()},
            "auc_average": config.auc_average,
            "class_weighting": config.class_weighting,
            "n_pooled": len(labels),
            "train_seconds": time.perf_counter() - started,
            "resumed_from_step": max(row["resumed_from_step"] for row in rows),
            **runtime.describe(),
        },
    }


def _criterion(
    config: FinetuneConfig, task: TaskInfo, y_fit: np.ndarray, device: torch.device
) -> torch.nn.Module:
    """Keras' class-weighted batch mean ("balanced"), or the protocol's usual loss."""
    if config.class_weighting == "balanced":
        weights = balanced_weights(y_fit, task.num_classes)
        loss = BalancedClassLoss(weights, bce=uses_bce(task.task, config.loss)).to(device)
        loss.class_weights_list = weights.tolist()
        return loss
    weights = None
    if config.class_weighting == "inverse_frequency":
        weights = inverse_frequency_weights(y_fit, task.num_classes, task.task)
    return make_criterion(task.task, weights, device, config.loss)
