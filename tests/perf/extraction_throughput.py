"""Extraction throughput against the backbone's raw forward, measured side by side.

Four ways to get features of the same N images (uint8, ``--source``-px grayscale, a
fixed random seed) from the same backbone, batch size and device, in one process:

(a) forward limit: the backbone on pre-normalised float tensors already in memory;
(b) per-image: :func:`harness.features.extract` (timm's eval transform on each image
    in the main process, then the forward);
(c) decoded cache, warm: :func:`harness.features_stream.extract_resized` over the
    stored uint8 resized copy (a memory map), normalised batched on the device;
(d) decoded cache, cold: making that copy (resize in ``--workers`` loader processes)
    plus (c).

Each path runs ``--repeats`` times after one warm-up forward per batch shape; the table
shows the best time of each and its ratio to (a). Features of (b), (c), (d) are compared
for equality (they must be bit-identical).

    python tests/perf/extraction_throughput.py --model tf_efficientnet_lite0.in1k_pip \
        --input-size 160 --images 512
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from harness.config.cards import get_model_card
from harness.data.decoded import normalise_batch, resize_crop
from harness.features import extract, images_digest
from harness.features_stream import extract_resized, resized_images
from harness.precision import compute_precision
from harness.zoo import build_model
from harness.zoo.build import model_preprocessing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tf_efficientnet_lite0.in1k_pip")
    parser.add_argument("--input-size", type=int, default=160)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--source", type=int, default=256, help="source image side (px)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", help="fp32, bf16 or fp16 (all paths)")
    args = parser.parse_args()

    device = torch.device(args.device)
    card = get_model_card(args.model)
    module = build_model(card).module.to(device).eval()
    module = module.to(memory_format=torch.channels_last)
    pre = model_preprocessing(card, args.input_size)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, args.source, args.source), dtype=np.uint8)
    digest = images_digest(images)
    normalised = normalise_batch(torch.from_numpy(resize_crop(images, pre)), pre, device)
    batch = args.batch_size

    def forward_limit() -> np.ndarray:
        chunks = []
        # the precision as extraction computes it (fp32 on CUDA: TF32 off, harness.precision)
        with torch.inference_mode(), compute_precision(device, args.precision):
            for start in range(0, len(normalised), batch):
                x = normalised[start : start + batch]
                if len(x) < batch:
                    x = torch.cat([x, x[-1:].expand(batch - len(x), *x.shape[1:])])
                chunks.append(module(x)[: min(batch, len(normalised) - start)].float().cpu())
        return torch.cat(chunks).numpy()

    def per_image() -> np.ndarray:
        return extract(module, images, pre, device, batch, precision=args.precision)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        resized_images(images, digest, pre, folder / "warm")

        def warm() -> np.ndarray:
            return extract_resized(
                module,
                resized_images(images, digest, pre, folder / "warm"),
                pre,
                device,
                batch,
                args.precision,
            )

        def cold() -> np.ndarray:
            target = folder / f"cold{time.perf_counter_ns()}"
            resized = resized_images(images, digest, pre, target, workers=args.workers)
            return extract_resized(module, resized, pre, device, batch, args.precision)

        paths = {
            "(a) forward on pre-loaded tensors": forward_limit,
            "(b) per-image transform (features.extract)": per_image,
            "(c) decoded cache, warm (extract_resized)": warm,
            "(d) decoded cache, cold (resize + extract_resized)": cold,
        }
        forward_limit()  # warm-up: kernels for the batch shape
        best: dict[str, float] = {}
        outputs: dict[str, np.ndarray] = {}
        for _ in range(args.repeats):
            for name, fn in paths.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                outputs[name] = fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)

    reference = outputs["(b) per-image transform (features.extract)"]
    limit = best["(a) forward on pre-loaded tensors"]
    print(
        f"model {args.model} at {pre.input_size} px, {args.images} images of "
        f"{args.source}x{args.source}, batch {batch}, device {device}, {args.precision}, "
        f"torch threads {torch.get_num_threads()}, {os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}"
    )
    print(f"| path | best of {args.repeats} (s) | images/s | ratio to (a) | features equal (b) |")
    print("|---|---|---|---|---|")
    for name, seconds in best.items():
        same = "-" if name.startswith("(a)") else str(np.array_equal(outputs[name], reference))
        print(
            f"| {name} | {seconds:.2f} | {args.images / seconds:.1f} | "
            f"{limit / seconds:.2f} | {same} |"
        )


if __name__ == "__main__":
    main()
