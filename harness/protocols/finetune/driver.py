"""The fine-tuning case: train and select without the test split, then score test once.

:func:`run` is the whole case; :func:`fine_tune` trains and selects; :func:`score` scores
a split. What the training depends on (:func:`training_depends_on`) keys the case's
checkpoints and its finished result in the training store the runner hands in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from harness.cache.keys import module_sha256
from harness.config.cards import Preprocessing
from harness.data.npz import SplitData
from harness.data.pil_resize import pillow_resizes
from harness.data.table import SoftTargets
from harness.protocols.base import ProtocolResult, TaskInfo
from harness.protocols.finetune.config import VERSION, FinetuneConfig
from harness.protocols.finetune.data import EvalSet, inverse_frequency_weights
from harness.protocols.finetune.modes import Context, FineTuned, grid_search, select_on_val
from harness.protocols.finetune.network import make_criterion, predict
from harness.protocols.finetune.runtime import Runtime, deterministic, resolve_runtime, seeded
from harness.protocols.finetune.spec import StepInfo
from harness.protocols.finetune.sweep import sweep_select
from harness.protocols.finetune.tencrop import TenCropSet
from harness.protocols.finetune.validation import make_validate
from harness.protocols.inputs import check_images, check_labels
from harness.protocols.metrics import (
    check_metric_names,
    compute_metrics_with_notes,
)
from harness.zoo import LoadedModel

if TYPE_CHECKING:
    from harness.cache.runs import RunStore, Training


def run(
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
    """Fine-tune on train (select on val, or grid search + retrain on train+val), score test.

    With a training store (``runs``, from ``CaseRun.run_store()``), every run checkpoints
    at every validation and a finished case keeps its result (not its weights) in the
    store. Run again under the same key (case, VERSION, config, weights, train/val/test
    data, preprocessing, task, runtime, torch / timm / numpy versions) it resumes at the
    end: the stored result is returned with ``details["reused_completed_run"] = True``. A
    different seed, config, data or library version trains again;
    ``reuse_completed=False`` always does.

    Args:
        model: The pretrained backbone (copied; the caller's module is not modified).
        splits: "train", "val" and "test" images and labels.
        task: Task type, number of classes and metrics.
        config: Protocol settings.
        preprocessing: The model's preprocessing; ``config.input_size`` overrides its size.
        runs: The case's training store (checkpoints and finished results), or None.
        device: "auto", "cpu" or "cuda".
        progress: Show tqdm bars (on a terminal).
        callback: Called after every training step of every run.
        reuse_completed: Return the stored result of a finished run with the same key.

    Returns:
        ``metrics``: test metrics. ``hyperparameters``: ``lr``, ``weight_decay``, ``steps``
        (steps of the scored weights), ``val_primary`` and, per mode, ``w`` or
        ``lr_finder_lr``. ``details``: curves, sweep tables, ``resumed_from_step``, split
        sizes, class weights, runtime, timings, ``final_weights_sha256``, ``metric_notes``.

    Raises:
        ValueError: On malformed inputs or settings, naming what is at fault.
        FloatingPointError: When training diverges before any usable validation.
    """
    for name in ("train", "val", "test"):
        if name not in splits:
            raise ValueError(f"fine-tune needs a {name!r} split; got {sorted(splits)}")
    task = _with_primary(task, config)
    if config.folds:  # cats-scans: one fine-tune per fold of the pooled splits
        from harness.protocols.finetune.kfold import run_kfold

        return run_kfold(
            model,
            splits,
            task,
            config,
            preprocessing,
            runs=runs,
            device=device,
            progress=progress,
            callback=callback,
            reuse_completed=reuse_completed,
        )

    def train_and_score(training: Training | None) -> dict[str, Any]:
        fitted = fine_tune(
            model,
            splits["train"],
            splits["val"],
            task,
            config,
            preprocessing,
            training=training,
            device=device,
            progress=progress,
            callback=callback,
        )
        started = time.perf_counter()
        metrics, notes, _ = score(fitted, splits["test"], task, config, preprocessing)
        details = dict(fitted.details)
        details["n_test"] = len(splits["test"])
        details["test_seconds"] = time.perf_counter() - started
        details["metric_notes"] = notes
        if training is not None:
            details["reused_completed_run"] = False
        return {"metrics": metrics, "hyperparameters": fitted.hyperparameters, "details": details}

    if runs is None:
        result = train_and_score(None)
    else:
        import timm

        pre = _effective_preprocessing(preprocessing, config)
        runtime = resolve_runtime(device, config.amp, config.channels_last, config.cpu_threads)
        training = training_depends_on(
            config, model.weights_id, splits["train"], splits["val"], pre, task, runtime
        )
        test = splits["test"]
        scoring = {
            "test": [test.images, test.labels],
            "libraries": [torch.__version__, timm.__version__, np.__version__],
        }
        result, reused = runs.result(
            training, scoring, train_and_score, reuse=reuse_completed, validate=check_result
        )
        if reused:
            result = {**result, "details": {**result["details"], "reused_completed_run": True}}
    metrics, hyper, details = result["metrics"], result["hyperparameters"], result["details"]
    return ProtocolResult(metrics, hyper, details, primary_metric=config.primary_metric)


def check_result(value: Mapping[str, Any]) -> str | None:
    """Why a stored fine-tune result cannot be used, or None when it can.

    A stored result must hold ``metrics`` (name -> number), ``hyperparameters`` and
    ``details`` mappings; anything else (a truncated or hand-edited file) is a miss.

    Args:
        value: The stored result.

    Returns:
        The reason, or None.
    """
    for part in ("metrics", "hyperparameters", "details"):
        if not isinstance(value.get(part), Mapping):
            return f"its {part!r} is missing or not a mapping"
    for name, number in value["metrics"].items():
        if isinstance(number, bool) or not isinstance(number, int | float):
            return f"its metric {name!r} is {number!r}, not a number"
    return None


def training_depends_on(
    config: FinetuneConfig,
    weights_id: str,
    train: SplitData,
    val: SplitData,
    pre: Preprocessing,
    task: TaskInfo,
    runtime: Runtime,
) -> dict[str, Any]:
    """What a case's training depends on: a checkpoint is resumed only when all of it matches.

    The protocol VERSION, the full config, the weights identity, the train/val images and
    labels, the preprocessing, the task and the runtime (device type, precision, memory
    format, threads). The training store adds the case's id and makes the key.

    Returns:
        A key payload (arrays enter the key as digests).
    """
    return {
        "version": VERSION,
        "config": config.to_dict(),
        "weights_id": weights_id,
        "data": [train.images, train.labels, val.images, val.labels],
        "preprocessing": pre.key_payload(),
        "augmentation_resizes": pillow_resizes(),  # Pillow resizes its crops
        "task": asdict(task),
        "runtime": runtime.describe(),
    }


def score(
    fitted: FineTuned,
    split: SplitData,
    task: TaskInfo,
    config: FinetuneConfig,
    preprocessing: Preprocessing,
) -> tuple[dict[str, float], dict[str, Any], np.ndarray]:
    """Score a fine-tuned model on a split with all the task's metrics.

    Args:
        fitted: The output of :func:`fine_tune`.
        split: Images and labels to score.
        task: Task type and metrics.
        config: Protocol settings (input size, eval batch size, eval labels, TenCrop).
        preprocessing: The model's preprocessing.

    Returns:
        (metrics, metric notes, probabilities (N, C) over all outputs).
    """
    pre = _effective_preprocessing(preprocessing, config)
    labels = check_labels("test split", split.labels, len(split.images), task)
    data = TenCropSet(split.images, pre) if config.test_tencrop else EvalSet(split.images, pre)
    with fitted.runtime.threads():
        probabilities = predict(
            fitted.model,
            data,
            task.task,
            fitted.runtime,
            config.eval_batch_size,
            config.loss,
        )
    columns = _eval_columns(task, config)
    y, p = (labels[:, columns], probabilities[:, columns]) if columns else (labels, probabilities)
    metrics, notes = compute_metrics_with_notes(task.task, y, p, task.metrics)
    return metrics, notes, probabilities


def fine_tune(
    model: LoadedModel,
    train: SplitData,
    val: SplitData,
    task: TaskInfo,
    config: FinetuneConfig,
    preprocessing: Preprocessing,
    training: Training | None = None,
    device: str = "auto",
    progress: bool = True,
    callback: Callable[[StepInfo], None] | None = None,
) -> FineTuned:
    """Train (and select) the model of one case without touching the test split.

    Args:
        model: The pretrained backbone.
        train: Training images and labels.
        val: Validation images and labels (selection; part of the retrain in grid search).
        task: Task type, number of classes and metrics.
        config: Protocol settings.
        preprocessing: The model's preprocessing.
        training: The training's folder in the case's store (checkpoints, done-markers),
            or None (no checkpoints).
        device: "auto", "cpu" or "cuda".
        progress: Show tqdm bars.
        callback: Called after every training step.

    Returns:
        The selected model with hyperparameters and details.
    """
    task = _with_primary(task, config)
    check_metric_names(task.task, (task.primary_metric, *task.metrics))
    if task.num_classes < 2:
        raise ValueError(f"task needs at least 2 classes, got num_classes={task.num_classes}")
    columns = _eval_columns(task, config)
    y_train = check_labels("train split", train.labels, len(train.images), task)
    y_val = check_labels("val split", val.labels, len(val.images), task)
    check_images("train split", train.images)
    check_images("val split", val.images)
    if train.images.shape[1:] != val.images.shape[1:]:
        raise ValueError(
            f"train and val images differ in shape: {train.images.shape[1:]} vs "
            f"{val.images.shape[1:]}"
        )
    pre = _effective_preprocessing(preprocessing, config)
    runtime = resolve_runtime(device, config.amp, config.channels_last, config.cpu_threads)

    weights = None
    if config.class_weighting == "inverse_frequency":
        weights = inverse_frequency_weights(y_train, task.num_classes, task.task)
    soft_range = None
    if train.soft is not None and np.asarray(train.soft.mask).any():
        y_train, soft_range = _soft_coded(y_train, train.soft, task, config)
    criterion = make_criterion(task.task, weights, runtime.device, config.loss)
    validate = make_validate(EvalSet(val.images, pre), y_val, task, config, runtime, columns)

    ctx = Context(
        model,
        task,
        config,
        pre,
        runtime,
        criterion,
        validate,
        training,
        callback,
        progress,
        soft_range,
    )
    with (
        runtime.threads(),
        seeded(config.seed, runtime.device),
        deterministic(config.deterministic, runtime.device),
    ):
        if config.grid_search:
            fitted = grid_search(ctx, train, val, y_train, y_val)
        elif config.sweep:
            fitted = sweep_select(ctx, train, val, y_train)
        else:
            fitted = select_on_val(ctx, train, y_train, val)
        weights_sha256 = module_sha256(fitted.model)
    fitted.details.update(
        {
            "n_train": len(train),
            "n_val": len(val),
            "class_weights": None if weights is None else weights.tolist(),
            "loss": "bce" if task.task == "multilabel" or config.loss == "bce" else "cross_entropy",
            "eval_labels": columns or None,
            "label_smoothing": None
            if soft_range is None
            else {"range": list(soft_range), "entries": int(np.isnan(y_train).sum())},
            "input_size": pre.input_size,
            "interpolation": pre.interpolation,
            **runtime.describe(),
            "deterministic": config.deterministic,
            "improvement_rule": _improvement_rule(config),
            "test_eval": "tencrop" if config.test_tencrop else "center",
            "final_weights_sha256": weights_sha256,
            "checkpoint_key": None if training is None else training.key,
            "torch_version": torch.__version__,
        }
    )
    return fitted


def _improvement_rule(config: FinetuneConfig) -> str:
    """What counts as a better validation, and which weights are scored, in words."""
    quantity = "validation loss (lower)" if config.select_on == "loss" else "validation score"
    rule = "ties are improvements" if config.tie_improves else "ties are not improvements"
    weights = "best weights restored" if config.restore_best else "last weights scored"
    return f"{quantity}: strictly better improves, {rule}; {weights}"


def _with_primary(task: TaskInfo, config: FinetuneConfig) -> TaskInfo:
    """The task selecting on (and scoring) the config's primary metric, if it sets one."""
    name = config.primary_metric or task.primary_metric
    extra = () if name in task.metrics else (name,)
    return replace(task, primary_metric=name, metrics=(*task.metrics, *extra))


def _effective_preprocessing(pre: Preprocessing, config: FinetuneConfig) -> Preprocessing:
    """The model's preprocessing at the config's input size (if it sets one)."""
    return pre.with_input_size(config.input_size)


def _eval_columns(task: TaskInfo, config: FinetuneConfig) -> list[int]:
    """The multilabel columns scored (``config.eval_labels``); empty: all of them."""
    if config.eval_labels is None:
        return []
    if task.task != "multilabel":
        raise ValueError(
            f"FinetuneConfig.eval_labels applies to multilabel tasks, not {task.task!r}"
        )
    bad = [j for j in config.eval_labels if j >= task.num_classes]
    if bad:
        raise ValueError(
            f"FinetuneConfig.eval_labels {bad} out of range for {task.num_classes} labels"
        )
    return list(config.eval_labels)


def _soft_coded(
    labels: np.ndarray, soft: SoftTargets, task: TaskInfo, config: FinetuneConfig
) -> tuple[np.ndarray, tuple[float, float]]:
    """Training labels with label-smoothed entries coded NaN, and their draw range.

    The loader draws each NaN entry from the range every time its image is loaded
    (:class:`~harness.protocols.finetune.data.ImageDataset`), as
    MR-HosseinzadehTaher/BenchmarkTransferLearning@5656fec:Version1/dataloader.py does;
    only a sigmoid (BCE) loss can train on such targets.
    """
    if task.task != "multilabel" and not (task.task == "binary" and config.loss == "bce"):
        raise ValueError(
            f"fine-tune: label-smoothed targets (CheXpert LSR) need a BCE loss; the "
            f"{task.task} task trains with {config.loss} (set loss: bce)"
        )
    coded = labels.astype(np.float64)
    coded[np.asarray(soft.mask, dtype=bool)] = np.nan
    return coded, (soft.low, soft.high)
