"""The peers' per-script normalisation on the studies' own model cards.

SSL_medicalimaging's expected values are read off its runner_script.sh (where ``--no-norm`` is passed) and
its scripts' ``hist_norm`` / ``normalise_dict`` branches: ImageNet's mean / std unless
``--no-norm`` (mean 0, std 1); HistogramNormalize alone for the MIMIC-CheXpert models.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from harness.config.cards import get_model_card
from harness.protocols.peer_normalisation import peer_normalisation
from harness.protocols.registry import get_preset

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
RAW = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}

# card -> (few-shot / invariance / multi-view, fine-tune, linear) mean and std
EXPECTED = {
    "resnet50.moco_v2": (IMAGENET, IMAGENET, RAW),
    "resnet50.simclr_v1": (RAW, IMAGENET, RAW),  # --no-norm except in finetune.py runs
    "resnet18.moco_cxr": (IMAGENET, IMAGENET, RAW),  # not the card's 0.502 / 0.0856
    "densenet121.moco_cxr": (IMAGENET, IMAGENET, RAW),
    "densenet121.mimic_chexpert_moco_lr0.01": (RAW, RAW, RAW),  # histogram-normalised
}


def case_of(model: str, dataset: str = "chexpert_ssl_medical") -> SimpleNamespace:
    card = get_model_card(model)
    inner = SimpleNamespace(model=card, dataset=SimpleNamespace(name=dataset, pairing={}))
    return SimpleNamespace(case=inner)


@pytest.mark.parametrize("model", sorted(EXPECTED))
def test_each_preset_normalises_as_its_script_was_run(model: str) -> None:
    scripts, finetune, linear = EXPECTED[model]
    case = case_of(model)
    card = case.case.model.preprocessing
    for protocol in ("fewshot", "invariance", "multiview"):
        overrides = get_preset(protocol, "ssl-medicalimaging").overrides(case)
        got = {"mean": card.mean, "std": card.std} | overrides
        assert {k: tuple(got[k]) for k in ("mean", "std")} == scripts, protocol
    for protocol, expected in (("finetune", finetune), ("linear", linear)):
        overrides = get_preset(protocol, "ssl-medicalimaging").overrides(case)
        got = {"mean": card.mean, "std": card.std} | overrides
        assert {k: tuple(got[k]) for k in ("mean", "std")} == expected, protocol


@pytest.mark.parametrize("protocol", ["linear", "fewshot", "finetune"])
def test_ssl_transfer_passes_no_norm_for_simclr_only(protocol: str) -> None:
    preset = get_preset(protocol, "ssl-transfer")
    for model, expected in (
        ("resnet50.simclr_v1", RAW),
        ("resnet50.moco_v2", IMAGENET),
        ("resnet18.moco_cxr", IMAGENET),
    ):
        overrides = preset.overrides(case_of(model, "shenzhen"))
        assert {k: tuple(overrides[k]) for k in ("mean", "std")} == expected, model


def test_histogram_normalised_cards_keep_their_own_values_and_flag() -> None:
    case = case_of("densenet121.mimic_chexpert_moco_lr0.1")
    pre = case.case.model.preprocessing
    assert pre.histogram_normalize
    assert peer_normalisation(pre, "never") == {}
    overrides = get_preset("multiview", "ssl-medicalimaging").overrides(case)
    assert "mean" not in overrides and overrides["interpolation"] == "bicubic"


def test_unknown_rule_is_refused() -> None:
    pre = get_model_card("resnet50.moco_v2").preprocessing
    with pytest.raises(ValueError, match="no_norm must be one of"):
        peer_normalisation(pre, "sometimes")
