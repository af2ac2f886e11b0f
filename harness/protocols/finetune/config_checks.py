"""The fine-tuning config's validation: every problem of a :class:`FinetuneConfig`, named."""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

from harness.protocols.finetune.spec import EPOCH_SCHEDULES, SCHEDULES
from harness.protocols.finetune.sweep_axes import sweep_problems

if TYPE_CHECKING:
    from harness.protocols.finetune.config import FinetuneConfig

_CLASS_WEIGHTING = ("none", "inverse_frequency", "balanced")
# augmentations whose RandomResizedCrop may zoom out (feature-reuse's scale (0.8, 1.2))
_SCALE_ABOVE_ONE = ("feature-reuse", "medical-transformers")
_AMP = ("auto", "none", "bf16", "fp16")
_CHOICES = {
    "optimizer": ("sgd", "adam", "keras-adam"),
    "schedule": SCHEDULES,
    "sampling": ("stream", "epochs", "drop_last"),
    "val_unit": ("steps", "epochs"),
    "select_on": ("metric", "loss"),
    "grid_score": ("best", "last"),
    "loss": ("auto", "bce"),
    "augmentation": (
        "crop-flip",
        "feature-reuse",
        "medical-transformers",
        "keras",
        "transferability",
        "none",
    ),
    "head_init": ("default", "zeros"),
    "lr_finder_select": ("val", "loss", "val_loss"),
    "auc_average": ("macro", "weighted"),
    "sweep_select": ("val_loss", "metric"),
}
_EPOCH_SAMPLING = ("epochs", "drop_last")


