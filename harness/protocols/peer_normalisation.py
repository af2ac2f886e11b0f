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
"""

from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

RAW_INPUT: dict[str, Any] = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
IMAGENET: dict[str, Any] = {"mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD}

#: Where the runner passes ``--no-norm``: always, for raw-input models only, or never.
NO_NORM_RULES = ("always", "raw-input-models", "never")


def takes_raw_input(preprocessing: Any) -> bool:
    """Whether a card's preprocessing feeds [0, 1] pixels (mean 0, std 1)."""
    return (
        tuple(map(float, preprocessing.mean)) == RAW_INPUT["mean"]
        and tuple(map(float, preprocessing.std)) == RAW_INPUT["std"]
    )


def peer_normalisation(card_preprocessing: Any, no_norm: str) -> dict[str, Any]:
    """The mean / std overrides of one peer script for a model.

    Args:
        card_preprocessing: The model card's preprocessing (``mean``, ``std``,
            ``histogram_normalize``).
        no_norm: Where the runner passes ``--no-norm`` for this script: a value of
            :data:`NO_NORM_RULES`.

    Returns:
        ``{}`` for histogram-normalised models (the card's values stand), else ``mean``
        and ``std``: mean 0, std 1 under ``--no-norm``, otherwise ImageNet's.

    Raises:
        ValueError: On an unknown rule.
    """
    if no_norm not in NO_NORM_RULES:
        raise ValueError(f"no_norm must be one of {NO_NORM_RULES}, got {no_norm!r}")
    if getattr(card_preprocessing, "histogram_normalize", False):
        return {}
    if no_norm == "always" or (
        no_norm == "raw-input-models" and takes_raw_input(card_preprocessing)
    ):
        return dict(RAW_INPUT)
    return dict(IMAGENET)


def with_normalisation(base: dict[str, Any], no_norm: str) -> Any:
    """A preset's preprocessing function: ``base`` plus the script's normalisation.

    Args:
        base: The geometric overrides (``input_size``, ``interpolation``, ...).
        no_norm: As :func:`peer_normalisation`.

    Returns:
        ``case -> overrides`` for :func:`harness.protocols.registry.register_preset`.
    """

    def overrides(case: Any) -> dict[str, Any]:
        card = case.case.model.preprocessing
        return {**base, **peer_normalisation(card, no_norm)}

    return overrides
