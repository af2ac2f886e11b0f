"""The ``medmnist-transferability`` fine-tuning preset: Juodelyte et al.'s MedMNIST targets.

"On dataset transferability in medical image classification" (DovileDo/transferability-in-
medical-imaging, formerly DovileDo/transferability) fine-tunes torchvision's ImageNet
ResNet-18 on each of the 12 MedMNIST 2D flags. Its ``results/AUCs_dataset.csv`` row
``imagenet`` was produced by ``src/fine-tuning.py --source_flag imagenet`` (the runs of
``finetuned_AUCs/fined_<flag>.csv`` name that file; ``src/fine-tuning_imagenet.py`` is the
architecture study's copy of the same loop, for other torchvision networks, and is the
source of ``finetuned_AUCs/fined_<flag>_imnet.csv``, not of this row).

What the code does (7e308c4, ``src/fine-tuning.py``):

* ``torchvision.models.resnet18(weights="IMAGENET1K_V1")`` with its ``fc`` replaced by
  ``Sequential(Dropout(0.5), Linear)``; cross-entropy (``BCEWithLogitsLoss`` for the
  multi-label chest flag); float32 with cuDNN off.
* ``SGD(momentum=m, nesterov=(m != 0), weight_decay=wd)`` on every parameter;
  ``CosineAnnealingLR(T_max=epochs)`` stepped once an epoch.
* ``DataLoader(shuffle=True)`` epochs with a partial last batch; after every epoch the
  validation AUC (MedMNIST's ``getAUC``) feeds ``EarlyStopping(patience=50)``, whose
  ``score <= best_score + delta`` (``delta=0``) is not an improvement; the checkpoint of the
  best validation AUC is reloaded and scored on the test split.
* Training transform (``v2.Compose``): ToTensor, RandomHorizontalFlip(0.5),
  RandomResizedCrop(224) (scale (0.08, 1), bilinear, antialias), RandomRotation((0, 5)),
  RandomAdjustSharpness(2), RandomAutocontrast(), RandomEqualize(), Normalize; grey
  images converted to RGB. Eval transform: ToTensor + Normalize, no resize: the images
  are MedMNIST+'s 224 px release (``<flag>_224.npz``). Normalize is ImageNet's mean / std
  for ``--source_flag imagenet`` and 0.5 / 0.5 for the other sources, i.e. each source's
  own pretraining values: the model card's, which the presets keep.
* ``getAUC``: binary = ``roc_auc_score`` of the last softmax column; multi-class (and
  RetinaMNIST's ordinal grades) = the unweighted mean over classes of one-vs-rest
  ``roc_auc_score``; multi-label = the mean of the per-label AUCs. That is medxfer's
  ``roc_auc`` wherever every class occurs in the scored split (the test splits).
* The published number is one run per target: ``finetuned_AUCs.ipynb`` keeps, per source,
  the run with the lowest validation loss among the 120 runs of a grid (2 batch sizes x lr
  {1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1} x momentum {0, 0.9} x wd {0, 1e-6, 1e-5, 1e-4, 1e-3},
  ``--epochs 200``) and reports its test AUC. :data:`SELECTED` holds the ``imagenet``
  run each target's value comes from (its test AUC is the table's, to the last digit).

Reproduced through medxfer's own knobs: the training data (the suite ``transferability``
replays fold 1 of ``src/data_split.py``'s subsets, 100 x classes training and 25 x classes
validation images drawn with ``np.random.seed(24)``, as its split override
``per_class_subsets``), the augmentation in its order (``augmentation="transferability"``,
:func:`harness.protocols.finetune.augment.transferability_transform`: the one-sided
rotation and the random sharpness, autocontrast and equalize included) and the cosine
stepped once an epoch (``schedule="cosine-epoch"``).

``medmnist-transferability`` runs the selected point only; ``medmnist-transferability-grid``
runs the grid itself (``config.sweep``, :mod:`.sweep`): every point a whole run, the one
with the lowest val loss of its restored weights scored on test, nothing retrained.

Not reproduced (no knob; each changes the numbers): the seed (42 there) and the random
streams.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Any

from harness.protocols.finetune.config import FinetuneConfig
from harness.protocols.finetune.presets import _scaled
from harness.protocols.registry import register_preset

if TYPE_CHECKING:
    from harness.protocols.case import CaseRun

TRANSFERABILITY = (
    "DovileDo/transferability-in-medical-imaging@7e308c4:src/fine-tuning.py"
    " (+ finetuned_AUCs.ipynb, finetuned_AUCs/fined_<flag>.csv, src/data_split.py)"
)
#: The study's eval transform: MedMNIST+'s 224 px images, ToTensor + Normalize, no resize
#: or crop (a square resize to 224 is the identity on the 224 px cards).
TRANSFERABILITY_EVAL = {
    "input_size": 224,
    "interpolation": "bilinear",
    "crop_pct": 1.0,
    "crop_mode": "squash",
}
#: ``src/fine-tuning.py``'s argparse defaults (a target outside the 12 flags gets these).
SCRIPT_DEFAULTS: dict[str, Any] = {
    "batch_size": 32,
    "epochs": 30,
    "lr": 0.001,
    "momentum": 0.9,
    "wd": 0.001,
}
#: The study's runs: ``--epochs 200`` (every run of finetuned_AUCs/fined_<flag>.csv).
PAPER_EPOCHS = 200
#: ``EarlyStopping(patience=50, ...)`` in ``fine_tune``.
PATIENCE = 50
#: Per target, the ``imagenet`` run of ``finetuned_AUCs/fined_<flag>.csv`` with the lowest
#: ``val_loss`` (``finetuned_AUCs.ipynb``): (batch_size, lr, momentum, wd).
SELECTED: dict[str, tuple[int, float, float, float]] = {
    "bloodmnist": (256, 0.01, 0.9, 1e-5),
    "breastmnist": (32, 0.01, 0.0, 1e-5),
    "chestmnist": (512, 0.1, 0.9, 1e-3),
    "dermamnist": (128, 0.1, 0.0, 1e-6),
    "octmnist": (64, 0.01, 0.9, 1e-4),
    "organamnist": (256, 0.1, 0.0, 1e-3),
    "organcmnist": (128, 0.01, 0.9, 1e-6),
    "organsmnist": (256, 0.1, 0.0, 1e-4),
    "pathmnist": (256, 0.01, 0.9, 1e-5),
    "pneumoniamnist": (64, 0.01, 0.0, 1e-6),
    "retinamnist": (128, 0.01, 0.0, 1e-6),
    "tissuemnist": (128, 0.001, 0.9, 1e-5),
}
#: Per target, the two batch sizes of its grid (every ``imagenet`` run of
#: ``finetuned_AUCs/fined_<flag>.csv`` has one of them; the other axes are the same for all).
GRID_BATCH_SIZES: dict[str, tuple[int, int]] = {
    "bloodmnist": (128, 256),
    "breastmnist": (32, 64),
    "chestmnist": (256, 512),
    "dermamnist": (128, 256),
    "octmnist": (64, 128),
    "organamnist": (128, 256),
    "organcmnist": (128, 256),
    "organsmnist": (128, 256),
    "pathmnist": (128, 256),
    "pneumoniamnist": (32, 64),
    "retinamnist": (64, 128),
    "tissuemnist": (128, 256),
}
GRID_LRS = (1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0)
GRID_MOMENTA = (0.0, 0.9)
GRID_WDS = (0.0, 1e-6, 1e-5, 1e-4, 1e-3)
#: Under smoke / demo: the profile's batch size, a 2 x 2 x 2 corner of the grid.
SMALL_GRID = {"lr": (1e-3, 1e-2), "momentum": (0.0, 0.9), "weight_decay": (0.0, 1e-3)}
_SMALL_EPOCHS = {"smoke": 2, "demo": 6}
_SIZED = re.compile(r"^(?P<flag>[a-z]+mnist)(?:_\d+)?$")


def flag_of(dataset: str) -> str:
    """The MedMNIST flag of a card name (``bloodmnist_224`` -> ``bloodmnist``), else ``""``."""
    match = _SIZED.match(dataset)
    return match.group("flag") if match else ""


def selected_run(dataset: str) -> dict[str, Any]:
    """The study's run for a target: its selected grid point, else the script's defaults.

    Args:
        dataset: The dataset card's name (a MedMNIST flag, possibly with its size).

    Returns:
        ``batch_size``, ``epochs``, ``lr``, ``momentum`` and ``wd``.
    """
    point = SELECTED.get(flag_of(dataset))
    if point is None:
        return dict(SCRIPT_DEFAULTS)
    batch_size, lr, momentum, wd = point
    return {"batch_size": batch_size, "epochs": PAPER_EPOCHS, "lr": lr, "momentum": momentum,
            "wd": wd}  # fmt: skip


def _dataset_name(case: Any) -> str:
    return str(getattr(getattr(getattr(case, "case", None), "dataset", None), "name", ""))


@register_preset(
    "finetune",
    "medmnist-transferability",
    version=2,
    preprocessing=TRANSFERABILITY_EVAL,
    source=TRANSFERABILITY,
    summary="ImageNet ResNet-18 + Dropout 0.5, SGD (Nesterov when momentum > 0) with the "
    "target's selected batch / lr / momentum / wd, cosine over 200 epochs stepped once an "
    "epoch, early stop on val AUC (patience 50, ties do not improve), best val-AUC weights; "
    "flip + crop 224 + rotation [0, 5] + sharpness / autocontrast / equalize; MedMNIST's "
    "getAUC",
)
def medmnist_transferability(case: CaseRun) -> FinetuneConfig:
    """``src/fine-tuning.py --source_flag imagenet`` at the target's selected grid point.

    Differences from the medxfer default: the batch size, lr, momentum and weight decay of
    the run the study reports for the target (:data:`SELECTED`; the script's defaults
    batch 32, lr 1e-3, momentum 0.9, wd 1e-3 and 30 epochs for any other dataset); SGD
    Nesterov only with a non-zero momentum (torch's SGD refuses Nesterov without one);
    200 epochs of shuffled batches with a partial last batch, cosine to 0 over the run
    stepped once an epoch;
    validation every epoch on ROC AUC (``primary_metric="roc_auc"``: the study selects on
    AUC whatever the card's primary metric), early stopping after 50 epochs without a
    strictly higher AUC, the best AUC's weights scored on test; Dropout(0.5) before the
    head; flip + RandomResizedCrop(224, scale (0.08, 1), bilinear) + RandomRotation((0, 5))
    + RandomAdjustSharpness(2) / RandomAutocontrast / RandomEqualize (p 0.5 each); eval:
    the 224 px image as it is (square resize to 224, no crop); float32. Not reproduced: the
    module docstring's list (the grid, the seed).
    Under smoke / demo: 2 / 6 epochs at the profile's batch size and image size.
    """
    run = selected_run(_dataset_name(case))
    config = _scaled(
        case,
        batch_size=run["batch_size"],
        input_size=224,
        optimizer="sgd",
        lr=run["lr"],
        momentum=run["momentum"],
        nesterov=run["momentum"] != 0.0,
        weight_decay=run["wd"],
        schedule="cosine-epoch",
        sampling="epochs",
        epochs=run["epochs"],
        val_unit="epochs",
        val_every=1,
        patience=PATIENCE,
        select_on="metric",
        tie_improves=False,
        restore_best=True,
        primary_metric="roc_auc",
        augmentation="transferability",
        crop_scale=(0.08, 1.0),
        rotation=5.0,
        head_dropout=0.5,
        amp="none",
    )
    profile = case.profile.name
    if profile != "paper":
        config = dataclasses.replace(config, epochs=_SMALL_EPOCHS[profile], val_every=1)
    return config


@register_preset(
    "finetune",
    "medmnist-transferability-grid",
    version=1,
    preprocessing=TRANSFERABILITY_EVAL,
    source=TRANSFERABILITY,
    summary="medmnist-transferability over the study's 120-point grid (the target's 2 batch "
    "sizes x lr 1e-5..1 x momentum {0, 0.9} x wd {0, 1e-6..1e-3}), every point a whole "
    "early-stopped run; the run with the lowest val loss of its best-AUC weights is scored "
    "on test, nothing retrained",
)
def medmnist_transferability_grid(case: CaseRun) -> FinetuneConfig:
    """``medmnist-transferability`` over the study's grid, selected as ``finetuned_AUCs.ipynb``.

    Every point of :data:`GRID_BATCH_SIZES` (the target's pair; the script's default
    batch 32 for any other dataset) x :data:`GRID_LRS` x :data:`GRID_MOMENTA` x
    :data:`GRID_WDS` is the single-run preset at that point (Nesterov with a non-zero
    momentum); the run whose restored weights have the lowest val loss (the mean of
    per-batch mean losses over batches of its own size) is scored on test. Under smoke /
    demo: the profile's batch size and :data:`SMALL_GRID` (8 points).
    """
    config = medmnist_transferability(case)
    if case.profile.name == "paper":
        batch_sizes = GRID_BATCH_SIZES.get(
            flag_of(_dataset_name(case)), (SCRIPT_DEFAULTS["batch_size"],)
        )
        grid = {"lr": GRID_LRS, "momentum": GRID_MOMENTA, "weight_decay": GRID_WDS}
    else:
        batch_sizes, grid = (config.batch_size,), SMALL_GRID
    return dataclasses.replace(
        config,
        nesterov=True,
        sweep=tuple({"batch_size": batch_sizes, **grid}.items()),
        sweep_select="val_loss",
    )
