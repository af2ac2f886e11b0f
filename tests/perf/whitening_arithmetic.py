"""How far the peers' float32 whitening moves the invariance cosines on real features.

SSL_medicalimaging's invariance scripts whiten with the float32 Cholesky factor of the
float64 inverse covariance (``whitening="float32-cholesky"``, the presets' version 3);
medxfer's default uses a float64 eigendecomposition. Both define the same cosine in exact
arithmetic. This script measures the difference on the demo suite's cached features: per
feature set, the train+val+test pool (the peers' ``ConcatDataset``), the peers' covariance
rows (``max(1000, 10%)`` drawn with replacement from pools of 1000 or more, else all), and
100 seeded pairs of two different pooled images. It prints a markdown table:

    MEDXFER_HOME=<home of a demo run> .venv/bin/python tests/perf/whitening_arithmetic.py

Columns: condition number of ``Sigma + 1e-6 I``, the largest per-pair change of the
cosine, the change of the mean over the 100 pairs, and whether the peers' factor exists
(where it does not, their script stops and medxfer falls back to float64).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from linear_sweep import real_feature_sets

from harness.protocols.invariance_sampling import legacy_cov_indices
from harness.protocols.whitening import feature_stats, similarity


def compare(pool: np.ndarray, pairs: int = 100, seed: int = 0) -> dict[str, float | str]:
    """Both arithmetics on one pooled feature set (the peers' covariance draw)."""
    cov = pool[legacy_cov_indices(len(pool), 1000, 0.1, seed)]
    exact = feature_stats(cov, 1e-6)
    peer = feature_stats(cov, 1e-6, "float32-cholesky")
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(pool), pairs)
    second = (first + rng.integers(1, len(pool), pairs)) % len(pool)
    a, _ = similarity(pool[first], pool[second], exact)
    b, _ = similarity(pool[first], pool[second], peer)
    eigenvalues = exact["eigenvalues"]
    return {
        "condition": float((eigenvalues.max() + 1e-6) / (eigenvalues.min() + 1e-6)),
        "max_pair": float(np.abs(a - b).max()),
        "mean": float(abs(a.mean() - b.mean())),
        "factor": "exists" if str(peer["arithmetic"]) == "float32-cholesky" else "fails",
    }


def main() -> None:
    print(
        "| feature set | pool | condition | max per-pair change | change of the mean | peers' factor |"
    )
    print("|---|---:|---:|---:|---:|---|")
    for name, splits, _ in real_feature_sets([]):
        pool = np.concatenate([split.features for split in splits]).astype(np.float32)
        row = compare(pool)
        print(
            f"| {name} | {len(pool)} | {row['condition']:.2g} | {row['max_pair']:.1e} "
            f"| {row['mean']:.1e} | {row['factor']} |"
        )


if __name__ == "__main__":
    main()
