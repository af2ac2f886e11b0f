"""Fine-tuning steps/s against the raw training step on pre-loaded tensors, side by side.

Two ways to train the same classifier (the card's backbone plus a linear head) for the
same number of SGD steps, batch size, device and precision, in one process:

(a) step limit: forward, backward and optimiser step on one pre-normalised batch already
    on the device (no data loading, no augmentation);
(b) harness: :func:`harness.protocols.finetune.loop.train_run` on uint8 images
    (random-resized crop and flip in ``--workers`` loader processes, pinned memory,
    the runtime's autocast and channels-last), training blind (no validation).

Each runs ``--steps`` steps after ``--warmup`` untimed steps; the table shows steps/s,
images/s and the ratio (b) / (a).

    python tests/perf/finetune_steps.py --model resnet50.random --input-size 224 \
        --batch-size 64 --steps 100 --workers 8
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from harness.config.cards import get_model_card
from harness.data.decoded import normalise_batch, resize_crop
from harness.protocols.finetune.loop import train_run
from harness.protocols.finetune.network import Classifier
from harness.protocols.finetune.runtime import resolve_runtime
from harness.protocols.finetune.spec import RunSpec
from harness.zoo import build_model
from harness.zoo.build import model_preprocessing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50.random")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--source", type=int, default=256, help="source image side (px)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto", help="auto, none, bf16 or fp16")
    args = parser.parse_args()

    runtime = resolve_runtime(args.device, args.amp, channels_last=True)
    card = get_model_card(args.model)
    loaded = build_model(card)
    pre = model_preprocessing(card, args.input_size)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, args.source, args.source), dtype=np.uint8)
    targets = (np.arange(args.images) % args.classes).astype(np.int64)
    criterion = nn.CrossEntropyLoss()

    def sync() -> None:
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()

    def step_limit(steps: int) -> float:
        torch.manual_seed(0)
        model = Classifier(loaded.module, loaded.feature_dim, args.classes)
        model.to(runtime.device).train()
        if runtime.channels_last:
            model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
        batch = torch.from_numpy(resize_crop(images[: args.batch_size], pre))
        x = runtime.inputs(normalise_batch(batch, pre, runtime.device))
        y = torch.from_numpy(targets[: args.batch_size]).to(runtime.device)
        scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.precision == "fp16")

        def one() -> None:
            with runtime.autocast():
                logits = model(x)
            loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        for _ in range(args.warmup):
            one()
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            one()
        sync()
        return time.perf_counter() - start

    def harness_steps(steps: int) -> float:
        spec = RunSpec(
            name="perf",
            lr=1e-3,
            weight_decay=0.0,
            steps=steps,
            horizon=steps,
            batch_size=args.batch_size,
            select_best=False,
            patience=None,
            val_every=10 * steps,
            num_workers=args.workers,
        )
        outcome = train_run(
            spec, loaded.module, loaded.feature_dim, args.classes, images, targets, pre,
            criterion, runtime, progress=False,
        )  # fmt: skip
        return outcome.train_seconds

    limit = step_limit(args.steps)
    # The harness's time includes its own warm-up (the loader workers' start and the first
    # batches): train warmup + steps and subtract a warmup-only run of the same set-up.
    harness_time = harness_steps(args.warmup + args.steps) - harness_steps(args.warmup)
    print(
        f"model {args.model} at {pre.input_size} px, batch {args.batch_size}, "
        f"{args.steps} steps after {args.warmup} warm-up, device {runtime.device} "
        f"({torch.cuda.get_device_name() if runtime.device.type == 'cuda' else platform.machine()}), "
        f"precision {runtime.precision}, {args.workers} loader workers, {os.cpu_count()} cores"
    )
    print("| path | seconds | steps/s | images/s | ratio to (a) |")
    print("|---|---|---|---|---|")
    for name, seconds in (
        ("(a) step on a pre-loaded device batch", limit),
        ("(b) harness train_run (loader, augmentation)", harness_time),
    ):
        print(
            f"| {name} | {seconds:.2f} | {args.steps / seconds:.2f} | "
            f"{args.steps * args.batch_size / seconds:.1f} | {limit / seconds:.2f} |"
        )


if __name__ == "__main__":
    main()
