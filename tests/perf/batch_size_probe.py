"""The automatic batch size on a real device: what it picks, how long the probe takes,
and the forward throughput at that size against the fixed default of 64.

For each ``--maximum`` (the largest size tried, ``MEDXFER_BATCH_MAX``) it runs
:func:`harness.batch_size.resolve_batch_size` from a clear memo: on CUDA the real forward
is tried from the maximum down, halving on out-of-memory; on CPU the size comes from the
memory budget and a probed per-image activation size. Then it times ``--batches``
inference batches at the chosen size and at 64 on random inputs.

    python tests/perf/batch_size_probe.py --model resnet50.random --input-size 224 \
        --maximum 256 65536
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from harness.batch_size import clear_memo, resolve_batch_size
from harness.config.cards import get_model_card
from harness.data.decoded import normalise_batch
from harness.precision import compute_precision
from harness.zoo import build_model
from harness.zoo.build import model_preprocessing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50.random")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--maximum", type=int, nargs="+", default=[256])
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    card = get_model_card(args.model)
    module = build_model(card).module.to(device).to(memory_format=torch.channels_last).eval()
    pre = model_preprocessing(card, args.input_size)

    def images_per_second(size: int) -> float:
        blank = torch.randint(0, 256, (size, pre.input_size, pre.input_size, 3), dtype=torch.uint8)
        x = normalise_batch(blank, pre, device)
        with torch.inference_mode(), compute_precision(device, "fp32"):
            module(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(args.batches):
                module(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        return args.batches * size / (time.perf_counter() - start)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"model {args.model} at {pre.input_size} px on {device} ({name}), fp32")
    print("| largest tried | chosen | probe (s) | images/s at chosen | images/s at 64 | ratio |")
    print("|---:|---:|---:|---:|---:|---:|")
    for maximum in args.maximum:
        clear_memo()
        start = time.perf_counter()
        size = resolve_batch_size("auto", module, pre, device, "fp32", maximum=maximum)
        probe = time.perf_counter() - start
        chosen, fixed = images_per_second(size), images_per_second(64)
        print(
            f"| {maximum} | {size} | {probe:.2f} | {chosen:.0f} | {fixed:.0f} | "
            f"{chosen / fixed:.2f} |"
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
