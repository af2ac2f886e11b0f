"""Few-shot evaluation two ways: features extracted once vs a backbone forward per episode.

Runs the SAME episodes (``harness.protocols.episodes.sample_episodes``, one seed) with the
same ProtoNet maths (``episodes.protonet_predict``) two ways, side by side in one process:

(a) harness: ``harness.features.extract`` runs the backbone once over the whole pool,
    then every episode is a gather from the feature matrix (``episodes.predict_episodes``);
(b) peers (ssl-transfer / SSL_medicalimaging ``few_shot.py``): for every episode the
    backbone runs on that episode's support + query images (one batch per episode, as
    their episodic data loader), then ProtoNet on those features.

Both paths use ``extract`` (same transform, fp32 on CPU, channels_last, inference mode).
Their features agree up to float32 rounding (oneDNN may pick other kernels for another
batch shape); the script reports the largest difference, checks that every query gets
the same prediction and the mean accuracies agree to 1e-6, and exits non-zero otherwise.
Path (a) is timed with a cold extraction, i.e. a feature-cache miss; a cache hit would
only load the ``.npz``. Timings use one torch thread by default (``--threads``): on a
shared 2-core machine two OpenMP threads per process slowed both paths ~10x.

    .venv/bin/python tests/perf/fewshot_cached_vs_per_episode.py
    .venv/bin/python tests/perf/fewshot_cached_vs_per_episode.py --episodes 600 \\
        --input-size 64 --n-shot 20 --n-query 15

``--per-episode-limit N`` runs path (b) on the first N episodes only and extrapolates its
time linearly to all episodes (said so in the output; equality is checked on those N).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from harness.config.cards import get_dataset_card, get_model_card
from harness.features import extract
from harness.protocols import episodes as protonet
from harness.protocols import fewshot
from harness.zoo import build_model


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2.tv_in1k_pip", help="model card name")
    parser.add_argument("--dataset", default="demo_modality", help="dataset card name")
    parser.add_argument("--input-size", type=int, default=64, help="backbone input size (px)")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--n-way", type=int, default=None, help="default: the dataset card's")
    parser.add_argument("--n-shot", type=int, default=5)
    parser.add_argument("--n-query", type=int, default=5)
    parser.add_argument("--pool", default="train+test", choices=tuple(fewshot.POOLS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64, help="extraction batch of (a)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both paths (default 1: steady timings on a shared machine; "
        "0 keeps torch's default)",
    )
    parser.add_argument(
        "--per-episode-limit",
        type=int,
        default=None,
        help="run path (b) on this many episodes only and extrapolate its time",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser.parse_args(argv)


def _synthetic_pool(n_classes: int, per_class: int, size: int, seed: int):
    """Deterministic uint8 textures: class c is a grating of frequency c+1 plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images, labels = [], []
    for c in range(n_classes):
        for _ in range(per_class):
            angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
            wave = np.sin(2 * np.pi * (c + 1) * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
            image = 128 + 60 * wave + rng.normal(0, 25, size=(size, size))
            images.append(np.clip(image, 0, 255).astype(np.uint8))
            labels.append(c)
    return np.stack(images), np.array(labels), None


def _load_pool(dataset: str, pool: str):
    """Pool images and labels of a dataset card, or a synthetic set if it cannot be built."""
    try:
        from harness.data.prepare import load_splits

        card = get_dataset_card(dataset)
        splits = load_splits(card)
        names = fewshot.pool_splits(pool)
        images = np.concatenate([splits[name].images for name in names])
        labels = np.concatenate([splits[name].labels for name in names])
        return images, labels, card.fewshot.get("n_way"), f"{dataset} ({pool})"
    except Exception as exc:  # no pip-shipped images: fall back, and say so
        print(f"[dataset {dataset!r} unavailable ({exc}); using synthetic gratings]")
        images, labels, _ = _synthetic_pool(5, 180, 64, seed=0)
        return images, labels, 5, "synthetic gratings (5 x 180, 64 px)"


def _load_model(name: str):
    try:
        return build_model(get_model_card(name)), name
    except Exception as exc:
        print(f"[model {name!r} unavailable ({exc}); using mobilenet_v2.random]")
        return build_model(get_model_card("mobilenet_v2.random")), "mobilenet_v2.random"


def _clocks() -> np.ndarray:
    """Wall-clock and process CPU seconds (CPU time is steadier on a shared machine)."""
    return np.array([time.perf_counter(), time.process_time()])


def main(argv: list[str] | None = None) -> int:
    """Run both paths, check they agree, print the timing table.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        Exit status: 0 when both paths agree, 1 otherwise.
    """
    args = _parse(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    images, labels, card_way, pool_name = _load_pool(args.dataset, args.pool)
    loaded, model_name = _load_model(args.model)
    module = loaded.module
    pre = loaded.card.preprocessing.with_input_size(args.input_size)
    n_way = args.n_way or card_way or min(5, len(np.unique(labels)))
    n_shot, n_query, n_episodes = args.n_shot, args.n_query, args.episodes
    per_episode = n_way * (n_shot + n_query)
    limit = (
        n_episodes if args.per_episode_limit is None else min(args.per_episode_limit, n_episodes)
    )
    load_before = os.getloadavg()

    # Warm-up: oneDNN builds its kernels on the first forward of each batch shape.
    extract(module, images[: args.batch_size], pre, device, args.batch_size)
    extract(module, images[:per_episode], pre, device, per_episode)

    # (a) harness: one forward over the pool, then all episodes batched. Run before and
    # after (b) and averaged: the load on a shared machine drifts during a long run.
    def harness_path() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        clocks = [_clocks()]
        pool_features = extract(module, images, pre, device, args.batch_size)
        clocks.append(_clocks())
        drawn = protonet.sample_episodes(labels, n_way, n_shot, n_query, n_episodes, args.seed)
        clocks.append(_clocks())
        predictions = protonet.predict_episodes(pool_features, drawn, n_shot)
        clocks.append(_clocks())
        return pool_features, predictions, np.diff(np.array(clocks), axis=0)  # (step, clock)

    features, cached_pred, steps_before = harness_path()
    cached_acc = protonet.episode_accuracies(cached_pred)

    # (b) peers: the backbone on every episode's images, then ProtoNet on that episode.
    per_episode_pred = np.empty((limit, *cached_pred.shape[1:]), dtype=np.int64)
    feature_diff = 0.0
    started = _clocks()
    episodes = protonet.sample_episodes(labels, n_way, n_shot, n_query, n_episodes, args.seed)
    for e in range(limit):
        index = episodes[e].ravel()
        episode_features = extract(module, images[index], pre, device, per_episode)
        shaped = torch.from_numpy(episode_features).reshape(1, n_way, n_shot + n_query, -1)
        with torch.inference_mode():
            per_episode_pred[e] = protonet.protonet_predict(shaped, n_shot)[0].numpy()
        feature_diff = max(feature_diff, float(np.abs(episode_features - features[index]).max()))
        if (e + 1) % max(1, limit // 10) == 0:
            elapsed = time.perf_counter() - started[0]
            print(f"  (b) {e + 1}/{limit} episodes, {elapsed:.0f} s", file=sys.stderr, flush=True)
    # wall and CPU seconds of (b), scaled to all episodes when only `limit` ran
    per_episode_s = (_clocks() - started) * n_episodes / limit
    per_episode_acc = protonet.episode_accuracies(per_episode_pred)
    features_again, cached_pred_again, steps_after = harness_path()
    load_after = os.getloadavg()
    repeatable = np.array_equal(features_again, features) and np.array_equal(
        cached_pred_again, cached_pred
    )
    steps = (steps_before + steps_after) / 2  # (extract, sample, protonet) x (wall, cpu)
    cached_s = steps.sum(axis=0)
    cached_runs = [float(steps_before[:, 0].sum()), float(steps_after[:, 0].sum())]

    same_predictions = bool(np.array_equal(per_episode_pred, cached_pred[:limit]))
    mismatched_queries = int(np.sum(per_episode_pred != cached_pred[:limit]))
    mean_a, ci_a = protonet.summarize(cached_acc)
    mean_b, ci_b = protonet.summarize(per_episode_acc)
    mean_a_subset = float(cached_acc[:limit].mean())
    agree = same_predictions and abs(mean_b - mean_a_subset) <= 1e-6 and repeatable

    extrapolated = limit < n_episodes
    note = f" (measured on {limit} episodes, EXTRAPOLATED x{n_episodes / limit:g})"
    print(
        f"\nFew-shot, cached features vs per-episode forward: {model_name} @ {args.input_size} px "
        f"on {pool_name}, {len(images)} pool images\n"
        f"{n_episodes} episodes, {n_way}-way {n_shot}-shot {n_query}-query "
        f"({per_episode} images per episode), seed {args.seed}, CPU fp32, "
        f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cores, "
        f"load avg {load_before[0]:.2f} -> {load_after[0]:.2f}\n"
    )
    print(
        "| path | backbone forwards | wall (s) | CPU (s) | wall per episode (ms) "
        "| accuracy ± CI95 |"
    )
    print("|---|---:|---:|---:|---:|---|")
    print(
        f"| (a) harness: extract pool once + batched episodes | {len(images)} "
        f"| {cached_s[0]:.2f} | {cached_s[1]:.2f} | {1e3 * cached_s[0] / n_episodes:.2f} "
        f"| {mean_a:.4f} ± {ci_a:.4f} |"
    )
    print(
        f"| (b) peers: forward per episode{note if extrapolated else ''} "
        f"| {per_episode * n_episodes} | {per_episode_s[0]:.2f} | {per_episode_s[1]:.2f} "
        f"| {1e3 * per_episode_s[0] / n_episodes:.2f} "
        f"| {mean_b:.4f} ± {ci_b:.4f}{' (subset)' if extrapolated else ''} |"
    )
    speedup = per_episode_s / cached_s
    print(
        f"\nspeed-up (b)/(a): {speedup[0]:.1f}x wall, {speedup[1]:.1f}x CPU time   "
        f"[(a) wall = extraction {steps[0, 0]:.2f} s + sampling {steps[1, 0]:.3f} s + "
        f"ProtoNet {steps[2, 0]:.3f} s; mean of the runs before and after (b): "
        f"{cached_runs[0]:.2f} s, {cached_runs[1]:.2f} s; repeatable: {repeatable}]"
    )
    print(
        f"agreement on {limit} episodes: predictions identical: {same_predictions} "
        f"({mismatched_queries} of {per_episode_pred.size} queries differ); mean accuracy "
        f"{mean_b:.10f} vs {mean_a_subset:.10f}; max |feature diff| {feature_diff:.3g}"
    )
    figures = {
        "model": model_name,
        "pool": pool_name,
        "pool_images": len(images),
        "input_size": args.input_size,
        "episodes": n_episodes,
        "n_way": n_way,
        "n_shot": n_shot,
        "n_query": n_query,
        "per_episode_measured_episodes": limit,
        "extrapolated": extrapolated,
        "cached_wall_s": float(cached_s[0]),
        "cached_cpu_s": float(cached_s[1]),
        "cached_runs_wall_s": cached_runs,
        "cached_extract_wall_s": float(steps[0, 0]),
        "cached_sample_wall_s": float(steps[1, 0]),
        "cached_protonet_wall_s": float(steps[2, 0]),
        "per_episode_wall_s": float(per_episode_s[0]),
        "per_episode_cpu_s": float(per_episode_s[1]),
        "speedup_wall": float(speedup[0]),
        "speedup_cpu": float(speedup[1]),
        "accuracy_cached": mean_a,
        "ci95_cached": ci_a,
        "accuracy_per_episode": mean_b,
        "predictions_identical": same_predictions,
        "max_feature_diff": feature_diff,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg": [load_before[0], load_after[0]],
    }
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    if not agree:
        print("MISMATCH: the two paths disagree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
