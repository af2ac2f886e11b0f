"""Batch-norm recalibration of a random twin: the harness's pass against version 2's.

:func:`harness.zoo.batchnorm.recalibrate_batchnorm` (version 3) runs the training images
through the network in eval mode and channels_last, each batch-norm layer normalising a
batch by the float64 statistics its pre-hook takes. Version 2 ran it in NCHW with batch
norm in training mode (torch's own float32 batch statistics) and the same float64 hooks.
In one process on the same uint8 images (seeded noise, or with ``--dataset`` the training
images the harness would use), alternating, ``--repeats`` times each.

The table shows the median seconds, the ratio, and how far the two passes' statistics
are apart (largest ``|mean difference| / std`` and relative variance difference over all
layers). ``--thread-check`` then runs both passes at 1 and at 2 torch threads and counts
the statistics that differ between the two.

    python tests/perf/recalibration_speed.py --threads 1 --thread-check
    python tests/perf/recalibration_speed.py --dataset demo_cxr_lesion --input-size 160 --batch-size 64
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from harness.config.cards import dataset_cards, get_model_card
from harness.data.prepare import load_splits
from harness.data.transforms import eval_transform
from harness.zoo import build_model
from harness.zoo.batchnorm import (
    batchnorm_layers,
    channel_statistics,
    float64_channel_sums,
    recalibrate_batchnorm,
    recalibration_indices,
)

CPU = torch.device("cpu")
KINDS = ("harness", "version 2")


def version2_pass(
    module: nn.Module,
    images: np.ndarray,
    transform: Callable[[np.ndarray], torch.Tensor],
    batch_size: int,
) -> None:
    """Recalibration version 2: NCHW, batch norm in training mode, float64 sums in hooks."""
    layers = batchnorm_layers(module)
    sums: dict[nn.Module, list] = {layer: [0, 0.0, 0.0] for layer in layers}

    def accumulate(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        count, total, squares = float64_channel_sums(inputs[0].detach())
        entry = sums[layer]
        entry[0], entry[1], entry[2] = entry[0] + count, entry[1] + total, entry[2] + squares

    hooks = [layer.register_forward_pre_hook(accumulate) for layer in layers]
    for layer in layers:
        layer.train()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            module(torch.stack([transform(img) for img in images[start : start + batch_size]]))
    for hook in hooks:
        hook.remove()
    module.eval()
    for layer in layers:
        mean, variance = channel_statistics(*sums[layer], unbiased=True)
        layer.running_mean.copy_(mean.float())
        layer.running_var.copy_(variance.float())


def variant_pass(
    module: nn.Module,
    images: np.ndarray,
    transform: Callable[[np.ndarray], torch.Tensor],
    batch_size: int,
    variant: str,
) -> None:
    """The harness's pass (``harness``) or version 2's (``version 2``)."""
    if variant == "harness":
        recalibrate_batchnorm(module, images, transform, batch_size, CPU)
    else:
        version2_pass(module, images, transform, batch_size)


def statistics_gap(a: nn.Module, b: nn.Module) -> tuple[float, float]:
    """Largest ``|mean_a - mean_b| / std_a`` and ``|var_a - var_b| / var_a`` over all layers."""
    mean_gap = var_gap = 0.0
    for la, lb in zip(batchnorm_layers(a), batchnorm_layers(b), strict=True):
        var = la.running_var.double()
        mean_diff = (la.running_mean.double() - lb.running_mean.double()).abs()
        mean_gap = max(mean_gap, (mean_diff / var.sqrt()).max().item())
        var_gap = max(var_gap, ((var - lb.running_var.double()).abs() / var).max().item())
    return mean_gap, var_gap


def differing_values(a: nn.Module, b: nn.Module) -> int:
    """How many state values of ``a`` and ``b`` differ in any bit (only the batch-norm
    statistics can: both start from the same weights)."""
    return sum(
        int((x != y).sum())
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def main() -> None:
    """Time the three passes per model and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["mobilenet_v2.random", "tf_efficientnet_lite0.random"]
    )
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--thread-check", action="store_true")
    parser.add_argument("--dataset", help="a prepared dataset card: its training images")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.dataset:
        train = load_splits(dataset_cards()[args.dataset])["train"].images
        images = train[recalibration_indices(len(train), args.batch_size)]
        source = f"{len(images)} training images of {args.dataset} at"
    else:
        size = (args.images, args.input_size, args.input_size)
        images = np.random.default_rng(0).integers(0, 256, size=size, dtype=np.uint8)
        source = f"{args.images} seeded noise images of"
    print(
        f"{source} {args.input_size} px, batch {args.batch_size}, "
        f"{args.threads} torch thread(s), median of {args.repeats}; "
        f"{platform.machine()}, torch {torch.__version__}\n"
    )
    print("| model | harness (v3) s | version 2 s (ratio) | mean gap / std, var gap |")
    print("|---|---:|---:|---|")
    for name in args.models:
        card = get_model_card(name)
        transform = eval_transform(card.preprocessing.with_input_size(args.input_size))
        times: dict[str, list[float]] = {kind: [] for kind in KINDS}
        nets: dict[str, nn.Module] = {}
        for _ in range(args.repeats):
            for kind in KINDS:
                net = build_model(card).module
                started = time.perf_counter()
                variant_pass(net, images, transform, args.batch_size, kind)
                times[kind].append(time.perf_counter() - started)
                nets[kind] = net
        base, old = (statistics.median(times[kind]) for kind in KINDS)
        mean_gap, var_gap = statistics_gap(nets["version 2"], nets["harness"])
        print(
            f"| {name} | {base:.2f} | {old:.2f} ({old / base:.2f}x) "
            f"| {mean_gap:.1e}, {var_gap:.1e} |"
        )
    if args.thread_check:
        thread_check(args.models[0], images, args.input_size, args.batch_size)


def thread_check(name: str, images: np.ndarray, input_size: int, batch_size: int) -> None:
    """Print how many statistics of each pass differ between 1 and 2 torch threads."""
    card = get_model_card(name)
    transform = eval_transform(card.preprocessing.with_input_size(input_size))
    nets: dict[tuple[str, int], nn.Module] = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for kind in KINDS:
            net = build_model(card).module
            variant_pass(net, images, transform, batch_size, kind)
            nets[kind, threads] = net
    print(f"\n{name}, statistics differing between 1 and 2 torch threads:")
    for kind in KINDS:
        print(f"- {kind}: {differing_values(nets[kind, 1], nets[kind, 2])}")


if __name__ == "__main__":
    main()
