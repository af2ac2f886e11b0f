"""Batch-norm statistics of a random-initialisation baseline, from the target's training images.

A freshly initialised network in eval mode normalises with the init running statistics
(mean 0, variance 1), so batch norm is the identity and nothing rescales the
activations: in torchvision's MobileNetV2 they shrink with depth to pooled features of
about 1e-9. Such features are numerically fragile: float16 flushes them to zero, and
nearly constant feature dimensions turn last-bit differences into signal once
standardised (``docs/reproducibility.md`` has the figures).

The card rule ``weights.batchnorm_stats: target_train`` (the default for
``source: random``) keeps the baseline the peers compare against (the same architecture
and initialisation, no transfer, no labels) but gives every batch-norm layer the
statistics of its input over the target's training images: one forward pass without
gradient in which each batch-norm layer normalises a batch by that batch's own mean and
variance, as in training mode. This is data-dependent rescaling in the spirit
of Krähenbühl et al. (2016), which early self-supervised benchmarks applied to their
random-initialisation rows. Each layer's mean and (unbiased) variance are accumulated
in float64 over every pixel of every image (a few images at a time), not averaged per
batch. The rule ``init`` keeps the init statistics.

The images are a seeded permutation of the training split cut to a whole number of
batches (at most :data:`MAX_IMAGES`), so every forward pass has the same shape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

RECALIBRATION_VERSION = 3  # 3: channels_last, batches normalised by their float64 statistics
MAX_IMAGES = 2048
ACCUMULATION_CHUNK = 1 << 17  # layer-input values per float64 copy in the hooks
SEED = 0


def recalibration_indices(
    n_images: int, batch_size: int, max_images: int = MAX_IMAGES
) -> np.ndarray:
    """The training images a recalibration uses, in the order it feeds them.

    Args:
        n_images: Images in the training split.
        batch_size: Images per forward pass.
        max_images: Upper bound on the images used.

    Returns:
        int64 indices: a seeded permutation cut to the largest whole number of batches
        within ``max_images`` (all images, in one batch, when there are fewer than
        ``batch_size``).
    """
    order = np.random.default_rng(SEED).permutation(n_images)
    if n_images < batch_size:
        return order
    usable = min(n_images, max(max_images, batch_size)) // batch_size * batch_size
    return order[:usable]


def batchnorm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch-norm layers of a module that track running statistics."""
    return [
        layer
        for layer in module.modules()
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.track_running_stats
    ]


