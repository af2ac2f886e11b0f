"""Converter for BYOL's Haiku ResNet-50 (DeepMind's ``pretrain_res50x1.pkl``).

``medxfer convert`` unpickles the file (restricted to numpy data,
:mod:`harness.zoo.haiku_pickle`) and flattens the online network to
``params/<module path>/<name>`` and ``state/<module path>/<name>`` tensors; this
converter maps them to torchvision ResNet keys. Torch is not imported at the top.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from harness.zoo.converters import register_converter
from harness.zoo.converters.resnet_units import (
    already_converted,
    hwio_to_oihw,
    resnet_units,
    vector,
)

if TYPE_CHECKING:
    import torch

    from harness.zoo.converters import StateDict

STEM_CONV = "initial_conv"
# Haiku state of a BatchNorm: two ExponentialMovingAverage submodules; their
# ``counter`` / ``hidden`` entries are bookkeeping of the average, not weights.
EMA_BOOKKEEPING = ("counter", "hidden")


@register_converter("byol_haiku_resnet", version=1)
def byol_haiku_resnet(state: StateDict, target: Mapping[str, torch.Tensor]) -> StateDict:
    """BYOL Haiku ResNet online network (params / state trees) -> torchvision ResNet keys.

    Module names follow ``ResNetTorso`` (google-deepmind/deepmind-research@
    500ffd895db36fdf0e0cbbc7a52163948590e255:byol/utils/networks.py): ``initial_conv``
    and ``initial_batchnorm``, then ``block_group_{g}/~/block_{b}/~/`` with ``conv_{k}``
    / ``batchnorm_{k}`` (k = 0, 1, 2) and, in each group's first block,
    ``shortcut_conv`` / ``shortcut_batchnorm`` (Haiku's ``ResNet.BlockV1``: the stride
    sits on ``conv_1``, the 3x3, as in torchvision). The encoder's module prefix
    (``res_net50/~/``) is found from ``initial_conv``; the projector, predictor and any
    classifier are dropped. Conv kernels ``w`` are HWIO and become OIHW; batch norm
    ``scale`` / ``offset`` (shape (1, 1, 1, C)) become ``weight`` / ``bias`` and the state's
    ``<bn>/~/mean_ema/average`` / ``<bn>/~/var_ema/average`` the running statistics.
    ssl-transfer pairs the layers by their order instead
    (linusericsson/ssl-transfer@1f1c85a64b7364af38c712f18b59f82f37b4a6a0:
    download_and_prepare_models.py ``convert_byol``); pairing by name gives the same
    tensors and fails loudly on a layout it does not know.

    Padding: Haiku's ``padding='SAME'`` pads a stride-2 layer asymmetrically (one more
    pixel at the bottom / right) where torchvision pads symmetrically, in the 7x7 stem,
    the max pool and each stage's strided 3x3. The weights are the same; a torchvision
    trunk computes what ssl-transfer and its successors ran, not Haiku's exact
    activations (tests/test_convert.py measures the difference).
    """
    if already_converted(state, target):
        return dict(state)
    prefix = _encoder_prefix(state)
    names: dict[str, str] = {STEM_CONV: "conv1", "initial_batchnorm": "bn1"}
    for unit in resnet_units(target):
        if unit.group < 0:
            continue
        block = f"block_group_{unit.group}/~/block_{unit.block}/~/"
        if unit.index < 0:
            names[f"{block}shortcut_conv"] = unit.conv
            names[f"{block}shortcut_batchnorm"] = unit.bn
        else:
            names[f"{block}conv_{unit.index}"] = unit.conv
            names[f"{block}batchnorm_{unit.index}"] = unit.bn
    out: StateDict = {}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in state:
            raise KeyError(f"the checkpoint has no {key!r}")
        used.add(key)
        return state[key]

    for haiku, torch_name in names.items():
        module = f"{prefix}{haiku}"
        if "conv" in haiku:
            out[f"{torch_name}.weight"] = hwio_to_oihw(take(f"params/{module}/w"))
        else:
            out[f"{torch_name}.weight"] = vector(take(f"params/{module}/scale"))
            out[f"{torch_name}.bias"] = vector(take(f"params/{module}/offset"))
            out[f"{torch_name}.running_mean"] = vector(take(f"state/{module}/~/mean_ema/average"))
            out[f"{torch_name}.running_var"] = vector(take(f"state/{module}/~/var_ema/average"))
    left = [
        key
        for key in state
        if key not in used
        and key.split("/", 1)[-1].startswith(prefix)
        and not key.endswith(tuple(f"/{name}" for name in EMA_BOOKKEEPING))
    ]
    if left:
        raise ValueError(
            f"{len(left)} encoder entries have no torchvision counterpart, e.g. {left[:4]}"
        )
    return out


def _encoder_prefix(state: StateDict) -> str:
    """The Haiku module prefix of the encoder, e.g. ``res_net50/~/``."""
    stems = {
        match.group(1)
        for key in state
        if (match := re.fullmatch(rf"params/(.*?){STEM_CONV}/w", key))
    }
    if len(stems) != 1:
        found = ", ".join(sorted(stems)) or "none"
        raise ValueError(
            f"expected one Haiku encoder with an '{STEM_CONV}' conv, found {found}; keys look "
            f"like {', '.join(list(state)[:4])}"
        )
    return stems.pop()