def config_problems(c: FinetuneConfig) -> list[str]:
    """Every invalid setting or combination of ``c``, one message each.

    Args:
        c: The config (its tuples already normalised).

    Returns:
        The messages; empty when the config is valid.
    """
    problems: list[str] = []
    if c.steps < 1 or c.batch_size < 1:
        problems.append("steps and batch_size must be >= 1")
    whole = float(c.val_every).is_integer() and c.val_every >= 1
    if not (whole or (c.val_unit == "epochs" and c.val_every > 0)):
        problems.append(
            f"val_every must be an integer >= 1 (a positive fraction of an epoch under "
            f"val_unit='epochs'), got {c.val_every}"
        )
    if c.val_round is not None and c.val_round < 0:
        problems.append(f"val_round must be >= 0 or None, got {c.val_round}")
    if c.patience is not None and c.patience < 1:
        problems.append(f"patience must be >= 1 or None, got {c.patience}")
    if not (c.lr > 0 and math.isfinite(c.lr)) or c.weight_decay < 0:
        problems.append("lr must be > 0 and weight_decay >= 0")
    for name, allowed in _CHOICES.items():
        if getattr(c, name) not in allowed:
            problems.append(f"{name} must be one of {allowed}, got {getattr(c, name)!r}")
    if c.sampling not in _EPOCH_SAMPLING and (c.epochs is not None or c.val_unit == "epochs"):
        problems.append("epochs and val_unit='epochs' need sampling 'epochs' or 'drop_last'")
    if c.epochs is not None and c.epochs < 1:
        problems.append(f"epochs must be >= 1 or None, got {c.epochs}")
    if c.epochs is not None and c.grid_search:
        problems.append("epochs is not supported with grid_search: use steps")
    if c.schedule in ("plateau", "warmup-plateau") and c.grid_search:
        problems.append("plateau schedules step on validations: not with grid_search")
    if not 0 < c.plateau_factor < 1 or c.plateau_patience < 0:
        problems.append("plateau_factor must lie in (0, 1) and plateau_patience be >= 0")
    if c.plateau_threshold < 0 or not 0 <= c.rotation <= 180:
        problems.append("plateau_threshold must be >= 0 and rotation lie in [0, 180]")
    if c.loss == "bce" and c.class_weighting == "inverse_frequency":
        problems.append("loss='bce' does not support class_weighting='inverse_frequency'")
    if c.class_weighting == "balanced" and not c.folds:
        problems.append("class_weighting='balanced' (Keras class_weight) needs folds")
    if c.schedule in EPOCH_SCHEDULES and c.sampling not in _EPOCH_SAMPLING:
        problems.append(f"schedule={c.schedule!r} steps once an epoch: needs epoch sampling")
    if c.warmup_iters < 1 or not 0 <= c.warmup_start < c.lr or c.cosine_floor < 0:
        problems.append("warmup_iters must be >= 1, 0 <= warmup_start < lr, cosine_floor >= 0")
    if not 0 <= c.head_dropout < 1 or min(c.shift, c.shear, c.zoom) < 0:
        problems.append("head_dropout must lie in [0, 1); shift, shear, zoom be >= 0")
    if c.freeze_stage and (c.grid_search or c.lr_finder or c.freeze_steps):
        problems.append("freeze_stage excludes grid_search, lr_finder and freeze_steps")
    if c.freeze_lr <= 0 or c.freeze_patience < 1:
        problems.append("freeze_lr must be > 0 and freeze_patience >= 1")
    if c.folds == 1 or c.folds < 0 or (c.folds and c.grid_search):
        problems.append(f"folds must be 0 (off) or >= 2, without grid_search: {c.folds}")
    if c.lr_finder_epochs is not None and (
        c.lr_finder_epochs < 1 or c.sampling not in _EPOCH_SAMPLING
    ):
        problems.append("lr_finder_epochs must be >= 1 and needs epoch sampling")
    low, high = c.crop_scale if len(c.crop_scale) == 2 else (0.0, -1.0)
    if not 0 < low <= high or (high > 1 and c.augmentation not in _SCALE_ABOVE_ONE):
        problems.append(
            f"crop_scale must be (a, b) with 0 < a <= b <= 1 (b > 1 only with "
            f"augmentation in {_SCALE_ABOVE_ONE}): {c.crop_scale}"
        )
    if c.input_size is not None and c.input_size < 8:
        problems.append(f"input_size must be >= 8, got {c.input_size}")
    if not 0 <= c.freeze_steps < c.steps:
        problems.append(f"freeze_steps must lie in [0, steps), got {c.freeze_steps}")
    if c.grid_search and c.lr_finder:
        problems.append("grid_search and lr_finder are alternatives; enable one")
    problems += sweep_problems(c.sweep)
    if c.sweep and (c.grid_search or c.lr_finder or c.folds or c.freeze_stage):
        problems.append("sweep excludes grid_search, lr_finder, folds and freeze_stage")
    if not c.grid_lrs or any(lr <= 0 for lr in c.grid_lrs):
        problems.append("grid_lrs must be positive and not empty")
    if not c.grid_ws or any(w < 0 for w in c.grid_ws):
        problems.append("grid_ws must be >= 0 and not empty")
    if any(n <= c.freeze_steps for n in c.grid_steps) or (c.grid_steps and not c.grid_search):
        problems.append(f"grid_steps needs grid_search, each > freeze_steps: {c.grid_steps}")
    fractions = (0.0, *c.decay_at, 1.0)
    if any(a >= b for a, b in itertools.pairwise(fractions)):
        problems.append(f"decay_at must be increasing fractions in (0, 1): {c.decay_at}")
    if not 0 < c.decay_factor <= 1 or c.warmup_steps < 0:
        problems.append("decay_factor must lie in (0, 1] and warmup_steps be >= 0")
    if not 0 < c.lr_finder_min < c.lr_finder_max or c.lr_finder_points < 2:
        problems.append("the LR finder needs 0 < lr_finder_min < lr_finder_max, >= 2 points")
    if c.lr_finder_steps < 1:
        problems.append("lr_finder_steps must be >= 1")
    if c.layer_decay is not None and not 0 < c.layer_decay <= 1:
        problems.append(f"layer_decay must lie in (0, 1], got {c.layer_decay}")
    if c.grad_clip is not None and not c.grad_clip > 0:
        problems.append(f"grad_clip must be > 0 or None, got {c.grad_clip}")
    if c.class_weighting not in _CLASS_WEIGHTING:
        problems.append(f"class_weighting must be one of {_CLASS_WEIGHTING}")
    if c.amp not in _AMP:
        problems.append(f"amp must be one of {_AMP}, got {c.amp!r}")
    if c.eval_labels is not None and (
        not c.eval_labels or min(c.eval_labels) < 0 or len(set(c.eval_labels)) != len(c.eval_labels)
    ):
        problems.append(f"eval_labels must be distinct indices >= 0: {c.eval_labels}")
    if c.cpu_threads is not None and c.cpu_threads < 1:
        problems.append(f"cpu_threads must be >= 1 or None, got {c.cpu_threads}")
    if c.eval_batch_size < 1 or c.num_workers < 0:
        problems.append("eval_batch_size must be >= 1 and num_workers >= 0")
    return problems
