"""Peer presets of the fine-tuning protocol: each study's ``finetune`` exactly as its code runs.

Every preset is the peer's procedure in each point that changes a number, its bugs
included where they do. Under the ``paper`` profile a preset is the peer's own
invocation; under ``smoke`` and ``demo`` only the scale (steps or epochs, batch size,
image size, validation interval, threads, and ssl-transfer's grid size) follows the
profile, the procedure stays the peer's. All presets train in float32, as the peers did
(``amp="none"``).

Differences from the medxfer default, preset by preset, are listed in each function's
docstring; the peers' data loaders drop no partial batch (``sampling="epochs"``), where
medxfer never trains on a partial one (feature-reuse and cats-scans drop it,
``sampling="drop_last"``). The Keras peers' presets (revisiting-transfer, cats-scans) are
in :mod:`harness.protocols.finetune.presets_keras` and VTAB's in
:mod:`harness.protocols.finetune.presets_vtab`, both imported at the end of this module.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.config.cards import Preprocessing
from harness.protocols.finetune.config import FinetuneConfig
from harness.protocols.peer_normalisation import with_normalisation
from harness.protocols.registry import register_preset

if TYPE_CHECKING:
    from harness.protocols.case import CaseRun

SSL_TRANSFER = "linusericsson/ssl-transfer@416913f:finetune.py"
SSL_MEDICAL = "jonahanton/SSL_medicalimaging@77fceef:finetune.py"
BENCHMARK_TRANSFER = (
    "MR-HosseinzadehTaher/BenchmarkTransferLearning@5656fec:Version1/engine.py"
    " (+ Version1/trainer.py, Version1/dataloader.py, Version1/main_classification.py)"
)
_SCALE_FIELDS = ("steps", "batch_size", "val_every", "input_size", "eval_batch_size")
# Epochs of BenchmarkTransferLearning's run (1000 in the paper) under the small profiles.
_SMALL_EPOCHS = {"smoke": 2, "demo": 6}


def with_overrides(pre: Preprocessing, overrides: dict[str, Any]) -> Preprocessing:
    """The preprocessing with a preset's overrides (``input_size``, ``interpolation``, ...).

    Args:
        pre: The model card's preprocessing.
        overrides: Field -> value.

    Returns:
        A copy with the overrides applied.

    Raises:
        ValueError: On a key the preprocessing has no field for.
    """
    fields = {f.name for f in dataclasses.fields(pre)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"preset preprocessing: {type(pre).__name__} has no field(s) {unknown}")
    return dataclasses.replace(pre, **overrides) if overrides else pre


def peer_grid(size: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ssl-transfer's lr and w grid for ``--grid-size size`` (12 significant digits).

    ``lr = logspace(-4, -1, size)`` in descending order and ``w = [0] + logspace(-6, -3,
    size)``; weight decay is ``w / lr``. The peer computes them in float32 (``lr = 0.1``
    is 0.10000000149); the decimal values are kept here.

    Args:
        size: The grid size (4 in ssl-transfer, 2 in SSL_medicalimaging).

    Returns:
        (learning rates, w values).
    """
    lrs = np.logspace(-4, -1, size)[::-1]
    ws = np.concatenate([[0.0], np.logspace(-6, -3, size)])
    return tuple(float(f"{v:.12g}") for v in lrs), tuple(float(f"{v:.12g}") for v in ws)


def _scaled(case: CaseRun, **peer: Any) -> FinetuneConfig:
    """The peer's config; under smoke/demo with the profile's scale fields."""
    profile = case.profile.name
    if profile != "paper":
        base = FinetuneConfig.for_profile(profile)
        peer.update({name: getattr(base, name) for name in _SCALE_FIELDS})
        peer["cpu_threads"] = base.cpu_threads
    return FinetuneConfig(**peer)


@register_preset(
    "finetune",
    "ssl-transfer",
    version=2,
    # its readme: --no-norm for SimCLR-v1 / -v2 only
    preprocessing=with_normalisation(
        {"input_size": 224, "interpolation": "bicubic", "crop_pct": 1.0}, "raw-input-models"
    ),
    source=SSL_TRANSFER,
    summary="lr x w grid, each point trained all 5000 steps and scored on its last weights; "
    "retrain on train+val for 5000 steps",
)
def ssl_transfer(case: CaseRun) -> FinetuneConfig:
    """ssl-transfer's fine-tuning (``FinetuneTester.validate`` then ``.evaluate``).

    Differences from the medxfer default: grid search on (``--grid-size 4``: lr in
    {1e-1, 1e-2, 1e-3, 1e-4} x w in {0, 1e-6, 1e-5, 1e-4, 1e-3}, wd = w / lr); every
    grid point trains all steps with no validation or early stopping and is scored on
    val from its last weights (``grid_score="last"``); the retrain on train+val runs all
    5000 steps and its last weights are scored on test; epoch loaders with partial
    batches; RandomResizedCrop bicubic at 224 + flip; eval Resize(224, bicubic) +
    CenterCrop(224); float32 training. Same as the default: SGD Nesterov 0.9, cosine
    over the steps (``CosineAnnealingLR(T_max=steps)``), batch 64, cross-entropy. The
    strict ``>`` selection from ``best_score = 0`` keeps the earlier point on ties, as
    medxfer does. Under smoke/demo the grid is ``--grid-size 2`` (6 points).
    """
    lrs, ws = peer_grid(4 if case.profile.name == "paper" else 2)
    return _scaled(
        case,
        steps=5000,
        batch_size=64,
        input_size=224,
        grid_search=True,
        grid_score="last",
        grid_lrs=lrs,
        grid_ws=ws,
        patience=None,
        sampling="epochs",
        amp="none",
    )


