"""Weighted k-nearest-neighbour classification on frozen features.

The common self-supervised evaluation (Wu et al. 2018, InstDisc; Caron et al. 2021, DINO):
features are L2-normalised; each test image's ``k`` most cosine-similar images of the
memory bank vote with weight ``exp(similarity / T)`` (``T = 0.07``); a class's score is
the sum of its voters' weights. Defaults: ``k`` in (20, 200) with 20 primary (DINO reports
20, InstDisc 200), ``T = 0.07``. The memory bank is train+val (no hyperparameter is chosen
on validation, so it joins the bank as in the linear probe's refit), the queries are the
test split.

The class scores are normalised to probabilities, so ROC AUC and every other metric come
from :func:`harness.protocols.metrics.compute_metrics` with the task's metrics, as for the linear
probe. Weights are computed as ``exp((s - s_max) / T)`` with ``s_max`` each query's top
similarity: the per-query factor cancels in the normalisation and keeps the exponential
finite when ``normalize=False`` (raw dot products). Multilabel tasks score each label as
the weighted mean of the neighbours' 0/1 values (the same formula with one-hot labels
gives the class probabilities of single-label tasks).

A ``k`` larger than the memory bank is clamped to its size; the clamp is recorded in
``details["effective_k"]`` and ``details["clamped_k"]``. A single-label class with no image
in the memory bank is an error naming the dataset, the bank's splits and the class: no
neighbour could ever vote for it, and its metrics would be silently meaningless (a binary
task scored 0.5).

Peer settings (``KnnConfig``, presets in :mod:`harness.protocols.knn_presets`): ``bank``
"train" keeps val out of the memory bank; ``softmax_scores`` passes the normalised class
scores through a softmax before the metrics; ``round_metrics`` rounds the reported values.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from harness.config.profiles import check_profile
from harness.protocols.base import ProtocolResult, SplitFeatures, TaskInfo
from harness.protocols.inputs import check_split
from harness.protocols.metrics import (
    check_metric_names,
    compute_metrics_with_notes,
)
from harness.protocols.registry import register_protocol

if TYPE_CHECKING:
    from harness.protocols.case import CaseRun

VERSION = 1
_BANKS = ("train+val", "train")


@dataclass(frozen=True)
class KnnConfig:
    """Settings of the k-NN protocol.

    Attributes:
        ks: Neighbour counts to score; every one is reported in the details.
        temperature: T of the vote weights ``exp(similarity / T)``.
        primary_k: The ``k`` whose metrics are the case's metrics; must be in ``ks``.
        normalize: L2-normalise bank and query features (cosine similarity). False uses
            raw dot products.
        batch_size: Queries per block of the similarity matrix (memory: batch x bank).
        bank: The memory bank's splits: "train+val" or "train".
        softmax_scores: Apply a softmax to each query's normalised class scores before the
            metrics (feature-reuse's metric class applies ``Softmax(dim=1)`` to them; it
            moves multiclass ROC AUC, not the argmax).
        round_metrics: Round the reported metrics to this many decimals, or None.
    """

    ks: tuple[int, ...] = (20, 200)
    temperature: float = 0.07
    primary_k: int = 20
    normalize: bool = True
    batch_size: int = 1024
    bank: str = "train+val"
    softmax_scores: bool = False
    round_metrics: int | None = None

    def __post_init__(self) -> None:
        ks = tuple(int(k) for k in self.ks)
        if not ks or any(k < 1 for k in ks) or len(set(ks)) != len(ks):
            raise ValueError(f"KnnConfig.ks must be distinct positive integers, got {self.ks}")
        object.__setattr__(self, "ks", ks)
        if self.primary_k not in ks:
            raise ValueError(f"KnnConfig.primary_k={self.primary_k} must be one of ks={ks}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"KnnConfig.temperature must be > 0, got {self.temperature}")
        if self.batch_size < 1:
            raise ValueError(f"KnnConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.bank not in _BANKS:
            raise ValueError(f"KnnConfig.bank must be one of {_BANKS}, got {self.bank!r}")
        if self.round_metrics is not None and self.round_metrics < 0:
            raise ValueError(f"KnnConfig.round_metrics must be >= 0, got {self.round_metrics}")

    @classmethod
    def for_profile(cls, profile: str) -> KnnConfig:
        """The configuration of a run profile (the same defaults for every profile).

        kNN costs one similarity matrix, so no profile needs to scale it down; on the
        smoke subsets ``k = 200`` is clamped to the bank size and recorded.

        Args:
            profile: "smoke", "demo" or "paper".

        Returns:
            The profile's configuration.

        Raises:
            ValueError: On an unknown profile.
        """
        check_profile(profile)
        return cls()

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-friendly dict (``ks`` as a list).

        Returns:
            Field name -> value.
        """
        out = asdict(self)
        out["ks"] = list(self.ks)
        return out


