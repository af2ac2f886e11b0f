"""The ``vtab`` fine-tuning preset: VTAB's adaptation of a whole network, its 4-run sweep.

What the published full-data numbers ran (google-research/task_adaptation@d7630d3):

* ``task_adaptation/model.py``: the representation (``pre_logits``, global-pooled) feeds a
  new dense layer with ``tf.zeros_initializer()`` weights and zero bias, trained with the
  mean softmax cross-entropy; the whole module is trainable, its BatchNorm in training
  mode while adapting and on its moving averages for evaluation; accuracy is the argmax's
  top-1 accuracy.
* ``task_adaptation/trainer.py``: ``tf.train.MomentumOptimizer`` (momentum 0.9, not
  Nesterov: torch's SGD update ``buf = m * buf + g; w -= lr * buf`` is the same), no
  weight decay and no gradient clipping; ``piecewise_constant`` lr decays by
  ``lr_decay_factor`` 0.1 at ``decay_steps`` and ``apply_warmup_lr``'s linear warmup from
  0 (:func:`harness.protocols.finetune.warmup.step_lr_factor`).
* ``task_adaptation/data_loader.py`` and ``data/base.py``: ``tf.image.resize`` to 224 x
  224 (TF1 bilinear: no crop, aspect not kept, no antialiasing), ``/ 255`` (the
  ``input_range`` [0, 1] of TF-Hub image modules), no augmentation for training or
  evaluation (:func:`harness.protocols.finetune.augment.tf_resize_transform`); training
  batches are full (``drop_remainder``) from an endlessly repeated split.
* ``task_adaptation/loop.py``: no validation during a run; only the last checkpoint is
  evaluated.
* ``README.md``: the batch-512 invocation ``--batch_size 512 --initial_learning_rate 0.01
  --decay_steps 750,1500,2250 --max_steps 2500`` (decays after 30%, 60% and 90% of the
  run, no ``--warmup_steps``: its default 0).
* ``docs/data/results.csv``: the published rows ran ``hyper_sweep_size`` 4 with
  ``preprocessing`` ``resize(224)``: the paper's lightweight sweep (Zhai et al.,
  arXiv:1910.04867), lr in {0.1, 0.01} x {2500, 10000} steps at batch 512, the point with
  the best validation accuracy retrained on train+val (``adapt_and_eval.py``'s default
  ``--dataset_train_split_name trainval``) and scored on test.

Not reproduced (each noted where it applies): TF's 10000-image shuffle buffer over the
repeated split (here: seeded reshuffled epochs of full batches); evaluation dropping the
last ``n % batch_size_eval`` test images (none for PCam's 32768 at 512); the BatchNorm
momentum and epsilon of VTAB's own TF-Hub ResNet-50 (the model card's are used).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from harness.protocols.finetune.augment import TF_BILINEAR
from harness.protocols.finetune.config import FinetuneConfig
from harness.protocols.finetune.presets import _scaled
from harness.protocols.registry import register_preset

if TYPE_CHECKING:
    from harness.protocols.case import CaseRun

VTAB = (
    "google-research/task_adaptation@d7630d3:task_adaptation/trainer.py"
    " (+ model.py, data_loader.py, loop.py, adapt_and_eval.py, README.md, docs/data/results.csv)"
)
#: VTAB's ``preprocess_fn``: a square TF1 bilinear resize to 224, no crop.
VTAB_EVAL = {
    "input_size": 224,
    "interpolation": TF_BILINEAR,
    "crop_pct": 1.0,
    "crop_mode": "squash",
}
#: The lightweight sweep's learning rates and run lengths (steps at batch 512).
VTAB_LRS = (0.1, 0.01)
VTAB_STEPS = (2500, 10000)
#: ``--decay_steps`` as fractions of ``--max_steps``.
VTAB_DECAY_AT = (0.3, 0.6, 0.9)


@register_preset(
    "finetune",
    "vtab",
    version=1,
    preprocessing=VTAB_EVAL,
    source=VTAB,
    summary="lightweight sweep lr {0.1, 0.01} x {2500, 10000} steps, batch 512, SGD momentum "
    "0.9, no weight decay, lr / 10 after 30/60/90% of the run, zero-init head, 224 px TF "
    "resize without augmentation; best val accuracy retrained on train+val, top-1 accuracy",
)
def vtab(case: CaseRun) -> FinetuneConfig:
    """VTAB's fine-tuning of the whole network with its lightweight 4-run sweep.

    Differences from the medxfer default: every sweep point (lr 0.1 or 0.01, 2500 or 10000
    steps) trains on train for its whole length with no validation or early stopping and
    is scored by validation top-1 accuracy on its last weights (``grid_score="last"``); the
    best point (the first in sweep order on a tie: lr descending, then the shorter run) is
    retrained on train+val for its length and its last weights scored on test, top-1
    accuracy the primary metric; SGD momentum 0.9 without Nesterov and without weight
    decay; lr constant, then times 0.1 after 30%, 60% and 90% of the run (``"step"``
    schedule, no warmup); batch 512 of full batches; the new head's weights and bias start
    at zero; train and eval images resized to 224 x 224 by TF1 bilinear resizing, no crop
    or flip, scaled to [0, 1] and normalised by the model card's mean and std (VTAB's
    TF-Hub module takes the [0, 1] image and normalises inside); float32 training. Under
    smoke / demo the run lengths are the profile's steps and a quarter of them (2500 is a
    quarter of 10000).
    """
    config = _scaled(
        case,
        steps=max(VTAB_STEPS),
        batch_size=512,
        input_size=224,
        optimizer="sgd",
        momentum=0.9,
        nesterov=False,
        lr=VTAB_LRS[0],
        weight_decay=0.0,
        schedule="step",
        decay_at=VTAB_DECAY_AT,
        decay_factor=0.1,
        warmup_steps=0,
        grid_search=True,
        grid_score="last",
        grid_lrs=VTAB_LRS,
        grid_ws=(0.0,),
        grid_steps=VTAB_STEPS,
        patience=None,
        val_every=500,
        sampling="stream",
        augmentation="none",
        head_init="zeros",
        primary_metric="accuracy",
        eval_batch_size=512,
        amp="none",
    )
    if case.profile.name != "paper":
        config = dataclasses.replace(config, grid_steps=(max(1, config.steps // 4), config.steps))
    return config
