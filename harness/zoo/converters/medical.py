"""Converters for chest X-ray checkpoints and DenseNet key names.

In-domain and domain-adapted ResNet-50s of BenchmarkTransferLearning, the
MIMIC-CheXpert MoCo DenseNet-121s of CovidPrognosis, the MoCo-CXR DenseNet-121, and
torchvision DenseNets saved with the key names torchvision used before 0.3
(``norm.1`` / ``conv.1``). Torch is not imported here (see the package docstring).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from harness.zoo.converters import register_converter
from harness.zoo.converters.ssl import encoder_keys

if TYPE_CHECKING:
    import torch

    from harness.zoo.converters import StateDict

# A dense layer's parameters as torchvision < 0.3 named them: ``denselayerN.norm.1.weight``
# for what is now ``denselayerN.norm1.weight`` (likewise relu / conv, indices 1 and 2).
LEGACY_DENSE_LAYER = re.compile(
    r"^(?P<layer>.*denselayer\d+\.(?:norm|relu|conv))\.(?P<index>[12])\."
    r"(?P<leaf>weight|bias|running_mean|running_var|num_batches_tracked)$"
)
CLASSIFIER_HEADS = ("fc", "classifier")


def densenet_current_names(state: StateDict) -> StateDict:
    """Rename legacy DenseNet keys (``norm.1`` -> ``norm1``); other keys pass unchanged.

    Raises:
        ValueError: When a legacy key and its current name are both present.
    """
    out: StateDict = {}
    for key, value in state.items():
        match = LEGACY_DENSE_LAYER.match(key)
        name = f"{match['layer']}{match['index']}.{match['leaf']}" if match else key
        if name in out:
            raise ValueError(f"keys {key} and {name} are both present")
        out[name] = value
    return out


@register_converter("densenet_legacy", version=1)
def densenet_legacy(state: StateDict, target: Mapping[str, torch.Tensor]) -> StateDict:
    """torchvision DenseNet with pre-0.3 key names (``norm.1``, ``conv.2``) -> current names.

    The DenseNet files torchvision published first (e.g. ``densenet121-a639ec97.pth``)
    and checkpoints trained with torchvision < 0.3 name a dense layer's modules
    ``norm.1``, ``relu.1``, ``conv.1``, ``norm.2``, ``relu.2``, ``conv.2``; today's
    ``_DenseLayer`` names them ``norm1`` ... ``conv2``. Every other key (the stem
    ``features.conv0`` / ``norm0``, transitions, ``features.norm5``, ``classifier``) is
    unchanged, so the card drops the classifier with ``drop_keys``.
    """
    return densenet_current_names(state)


@register_converter("btl_classifier", version=1)
def btl_classifier(state: StateDict, target: Mapping[str, torch.Tensor]) -> StateDict:
    """BenchmarkTransferLearning fine-tuned classifier -> torchvision ResNet / DenseNet keys, head dropped.

    The in-domain (ChestX-ray14, CheXpert) and domain-adapted (ImageNet -> ChestX-ray14 /
    CheXpert) models on zenodo record 5205234 were saved by ``classification_engine`` of
    MR-HosseinzadehTaher/BenchmarkTransferLearning@5656fec7234bf671cbb4454f5d6a7500df29f233:
    Version1/engine.py as ``{"epoch", "lossMIN", "state_dict", "optimizer",
    "scheduler"}``; the cards unwrap ``state_dict``. That is the torchvision
    classifier of ``Version1/models.py`` (``ClassificationNet``), ``module.``-prefixed
    when trained under ``DataParallel``, with a 14-way head: ``fc.0`` (a Linear in
    ``Sequential(Linear, Sigmoid)``, the default ``--activate Sigmoid``) or ``fc`` for
    ResNets, ``classifier.0`` / ``classifier`` for DenseNets. As its ``ClassificationNet``
    loader does, ``module.`` is stripped and the head dropped; DenseNet keys get their
    current names.
    """
    out: StateDict = {}
    for key, value in state.items():
        name = key.removeprefix("module.")
        if name.startswith(tuple(f"{head}." for head in CLASSIFIER_HEADS)):
            continue
        if name in out:
            raise ValueError(f"keys {name} and module.{name} are both present")
        out[name] = value
    return densenet_current_names(out)


@register_converter("moco_densenet", version=1)
def moco_densenet(state: StateDict, target: Mapping[str, torch.Tensor]) -> StateDict:
    """MoCo DenseNet training checkpoint (MoCo-CXR) -> torchvision DenseNet keys, projection dropped.

    stanfordmlgroup/MoCo-CXR@d433acabe6518b332a1345a6a1fed49f0c23c253 trains with its copy
    of facebookresearch/moco (``moco_pretraining/moco/main_moco.py``), which saves
    ``{"epoch", "arch", "state_dict", "optimizer"}``; ``state_dict`` holds the
    DDP-wrapped MoCo module of ``moco_pretraining/moco/moco/builder.py``: the query
    encoder under ``module.encoder_q.``, the key encoder under ``module.encoder_k.``,
    ``module.queue`` and ``module.queue_ptr``. For a DenseNet the projection is the
    encoder's ``classifier`` (a Linear, or ``classifier.0`` / ``classifier.2`` with
    ``--mlp``). As the repository's ``chexpert_supervised/.../saver/model_saver.py``
    does, only the query encoder is kept, without its projection.
    """
    prefixes = ("module.encoder_q.", "encoder_q.")
    return densenet_current_names(encoder_keys(state, prefixes, CLASSIFIER_HEADS))


@register_converter("covidprognosis_moco", version=1)
def covidprognosis_moco(state: StateDict, target: Mapping[str, torch.Tensor]) -> StateDict:
    """CovidPrognosis MoCo checkpoint (PyTorch Lightning) -> torchvision DenseNet / ResNet keys.

    The pretrained MIMIC / CheXpert models of
    facebookresearch/CovidPrognosis@9c753d1156f0f04c3bec213aa4b1d0cc39a2f71d (listed in
    ``configs/models.yaml``) are PyTorch Lightning 1.0 checkpoints of ``MoCoModule``
    (``cp_examples/moco_pretrain/moco_module.py``): ``{"epoch", "global_step",
    "pytorch-lightning_version", "callbacks", "optimizer_states", "lr_schedulers",
    "state_dict"}``, the cards unwrap ``state_dict``. The Lightning module holds the MoCo
    model (``covidprognosis/models/moco_model.py``) as ``model``: the query encoder
    under ``model.encoder_q.`` (a torchvision DenseNet-121 built with
    ``num_classes=feature_dim``, so its ``classifier`` is the projection), the key
    encoder under ``model.encoder_k.``, ``model.queue`` and ``model.queue_ptr``. Like
    ``SipModule`` in ``cp_examples/sip_finetune/sip_finetune.py``, only the query encoder
    is kept, without ``classifier`` (``fc`` for ResNets).
    """
    prefixes = ("model.encoder_q.",)
    return densenet_current_names(encoder_keys(state, prefixes, CLASSIFIER_HEADS))