@register_preset(
    "finetune",
    "ssl-medicalimaging",
    version=2,
    # the runner never passes --no-norm to finetune.py, SimCLR-v1's runs included
    preprocessing=with_normalisation(
        {"input_size": 224, "interpolation": "bicubic", "crop_pct": 1.0}, "never"
    ),
    source=SSL_MEDICAL,
    summary="lr 1e-2, wd 1e-8, early stopping every 200 steps (patience 3, ties improve) "
    "that restores nothing: the last weights are scored",
)
def ssl_medicalimaging(case: CaseRun) -> FinetuneConfig:
    """SSL_medicalimaging's fine-tuning as its runner calls it (``--early-stopping``).

    ``FinetuneTester.evaluate(lr=1e-2, wd=1e-8)`` trains on train (not train+val) with
    ``FinetuneModel.tune(..., early_stopping=True)``. Differences from the medxfer
    default: a validation equal to the best counts as an improvement (only ``val_acc <
    best_acc`` counts against patience, ``tie_improves=True``); the "best" state dict is
    ``self.model.state_dict()``, which aliases the live weights, so restoring it restores
    nothing and the weights at the stopping step (or step 5000) are scored
    (``restore_best=False``; both bugs kept as they change the number); epoch loaders
    with partial batches; RandomResizedCrop bicubic at 224 + flip; eval Resize(224,
    bicubic) + CenterCrop(224); ImageNet's mean / std for every model that is not
    histogram-normalised, SimCLR-v1 included (the runner never passes ``--no-norm`` to
    finetune.py; version 2, :mod:`harness.protocols.peer_normalisation`); float32
    training. Same as the default: SGD Nesterov 0.9, cosine over 5000 steps, batch 64,
    lr 1e-2, wd 1e-8, validation every 200 steps, patience 3, cross-entropy.
    """
    return _scaled(
        case,
        steps=5000,
        batch_size=64,
        input_size=224,
        lr=1e-2,
        weight_decay=1e-8,
        val_every=200,
        patience=3,
        tie_improves=True,
        restore_best=False,
        sampling="epochs",
        amp="none",
    )


@register_preset(
    "finetune",
    "benchmark-transfer",
    version=2,
    # --normalization imagenet (its default) for every model
    preprocessing=with_normalisation(
        {"input_size": 224, "interpolation": "bilinear", "crop_pct": 0.875, "crop_mode": "squash"},
        "never",
        honours_histogram=False,
    ),
    source=BENCHMARK_TRANSFER,
    summary="Adam 2e-4, ReduceLROnPlateau on val loss, early stop on val loss (patience 10), "
    "sigmoid + BCE, rotation 7, test TenCrop; ImageNet mean / std for every model",
)
def benchmark_transfer(case: CaseRun) -> FinetuneConfig:
    """BenchmarkTransferLearning's classification engine (Version1, one trial).

    Differences from the medxfer default: Adam lr 2e-4 without weight decay;
    ``ReduceLROnPlateau(factor=0.5, patience=5 (= 10 // 2), threshold=1e-4, mode="min")``
    stepped every epoch on the validation loss; epochs of shuffled batches with a partial
    last batch, validating every epoch, at most 1000 epochs; early stopping on the
    validation loss (strictly lower improves) after ``patience_counter > 10``, i.e. the
    11th epoch without improvement (``patience=11``), restoring the best checkpoint for
    test; sigmoid + BCE for every task (``loss="bce"``: a binary task has one output);
    RandomResizedCrop(224, bilinear) + flip + RandomRotation(7); validation on
    Resize((256, 256)) + CenterCrop(224); test on Resize((256, 256)) + TenCrop(224),
    the ten Sigmoid outputs averaged (the model ends in ``nn.Sigmoid``, so probabilities
    are averaged, not logits); ImageNet's mean / std for every model, none
    histogram-normalised (version 2; :mod:`harness.protocols.peer_normalisation`); batch
    32; float32 training. BTL's validation loss is the
    mean of per-batch BCE weighted by batch size (its double ``update`` does not change
    the mean), which equals the BCE over the whole split computed here.
    """
    profile = case.profile.name
    config = _scaled(
        case,
        batch_size=32,
        input_size=224,
        optimizer="adam",
        lr=2e-4,
        weight_decay=0.0,
        schedule="plateau",
        plateau_factor=0.5,
        plateau_patience=5,
        plateau_threshold=1e-4,
        sampling="epochs",
        epochs=1000,
        val_unit="epochs",
        val_every=1,
        patience=11,
        select_on="loss",
        loss="bce",
        rotation=7.0,
        test_tencrop=True,
        amp="none",
    )
    if profile != "paper":  # the profile's scale, in epochs validated every epoch
        config = dataclasses.replace(config, epochs=_SMALL_EPOCHS[profile], val_every=1)
    return config


from harness.protocols.finetune import (  # noqa: E402, F401  (register)
    presets_feature_reuse,
    presets_keras,
    presets_medmnist,
    presets_vtab,
)
