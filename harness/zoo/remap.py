"""Fitting a foreign checkpoint's state dict onto an architecture.

The peers' recurring trouble (moco#84, simsiam#8, simclr#88) is keys: wrapped
dicts, ``module.encoder_q.`` prefixes, projection heads. A card says how to undo
these; every leftover mismatch is an error listing the keys, never a silent
``strict=False``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from harness.config.cards import WeightsSpec
from harness.zoo.errors import CheckpointError

WRAPPER_KEYS = ("state_dict", "model", "module", "net", "network")


def unwrap(checkpoint: object, keys: tuple[str, ...], where: str) -> dict[str, torch.Tensor]:
    """Return the tensor dict inside a checkpoint, following the card's ``unwrap`` keys.

    With no keys given, common wrappers (``state_dict``, ``model``) are followed when present.
    """
    current = checkpoint
    for key in keys:
        if not isinstance(current, Mapping) or key not in current:
            raise CheckpointError(f"{where}: checkpoint has no key {key!r} to unwrap")
        current = current[key]
    if not keys:
        while isinstance(current, Mapping) and not _is_tensor_dict(current):
            inner = next((k for k in WRAPPER_KEYS if k in current), None)
            if inner is None:
                break
            current = current[inner]
    if not isinstance(current, Mapping) or not _is_tensor_dict(current):
        raise CheckpointError(f"{where}: checkpoint is not a state dict of tensors")
    return dict(current)


def _is_tensor_dict(mapping: Mapping) -> bool:
    return bool(mapping) and all(isinstance(v, torch.Tensor) for v in mapping.values())


def rename(
    state: dict[str, torch.Tensor], spec: WeightsSpec, where: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Strip the card's prefixes (first match wins) and drop keys containing any drop pattern.

    Raises:
        CheckpointError: when two checkpoint keys end up with the same name.
    """
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        if any(pattern in key for pattern in spec.drop_keys):
            continue
        new = key
        for prefix in spec.strip_prefixes:
            if key.startswith(prefix):
                new = key[len(prefix) :]
                break
        if new in out:
            raise CheckpointError(
                f"{where}: checkpoint keys {origin[new]} and {key} both become {new} after "
                "strip_prefixes (drop one of them with drop_keys)"
            )
        out[new] = value
        origin[new] = key
    return out


def fit_to_model(
    state: dict[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    spec: WeightsSpec,
    where: str,
) -> dict[str, torch.Tensor]:
    """Return ``state`` keyed like ``target``, by name or by position, with every shape checked.

    Raises:
        CheckpointError: listing missing / unexpected keys or the first shape mismatch.
    """
    if spec.load == "positional":
        return _by_position(state, target, where)
    state = dict(state)
    for key, value in target.items():
        # BatchNorm's step counter is not a weight; checkpoints saved before PyTorch 0.4.1
        # (e.g. torchvision's original ResNets) lack it, and PyTorch itself tolerates that
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = value.clone()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: checkpoint keys do not fit the architecture: "
            f"missing {_preview(missing)}; unexpected {_preview(unexpected)} "
            "(set strip_prefixes / drop_keys in the card)"
        )
    for key, value in target.items():
        if state[key].shape != value.shape:
            raise CheckpointError(
                f"{where}: key {key} has shape {tuple(state[key].shape)} in the checkpoint, "
                f"{tuple(value.shape)} in the architecture"
            )
    return state


def _by_position(
    state: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor], where: str
) -> dict[str, torch.Tensor]:
    if len(state) != len(target):
        raise CheckpointError(
            f"{where}: positional load needs equal key counts; checkpoint has {len(state)}, "
            f"architecture has {len(target)}"
        )
    out = {}
    for (src_key, src), (dst_key, dst) in zip(state.items(), target.items(), strict=True):
        if src.shape != dst.shape:
            raise CheckpointError(
                f"{where}: positional load: checkpoint key {src_key} {tuple(src.shape)} does not "
                f"fit architecture key {dst_key} {tuple(dst.shape)}"
            )
        out[dst_key] = src
    return out


def _preview(keys: list[str], limit: int = 6) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}] ({len(keys)} keys)"
