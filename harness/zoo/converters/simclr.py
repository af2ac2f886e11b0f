"""Converter for SimCLR v1 / v2 TensorFlow ResNet-50 checkpoints (google-research/simclr).

``medxfer convert`` reads the checkpoint's tensor bundle without TensorFlow
(:mod:`harness.zoo.tf_checkpoint`) into ``{variable name: tensor}``; this converter
maps the variables to torchvision ResNet keys. Torch is not imported at the top.
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

BASE = "base_model/"
VARIABLE = re.compile(r"base_model/(conv2d|batch_normalization)(?:_(\d+))?/(\w+)")
BN_VARIABLES = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}


@register_converter("simclr_tf_resnet", version=1)
def simclr_tf_resnet(state: StateDict, target: Mapping[str, torch.Tensor]) -> StateDict:
    """SimCLR TF1 ``base_model/`` ResNet variables -> torchvision ResNet keys (heads dropped).

    Both releases were written by the TF1 code's ``resnet.py`` (v1:
    google-research/simclr@383d4143fd8cf7879ae10f1046a9baeb753ff438:resnet.py, v2 with
    ``sk_ratio = 0`` the same layers), whose ``tf.layers.conv2d`` /
    ``tf.layers.batch_normalization`` are named by creation order under ``base_model/``:
    ``conv2d``, ``conv2d_1``, ... and ``batch_normalization``, ``batch_normalization_1``,
    ... (variables ``kernel`` HWIO; ``gamma``, ``beta``, ``moving_mean``,
    ``moving_variance``). Each conv is followed by its batch norm, so ``conv2d_N`` pairs
    with ``batch_normalization_N``. The creation order is the stem, then per bottleneck
    block the projection shortcut *first* (first block of each group) and then the three
    convs; torchvision lists the shortcut (``downsample``) last, so the order is
    remapped block by block. The stride sits on the 3x3 conv, as in torchvision.
    Optimizer slots (``.../Momentum``), ``ema_model/``, ``head_contrastive/``,
    ``head_supervised/`` and ``global_step`` are dropped. The peers' converters
    (tonylins/simclr-converter@59bee347aefe2ed52e07268ebb3e16f9bb4e0412:convert.py,
    Separius/SimCLRv2-Pytorch@46ad293acd4e8be12d83c54306f5419e6446cbb6:convert.py) sort
    the same names by their number.

    Padding: ``conv2d_fixed_padding`` pads strided convs explicitly and symmetrically,
    as torchvision does, so every conv matches exactly; only the stem's max pool
    (``padding='SAME'``) pads one pixel asymmetrically in TensorFlow. A torchvision
    trunk therefore differs from TensorFlow there, as the peers' PyTorch ports do.
    """
    if already_converted(state, target):
        return dict(state)
    convs: dict[int, torch.Tensor] = {}
    norms: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = VARIABLE.fullmatch(key)
        if not match:
            continue  # heads, optimizer slots, EMA copies, global_step
        kind, number, variable = match.group(1), int(match.group(2) or 0), match.group(3)
        if kind == "conv2d":
            if variable != "kernel":
                raise ValueError(f"unexpected conv variable {key!r} (SimCLR convs have no bias)")
            convs[number] = value
        elif variable in BN_VARIABLES:
            norms.setdefault(number, {})[BN_VARIABLES[variable]] = value
        else:
            raise ValueError(f"unexpected batch-norm variable {key!r}")
    units = resnet_units(target)
    order = _tf_creation_order(units)
    if sorted(convs) != list(range(len(order))) or sorted(norms) != list(range(len(order))):
        raise ValueError(
            f"expected {BASE}conv2d[_N] and {BASE}batch_normalization[_N] for N < {len(order)} "
            f"(the architecture's {len(order)} conv + batch-norm units); found "
            f"{len(convs)} convs and {len(norms)} batch norms"
        )
    out: StateDict = {}
    for number, unit in enumerate(order):
        out[f"{unit.conv}.weight"] = hwio_to_oihw(convs[number])
        norm = norms[number]
        missing = sorted(set(BN_VARIABLES.values()) - set(norm))
        if missing:
            raise ValueError(f"{BASE}batch_normalization_{number} lacks {', '.join(missing)}")
        for name, value in norm.items():
            out[f"{unit.bn}.{name}"] = vector(value)
    return out


def _tf_creation_order(units: list) -> list:
    """The torchvision units in TF1 creation order: per block, the shortcut before the convs."""
    ordered = []
    for unit in units:
        if unit.index == -1:
            # the shortcut of this block goes before the block's first conv
            first = next(
                i for i, u in enumerate(ordered) if (u.group, u.block) == (unit.group, unit.block)
            )
            ordered.insert(first, unit)
        else:
            ordered.append(unit)
    return ordered
