"""Few-shot episodes: seeded sampling from a pool, prototypical-network prediction, scoring.

Episode sampling is medxfer's own (learn2learn does not build on Python 3.11): classes
without replacement within an episode, images of a class without replacement within an
episode, independent draws across episodes, as the peers' samplers. Prediction gathers
every episode from the cached feature matrix instead of running the backbone per episode.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from harness.protocols.metrics import is_integer_valued

# Upper bound on the float64 gathered features (episodes, W, S+Q, D) of one chunk.
_CHUNK_BYTES = 128 * 2**20


def sample_episodes(
    labels: np.ndarray, n_way: int, n_shot: int, n_query: int, episodes: int, seed: int
) -> np.ndarray:
    """Draw few-shot episodes as indices into the pool.

    Per episode, ``n_way`` distinct classes are drawn uniformly from the classes present in
    ``labels`` (in random order: way ``j`` is the ``j``-th drawn class), then ``n_shot +
    n_query`` distinct images of each; the first ``n_shot`` are the support set, the rest
    the queries. Episodes are independent, so images recur across episodes.

    Args:
        labels: Integer class ids (N,) of the pool.
        n_way: Classes per episode.
        n_shot: Support images per class.
        n_query: Query images per class.
        episodes: Number of episodes.
        seed: Seed of ``numpy.random.default_rng``; the same seed gives the same episodes.

    Returns:
        int64 array (episodes, n_way, n_shot + n_query) of row indices into the pool.

    Raises:
        ValueError: When fewer than ``n_way`` classes are present, or a present class has
            fewer than ``n_shot + n_query`` images (the message names the class).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not is_integer_valued(labels):
        raise ValueError(f"labels must be 1-D integer class ids, got {labels.dtype} {labels.shape}")
    per_episode = n_shot + n_query
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < n_way:
        raise ValueError(f"{n_way}-way episodes need {n_way} classes, the pool has {len(classes)}")
    small = [(int(c), int(n)) for c, n in zip(classes, counts, strict=True) if n < per_episode]
    if small:
        raise ValueError(small_class_message(small, n_shot, n_query))
    members = [np.flatnonzero(labels == c) for c in classes]
    rng = np.random.default_rng(seed)
    out = np.empty((episodes, n_way, per_episode), dtype=np.int64)
    for e in range(episodes):
        for j, c in enumerate(rng.choice(len(classes), size=n_way, replace=False)):
            out[e, j] = rng.choice(members[c], size=per_episode, replace=False)
    return out


def protonet_predict(episode_features: torch.Tensor, n_shot: int) -> torch.Tensor:
    """Classify the queries of a batch of episodes by their nearest class prototype.

    Args:
        episode_features: (E, W, S + Q, D) features (computed in float64); along the
            third axis the first ``n_shot`` rows of each class are its support set, the
            rest its queries.
        n_shot: Support images per class (S).

    Returns:
        int64 tensor (E, W, Q): the predicted way of every query (the true way of query
        ``[e, j, q]`` is ``j``). Ties go to the lowest way index.
    """
    episode_features = episode_features.to(torch.float64)
    n_episodes, n_way, per_class, _ = episode_features.shape
    prototypes = episode_features[:, :, :n_shot].mean(dim=2)  # (E, W, D)
    queries = episode_features[:, :, n_shot:].reshape(n_episodes, n_way * (per_class - n_shot), -1)
    # Pairwise differences, as the peers' euclidean_dist (the |q|^2 - 2qp + |p|^2 matmul
    # expansion cancels badly for features far from the origin), without materialising
    # the (E, W*Q, W, D) difference tensor. The argmin of the Euclidean distance is the
    # argmin of its square.
    distances = torch.cdist(queries, prototypes, compute_mode="donot_use_mm_for_euclid_dist")
    return distances.argmin(dim=-1).reshape(n_episodes, n_way, per_class - n_shot)


def predict_episodes(
    features: np.ndarray | torch.Tensor, episodes: np.ndarray, n_shot: int
) -> np.ndarray:
    """Run ProtoNet on every episode, gathering episodes from the feature matrix in chunks.

    Args:
        features: (N, D) pool features.
        episodes: (E, W, S + Q) indices into ``features`` (see :func:`sample_episodes`).
        n_shot: Support images per class.

    Returns:
        int64 array (E, W, Q) of predicted ways.
    """
    bank = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    index = torch.as_tensor(np.asarray(episodes), dtype=torch.int64)
    n_episodes, n_way, per_class = index.shape
    per_episode_bytes = 8 * n_way * per_class * bank.shape[1]
    chunk = max(1, _CHUNK_BYTES // max(1, per_episode_bytes))
    out = []
    with torch.inference_mode():
        for start in range(0, n_episodes, chunk):
            gathered = bank[index[start : start + chunk]]  # (e, W, S+Q, D)
            out.append(protonet_predict(gathered, n_shot))
    return torch.cat(out).numpy()


def episode_accuracies(predictions: np.ndarray) -> np.ndarray:
    """Per-episode accuracy of ProtoNet predictions.

    Args:
        predictions: (E, W, Q) predicted ways, as from :func:`predict_episodes`.

    Returns:
        float64 array (E,): the fraction of each episode's queries predicted right.
    """
    predictions = np.asarray(predictions)
    truth = np.arange(predictions.shape[1])[None, :, None]
    return (predictions == truth).mean(axis=(1, 2), dtype=np.float64)


def summarize(accuracies: np.ndarray) -> tuple[float, float]:
    """Mean episode accuracy and the peers' 95% interval half-width.

    Args:
        accuracies: (E,) per-episode accuracies.

    Returns:
        ``(mean, 1.96 * std / sqrt(E))`` with the population std (``ddof=0``).
    """
    accuracies = np.asarray(accuracies, dtype=np.float64)
    return float(accuracies.mean()), float(1.96 * accuracies.std() / math.sqrt(accuracies.size))


def small_class_message(small: list[tuple[int, int]], n_shot: int, n_query: int) -> str:
    """Name the classes with fewer than ``n_shot + n_query`` images, with their counts."""
    listed = ", ".join(f"class {c} has {n} image{'s' * (n != 1)}" for c, n in small)
    return (
        f"{listed}; every class drawn into an episode needs n_shot + n_query = "
        f"{n_shot} + {n_query} = {n_shot + n_query}"
    )
