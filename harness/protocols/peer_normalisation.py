"""The peers' input normalisation, script by script, as their runners call them.

linusericsson/ssl-transfer@416913f (``linear.py``, ``few_shot.py``, ``finetune.py``)
normalises with ImageNet's mean / std after ``ToTensor`` unless ``--no-norm`` is passed
(then mean 0, std 1); its readme and ``run_linear.sh`` pass ``--no-norm`` for SimCLR-v1
and -v2, whose converted TensorFlow weights take [0, 1] input, and for nothing else. Its
presets use the ``raw-input-models`` rule: mean 0, std 1 where the card says so (the
SimCLR cards), ImageNet's values everywhere else.

Every script of jonahanton/SSL_medicalimaging@77fceef (``linear.py``, ``few_shot.py``,
``finetune.py``, ``finetune_auc.py``, ``invariances/invariances.py``,
``invariances/invariances_multiview.py``) picks the normalisation after ``ToTensor`` the
same way:

* ``hist_norm = 'mimic-chexpert' in args.model``: ``HistogramNormalize`` and no mean / std
  (medxfer's cards of those CovidPrognosis models say ``histogram_normalize`` with mean 0,
  std 1, so the card's values stand);
* else ``Normalize`` with ImageNet's mean / std, unless ``--no-norm`` was passed: then
  mean 0, std 1.

What differs is where ``runner_script.sh`` passes ``--no-norm``: every ``linear.py`` run;
the SimCLR-v1 runs of ``few_shot.py`` and both invariance scripts (its converted
TensorFlow weights take [0, 1] input, which its medxfer card states as mean 0, std 1);
no ``finetune.py`` or ``finetune_auc.py`` run, SimCLR-v1's included. So the MoCo-CXR
models (the study's ``mimic-cxr_r18`` / ``mimic-cxr_d121``, whose cards carry MoCo-CXR's
own mean 0.502, std 0.0856) see ImageNet's mean / std in few-shot, fine-tuning and
invariance, and SimCLR-v1 sees them in fine-tuning.

MR-HosseinzadehTaher/BenchmarkTransferLearning@5656fec (``Version1/dataloader.py``
``build_transform_classification``, ``main_classification.py``: ``--normalization``
defaults to ``imagenet`` and no README command changes it) normalises every model with
ImageNet's mean / std and histogram-normalises none: the ``never`` rule with
``honours_histogram=False``.

ChrisMats/feature-reuse@736d31b (and medical_transformers@ecd460a, whose table 1 holds
the published numbers) normalises by the *target dataset's* statistics, the class
attributes of ``defaults/datasets.py`` (:data:`FEATURE_REUSE_STATS`), whatever the model.
Its single-channel targets (CheXpert; DDSM, raw images: ``is_patch=False``) are read as
grey images and the network's first layer is cut to one input channel keeping the first
channel's pretrained weights (``defaults/models.py`` ``modify_first_layer``): the
``grey-first`` channel rule of :class:`harness.config.cards.Preprocessing`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

RAW_INPUT: dict[str, Any] = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
IMAGENET: dict[str, Any] = {"mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD}

#: Where the runner passes ``--no-norm``: always, for raw-input models only, or never.
NO_NORM_RULES = ("always", "raw-input-models", "never")

#: How a synthetic-invariance case normalises its transformed images: as its clean ones,
#: or as SSL_medicalimaging's ``ManualTransform.T`` (see :func:`transformed_preprocessing`).
TRANSFORMED_NORMALISATIONS = ("same", "imagenet-if-histogram")


def _grey(mean: float, std: float) -> dict[str, Any]:
    return {"mean": (mean,) * 3, "std": (std,) * 3, "channels": "grey-first"}


#: feature-reuse's per-target statistics by medxfer dataset name (its classes APTOS2019,
#: ISIC2019, DDSM with ``is_patch=False``, CheXpert and Camelyon).
FEATURE_REUSE_STATS: dict[str, dict[str, Any]] = {
    "aptos2019": {"mean": (0.415, 0.221, 0.073), "std": (0.275, 0.150, 0.081)},
    "isic2019": {
        "mean": (0.66776717, 0.52960888, 0.52434725),
        "std": (0.22381877, 0.20363036, 0.21538623),
    },
    "cbis_ddsm": _grey(0.286, 0.267),
    "chexpert": _grey(0.503, 0.292),
    "pcam": {
        "mean": (0.69991202, 0.53839318, 0.69108667),
        "std": (0.2308955, 0.27435492, 0.20865005),
    },
}


def takes_raw_input(preprocessing: Any) -> bool:
    """Whether a card's preprocessing feeds [0, 1] pixels (mean 0, std 1)."""
    return (
        tuple(map(float, preprocessing.mean)) == RAW_INPUT["mean"]
        and tuple(map(float, preprocessing.std)) == RAW_INPUT["std"]
    )


