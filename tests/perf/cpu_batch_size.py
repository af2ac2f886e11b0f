"""CPU extraction throughput against the batch size, as one process and as xdist workers.

Times the extraction forward (channels_last, inference mode, float32, the inputs already
normalised, as ``harness.features_stream`` runs it) of real model cards at each
``--sizes`` batch size, in two settings side by side: one process with ``--threads``
torch threads (``-n 0``), and ``--threads`` processes of one thread each started
together (``-n 2`` on a 2-core machine), whose images/s are summed. Sizes are
interleaved over ``--repeats`` rounds and the best round is kept, so a busy moment
hurts every size alike. It also checks, per size, whether an image's features are the
same bits as at the reference size ``--reference`` under either thread count.

``--huge-pages 0 1`` runs the whole table once per ``THP_MEM_ALLOC_ENABLE`` value, each in
fresh processes (PyTorch reads the variable once per process; :mod:`harness.huge_pages`);
without it the script runs under the environment as it is and does not set the variable.

    python tests/perf/cpu_batch_size.py --models tf_efficientnet_lite0.in1k_pip \
        mobilenet_v2.tv_in1k_pip --input-size 160 --sizes 8 16 32 64
    python tests/perf/cpu_batch_size.py --sizes 16 64 --huge-pages 0 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from harness.config.cards import get_model_card
from harness.data.decoded import normalise_batch
from harness.huge_pages import HUGE_PAGES_ENV
from harness.zoo import build_model
from harness.zoo.build import model_preprocessing


def _module_and_inputs(
    model: str, input_size: int, images: int
) -> tuple[torch.nn.Module, torch.Tensor]:
    card = get_model_card(model)
    module = build_model(card).module.to(memory_format=torch.channels_last).eval()
    pre = model_preprocessing(card, input_size)
    generator = torch.Generator().manual_seed(0)
    shape = (images, pre.input_size, pre.input_size, 3)
    pixels = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    return module, normalise_batch(pixels, pre, torch.device("cpu"))


def _features(module: torch.nn.Module, x: torch.Tensor, size: int) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([module(x[i : i + size]) for i in range(0, len(x), size)])


def _images_per_second(module: torch.nn.Module, x: torch.Tensor, size: int) -> float:
    with torch.inference_mode():
        module(x[:size])
        start = time.perf_counter()
        for i in range(0, len(x) - size + 1, size):
            module(x[i : i + size])
        return (len(x) // size * size) / (time.perf_counter() - start)


def _worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    module, x = _module_and_inputs(args.models[0], args.input_size, args.images)
    print(json.dumps(_images_per_second(module, x, args.sizes[0])))


def _concurrent(args: argparse.Namespace, model: str, size: int) -> float:
    command = [sys.executable, __file__, "--worker", "--models", model, "--sizes", str(size)]
    command += ["--input-size", str(args.input_size), "--images", str(args.images)]
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(args.threads)
    ]
    return sum(json.loads(process.communicate()[0]) for process in processes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tf_efficientnet_lite0.in1k_pip"])
    parser.add_argument("--input-size", type=int, default=160)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--reference", type=int, default=64)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--huge-pages", nargs="+", choices=["0", "1"], default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    if args.huge_pages:
        table = [sys.executable, __file__, "--models", *args.models, "--sizes"]
        table += [*map(str, args.sizes), "--input-size", str(args.input_size)]
        for option in ("reference", "images", "threads", "repeats"):
            table += [f"--{option}", str(getattr(args, option))]
        for setting in args.huge_pages:
            subprocess.run(table, env={**os.environ, HUGE_PAGES_ENV: setting}, check=True)
        return

    huge = os.environ.get(HUGE_PAGES_ENV)
    print(
        f"CPU, {args.threads} threads, {args.images} random images, float32, channels_last, "
        f"{HUGE_PAGES_ENV}={huge}"
    )
    print(
        "| model | batch | 1 process (img/s) | ratio to ref | workers (img/s) | ratio to ref "
        "| same bits as ref (threads 1 / n) |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for model in args.models:
        module, x = _module_and_inputs(model, args.input_size, args.images)
        same: dict[int, list[bool]] = {size: [] for size in args.sizes}
        for threads in (1, args.threads):
            torch.set_num_threads(threads)
            reference = _features(module, x, args.reference)
            for size in args.sizes:
                same[size].append(torch.equal(_features(module, x, size), reference))
        single = {size: 0.0 for size in args.sizes}
        workers = {size: 0.0 for size in args.sizes}
        torch.set_num_threads(args.threads)
        for _ in range(args.repeats):
            for size in args.sizes:
                single[size] = max(single[size], _images_per_second(module, x, size))
                workers[size] = max(workers[size], _concurrent(args, model, size))
        ref_single, ref_workers = single[args.reference], workers[args.reference]
        for size in args.sizes:
            bits = " / ".join("yes" if equal else "no" for equal in same[size])
            print(
                f"| {model} | {size} | {single[size]:.1f} | {single[size] / ref_single:.2f} "
                f"| {workers[size]:.1f} | {workers[size] / ref_workers:.2f} | {bits} |"
            )


if __name__ == "__main__":
    main()