def run(
    train: SplitFeatures,
    val: SplitFeatures,
    test: SplitFeatures,
    task: TaskInfo,
    config: KnnConfig,
    dataset: str = "",
) -> ProtocolResult:
    """Classify the test split by weighted votes of its nearest train+val neighbours.

    Args:
        train: Memory-bank features and labels.
        val: More memory-bank features and labels (appended to train).
        test: Query features and labels, scored with all ``task.metrics``.
        task: Task type, number of classes and metrics.
        config: Neighbour counts, temperature and batching.
        dataset: The dataset's name, for error messages.

    Returns:
        ``metrics``: test metrics at ``primary_k``. ``hyperparameters``: ``k`` (effective
        primary k) and ``temperature``. ``details``: ``metrics_per_k`` and
        ``metric_notes_per_k`` (keyed by the configured k as a string), ``effective_k``,
        ``clamped_k``, ``n_bank``, ``n_test``, ``normalize`` and timings.

    Raises:
        ValueError: On malformed inputs; the message names the split at fault. Also when
            a class has no image in the memory bank (naming the dataset and the class).
    """
    check_metric_names(task.task, (task.primary_metric, *task.metrics))
    x_train, y_train = check_split("train split", train, task)
    x_val, y_val = check_split("val split", val, task, x_train.shape[1])
    x_test, y_test = check_split("test split", test, task, x_train.shape[1])
    if config.bank == "train":
        bank, bank_labels = x_train, y_train
    else:
        bank = np.concatenate([x_train, x_val])
        bank_labels = np.concatenate([y_train, y_val])
    check_bank_classes(bank_labels, task, config.bank, dataset)

    started = time.perf_counter()
    effective = {k: min(k, len(bank)) for k in config.ks}
    scores = knn_scores(bank, bank_labels, x_test, task, config)
    knn_seconds = time.perf_counter() - started

    metrics_per_k: dict[str, dict[str, float]] = {}
    notes_per_k: dict[str, dict[str, Any]] = {}
    for k in config.ks:
        probs = scores[k]
        if config.softmax_scores:
            probs = torch.softmax(torch.as_tensor(probs), dim=1).numpy()
        metrics, notes = compute_metrics_with_notes(task.task, y_test, probs, task.metrics)
        if config.round_metrics is not None:
            metrics = {m: round(v, config.round_metrics) for m, v in metrics.items()}
        metrics_per_k[str(k)] = metrics
        notes_per_k[str(k)] = notes
    return ProtocolResult(
        metrics=dict(metrics_per_k[str(config.primary_k)]),
        hyperparameters={"k": effective[config.primary_k], "temperature": config.temperature},
        details={
            "metrics_per_k": metrics_per_k,
            "metric_notes_per_k": notes_per_k,
            "metric_notes": notes_per_k[str(config.primary_k)],
            "effective_k": {str(k): v for k, v in effective.items()},
            "clamped_k": [k for k in config.ks if effective[k] != k],
            "n_bank": len(bank),
            "n_test": len(x_test),
            "normalize": config.normalize,
            "bank": config.bank,
            "softmax_scores": config.softmax_scores,
            "similarity": "cosine" if config.normalize else "dot product",
            "knn_seconds": knn_seconds,
        },
    )


