"""Batch-norm recalibration of a random twin: three ways to run the pass, side by side.

:func:`harness.zoo.batchnorm.recalibrate_batchnorm` runs the training images through the
network in NCHW and accumulates each layer input's float64 sums a few images at a time.
Against it, in one process on the same uint8 images (seeded noise, or with ``--dataset``
the training images the harness would use), alternating, ``--repeats`` times each:

- ``whole``: recalibration version 1, one float64 copy of the whole batch's layer input
  (its float64 sums come out in another order, so a float32 statistic may differ in its
  last bit: the table counts them);
- ``channels_last``: the harness's pass with the network in channels_last,
  the memory format features are extracted in. Faster on CPU, but the convolutions round
  differently, which moves the statistics; tried and not taken (docs/performance.md).

The table shows the median seconds, each ratio to the harness's pass, and how far the
channels_last statistics are from the harness's (largest ``|mean difference| / std`` and
relative variance difference over all layers). ``--thread-check`` then runs the harness's
pass and the channels_last one at 1 and at 2 torch threads and says whether each gives
the same bits both ways.

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
from unittest import mock

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from harness.config.cards import dataset_cards, get_model_card
from harness.data.prepare import load_splits
from harness.data.transforms import eval_transform
from harness.zoo import batchnorm, build_model
from harness.zoo.batchnorm import batchnorm_layers, recalibrate_batchnorm, recalibration_indices

CPU = torch.device("cpu")
KINDS = ("harness", "whole", "channels_last")


def variant_pass(
    module: nn.Module,
    images: np.ndarray,
    transform: Callable[[np.ndarray], torch.Tensor],
    batch_size: int,
    variant: str,
) -> None:
    """The harness's pass as ``variant`` runs it.

    ``harness`` as is; ``whole`` with one chunk per batch (version 1's accumulation);
    ``channels_last`` on the network converted to channels_last, which makes its
    convolutions (and hence the batches' activations) channels_last.
    """
    if variant == "channels_last":
        module.to(memory_format=torch.channels_last)
    chunk = 2**62 if variant == "whole" else batchnorm.ACCUMULATION_CHUNK
    with mock.patch.object(batchnorm, "ACCUMULATION_CHUNK", chunk):
        recalibrate_batchnorm(module, images, transform, batch_size, CPU)


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
    print(
        "| model | harness s | whole s (ratio) | channels_last s (ratio) "
        "| whole: float32 values differing | channels_last: mean gap / std, var gap |"
    )
    print("|---|---:|---:|---:|---|---|")
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
        median = {kind: statistics.median(times[kind]) for kind in KINDS}
        base = median["harness"]
        differing = differing_values(nets["harness"], nets["whole"])
        mean_gap, var_gap = statistics_gap(nets["harness"], nets["channels_last"])
        print(
            f"| {name} | {base:.2f} | {median['whole']:.2f} ({median['whole'] / base:.2f}x) "
            f"| {median['channels_last']:.2f} ({median['channels_last'] / base:.2f}x) "
            f"| {differing} | {mean_gap:.1e}, {var_gap:.1e} |"
        )
    if args.thread_check:
        thread_check(args.models[0], images, args.input_size, args.batch_size)


def thread_check(name: str, images: np.ndarray, input_size: int, batch_size: int) -> None:
    """Print whether the harness's and the channels_last pass are the same at 1 and 2 threads."""
    card = get_model_card(name)
    transform = eval_transform(card.preprocessing.with_input_size(input_size))
    nets: dict[tuple[str, int], nn.Module] = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for kind in ("harness", "channels_last"):
            net = build_model(card).module
            variant_pass(net, images, transform, batch_size, kind)
            nets[kind, threads] = net
    print(f"\n{name}, statistics at 1 vs 2 torch threads:")
    for kind in ("harness", "channels_last"):
        same = differing_values(nets[kind, 1], nets[kind, 2]) == 0
        print(f"- {kind}: {'the same bits' if same else 'different'}")


if __name__ == "__main__":
    main()