def peer_normalisation(
    card_preprocessing: Any, no_norm: str, honours_histogram: bool = True
) -> dict[str, Any]:
    """The mean / std overrides of one peer script for a model.

    Args:
        card_preprocessing: The model card's preprocessing (``mean``, ``std``,
            ``histogram_normalize``).
        no_norm: Where the runner passes ``--no-norm`` for this script: a value of
            :data:`NO_NORM_RULES`.
        honours_histogram: Whether the script histogram-normalises the models whose card
            says so (SSL_medicalimaging's ``'mimic-chexpert' in args.model``).

    Returns:
        ``{}`` for histogram-normalised models of a script that honours them (the card's
        values stand), else ``mean`` and ``std``: mean 0, std 1 under ``--no-norm``,
        otherwise ImageNet's (with ``histogram_normalize: False`` for such a model of a
        script that does not).

    Raises:
        ValueError: On an unknown rule.
    """
    if no_norm not in NO_NORM_RULES:
        raise ValueError(f"no_norm must be one of {NO_NORM_RULES}, got {no_norm!r}")
    histogram = bool(getattr(card_preprocessing, "histogram_normalize", False))
    if histogram and honours_histogram:
        return {}
    off = {"histogram_normalize": False} if histogram else {}
    if no_norm == "always" or (
        no_norm == "raw-input-models" and takes_raw_input(card_preprocessing)
    ):
        return {**RAW_INPUT, **off}
    return {**IMAGENET, **off}


def with_normalisation(base: dict[str, Any], no_norm: str, honours_histogram: bool = True) -> Any:
    """A preset's preprocessing function: ``base`` plus the script's normalisation.

    Args:
        base: The geometric overrides (``input_size``, ``interpolation``, ...).
        no_norm: As :func:`peer_normalisation`.
        honours_histogram: As :func:`peer_normalisation`.

    Returns:
        ``case -> overrides`` for :func:`harness.protocols.registry.register_preset`.
    """

    def overrides(case: Any) -> dict[str, Any]:
        card = case.case.model.preprocessing
        return {**base, **peer_normalisation(card, no_norm, honours_histogram)}

    return overrides


def target_normalisation(dataset: str, stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The overrides of a peer that normalises by the target's statistics.

    Args:
        dataset: The medxfer dataset name.
        stats: The peer's statistics by dataset name (e.g. :data:`FEATURE_REUSE_STATS`).

    Returns:
        ``mean``, ``std`` (and ``channels`` for a single-channel target), with
        ``histogram_normalize: False``; ``{}`` for a target the peer never trained on,
        whose card's normalisation then stands.
    """
    found = stats.get(dataset)
    return {**found, "histogram_normalize": False} if found else {}


def with_target_normalisation(base: dict[str, Any], stats: dict[str, dict[str, Any]]) -> Any:
    """A preset's preprocessing function: ``base`` plus :func:`target_normalisation`.

    Args:
        base: The geometric overrides.
        stats: As :func:`target_normalisation`.

    Returns:
        ``case -> overrides`` for :func:`harness.protocols.registry.register_preset`.
    """

    def overrides(case: Any) -> dict[str, Any]:
        return {**base, **target_normalisation(case.case.dataset.name, stats)}

    return overrides


def transformed_preprocessing(pre: Any, rule: str) -> Any:
    """The preprocessing of a synthetic-invariance case's transformed images.

    jonahanton/SSL_medicalimaging@77fceef:invariances/invariances.py builds the clean
    images with ``HistogramNormalize`` for its ``mimic-chexpert`` models, but every
    transformed copy (the identity entry of a sweep included) goes through
    ``ManualTransform.T``, which ends in ``FT.normalize(image / 255., *self.norm)`` with
    the runner's mean / std (ImageNet's: ``--no-norm`` is passed for SimCLR-v1 only) and
    never histogram-normalises.

    Args:
        pre: The case's (clean images') preprocessing.
        rule: A value of :data:`TRANSFORMED_NORMALISATIONS`: ``same`` keeps ``pre``;
            ``imagenet-if-histogram`` swaps a histogram normalisation for ImageNet's mean
            and std, as the peer's transformed images.

    Returns:
        ``pre`` itself when nothing changes, else the changed copy.

    Raises:
        ValueError: On an unknown rule.
    """
    if rule not in TRANSFORMED_NORMALISATIONS:
        raise ValueError(
            f"transformed_normalisation must be one of {TRANSFORMED_NORMALISATIONS}, got {rule!r}"
        )
    if rule == "same" or not getattr(pre, "histogram_normalize", False):
        return pre
    return dataclasses.replace(pre, **peer_normalisation(pre, "never", honours_histogram=False))
