"""How far fine-tuning moves a network, layer by layer: weights, features and importance.

The network is a classifier whose state-dict keys start with ``backbone.`` (the pretrained
feature extractor) or ``head.`` (the new linear head). Its parameters are split into
layers (:func:`layer_groups`): ``stage1`` ... ``stageK`` after the backbone's stages (a
stage owns every parameter from the previous stage's output up to its own output, so the
stem belongs to ``stage1``), ``pooled`` for what follows the last stage (e.g.
EfficientNet's ``conv_head`` and ``bn2``), and ``head``.

- :func:`weight_distances`: ``||w_ft - w_0||`` and ``||w_ft - w_0|| / ||w_0||`` over a
  layer's trainable parameters, taken together as one vector. Buffers (BatchNorm running
  statistics, counters) are never included; normalisation layers' affine parameters are
  left out unless asked (:func:`norm_keys`), as feature-reuse leaves out ``bn`` / ``norm``
  modules.
- :func:`reset_to` and :func:`randomise`: one layer set back to given values (its
  parameters and buffers) or re-drawn at random under a seed, the rest left as they are;
  the caller re-scores the network (layer importance).
- :func:`features_cka`: linear CKA between two models' pooled features, layer by layer.

Everything works on CPU copies of state dicts (name -> tensor); distances in float64.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from harness.analyses.similarity import linear_cka

BACKBONE = "backbone."
HEAD = "head."
HEAD_LAYER = "head"
TRAILING_LAYER = "pooled"
RandomInit = Literal["gaussian", "reset"]
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def _within(name: str, path: str) -> bool:
    return not path or name == path or name.startswith(path + ".")


def layer_groups(
    keys: Sequence[str], stages: Mapping[str, str], backbone: str = BACKBONE, head: str = HEAD
) -> dict[str, list[str]]:
    """Split a classifier's state-dict keys into layers, in network order.

    Args:
        keys: State-dict keys in the module's registration order.
        stages: Stage name -> module path inside the backbone, shallow to deep.
        backbone: Prefix of the backbone's keys.
        head: Prefix of the head's keys.

    Returns:
        Layer -> keys: every stage (possibly empty, for a stage without parameters), then
        ``pooled`` when keys follow the last stage, then ``head``.

    Raises:
        ValueError: On a key of neither part, or stages whose parameters are not in
            network order (the grouping would then be wrong).
    """
    stray = [k for k in keys if not k.startswith((backbone, head))]
    if stray:
        raise ValueError(f"keys {stray[:3]} belong to neither {backbone!r} nor {head!r}")
    body = [k[len(backbone) :] for k in keys if k.startswith(backbone)]
    ends: list[int] = []
    for name, path in stages.items():
        inside = [i for i, k in enumerate(body) if _within(k, path)]
        previous = ends[-1] if ends else -1
        if inside and inside[0] <= previous:
            raise ValueError(
                f"stage {name} ({path}) starts before the previous stage ends: its "
                "parameters are not in network order"
            )
        ends.append(inside[-1] if inside else previous)
    names = list(stages)
    groups: dict[str, list[str]] = {name: [] for name in names}
    trailing: list[str] = []
    for i, key in enumerate(body):
        owner = next((names[j] for j, end in enumerate(ends) if end >= i), None)
        if owner is not None and any(_within(key, p) for n, p in stages.items() if n != owner):
            raise ValueError(f"key {key} lies inside another stage than {owner}")
        (groups[owner] if owner is not None else trailing).append(backbone + key)
    if trailing:
        groups[TRAILING_LAYER] = trailing
    groups[HEAD_LAYER] = [k for k in keys if k.startswith(head)]
    return groups


def norm_keys(model: nn.Module) -> set[str]:
    """The state-dict keys of the normalisation layers (BatchNorm, GroupNorm, LayerNorm).

    Args:
        model: The network.

    Returns:
        Their parameters' and buffers' keys.
    """
    out: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, NORM_TYPES):
            prefix = f"{name}." if name else ""
            own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
            out.update(prefix + key for key, _ in own)
    return out


def weight_distances(
    initial: Mapping[str, torch.Tensor],
    tuned: Mapping[str, torch.Tensor],
    groups: Mapping[str, Sequence[str]],
    include: Collection[str],
) -> dict[str, dict[str, float]]:
    """Distance each layer's weights travelled, absolute and relative to where they began.

    Args:
        initial: State dict before fine-tuning.
        tuned: State dict after fine-tuning (the same keys and shapes).
        groups: Layer -> keys (:func:`layer_groups`).
        include: The keys that count (e.g. the trainable parameters, norms left out).

    Returns:
        Layer -> ``{"l2", "relative_l2", "n_params"}`` for every layer with counted keys,
        and ``"total"`` over all of them. ``relative_l2`` is NaN when ``||w_0|| = 0``.

    Raises:
        ValueError: When a key is missing from either state dict or shapes differ.
    """
    out: dict[str, dict[str, float]] = {}
    sums = [0.0, 0.0, 0]
    for layer, keys in groups.items():
        counted = [k for k in keys if k in include]
        if not counted:
            continue
        moved = start = 0.0
        n = 0
        for key in counted:
            if key not in initial or key not in tuned:
                raise ValueError(f"weight distance: key {key} is missing from a state dict")
            w0 = initial[key].detach().to("cpu", torch.float64)
            w1 = tuned[key].detach().to("cpu", torch.float64)
            if w0.shape != w1.shape:
                raise ValueError(f"weight distance: {key} has shapes {w0.shape} and {w1.shape}")
            moved += float(((w1 - w0) ** 2).sum())
            start += float((w0**2).sum())
            n += w0.numel()
        out[layer] = _distance(moved, start, n)
        sums = [sums[0] + moved, sums[1] + start, sums[2] + n]
    out["total"] = _distance(sums[0], sums[1], int(sums[2]))
    return out


def _distance(moved: float, start: float, n: int) -> dict[str, float]:
    l2 = math.sqrt(moved)
    relative = l2 / math.sqrt(start) if start > 0 else math.nan
    return {"l2": l2, "relative_l2": relative, "n_params": float(n)}


def reset_to(model: nn.Module, source: Mapping[str, torch.Tensor], keys: Sequence[str]) -> None:
    """Set ``keys`` of ``model`` (parameters and buffers) to the values in ``source``.

    Args:
        model: The network, changed in place.
        source: State dict holding at least ``keys`` (e.g. the initial weights).
        keys: The layer's keys.

    Raises:
        ValueError: When ``source`` lacks a key.
    """
    missing = [k for k in keys if k not in source]
    if missing:
        raise ValueError(f"reset: the source state has no {missing[:3]}")
    state = model.state_dict()
    with torch.no_grad():
        for key in keys:
            state[key].copy_(source[key])


def randomise(model: nn.Module, keys: Collection[str], seed: int, mode: RandomInit) -> list[str]:
    """Re-draw a layer's weights at random under ``seed``, the rest of the network unchanged.

    ``gaussian`` (feature-reuse's re-randomisation): every convolution's and linear
    layer's weight and bias among ``keys`` is replaced by i.i.d. normal values with the
    mean and standard deviation of the tensor it replaces; normalisation layers and
    buffers keep their values. ``reset``: every module whose own parameters are all among
    ``keys`` runs its ``reset_parameters()`` (PyTorch's fresh initialisation; BatchNorm
    back to identity with fresh running statistics).

    Args:
        model: The network, changed in place.
        keys: The layer's state-dict keys.
        seed: Seeds the draws (made on the CPU: the same seed gives the same values on any
            device).
        mode: ``gaussian`` or ``reset``.

    Returns:
        The keys whose values were re-drawn.

    Raises:
        ValueError: On an unknown mode.
    """
    if mode not in ("gaussian", "reset"):
        raise ValueError(f"randomise: mode must be gaussian or reset, got {mode!r}")
    keys = set(keys)
    changed: list[str] = []
    generator = torch.Generator().manual_seed(seed)
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        own = {prefix + k: v for k, v in module.named_parameters(recurse=False)}
        if not own or not set(own) <= keys:
            continue
        if mode == "reset" and callable(getattr(module, "reset_parameters", None)):
            _reset_on_cpu(module, int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            changed += sorted(own)
        elif mode == "gaussian" and isinstance(module, nn.modules.conv._ConvNd | nn.Linear):
            for key, tensor in sorted(own.items()):
                with torch.no_grad():
                    tensor.copy_(_matched_normal(tensor, generator))
                changed.append(key)
    return changed


def _reset_on_cpu(module: nn.Module, seed: int) -> None:
    """``module.reset_parameters()`` drawn by the CPU generator under ``seed`` (a CPU copy
    is reset, then copied back: the draws do not depend on the device, and no global
    random state changes)."""
    fresh = copy.deepcopy(module).to("cpu")
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.random.default_generator.manual_seed(seed)
        fresh.reset_parameters()
        own = [*fresh.named_parameters(recurse=False), *fresh.named_buffers(recurse=False)]
        for name, value in own:
            getattr(module, name).copy_(value)


def _matched_normal(tensor: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Normal draws with the tensor's mean and std (std 0 for a single value), on CPU."""
    values = tensor.detach().to("cpu", torch.float64)
    std = float(values.std()) if values.numel() > 1 else 0.0
    draws = torch.randn(values.shape, generator=generator, dtype=torch.float64)
    return (float(values.mean()) + std * draws).to(tensor.dtype)


def features_cka(
    initial: Mapping[str, np.ndarray], tuned: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """Linear CKA between the initial and the fine-tuned model's features, per layer.

    Args:
        initial: Layer -> (N, C) features of the initial model.
        tuned: Layer -> (N, C) features of the fine-tuned model on the same images.

    Returns:
        Layer -> CKA in [0, 1], for the layers both have, in ``initial``'s order.
    """
    return {name: linear_cka(initial[name], tuned[name]) for name in initial if name in tuned}


def state_to_arrays(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A state dict as plain arrays for the array cache (names are not identifiers).

    Args:
        state: Name -> tensor.

    Returns:
        ``keys`` and ``dtypes`` (string arrays) and ``t<i>`` per tensor (bfloat16 and
        other dtypes NumPy lacks stored as float32, restored by :func:`arrays_to_state`).
    """
    out: dict[str, np.ndarray] = {
        "keys": np.array(list(state), dtype=str),
        "dtypes": np.array([str(t.dtype) for t in state.values()], dtype=str),
    }
    for i, tensor in enumerate(state.values()):
        cpu = tensor.detach().cpu()
        if cpu.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
            cpu = cpu.float()
        out[f"t{i}"] = cpu.numpy()
    return out


def arrays_to_state(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The state dict of :func:`state_to_arrays`.

    Raises:
        ValueError: When the arrays are not such a state dict.
    """
    if "keys" not in arrays or "dtypes" not in arrays:
        raise ValueError("stored weights lack their key list")
    keys, dtypes = [str(k) for k in arrays["keys"]], [str(d) for d in arrays["dtypes"]]
    if len(keys) != len(dtypes) or any(f"t{i}" not in arrays for i in range(len(keys))):
        raise ValueError("stored weights do not match their key list")
    state = {}
    for i, (key, dtype) in enumerate(zip(keys, dtypes, strict=True)):
        tensor = torch.from_numpy(np.array(arrays[f"t{i}"]))
        state[key] = tensor.to(getattr(torch, dtype.removeprefix("torch.")))
    return state
