"""Fine-tuning presets of the two Keras peers: revisiting-transfer and cats-scans.

Both fine-tune a Keras ResNet-50 (``include_top=False`` + global average pooling) with
Dropout(0.5) and a new Dense softmax (cats-scans: one sigmoid unit for a binary target),
Keras' Adam, ``ImageDataGenerator`` augmentation and images loaded at 112 x 112 with
nearest-neighbour resizing, normalised by the network's ``preprocess_input`` (here: the
model card's mean and std). Keras' Adam, the augmentation and the class-weighted loss
are :mod:`harness.protocols.finetune.keras`.

What differs from the Keras code and is not reproduced: Keras initialises the new Dense
layer with Glorot-uniform weights and zero bias, torch's ``nn.Linear`` with its own
uniform init (a different random start either way); revisiting-transfer's binary loss is
Keras' ``BinaryCrossentropy`` on the two softmax outputs, which equals the cross-entropy
used here up to Keras' 1e-7 clipping.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from harness.protocols.finetune.config import FinetuneConfig
from harness.protocols.finetune.presets import _scaled
from harness.protocols.registry import register_preset

if TYPE_CHECKING:
    from harness.protocols.case import CaseRun

REVISITING = "DovileDo/revisiting-transfer@54853c3:src/fine-tuning.py (+ README.md)"
CATS_SCANS = (
    "vcheplygina/cats-scans@9bc5d8a:src/transfer_experiments.py"
    " (+ src/models/tf_generators_models_kfold.py, src/evaluation/auc_evaluation.py)"
)
# flow_from_dataframe(target_size=(112, 112)): a nearest-neighbour resize, no crop.
KERAS_EVAL = {"input_size": 112, "interpolation": "nearest", "crop_pct": 1.0, "crop_mode": "squash"}
# revisiting-transfer turns the horizontal flip off for its chest X-ray target.
NO_FLIP_DATASETS = ("pediatric_pneumonia",)
_SMALL_EPOCHS = {"smoke": 2, "demo": 6}


#: What both Keras peers' fine-tuning shares: Keras' Adam at 1e-5 with no weight decay and
#: no schedule, batch 128, 112 px inputs.
KERAS_PEER_RUN: dict[str, object] = {
    "batch_size": 128,
    "input_size": 112,
    "optimizer": "keras-adam",
    "lr": 1e-5,
    "weight_decay": 0.0,
    "schedule": "constant",
}


def _dataset_name(case: Any) -> str:
    return str(getattr(getattr(getattr(case, "case", None), "dataset", None), "name", ""))


def _epochs(case: Any, config: FinetuneConfig, paper: int) -> FinetuneConfig:
    """The paper's epochs, or the small profile's, validating every epoch."""
    profile = case.profile.name
    epochs = paper if profile == "paper" else _SMALL_EPOCHS[profile]
    return dataclasses.replace(config, epochs=epochs, val_unit="epochs", val_every=1)


@register_preset(
    "finetune",
    "revisiting-transfer",
    version=2,
    preprocessing=KERAS_EVAL,
    source=REVISITING,
    summary="all layers with Keras Adam 1e-5 from the start (the FT columns: no --freeze), "
    "early stop on val loss (patience 30), best val-loss weights; 200 epochs, batch 128, "
    "112 px, Keras affine; Keras' 200-threshold AUC",
)
def revisiting_transfer(case: CaseRun) -> FinetuneConfig:
    """revisiting-transfer's ``fine-tuning.py`` without ``--freeze`` (its "FT" columns).

    ``--image_h 112 --image_w 112 --e 200 --k 1 --batch 128 --l 0.00001``; the saved
    model's name carries ``freeze`` + ``str(args.freeze)``, and the FT results are the
    ``freezeFalse`` models: ``--freeze`` left at its default (``type=bool`` turns any
    given value, "False" included, into True). Differences from the medxfer default:
    Keras' Adam at 1e-5 (epsilon 1e-7, no weight decay) for up to 200 epochs with
    ``EarlyStopping(val_loss, patience=30)`` and the lowest-val-loss checkpoint scored;
    no schedule; batch 128 in epochs with a partial last batch; Dropout(0.5) before the
    head; augmentation: nearest resize to 112, rotation 10, width/height shift 0.1,
    shear 0.1 degrees, zoom 0.1, horizontal flip (not for the chest target); eval:
    nearest resize to 112 x 112; float32. The folds are the dataset card's split rule
    (RT's own fold files, ``fold_files``, on the ``*_rt`` cards; ``--k 1`` is fold 1).
    The test score is Keras' ``AUC()`` as the peer computes it (one-hot columns
    flattened, 200 thresholds): the record's primary metric is ``roc_auc_keras``
    (version 2; version 1 reported scikit-learn's ``roc_auc``, still recorded beside it).
    """
    return _revisiting(case, freeze=False)


@register_preset(
    "finetune",
    "revisiting-transfer-freeze",
    version=2,
    preprocessing=KERAS_EVAL,
    source=REVISITING,
    summary="freeze stage (Keras Adam 1e-3, head only, early stop on val accuracy, "
    "patience 10), then all layers with a fresh Adam 1e-5, early stop on val loss "
    "(patience 30), best val-loss weights; 200 epochs, batch 128, 112 px, Keras affine; "
    "Keras' 200-threshold AUC",
)
def revisiting_transfer_freeze(case: CaseRun) -> FinetuneConfig:
    """revisiting-transfer's ``fine-tuning.py --freeze True`` (its "freeze->FT" columns).

    As ``revisiting-transfer``, after a freeze stage (:mod:`harness.protocols.finetune.stages`):
    Keras' ``Adam()`` (lr 1e-3) on the head with the backbone frozen, up to 200 epochs,
    ``EarlyStopping(val_acc, patience=10)``, last weights kept; the second stage starts a
    fresh optimiser.
    """
    return _revisiting(case, freeze=True)


def _revisiting(case: CaseRun, freeze: bool) -> FinetuneConfig:
    config = _scaled(
        case,
        **KERAS_PEER_RUN,
        sampling="epochs",
        patience=30,
        select_on="loss",
        freeze_stage=freeze,
        freeze_lr=1e-3,
        freeze_patience=10,
        head_dropout=0.5,
        augmentation="keras",
        rotation=10.0,
        shift=0.1,
        shear=0.1,
        zoom=0.1,
        hflip=_dataset_name(case) not in NO_FLIP_DATASETS,
        amp="none",
        primary_metric="roc_auc_keras",
    )
    return _epochs(case, config, 200)


@register_preset(
    "finetune",
    "cats-scans",
    version=1,
    preprocessing=KERAS_EVAL,
    source=CATS_SCANS,
    summary="StratifiedKFold(5, shuffle, seed 2) over the pooled data, one fine-tune per "
    "fold: Keras Adam 1e-5, batch 128, 50 epochs, balanced class weights, 112 px, last "
    "weights; mean AUC over the held-out folds (weighted OvR for multi-class)",
)
def cats_scans(case: CaseRun) -> FinetuneConfig:
    """cats-scans' target experiments (``transfer_experiments.py``'s ``cfg``).

    Differences from the medxfer default: 5-fold cross-validation over train+val+test
    pooled (``StratifiedKFold(5, shuffle=True, random_state=2)``, one fine-tune per fold
    scored on its held-out fold; the case reports the fold mean and keeps every fold,
    :mod:`harness.protocols.finetune.kfold`); Keras' Adam at 1e-5 (no weight decay), no
    schedule, 50 epochs of ``n // 128`` batches (``steps_per_epoch = samples //
    batch_size``), no validation or early stopping, the last weights scored; sklearn's
    "balanced" class weights applied as Keras does (weighted sum over the batch size);
    Dropout(0.5) before the head; a binary target has one sigmoid output and BCE
    (``loss="bce"``); augmentation: nearest resize to 112, rotation 10, width/height
    shift 0.1, horizontal flip; eval: nearest resize to 112 x 112; ROC AUC of a
    multi-class target one-vs-rest weighted by class frequency; float32.
    """
    task = getattr(case, "task", None)
    binary = getattr(task, "task", "binary") == "binary"
    config = _scaled(
        case,
        **KERAS_PEER_RUN,
        sampling="drop_last",
        patience=None,
        folds=5,
        fold_seed=2,
        auc_average="weighted",
        class_weighting="balanced",
        loss="bce" if binary else "auto",
        head_dropout=0.5,
        augmentation="keras",
        rotation=10.0,
        shift=0.1,
        hflip=True,
        amp="none",
    )
    return _epochs(case, config, 50)
