"""revisiting-transfer's two-stage fine-tuning: a freeze stage, then the whole network.

DovileDo/revisiting-transfer@54853c3:src/fine-tuning.py with ``--freeze`` set (its
``type=bool`` argument parses the README's ``--freeze False`` as True, so the README's
command runs this stage too):

1. The backbone is frozen (``base_model.trainable = False``: no updates, BatchNorm in
   inference mode) and the model (GAP features -> Dropout(0.5) -> Dense softmax) is
   compiled with ``Adam()``, Keras' default lr 1e-3, and fitted for up to ``--epoch``
   epochs with ``EarlyStopping(monitor="val_acc", patience=10)``: a strictly higher
   validation accuracy improves, 10 epochs without one stop, and the weights at the stop
   are kept (``restore_best_weights`` is False).
2. ``base_model.trainable = True`` and the model is compiled again with a fresh
   ``Adam(learning_rate=--lr)`` (1e-5 in the README), fitted for up to ``--epoch`` epochs
   from the stage-1 weights with ``EarlyStopping(monitor="val_loss", patience=30)`` and
   ``ModelCheckpoint(monitor="val_loss", save_best_only=True)``; the test predictions come
   from the checkpoint with the lowest validation loss (strictly lower improves).

``FinetuneConfig``: ``freeze_stage=True`` with ``freeze_lr``, ``freeze_patience`` (stage 1)
and ``lr``, ``patience``, ``select_on="loss"`` (stage 2); both stages use the config's
optimizer, epochs and augmentation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.data.npz import SplitData
from harness.protocols.finetune.lr_finder import val_scorer
from harness.protocols.finetune.modes import (
    Context,
    FineTuned,
    _outcome_details,
    _require_usable,
    as_targets,
)


def freeze_then_train(
    ctx: Context, train: SplitData, y_train: np.ndarray, val: SplitData | None
) -> FineTuned:
    """Stage 1 (head on the frozen backbone, early stop on val accuracy, last weights),
    then stage 2 (everything, fresh optimizer, the best validation weights).

    Args:
        ctx: The case's shared settings; its validation score drives stage 2.
        train: Training images and labels.
        y_train: Checked training labels.
        val: The val split (stage 1 scores its accuracy).

    Returns:
        The stage-2 model with both stages' curves in ``details["freeze_stage"]``.
    """
    config = ctx.config
    targets = as_targets(y_train, ctx.task, config.loss)
    n = len(train)
    frozen_spec = ctx.spec(
        "freeze",
        config.freeze_lr,
        config.weight_decay,
        n=n,
        schedule="constant",
        head_only=True,
        patience=config.freeze_patience,
        select_on="metric",
        restore_best=False,
        tie_improves=False,
        val_round=None,
    )
    frozen = ctx.train(
        frozen_spec, train.images, targets, validate=val_scorer(ctx, val, "accuracy")
    )
    _require_usable(frozen, frozen_spec)
    start = {k: v.detach().cpu().clone() for k, v in frozen.model.state_dict().items()}

    spec = ctx.spec("main", config.lr, config.weight_decay, n=n)
    outcome = ctx.train(spec, train.images, targets, init_state=start)
    _require_usable(outcome, spec)
    hyper: dict[str, Any] = {
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "steps": outcome.best_step,
        "val_primary": outcome.val_score,
        "freeze_lr": config.freeze_lr,
        "freeze_steps": frozen.steps_done,
    }
    details: dict[str, Any] = {
        "mode": "freeze_then_train",
        "fit_split": "train",
        **_outcome_details(outcome),
        "freeze_stage": {
            "steps_done": frozen.steps_done,
            "stopped_early": frozen.stopped_early,
            "val_accuracy_curve": frozen.val_curve,
            "loss_curve": frozen.loss_curve,
            "scored_val_accuracy": frozen.val_score,
        },
        "resumed_from_step": max(frozen.resumed_from_step, outcome.resumed_from_step),
        "resumed_runs": {"freeze": frozen.resumed_from_step, "main": outcome.resumed_from_step},
        "n_fit": n,
        "freeze_steps": 0,
        "layer_decay": config.layer_decay,
    }
    return FineTuned(outcome.model, ctx.runtime, hyper, details)
