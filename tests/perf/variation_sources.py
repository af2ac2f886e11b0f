"""What makes a fresh run differ from the calibration: measured, source by source.

Every extraction runs in a fresh process (as a user's run does), under a controlled
thread count and kernel environment, and writes its features to ``--out``. The driver
then compares them and runs the frozen-feature protocols on each set:

A. dataset build: two builds in two fresh ``MEDXFER_HOME`` folders, compared by digest;
B. feature bits: 1 vs 2 torch threads with medxfer's fixed-shape batches, and with a
   natural short last batch (the behaviour before padding); each kernel variant of
   ``harness.baselines.calibrate.KERNEL_VARIANTS`` against the default kernels;
C. scale of the random twins' features with init and with target-train batch-norm
   statistics;
D. the linear, k-NN and few-shot results of every feature set: the spread over kernel
   variants is what a user on another CPU sees;
E. bf16 / fp16 autocast on a probe batch: degenerate rows and relative error.

    .venv/bin/python tests/perf/variation_sources.py                       # demo_modality, 160 px
    .venv/bin/python tests/perf/variation_sources.py --dataset demo_cxr_lesion --models mobilenet_v2.random
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

DEFAULT_MODELS = (
    "tf_efficientnet_lite0.in1k_pip",
    "tf_efficientnet_lite0.random",
    "mobilenet_v2.tv_in1k_pip",
    "mobilenet_v2.random",
)
SPLITS = ("train", "val", "test")


def _worker(args: argparse.Namespace) -> None:
    """Extract one feature set in this (fresh) process and save it."""
    import torch

    torch.set_num_threads(args.threads)
    from harness.config.cards import get_dataset_card, get_model_card
    from harness.data.prepare import load_splits
    from harness.data.transforms import eval_transform
    from harness.features import extract, images_digest
    from harness.zoo import build_model
    from harness.zoo.batchnorm import recalibrate_batchnorm, recalibration_indices

    card = get_model_card(args.model)
    splits = load_splits(get_dataset_card(args.dataset))
    out: dict[str, np.ndarray] = {}
    for name in SPLITS:
        out[f"{name}_digest"] = np.array(images_digest(splits[name].images))
    if args.build_only:
        np.savez(args.out, **out)
        return
    pre = card.preprocessing.with_input_size(args.input_size)
    module = build_model(card).module
    if args.bn == "target_train":
        train = splits["train"].images
        index = recalibration_indices(len(train), 64)
        recalibrate_batchnorm(module, train[index], eval_transform(pre), 64, torch.device("cpu"))
    cpu = torch.device("cpu")
    for name in SPLITS:
        images = splits[name].images
        if args.unpadded:
            transform = eval_transform(pre)
            module = module.to(memory_format=torch.channels_last).eval()
            chunks = []
            with torch.inference_mode():
                for start in range(0, len(images), 64):
                    batch = torch.stack([transform(x) for x in images[start : start + 64]])
                    chunks.append(module(batch.to(memory_format=torch.channels_last)).numpy())
            out[name] = np.concatenate(chunks)
        else:
            out[name] = extract(module, images, pre, cpu, 64)
        out[f"{name}_labels"] = splits[name].labels
    np.savez(args.out, **out)


def _spawn(
    out: Path,
    home: Path,
    model: str,
    dataset: str,
    size: int,
    *,
    threads: int = 2,
    bn: str = "checkpoint",
    unpadded: bool = False,
    env: dict[str, str] | None = None,
    build_only: bool = False,
) -> Path:
    command = [
        sys.executable, __file__, "--worker", "--model", model, "--dataset", dataset,
        "--input-size", str(size), "--threads", str(threads), "--bn", bn, "--out", str(out),
    ]  # fmt: skip
    command += ["--unpadded"] * unpadded + ["--build-only"] * build_only
    full_env = {**os.environ, "MEDXFER_HOME": str(home), **(env or {})}
    subprocess.run(command, check=True, env=full_env)
    return out


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as payload:
        return {key: payload[key] for key in payload.files}


def _rows_differing(a: dict, b: dict) -> int:
    return sum(int(np.sum(np.any(a[s] != b[s], axis=1))) for s in SPLITS)


def _max_relative(a: dict, b: dict) -> float:
    return max(float(np.abs(a[s] - b[s]).max() / np.abs(a[s]).max()) for s in SPLITS)


def _protocols(features: dict, dataset: str) -> dict[str, float]:
    from harness.config.cards import get_dataset_card
    from harness.protocols import fewshot, knn, linear
    from harness.protocols.base import SplitFeatures, TaskInfo

    card = get_dataset_card(dataset)
    task = TaskInfo(card.task, card.num_classes, card.primary_metric, card.metrics)
    split = {s: SplitFeatures(features[s], features[f"{s}_labels"]) for s in SPLITS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lin = linear.run(*split.values(), task, linear.LinearConfig.for_profile("demo"))
    near = knn.run(*split.values(), task, knn.KnnConfig.for_profile("demo"))
    pool = fewshot.make_pool(split, "train+test")
    few = fewshot.run(pool, task, fewshot.FewShotConfig(), card.fewshot.get("n_way"))
    return {
        "linear": lin.metrics[card.primary_metric],
        "knn": near.metrics[card.primary_metric],
        "fewshot": few.metrics["accuracy"],
    }


def _scale(features: dict) -> str:
    from harness.protocols.case import feature_scale

    s = feature_scale(features["train"])
    return f"{s['abs_mean']:.3g} / {s['median_dim_std']:.3g} / {s['near_constant_dims']}"


def _precision_rows(models: list[str], dataset: str, size: int) -> list[str]:
    import torch

    from harness.config.cards import get_dataset_card, get_model_card
    from harness.data.prepare import load_splits
    from harness.features import extract_checked
    from harness.zoo import build_model

    images = load_splits(get_dataset_card(dataset))["test"].images[:16]
    rows = []
    for name in models:
        card = get_model_card(name)
        module = build_model(card).module  # init statistics: the twins' worst case
        pre = card.preprocessing.with_input_size(size)
        for requested in ("fp16", "bf16"):
            _, decision = extract_checked(
                module, images, pre, torch.device("cpu"), 16, "", requested
            )
            error = "—" if decision.relative_error is None else f"{decision.relative_error:.3g}"
            rows.append(
                f"| {name} | {requested} | {decision.zero_rows} | {decision.nonfinite_rows} | "
                f"{error} | {decision.effective} |"
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    """Measure every source of variation and print markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="demo_modality")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--input-size", type=int, default=160)
    parser.add_argument("--out", default=None, help="keep feature files here (default: temp)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--bn", default="checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--unpadded", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return

    from harness.baselines.calibrate import KERNEL_VARIANTS

    scratch = Path(args.out or tempfile.mkdtemp(prefix="medxfer-variation-"))
    scratch.mkdir(parents=True, exist_ok=True)
    home = scratch / "home"
    size, dataset = args.input_size, args.dataset
    print(f"# Sources of variation: {dataset}, {size} px (files in {scratch})\n")

    builds = [
        _load(_spawn(scratch / f"build{i}.npz", scratch / f"home-build{i}", args.models[0],
                     dataset, size, build_only=True))
        for i in range(2)
    ]  # fmt: skip
    same = all(str(builds[0][f"{s}_digest"]) == str(builds[1][f"{s}_digest"]) for s in SPLITS)
    print("## A. Dataset build in two fresh homes\n")
    print(f"images of every split identical (sha256): {same}\n")

    table_b, table_c, table_d = [], [], []
    for model in args.models:
        twin = model.endswith(".random")
        rules = ("target_train", "init") if twin else ("checkpoint",)
        for bn in rules:
            label = f"{model} ({bn})" if twin else model

            def run(tag: str, _bn: str = bn, _model: str = model, **kw: object) -> dict:
                name = f"{_model}-{_bn}-{tag}.npz"
                return _load(_spawn(scratch / name, home, _model, dataset, size, bn=_bn, **kw))

            base = run("base")
            variants = {v.name: run(v.name, env=dict(v.env)) for v in KERNEL_VARIANTS}
            if bn == rules[0]:
                one = run("threads1", threads=1)
                short1 = run("unpadded1", threads=1, unpadded=True)
                short2 = run("unpadded2", threads=2, unpadded=True)
                kernel_diffs = ", ".join(f"{_max_relative(base, f):.2g}" for f in variants.values())
                table_b.append(
                    f"| {model} | {_rows_differing(base, one)} | "
                    f"{_rows_differing(short1, short2)} | {kernel_diffs} |"
                )
            if twin:
                table_c.append(f"| {model} | {bn} | {_scale(base)} |")
            outcomes = [_protocols(base, dataset)] + [
                _protocols(f, dataset) for f in variants.values()
            ]
            for protocol in ("linear", "knn", "fewshot"):
                values = [o[protocol] for o in outcomes]
                shown = ", ".join(f"{v:.4f}" for v in values)
                table_d.append(
                    f"| {label} | {protocol} | {shown} | {max(values) - min(values):.4f} |"
                )

    n_rows = sum(len(base[s]) for s in SPLITS)
    names = ", ".join(v.name for v in KERNEL_VARIANTS)
    print(f"## B. Feature bits ({n_rows} images per model)\n")
    print(
        "| model | rows differing, 1 vs 2 threads (fixed-shape batches) | rows differing, "
        f"1 vs 2 threads (short last batch) | max relative difference under {names} |"
    )
    print("|---|---:|---:|---|")
    print("\n".join(table_b) + "\n")
    if table_c:
        print("## C. Random twins: train features abs mean / median dim std / near-constant dims\n")
        print("| model | batch-norm statistics | scale |\n|---|---|---|")
        print("\n".join(table_c) + "\n")
    print(f"## D. Protocol results: default kernels, then {names}\n")
    print("| features | protocol | values | spread |\n|---|---|---|---:|")
    print("\n".join(table_d) + "\n")
    print("## E. Lower precision on a probe batch of 16 test images (init statistics)\n")
    print("| model | precision | all-zero rows | non-finite rows | relative error | used |")
    print("|---|---|---:|---:|---:|---|")
    print("\n".join(_precision_rows(args.models, dataset, size)))
    (scratch / "summary.json").write_text(json.dumps({"dataset": dataset, "size": size}))


if __name__ == "__main__":
    main()
