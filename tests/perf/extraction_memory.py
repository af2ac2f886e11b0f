"""Peak memory of streamed extraction against the number of images, side by side.

For each N in ``--counts`` a fresh child process (so peaks do not mix) writes N random
uint8 grayscale images (``--source`` px) to a ``.npy`` file, opens it as a memory map,
makes the model's resized copy (:func:`harness.features_stream.resized_images`) and runs
the backbone over it into a memory-mapped feature file
(:func:`harness.features_stream.extract_resized`). The child reports its peak RSS
(``ru_maxrss``) after the run; the table shows it and the ratio to the smallest N.
For comparison, ``--in-memory`` makes each child hold the images and features as whole
arrays instead (the pre-streaming path).

    python tests/perf/extraction_memory.py --counts 2000 20000 --input-size 64
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch


def child(args: argparse.Namespace) -> None:
    from harness.config.cards import get_model_card
    from harness.features import extract
    from harness.features_stream import extract_resized, resized_images
    from harness.zoo import build_model
    from harness.zoo.build import model_preprocessing

    card = get_model_card(args.model)
    module = build_model(card).module.eval()
    pre = model_preprocessing(card, args.input_size)
    folder = Path(args.folder)
    path = folder / "images.npy"
    images = np.lib.format.open_memmap(path, "w+", np.uint8, (args.count, args.source, args.source))
    rng = np.random.default_rng(0)
    for start in range(0, args.count, 1000):
        stop = min(start + 1000, args.count)
        images[start:stop] = rng.integers(0, 256, (stop - start, args.source, args.source))
    images.flush()
    del images
    device = torch.device("cpu")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.in_memory:
        features = extract(module, np.load(path), pre, device, args.batch_size)
        rows = len(features)
    else:
        images = np.load(path, mmap_mode="r")
        resized = resized_images(images, f"perf-{args.count}", pre, folder / "decoded")
        out = np.lib.format.open_memmap(
            folder / "features.npy", "w+", np.float32, (args.count, build_model(card).feature_dim)
        )
        rows = len(extract_resized(module, resized, pre, device, args.batch_size, out=out))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": rows, "peak_kib": peak, "before_kib": before}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tf_efficientnet_lite0.in1k_pip")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--source", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--counts", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--in-memory", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    rows = []
    for count in args.counts:
        with tempfile.TemporaryDirectory() as tmp:
            command = [
                sys.executable, __file__, "--child", "--count", str(count), "--folder", tmp,
                "--model", args.model, "--input-size", str(args.input_size),
                "--source", str(args.source), "--batch-size", str(args.batch_size),
            ]  # fmt: skip
            if args.in_memory:
                command.append("--in-memory")
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            rows.append((count, json.loads(done.stdout.strip().splitlines()[-1])))
    base = rows[0][1]["peak_kib"]
    mode = "in memory" if args.in_memory else "streamed (memory maps)"
    print(f"{args.model} at {args.input_size} px, {mode}, batch {args.batch_size}")
    print("| images | peak RSS (MiB) | ratio to first |")
    print("|---|---|---|")
    for count, result in rows:
        peak = result["peak_kib"]
        print(f"| {count} | {peak / 1024:.0f} | {peak / base:.3f} |")


if __name__ == "__main__":
    main()
