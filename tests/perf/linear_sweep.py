"""Linear probe: the default's C sweep against the peers' procedure on the same features.

For every feature set the script runs, side by side in one process, single-threaded:

* ``peer``: the ``ssl-transfer`` preset of ``linear`` (linusericsson/ssl-transfer@416913f:
  linear.py: raw features, one warm-started scikit-learn lbfgs estimator, max_iter 100,
  over C = 1/logspace(-6, 5, 45) from 1e6 down and into the refit, first strict best);
* ``default``: ``LinearConfig.for_profile("paper")`` (45 C values, the path solver of
  :mod:`harness.protocols.linear_path`);
* ``default std``: the default with ``standardize`` flipped (the evidence on
  standardisation), and optionally (``--old``) the previous default (standardised
  features, one fresh scikit-learn lbfgs fit per C: ``solver="sklearn"``);
* ``default on cuda`` (``--devices cuda``): the default with the path solver's passes
  over the data on the GPU (:mod:`harness.protocols.linear_path_torch`). The other rows
  run on the CPU whatever the machine has.

It prints one markdown table: features, shape, procedure, wall and CPU seconds, the
peer / procedure ratios of CPU seconds (less sensitive than wall time to other jobs on a
shared machine) and of wall seconds (the one that counts for a GPU row), test accuracy
and the selected C.

Synthetic features (``--shapes NxD``; reproducible from the seed alone). They imitate
pooled activations of a pretrained network: 5 classes, balanced; a latent code
``z = m[y] + N(0, I_64)`` with class means ``m ~ N(0, sep^2 I_64)`` (``--sep``, default
0.12), mixed into ``D`` dimensions ``h = z A + 0.7 N(0, I_D) - 0.5`` with
``A ~ N(0, I/64)``, passed through a softplus ``log(1 + exp(2 h)) / 2`` (non-negative,
heavy right tail, like post-activation averages), and each dimension multiplied by its
own log-normal scale ``exp(N(0, 1))`` (pretrained features differ in scale per
dimension). The N rows are shuffled and split 60 / 20 / 20 into train / val / test.

Real features (``--real``): the demo suite's linear cases (embedded models on the demo
datasets), through ``CaseRun.features`` (the feature cache of ``MEDXFER_HOME``; a first
run extracts them).

    .venv/bin/python tests/perf/linear_sweep.py
    .venv/bin/python tests/perf/linear_sweep.py --shapes 10000x1280 10000x2048 --real
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from harness.protocols.base import SplitFeatures, TaskInfo
from harness.protocols.linear import LinearConfig, run
from harness.protocols.linear_presets import peer_linear_config

Splits = tuple[SplitFeatures, SplitFeatures, SplitFeatures]


def synthetic(n: int, d: int, seed: int = 0, sep: float = 0.12, k: int = 5) -> Splits:
    """Pretrained-like features of ``k`` classes (see the module docstring).

    Args:
        n: Rows in all (split 60 / 20 / 20).
        d: Dimensions.
        seed: Seed of every draw.
        sep: Standard deviation of the class means in the 64-d latent space.
        k: Number of classes.

    Returns:
        (train, val, test), float32 features.
    """
    rng = np.random.default_rng(seed)
    rank = 64
    labels = rng.permutation(np.arange(n) % k)
    means = sep * rng.normal(size=(k, rank))
    latent = means[labels] + rng.normal(size=(n, rank))
    mixing = rng.normal(size=(rank, d)) / np.sqrt(rank)
    hidden = latent @ mixing + 0.7 * rng.normal(size=(n, d)) - 0.5
    features = np.logaddexp(0.0, 2.0 * hidden) / 2.0 * np.exp(rng.normal(size=d))
    features = features.astype(np.float32)
    a, b = int(0.6 * n), int(0.8 * n)
    return tuple(  # type: ignore[return-value]
        SplitFeatures(features[s], labels[s]) for s in (slice(0, a), slice(a, b), slice(b, n))
    )


def real_feature_sets(
    models: list[str], suite: str = "demo"
) -> Iterator[tuple[str, Splits, TaskInfo]]:
    """A suite's linear cases (the demo suite's by default): (name, splits, task)."""
    from harness.config.suites import load_suite
    from harness.protocols.case import CaseRun

    results = Path(tempfile.mkdtemp(prefix="medxfer-linear-sweep-"))
    for case in load_suite(suite).cases():
        if case.protocol != "linear" or (models and case.model.name not in models):
            continue
        case_run = CaseRun(case, results, device="cpu")
        features = case_run.features()
        splits = (features["train"], features["val"], features["test"])
        yield f"{case.model.name} / {case.dataset.name}", splits, case_run.task


def timed(splits: Splits, task: TaskInfo, config: LinearConfig) -> tuple[float, float, object]:
    """(wall s, CPU s, result) of one ``linear.run``."""
    wall, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run(*splits, task, config)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def rows(
    name: str,
    splits: Splits,
    task: TaskInfo,
    old: bool,
    devices: tuple[str, ...] = (),
    only_default: bool = False,
) -> list[str]:
    """Markdown rows of one feature set.

    ``devices``: also the default on each of them; ``only_default``: leave out the peer and
    the standardisation rows (the ratios are then to the default on the CPU).
    """
    default = dataclasses.replace(LinearConfig.for_profile("paper"), device="cpu")
    procedures = [
        ("peer (ssl-transfer)", peer_linear_config(task.task, task.primary_metric, "ssl")),
        ("default", default),
        (
            f"default, standardize={not default.standardize}",
            dataclasses.replace(default, standardize=not default.standardize),
        ),
    ]
    if old:
        procedures.append(
            (
                "previous default (sklearn, standardised)",
                dataclasses.replace(default, solver="sklearn", standardize=True),
            )
        )
    if only_default:
        procedures = [("default", default)]
    for device in devices:
        procedures.append((f"default on {device}", dataclasses.replace(default, device=device)))
    shape = "x".join(str(v) for v in splits[0].features.shape)
    out: list[str] = []
    peer_wall = peer_cpu = None
    for label, config in procedures:
        wall, cpu, result = timed(splits, task, config)
        peer_cpu = cpu if peer_cpu is None else peer_cpu
        peer_wall = wall if peer_wall is None else peer_wall
        metric = task.primary_metric
        out.append(
            f"| {name} | {shape} | {label} | {wall:.2f} | {cpu:.2f} | {peer_cpu / cpu:.1f}x | "
            f"{peer_wall / wall:.1f}x | "
            f"{result.metrics['accuracy']:.4f} | {result.metrics[metric]:.4f} ({metric}) | "
            f"{result.hyperparameters['C']:.3g} |"
        )
        print(out[-1], file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="*", default=["10000x1280", "10000x2048"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sep", type=float, default=0.12)
    parser.add_argument("--real", action="store_true", help="also the demo suite's features")
    parser.add_argument("--models", nargs="*", default=[], help="real: only these models")
    parser.add_argument("--old", action="store_true", help="also the previous default")
    parser.add_argument(
        "--devices", nargs="*", default=[], help="also the default's path solver on these (cuda)"
    )
    parser.add_argument(
        "--only-default", action="store_true", help="no peer / standardisation rows"
    )
    args = parser.parse_args(argv)

    sets: list[tuple[str, Splits, TaskInfo]] = []
    task = TaskInfo("multiclass", 5, "accuracy", ("accuracy",))
    for shape in args.shapes:
        n, d = (int(v) for v in shape.lower().split("x"))
        sets.append((f"synthetic seed {args.seed}", synthetic(n, d, args.seed, args.sep), task))
    lines = [
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores; "
        "one BLAS thread (linear.run's own limit)",
        "",
        "| features | train shape | procedure | wall (s) | CPU (s) | peer/this (CPU) | "
        "peer/this (wall) | test accuracy | primary | selected C |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)
    for name, splits, task_info in sets:
        lines += rows(name, splits, task_info, args.old, tuple(args.devices), args.only_default)
    if args.real:
        for name, splits, task_info in real_feature_sets(args.models):
            lines += rows(name, splits, task_info, args.old, tuple(args.devices), args.only_default)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
