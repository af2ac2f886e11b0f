"""Few-shot classification on frozen features: prototypical networks over random episodes.

Follows linusericsson/ssl-transfer@416913f:few_shot.py and the few-shot runner of
jonahanton/SSL_medicalimaging@77fceef: every episode draws ``n_way`` classes
and, from each, ``n_shot`` support and ``n_query`` query images; a class's prototype is
the mean of its support features, each query goes to the class of the nearest prototype
in squared Euclidean distance, and the episode's accuracy is the fraction of queries
classified right. The result is the mean over episodes with the peers' 95% interval
``1.96 * std / sqrt(episodes)`` (population std, as ``np.std``). Defaults are the peers':
20 shots (SSL_medicalimaging), 15 queries, 600 episodes, episodes drawn from train+test
pooled, 5 ways or the dataset card's ``fewshot.n_way``.

ProtoNet always reports plain accuracy, whatever the dataset's primary metric is (the
peers never use the metric column of their dataset table). :func:`run`
therefore returns ``accuracy`` and ``accuracy_ci95`` only and registers ``accuracy`` as
its primary metric, so a record's primary value is the mean episode accuracy.

What this does differently from the peers:

* Features are extracted once for the whole pool (and cached); every episode is a gather
  from the feature matrix. The peers ran the backbone on every episode's images, so a
  600-episode run cost ~100x the forward passes (``docs/performance.md``).
* Episodes are seeded (``numpy.random.default_rng(seed)``) and drawn up front; the same
  seed gives the same episodes and the same accuracy. The CD-FSL loaders of ssl-transfer
  set no seed at all. NumPy does not promise ``Generator`` streams across releases, so
  ``details["episodes_sha256"]`` records a digest of the drawn indices.
* A class with fewer than ``n_shot + n_query`` images in the pool is an error naming it
  (or dropped and recorded with ``on_small_class="drop"``); the peers' per-class data
  loaders silently returned short batches.

Sampling matches the peers: classes without replacement within an episode, images of a
class without replacement within an episode, and independent draws across episodes (an
image can appear in many episodes). Ties between prototypes go to the lowest way index.

The peer presets (``ssl-transfer``, ``ssl-medicalimaging``) are in
:mod:`harness.protocols.fewshot_presets`; what they change is expressed by the config's
fields (``pool``, ``pool_cap``, ``n_way``, ``n_shot``...), the pool logic is in
:mod:`harness.protocols.fewshot_pool`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.config.profiles import check_profile
from harness.config.vocabulary import interval_name
from harness.protocols.base import ProtocolResult, SplitFeatures, TaskInfo, without_defaults
from harness.protocols.episodes import (
    episode_accuracies,
    predict_episodes,
    sample_episodes,
    small_class_message,
    summarize,
)
from harness.protocols.episodes_given import check_episodes, file_sha256, read_episodes
from harness.protocols.fewshot_pool import POOLS, build_pool, make_pool, pool_splits
from harness.protocols.inputs import check_split, require_single_label
from harness.protocols.registry import CaseNotApplicable, register_protocol

if TYPE_CHECKING:
    from harness.protocols.case import CaseRun

__all__ = [
    "POOLS",
    "FewShotConfig",
    "make_pool",
    "pool_splits",
    "resolve_n_way",
    "run",
    "run_case",
]

VERSION = 1

SMALL_CLASS_POLICIES = ("error", "drop")
DEFAULT_MAX_WAY = 5


@dataclass(frozen=True)
class FewShotConfig:
    """Settings of the few-shot (ProtoNet) protocol.

    Attributes:
        n_way: Classes per episode. None: the dataset card's ``fewshot.n_way`` if it has
            one, else ``min(5, num_classes)``.
        n_shot: Support images per class and episode (SSL_medicalimaging's 20;
            ssl-transfer's default is 5).
        n_query: Query images per class and episode.
        episodes: Number of episodes.
        pool: Which splits episodes are drawn from: "train+test", "test",
            "train+val+test" (the whole dataset, as the peers' presets) or "train+val".
        pool_cap: Keep at most this many images of the pool, as SSL_medicalimaging's
            pre-built ``sub_meta`` (see :mod:`harness.protocols.fewshot_pool`); None keeps
            the whole pool.
        seed: Seed of the episode draw (and of the cap's shuffles).
        on_small_class: "error" to refuse a class with fewer than ``n_shot + n_query``
            images in the pool, "drop" to leave it out (recorded in the details).
        episodes_file: Score these episodes instead of drawing them: pool row indices
            (episodes, n_way, n_shot + n_query) in a ``.npy`` or ``.npz`` file, or class
            ids and indices within each class (:mod:`harness.protocols.episodes_given`);
            ``episodes`` and ``seed`` are then not used, and the record keeps every
            episode's accuracy.
    """

    n_way: int | None = None
    n_shot: int = 20
    n_query: int = 15
    episodes: int = 600
    pool: str = "train+test"
    pool_cap: int | None = None
    seed: int = 0
    on_small_class: str = "error"
    episodes_file: str | None = None

    def __post_init__(self) -> None:
        if self.n_way is not None and self.n_way < 2:
            raise ValueError(f"FewShotConfig.n_way must be >= 2 or None, got {self.n_way}")
        for name in ("n_shot", "n_query", "episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"FewShotConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.pool not in POOLS:
            raise ValueError(f"FewShotConfig.pool must be one of {tuple(POOLS)}, got {self.pool!r}")
        if self.pool_cap is not None and self.pool_cap < 1:
            raise ValueError(f"FewShotConfig.pool_cap must be >= 1 or None, got {self.pool_cap}")
        if self.on_small_class not in SMALL_CLASS_POLICIES:
            raise ValueError(
                f"FewShotConfig.on_small_class must be one of {SMALL_CLASS_POLICIES}, "
                f"got {self.on_small_class!r}"
            )

    @classmethod
    def for_profile(cls, profile: str) -> FewShotConfig:
        """The configuration of a run profile.

        ``smoke``: 5 shots, 5 queries, 100 episodes (the smoke subsets hold ~30 images per
        class). ``demo`` and ``paper``: the peers' 20 shots, 15 queries, 600 episodes (the
        demo datasets pool >= 180 images per class from train+test).

        Args:
            profile: "smoke", "demo" or "paper".

        Returns:
            The profile's configuration.

        Raises:
            ValueError: On an unknown profile.
        """
        check_profile(profile)
        return cls(n_shot=5, n_query=5, episodes=100) if profile == "smoke" else cls()

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-friendly dict.

        Returns:
            Field name -> value; ``pool_cap`` and ``episodes_file`` only when set, so the
            default's dict (and the records written before they existed) keep their keys.
            An episodes file enters with the sha256 of its bytes, so a case is never
            reused for other episodes under the same file name.
        """
        out = without_defaults(asdict(self), {"pool_cap": None, "episodes_file": None})
        if self.episodes_file is not None:
            out["episodes_file_sha256"] = file_sha256(self.episodes_file)
        return out


def resolve_n_way(
    config: FewShotConfig, num_classes: int, n_way_default: int | None
) -> tuple[int, str]:
    """The number of ways of a run and where it came from.

    Args:
        config: Protocol settings (``n_way`` wins when set).
        num_classes: Classes of the task.
        n_way_default: The dataset card's ``fewshot.n_way``, or None.

    Returns:
        ``(n_way, source)`` with source "config", "dataset card" or "min(5, num_classes)".
    """
    if config.n_way is not None:
        return config.n_way, "config"
    if n_way_default is not None:
        return int(n_way_default), "dataset card"
    return min(DEFAULT_MAX_WAY, num_classes), f"min({DEFAULT_MAX_WAY}, num_classes)"


def run(
    pool: SplitFeatures,
    task: TaskInfo,
    config: FewShotConfig,
    n_way_default: int | None = None,
) -> ProtocolResult:
    """Evaluate ProtoNet over seeded episodes drawn from the pooled frozen features.

    The reported measure is plain accuracy whatever ``task.primary_metric`` is (the peers'
    behaviour); the protocol registers ``accuracy`` as its primary metric.

    Args:
        pool: Features and labels of the pooled splits (``config.pool``, see :func:`make_pool`).
        task: Task facts; single-label tasks only (binary, multiclass, ordinal).
        config: Episode settings.
        n_way_default: The dataset card's ``fewshot.n_way``; used when ``config.n_way`` is
            None.

    Returns:
        ``metrics``: ``accuracy`` (mean over episodes) and ``accuracy_ci95``.
        ``hyperparameters``: the resolved ``n_way``. ``details``: the pool and its size and class counts, ``n_way`` and its source, ``n_shot``,
        ``n_query``, ``episodes``, ``seed``, ``dropped_classes``, ``episode_accuracy``
        (mean, std, min, quantiles, max), ``episodes_sha256`` (digest of the drawn
        indices) and timings.

    Raises:
        ValueError: On a multilabel task, malformed features or labels, an impossible
            ``n_way``, or a class with too few images (unless ``on_small_class="drop"``;
            then when fewer than ``n_way`` classes remain).
    """
    x, y = _check_inputs(pool, task)
    n_way, n_way_source = resolve_n_way(config, task.num_classes, n_way_default)
    if not 2 <= n_way <= task.num_classes:
        raise ValueError(
            f"few-shot: n_way={n_way} ({n_way_source}) must lie in [2, {task.num_classes}] "
            f"for a task with {task.num_classes} classes"
        )
    per_episode = config.n_shot + config.n_query
    counts = np.bincount(y, minlength=task.num_classes)
    if config.episodes_file is not None:
        return _run_given(x, y, n_way, n_way_source, counts, config)
    small = [(c, int(n)) for c, n in enumerate(counts) if n < per_episode]
    if small and config.on_small_class == "error":
        raise ValueError(
            f"few-shot pool {config.pool!r}: "
            + small_class_message(small, config.n_shot, config.n_query)
            + "; use a larger pool, fewer shots/queries or on_small_class='drop'"
        )
    dropped = [c for c, _ in small]
    kept = [c for c in range(task.num_classes) if c not in dropped]
    if len(kept) < n_way:
        raise ValueError(
            f"few-shot pool {config.pool!r}: only {len(kept)} class(es) {kept} have at least "
            f"n_shot + n_query = {per_episode} images (dropped {dropped}, counts "
            f"{counts.tolist()}); {n_way}-way episodes need {n_way}"
        )

    started = time.perf_counter()
    eligible = np.flatnonzero(np.isin(y, kept))
    episodes = eligible[
        sample_episodes(
            y[eligible], n_way, config.n_shot, config.n_query, config.episodes, config.seed
        )
    ]
    sampling_seconds = time.perf_counter() - started

    result, _ = _score(x, y, episodes, n_way, n_way_source, counts, config)
    result.details |= {
        "seed": config.seed,
        "on_small_class": config.on_small_class,
        "dropped_classes": dropped,
        "sampling_seconds": sampling_seconds,
    }
    return result


def _run_given(
    x: np.ndarray,
    y: np.ndarray,
    n_way: int,
    n_way_source: str,
    counts: np.ndarray,
    config: FewShotConfig,
) -> ProtocolResult:
    """Score the episodes of ``config.episodes_file`` (checked against the pool)."""
    assert config.episodes_file is not None
    given, sha256 = read_episodes(config.episodes_file, y)
    check_episodes(given, y, n_way, config.n_shot, config.n_query, config.episodes_file)
    result, accuracies = _score(x, y, given, n_way, n_way_source, counts, config)
    result.details |= {
        "episodes_file": config.episodes_file,
        "episodes_file_sha256": sha256,
        "episode_accuracies": accuracies.tolist(),
    }
    return result


def _score(
    x: np.ndarray,
    y: np.ndarray,
    episodes: np.ndarray,
    n_way: int,
    n_way_source: str,
    counts: np.ndarray,
    config: FewShotConfig,
) -> tuple[ProtocolResult, np.ndarray]:
    """ProtoNet over ``episodes`` of the pool: the result and the per-episode accuracies."""
    started = time.perf_counter()
    accuracies = episode_accuracies(predict_episodes(x, episodes, config.n_shot))
    mean, ci95 = summarize(accuracies)
    evaluation_seconds = time.perf_counter() - started
    n_episodes = len(episodes)

    result = ProtocolResult(
        metrics={"accuracy": mean, interval_name("accuracy"): ci95},
        hyperparameters={"n_way": n_way},
        details={
            "pool": config.pool,
            "pool_cap": config.pool_cap,
            "pool_size": len(y),
            "pool_class_counts": counts.tolist(),
            "n_way": n_way,
            "n_way_source": n_way_source,
            "n_shot": config.n_shot,
            "n_query": config.n_query,
            "episodes": n_episodes,
            "episode_accuracy": {
                "mean": mean,
                "std": float(accuracies.std()),
                "min": float(accuracies.min()),
                "q05": float(np.quantile(accuracies, 0.05)),
                "median": float(np.median(accuracies)),
                "q95": float(np.quantile(accuracies, 0.95)),
                "max": float(accuracies.max()),
            },
            "ci": "1.96 * std(episode accuracy, ddof=0) / sqrt(episodes)",
            "episodes_sha256": hashlib.sha256(episodes.astype("<i8").tobytes()).hexdigest(),
            # one query's prediction moves the mean episode accuracy by this much
            "metric_notes": {
                "resolution": {"accuracy": 1.0 / (n_episodes * n_way * config.n_query)}
            },
            "distance": "nearest class-mean prototype, (squared) euclidean, float64",
            "evaluation_seconds": evaluation_seconds,
        },
    )
    return result, accuracies


def _check_inputs(pool: SplitFeatures, task: TaskInfo) -> tuple[np.ndarray, np.ndarray]:
    require_single_label(task, "few-shot (ProtoNet)")
    return check_split("few-shot pool", pool, task)


@register_protocol(
    "fewshot",
    version=VERSION,
    marker="prototypical few-shot benchmark cases (seeded episodes of frozen features)",
    config=FewShotConfig,
    primary_metric="accuracy",
)
def run_case(case: CaseRun, config: FewShotConfig) -> ProtocolResult:
    """One few-shot case: episodes drawn from the pooled splits of ``config.pool``.

    The pool is capped to ``config.pool_cap`` images when set (:func:`build_pool`).

    Raises:
        CaseNotApplicable: On a multilabel dataset (ProtoNet needs one class per image; a
            card with a many-to-one label policy makes such a dataset single-label).
    """
    if case.task.task == "multilabel":
        raise CaseNotApplicable(
            f"few-shot (ProtoNet) needs one class per image; {case.case.dataset.name} is "
            "multilabel (a many-to-one label policy makes it single-label)"
        )
    pool, pool_details = build_pool(
        case.features(pool_splits(config.pool)), config.pool, config.pool_cap, config.seed
    )
    result = run(pool, case.task, config, case.case.dataset.fewshot.get("n_way"))
    result.details.update(pool_details)
    return result