def check_bank_classes(labels: np.ndarray, task: TaskInfo, bank: str, dataset: str) -> None:
    """Raise when a single-label class has no image in the memory bank.

    Args:
        labels: The bank's class ids.
        task: Task facts.
        bank: The bank's splits (for the message).
        dataset: The dataset's name (for the message).

    Raises:
        ValueError: Naming the dataset, the bank's splits and the missing classes.
    """
    if task.task == "multilabel":
        return
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=task.num_classes)
    missing = np.flatnonzero(counts == 0).tolist()
    if missing:
        where = f"dataset {dataset!r}" if dataset else "the dataset"
        raise ValueError(
            f"k-NN on {where}: class(es) {missing} have no image in the {bank} memory bank "
            f"(class counts {counts.tolist()}); no neighbour can vote for them, so the "
            "metrics would be meaningless. Use a split with every class in train."
        )


def knn_scores(
    bank: np.ndarray,
    bank_labels: np.ndarray,
    queries: np.ndarray,
    task: TaskInfo,
    config: KnnConfig,
) -> dict[int, np.ndarray]:
    """Class probabilities of every query for every configured k (clamped to the bank).

    Args:
        bank: (N, D) memory-bank features.
        bank_labels: (N,) class ids, or (N, C) 0/1 for multilabel tasks.
        queries: (M, D) query features.
        task: Task facts (``task`` and ``num_classes``).
        config: Neighbour counts, temperature, normalisation and block size.

    Returns:
        Configured k -> float64 (M, C) probabilities (rows sum to 1 for single-label
        tasks; per-label probabilities for multilabel).
    """
    bank_t = torch.as_tensor(np.asarray(bank), dtype=torch.float64)
    query_t = torch.as_tensor(np.asarray(queries), dtype=torch.float64)
    if config.normalize:
        bank_t = torch.nn.functional.normalize(bank_t, dim=1)
        query_t = torch.nn.functional.normalize(query_t, dim=1)
    labels = torch.as_tensor(np.asarray(bank_labels), dtype=torch.int64)
    if task.task == "multilabel":
        targets = labels.to(torch.float64)
    else:
        targets = torch.nn.functional.one_hot(labels, task.num_classes).to(torch.float64)
    k_max = min(max(config.ks), bank_t.shape[0])
    out: dict[int, list[torch.Tensor]] = {k: [] for k in config.ks}
    with torch.inference_mode():
        for start in range(0, query_t.shape[0], config.batch_size):
            similarity = query_t[start : start + config.batch_size] @ bank_t.T  # (B, N)
            top, index = similarity.topk(k_max, dim=1)  # sorted, most similar first
            weights = torch.exp((top - top[:, :1]) / config.temperature)
            votes = weights[:, :, None] * targets[index]  # (B, k_max, C)
            for k in config.ks:
                kk = min(k, k_max)
                summed = votes[:, :kk].sum(dim=1)
                out[k].append(summed / weights[:, :kk].sum(dim=1, keepdim=True))
    return {k: torch.cat(parts).numpy() for k, parts in out.items()}


@register_protocol(
    "knn",
    version=VERSION,
    marker="k-nearest-neighbour benchmark cases (weighted cosine votes on frozen features)",
    config=KnnConfig,
)
def run_case(case: CaseRun, config: KnnConfig) -> ProtocolResult:
    """One k-NN case: the memory bank (train+val, or train) votes for the test split."""
    features = case.features()
    return run(
        features["train"],
        features["val"],
        features["test"],
        case.task,
        config,
        dataset=case.case.dataset.name,
    )