def recalibrate_batchnorm(
    module: nn.Module,
    images: np.ndarray,
    transform: Callable[[np.ndarray], torch.Tensor],
    batch_size: int,
    device: torch.device,
) -> dict[str, Any]:
    """Set every batch-norm layer's running statistics to those of its input over ``images``.

    The pass runs as training-mode batch norm would (each batch normalised by its own
    mean and biased variance), but with the network in eval mode and channels_last, as
    features are extracted: a pre-hook on each layer takes its input's float64 sums,
    adds them to the layer's totals and writes the batch's statistics into the running
    buffers, which eval-mode batch norm then normalises by. Torch's own training-mode
    reduction is avoided because in channels_last it depends on the thread count.

    Args:
        module: The network, changed in place and returned in eval mode and in the
            contiguous memory format.
        images: uint8 images (already chosen and ordered, see :func:`recalibration_indices`).
        transform: The model's evaluation transform (image -> tensor).
        batch_size: Images per forward pass.
        device: Where the pass runs.

    Returns:
        What was done: ``layers`` recalibrated and ``images`` used.

    Raises:
        ValueError: When ``images`` is empty or a layer saw a single value per channel.
    """
    layers = batchnorm_layers(module)
    if not layers:
        return {"layers": 0, "images": len(images)}
    if len(images) == 0:
        raise ValueError("batch-norm recalibration needs at least one training image")
    sums: dict[nn.Module, list[Any]] = {layer: [0, 0.0, 0.0] for layer in layers}

    def normalise_by_batch(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        count, total, squares = float64_channel_sums(inputs[0].detach())
        entry = sums[layer]
        entry[0] += count
        entry[1] = entry[1] + total
        entry[2] = entry[2] + squares
        mean, variance = channel_statistics(count, total, squares, unbiased=False)
        layer.running_mean.copy_(mean)
        layer.running_var.copy_(variance)

    module.to(device).to(memory_format=torch.channels_last).eval()
    hooks = [layer.register_forward_pre_hook(normalise_by_batch) for layer in layers]
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = torch.stack([transform(img) for img in images[start : start + batch_size]])
                module(batch.to(device).contiguous(memory_format=torch.channels_last))
    finally:
        for hook in hooks:
            hook.remove()
        module.to(memory_format=torch.contiguous_format)
    for layer in layers:
        count, total, squares = sums[layer]
        if count < 2:
            raise ValueError(f"batch-norm recalibration: layer {layer} saw {count} value(s)")
        mean, variance = channel_statistics(count, total, squares, unbiased=True)
        layer.running_mean.copy_(mean.to(layer.running_mean.dtype))
        layer.running_var.copy_(variance.to(layer.running_var.dtype))
        if layer.num_batches_tracked is not None:
            layer.num_batches_tracked.fill_(len(range(0, len(images), batch_size)))
    return {"layers": len(layers), "images": len(images)}


def channel_statistics(
    count: int, total: torch.Tensor, squares: torch.Tensor, unbiased: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and variance from :func:`float64_channel_sums` (or their totals).

    ``unbiased=False`` gives the variance batch norm normalises a batch by;
    ``unbiased=True`` the one it keeps as running statistic.
    """
    mean = total / count
    variance = (squares / count - mean * mean).clamp_min(0)
    return mean, variance * (count / (count - 1)) if unbiased else variance


def float64_channel_sums(x: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Values per channel, and the float64 sums of ``x`` and of its squares per channel (dim 1).

    The float64 copy is taken a few images at a time: it stays in cache, where the whole
    batch's (hundreds of MB) made the pass memory-bound (docs/performance.md).
    """
    dims = [d for d in range(x.ndim) if d != 1]
    total: torch.Tensor | float = 0.0
    squares: torch.Tensor | float = 0.0
    step = max(1, ACCUMULATION_CHUNK // max(1, x[0].numel()))
    for start in range(0, len(x), step):
        chunk = x[start : start + step].to(torch.float64, copy=True)
        total = total + chunk.sum(dims)
        squares = squares + chunk.square_().sum(dims)  # in place: the copy is ours
    return x.numel() // x.shape[1], torch.as_tensor(total), torch.as_tensor(squares)


def _tracked_buffers(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``<layer>.<buffer>`` and the tensor of every running statistic :func:`batchnorm_layers` lists."""
    for name, layer in module.named_modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.track_running_stats:
            yield f"{name}.running_mean", layer.running_mean
            yield f"{name}.running_var", layer.running_var
            if layer.num_batches_tracked is not None:
                yield f"{name}.num_batches_tracked", layer.num_batches_tracked


def batchnorm_state(module: nn.Module) -> dict[str, np.ndarray]:
    """The running statistics of every batch-norm layer, by module name, as NumPy arrays.

    Args:
        module: The network.

    Returns:
        ``<layer>.running_mean``, ``<layer>.running_var`` and, where tracked,
        ``<layer>.num_batches_tracked`` of every layer :func:`batchnorm_layers` lists.
    """
    return {key: tensor.detach().cpu().numpy().copy() for key, tensor in _tracked_buffers(module)}


def load_batchnorm_state(module: nn.Module, state: dict[str, np.ndarray]) -> None:
    """Copy running statistics saved by :func:`batchnorm_state` into ``module``, exactly.

    Raises:
        ValueError: When a layer's statistics are missing, extra or of another shape.
    """
    buffers = dict(_tracked_buffers(module))
    if set(buffers) != set(state):
        missing, extra = sorted(set(buffers) - set(state)), sorted(set(state) - set(buffers))
        raise ValueError(
            f"batch-norm statistics do not fit the network: missing {missing[:3]}, "
            f"unexpected {extra[:3]}"
        )
    with torch.no_grad():
        for key, value in state.items():
            target = buffers[key]
            if tuple(target.shape) != value.shape:
                raise ValueError(
                    f"batch-norm statistics {key}: shape {value.shape}, "
                    f"network {tuple(target.shape)}"
                )
            target.copy_(torch.from_numpy(np.array(value, copy=True)).to(target.dtype))
