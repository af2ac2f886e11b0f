"""Full fine-tuning: the pretrained backbone plus a new linear head, trained end to end.

Follows ssl-transfer / SSL_medicalimaging's ``finetune.py`` (``docs/protocols.md``): SGD with Nesterov momentum 0.9, a cosine schedule over the steps,
5000 steps of batch 64, lr 1e-2 and weight decay 1e-8, RandomResizedCrop + horizontal
flip with the model's own preprocessing, early stopping that validates every 200 steps
with patience 3. Model selection uses the validation split's primary metric; the test
split is scored once, from probabilities (``harness.protocols.metrics``).

Modes (``FinetuneConfig``):

* Default: train on train, keep the best validation weights, score test.
* ``grid_search``: ssl-transfer's grid lr in {1e-1, 1e-2, 1e-3, 1e-4} x w in
  {0, 1e-6, 1e-5, 1e-4, 1e-3} with ``wd = w / lr``, every point trained on train with early
  stopping and scored on val. The best point (strictly highest val score; ties keep the
  earlier point in grid order, NaN never wins) is retrained on train+val for its best
  step count, on the same cosine trajectory (schedule length ``steps``, stopped at the
  selected step), with no validation; its last weights are scored on test.
* ``lr_finder``: feature-reuse's 25-point log grid over 1e-5..1e-2. Each lr gets a short
  run (``lr_finder_steps`` at constant lr, same start weights, same batches) and is scored
  by the validation metric after the run (``lr_finder_select="val"``, default) or by the
  mean training loss over the run's last quarter (``"loss"``, lower is better). Ties go to
  the smaller lr, diverged runs never win. The main run then uses the chosen lr.
* ``sweep``: DovileDo/transferability-in-medical-imaging's grid: every point of batch size x
  lr x momentum x weight decay is a whole run with its own early stopping; the run with
  the lowest val loss of its scored weights (or the highest val score) is scored on test,
  nothing is retrained (:mod:`.sweep`).
* ``freeze_steps``: revisiting-transfer's freeze-then-unfreeze: the first steps train the
  head on a frozen backbone (no gradients, BatchNorm in eval mode), the rest train all.
  The frozen steps are part of ``steps`` and of the one cosine schedule.
* ``layer_decay``: layer-wise lr decay over timm's layer groups (timm models only; a
  torchvision backbone raises a clear ``ValueError``).

Pitfalls fixed (the peers' code had them): the best weights are deep-copied, not referenced;
only a strictly better validation score is an improvement (a tie is not); ROC AUC comes
from probabilities, never from argmax predictions.

Engineering: mixed precision training on CUDA (bf16 autocast, or fp16 + GradScaler) with
validation and test predictions always in float32 (VERSION 2; bf16 logits tied test
scores), channels-last
(default on: oneDNN is also ~1.6x faster with it on CPU for EfficientNet), optional
gradient clipping (default None, as ssl-transfer / SSL_medicalimaging; feature-reuse
clips at 1.0), deterministic seeding (torch, numpy, python; a seeded infinite sampler
whose position is a function of the step), a tqdm bar, and a checkpoint at every
validation so an interrupted case resumes exactly where it stopped. Checkpoints and
finished results live in the case's training store (:mod:`harness.cache.runs`, handed
in by the runner as ``case.run_store()``), keyed by the case id, the config, the
weights identity, the data, the preprocessing and the runtime; a changed config starts
afresh, and the checkpoints are deleted once the case has been scored.

Multilabel tasks train 14-way (say) sigmoid + BCE and score the mean AUROC over
``eval_labels`` (all labels by default), as BenchmarkTransferLearning evaluates CheXpert.

Peer presets (``presets``: ``ssl-transfer``, ``ssl-medicalimaging``,
``benchmark-transfer``, ``feature-reuse``; ``presets_keras``: ``revisiting-transfer``,
``revisiting-transfer-freeze``, ``cats-scans``; ``presets_vtab``: ``vtab``) set the config fields that reproduce each peer: optimizer (SGD or
Adam), schedule (cosine, constant, ReduceLROnPlateau on the validation quantity),
epoch sampling with partial batches, epoch-based run length and validation, selection
on the validation loss, tie handling, restoring the best or scoring the last weights,
grid points scored on their last weights, sigmoid + BCE for every task, RandomRotation,
and test-time TenCrop. Their defaults are medxfer's procedure above.

The package, one job per module: ``config`` (settings and profiles), ``driver`` (the
case: train, select, score), ``modes`` (select on val, LR finder, grid search), ``sweep``
(full-run sweeps), ``loop``
(one resumable run), ``spec`` (a run's settings and outcome), ``network`` (classifier,
optimizer groups, loss, predictions), ``runtime`` (device, precision, RNGs), ``data``
(sampling and augmentation), ``tencrop`` (test-time TenCrop), ``presets`` (the peers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.protocols.base import ProtocolResult
from harness.protocols.finetune.config import VERSION, FinetuneConfig
from harness.protocols.finetune.driver import fine_tune, run, score, training_depends_on
from harness.protocols.finetune.modes import FineTuned
from harness.protocols.finetune.presets import with_overrides
from harness.protocols.finetune.spec import StepInfo
from harness.protocols.registry import register_protocol
from harness.zoo import build_model

if TYPE_CHECKING:
    from harness.protocols.case import CaseRun

__all__ = [
    "VERSION",
    "FineTuned",
    "FinetuneConfig",
    "StepInfo",
    "fine_tune",
    "run",
    "run_case",
    "score",
    "training_depends_on",
]


@register_protocol(
    "finetune",
    version=VERSION,
    marker="full fine-tuning benchmark cases (backbone and a new linear head, end to end)",
    config=FinetuneConfig,
    needs="images",
)
def run_case(case: CaseRun, config: FinetuneConfig) -> ProtocolResult:
    """One fine-tuning case: a fresh copy of the backbone, resumable in the case's folder.

    A preset's ``preprocessing`` overrides the model card's (the peer's evaluation
    transform); the config's input size, else the profile's, then sets the size.
    """
    size = config.input_size or case.profile.input_size
    preset = getattr(case, "preset", None)
    pre = with_overrides(
        case.case.model.preprocessing, preset.overrides(case) if preset is not None else {}
    )
    return run(
        build_model(case.case.model),
        case.splits(),
        case.task,
        config,
        pre.with_input_size(size),
        runs=case.run_store(),
        device=case.device,
        reuse_completed=not case.retrain,
    )
