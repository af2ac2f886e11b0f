"""The conv + batch-norm units of a torchvision ResNet, for converters of foreign ResNets.

TensorFlow and Haiku ResNets store a convolution's kernel as HWIO and its batch norm
as separate named variables; converters pair each foreign (conv, batch norm) with a
torchvision unit listed here. Torch is not imported here (see the package docstring).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

BLOCK_CONV = re.compile(r"layer(\d+)\.(\d+)\.conv(\d+)\.weight")


@dataclass(frozen=True)
class Unit:
    """One convolution and the batch norm after it, by torchvision key prefix.

    Attributes:
        conv: Prefix of the conv (``layer1.0.conv2``), its kernel is ``<conv>.weight``.
        bn: Prefix of the batch norm (``layer1.0.bn2``).
        group: Residual stage, 0-based (``-1`` for the stem).
        block: Block within the stage (``-1`` for the stem).
        index: Conv within the block, 0-based; ``-1`` for the projection shortcut.
    """

    conv: str
    bn: str
    group: int
    block: int
    index: int


def resnet_units(target: Mapping[str, torch.Tensor]) -> list[Unit]:
    """The units of a torchvision ResNet state dict: stem, then each block's convs, then its shortcut.

    Raises:
        ValueError: When ``target`` is not a torchvision ResNet (no ``conv1`` / ``layerN``).
    """
    if "conv1.weight" not in target or "bn1.weight" not in target:
        raise ValueError("the architecture is not a torchvision ResNet (no conv1 / bn1)")
    units = [Unit("conv1", "bn1", -1, -1, 0)]
    blocks: dict[tuple[int, int], int] = {}
    for key in target:
        match = BLOCK_CONV.fullmatch(key)
        if match:
            layer, block, conv = (int(g) for g in match.groups())
            blocks[(layer, block)] = max(blocks.get((layer, block), 0), conv)
    if not blocks:
        raise ValueError("the architecture is not a torchvision ResNet (no layerN.M.convK)")
    for (layer, block), convs in sorted(blocks.items()):
        base = f"layer{layer}.{block}"
        for conv in range(1, convs + 1):
            units.append(Unit(f"{base}.conv{conv}", f"{base}.bn{conv}", layer - 1, block, conv - 1))
        if f"{base}.downsample.0.weight" in target:
            units.append(Unit(f"{base}.downsample.0", f"{base}.downsample.1", layer - 1, block, -1))
    return units


def already_converted(
    state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> bool:
    """True when ``state`` is keyed like ``target`` already (a converter's own output).

    The harness loads a converted file through the card's converter again; a converter
    applied to its own output returns it unchanged (``num_batches_tracked`` may be absent).
    """
    needed = {k for k in target if not k.endswith("num_batches_tracked")}
    return bool(state) and needed <= set(state) <= set(target)


def hwio_to_oihw(kernel: torch.Tensor) -> torch.Tensor:
    """A TensorFlow / Haiku conv kernel (height, width, in, out) as PyTorch's (out, in, h, w)."""
    if kernel.ndim != 4:
        raise ValueError(f"conv kernel of shape {tuple(kernel.shape)} is not 4-d HWIO")
    return kernel.permute(3, 2, 0, 1).contiguous()


def vector(value: torch.Tensor) -> torch.Tensor:
    """A batch-norm variable as a 1-d tensor (Haiku keeps them as (1, 1, 1, C))."""
    return value.reshape(-1).clone()
