"""A fine-tuning run's optimizer and learning-rate schedule, from its :class:`RunSpec`."""

from __future__ import annotations

import torch

from harness.protocols.finetune.keras import KerasAdam
from harness.protocols.finetune.network import Classifier, param_groups
from harness.protocols.finetune.spec import RunSpec
from harness.protocols.finetune.warmup import WarmupCosine, WarmupPlateau


def make_optimizer(spec: RunSpec, model: Classifier) -> torch.optim.Optimizer:
    """The run's optimizer over the model's parameter groups (layer decay applied).

    Raises:
        ValueError: Weight decay with Keras' Adam, which has none.
    """
    groups = param_groups(model, spec.lr, spec.weight_decay, spec.layer_decay)
    if spec.optimizer == "keras-adam":
        if spec.weight_decay:
            raise ValueError(f"run {spec.name}: Keras' Adam has no weight decay")
        return KerasAdam(groups, lr=spec.lr)
    if spec.optimizer == "adam":
        return torch.optim.Adam(groups, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.SGD(
        groups,
        lr=spec.lr,
        momentum=spec.momentum,
        nesterov=spec.nesterov,
        weight_decay=spec.weight_decay,
    )


Scheduler = (
    torch.optim.lr_scheduler.LRScheduler
    | torch.optim.lr_scheduler.ReduceLROnPlateau
    | WarmupPlateau
    | WarmupCosine
)


def make_scheduler(spec: RunSpec, optimizer: torch.optim.Optimizer) -> Scheduler:
    """The run's learning-rate schedule (stepped after every optimizer step, except
    ``plateau``, stepped at every validation)."""
    warmup = {
        "max_lr": spec.lr,
        "warmup_iters": spec.warmup_iters,
        "warmup_start": spec.warmup_start,
    }
    if spec.schedule == "warmup-plateau":
        return WarmupPlateau(
            optimizer,
            **warmup,
            steps_per_epoch=spec.steps_per_epoch,
            mode="max" if spec.select_on == "metric" else "min",
            factor=spec.plateau_factor,
            patience=spec.plateau_patience,
            threshold=spec.plateau_threshold,
        )
    if spec.schedule == "warmup-cosine":
        return WarmupCosine(optimizer, **warmup, horizon=spec.horizon, floor=spec.cosine_floor)
    if spec.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="max" if spec.select_on == "metric" else "min",
            factor=spec.plateau_factor,
            patience=spec.plateau_patience,
            threshold=spec.plateau_threshold,
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, spec.lr_factor)
