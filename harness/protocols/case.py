"""Running one benchmark case: data, cached features, the protocol, the record.

A :class:`CaseRun` is what a registered protocol's ``run_case`` receives
(:mod:`harness.protocols.registry`). It loads the dataset (with the profile's subset),
gives frozen features, derived features, cached arrays and a training store through
the cache service (:mod:`harness.cache`), times the protocol, and writes the result
record. Protocols never build cache keys: the case keys everything it hands out by its
model, weights identity and dataset version, plus what the protocol says its value
depends on. :meth:`CaseRun.run` drives one case::

    spec = get_protocol(case.protocol)
    config = spec.make_config(case_run)          # the profile's settings (+ seed override)
    result = spec.run_case(case_run, config)     # the protocol
    case_run.record(result, spec.version, config.to_dict(), spec.primary_metric)

A finished case (same full key) reuses its stored record instead
(:mod:`harness.protocols.case_resume`); the record itself is built by
:mod:`harness.protocols.case_record`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from harness.cache.arrays import cached_arrays
from harness.cache.keys import array_digest, safe_name, stable_hash
from harness.cache.runs import RunStore
from harness.config import paths
from harness.config.cards import Preprocessing
from harness.config.names import unsafe_name_problem
from harness.config.profiles import Profile
from harness.config.safe_paths import inside
from harness.config.suites import Case
from harness.data.npz import SplitData
from harness.data.pipeline import warn_constant_images
from harness.data.prepare import load_splits
from harness.data.subset import stratified_indices
from harness.features import cached_features
from harness.precision import DEFAULT_PRECISION
from harness.protocols.backbone import Backbone, make_backbone
from harness.protocols.base import ProtocolResult, SplitFeatures, TaskInfo
from harness.protocols.case_record import build_record, feature_scale
from harness.protocols.registry import Preset, get_preset, get_protocol
from harness.records.results import ResultRecord, store
from harness.zoo.build import model_preprocessing
from harness.zoo.sources import ensure_weights

SPLITS = ("train", "val", "test")
ConfigT = TypeVar("ConfigT")


def subset_splits(splits: dict[str, SplitData], profile: Profile) -> dict[str, SplitData]:
    """Apply the profile's per-split caps as seeded stratified subsets.

    Every per-image array (groups, views, studies) is subset with the images.
    """
    if not profile.max_per_split:
        return splits
    out = {}
    for name, split in splits.items():
        limit = profile.max_per_split.get(name)
        if limit is None or limit >= len(split.labels):
            out[name] = split
            continue
        out[name] = split.take(stratified_indices(split.labels, limit, profile.seed))
    return out


class CaseRun:
    """One case being run: holds timings and cache outcomes until the record is written."""

    def __init__(
        self,
        case: Case,
        results_dir: Path,
        device: str = "auto",
        precision: str = DEFAULT_PRECISION,
    ) -> None:
        self.case = case
        self.results_dir = results_dir
        self.device = device
        self.precision = precision
        self.timings: dict[str, float] = {}
        self.feature_cache: dict[str, str] = {}
        self.feature_precision: dict[str, dict[str, Any]] = {}
        self.feature_scale: dict[str, dict[str, Any]] = {}
        self.record_path: Path | None = None
        self._splits: dict[str, SplitData] | None = None
        self._split_features: dict[str, SplitFeatures] = {}
        self._backbone: Backbone | None = None
        self.started = time.perf_counter()  # the total time in the record counts from here
        # Called with every stored record; the plugin checks it against the expected values.
        self.on_record: Callable[[ResultRecord], None] | None = None
        self.seed: int | None = None
        # --medxfer-episodes: a few-shot case scores the episodes of this file
        self.episodes_file: str | None = None
        self.retrain = False
        # Run again even when a finished case with the same key is stored.
        self.rerun = False
        # "computed" or "reused" once the case has a record; whether this run wrote it.
        self.outcome: str | None = None
        self.record_written = False
        self._digests: dict[str, dict[str, str]] | None = None

    @property
    def profile(self) -> Profile:
        """The profile this case runs under."""
        return self.case.profile

    @property
    def task(self) -> TaskInfo:
        """Task facts from the dataset card."""
        card = self.case.dataset
        return TaskInfo(card.task, card.num_classes, card.primary_metric, card.metrics)

    def configure(self, config: ConfigT) -> ConfigT:
        """Return a protocol config with the session's seed and episodes overrides applied."""
        if self.seed is not None and hasattr(config, "seed"):
            config = dataclasses.replace(config, seed=self.seed)  # type: ignore[type-var]
        if self.episodes_file is not None and hasattr(config, "episodes_file"):
            config = dataclasses.replace(config, episodes_file=self.episodes_file)  # type: ignore[type-var]
        return config

    def splits(self) -> dict[str, SplitData]:
        """Return the dataset's splits after the profile's subset (prepared on first use).

        Raises:
            DatasetNotPrepared: when the dataset has to be obtained first.
        """
        if self._splits is None:
            started = time.perf_counter()
            self._splits = subset_splits(load_splits(self.case.dataset), self.profile)
            self.timings["data_s"] = time.perf_counter() - started
            warn_constant_images(self.case.dataset.name, self._splits)
        return self._splits

    def data_digests(self) -> dict[str, dict[str, str]]:
        """The sha256 of each split's images and labels after the profile's subset (memoised).

        They enter the case key and the feature keys, so data replaced on disk without a
        version bump is never mistaken for the data a stored result was computed on.
        """
        if self._digests is None:
            self._digests = {
                name: {"images": array_digest(split.images), "labels": array_digest(split.labels)}
                for name, split in self.splits().items()
            }
        return self._digests

    def ensure_weights(self) -> None:
        """Make sure the model's weights are here, downloading them if the card allows.

        Raises:
            WeightsUnavailable: When they are absent and cannot be fetched now.
        """
        ensure_weights(self.case.model)

    @property
    def preset(self) -> Preset | None:
        """The peer preset the case runs its protocol as (None: the medxfer default)."""
        return get_preset(self.case.protocol, self.case.preset)

    def preprocessing(self) -> Preprocessing:
        """The model's preprocessing at the profile's input size, or as the preset asks.

        Token models run at the nearest multiple of their patch size (DINOv2's 14: 160 px
        is 154), see :func:`harness.zoo.build.model_input_size`.

        A preset's overrides (e.g. ssl-transfer's Resize(224, bicubic) + CenterCrop(224) for
        linear) replace the card's values; they enter the feature-cache key through the
        transform's description, so features under two presets never mix.
        """
        pre = model_preprocessing(self.case.model, self.profile.input_size)
        preset = self.preset
        return dataclasses.replace(pre, **preset.overrides(self)) if preset else pre

    def backbone(self) -> Backbone:
        """The case's frozen backbone (a random twin's batch norm set from the train split)."""
        if self._backbone is None:
            self._backbone = make_backbone(
                self.case.model,
                lambda: self.splits()["train"].images,
                self.preprocessing(),
                self.profile.batch_size,
                self.device,
            )
        return self._backbone

    def _features(
        self,
        split: str,
        images: np.ndarray,
        digest: str | None = None,
        pre: Preprocessing | None = None,
    ) -> np.ndarray:
        backbone = self.backbone()
        features, info = cached_features(
            self.case.model,
            backbone.weights_id,
            self.case.dataset,
            split,
            images,
            pre or self.preprocessing(),
            backbone.load,
            device=self.device,
            layer=self.case.model.feature_layer,
            batch_size=self.profile.batch_size,
            precision=self.precision,
            images_sha=digest,
        )
        self.feature_cache[split] = "hit" if info.hit else "miss"
        self.feature_precision[split] = info.precision
        return features

    def features(self, splits: tuple[str, ...] = SPLITS) -> dict[str, SplitFeatures]:
        """Return frozen features per split, from the cache or extracted once (memoised per case)."""
        data = self.splits()
        started = time.perf_counter()
        out = {}
        for name in splits:
            if name not in self._split_features:
                digest = self.data_digests()[name]["images"]
                features = self._features(name, data[name].images, digest)
                self.feature_scale[name] = feature_scale(features)
                self._split_features[name] = SplitFeatures(
                    features, data[name].labels, data[name].groups, data[name].soft
                )
            out[name] = self._split_features[name]
        self.timings["extraction_s"] = self.timings.get("extraction_s", 0.0) + (
            time.perf_counter() - started
        )
        return out

    def derived_features(
        self, split: str, tag: str, images: np.ndarray, pre: Preprocessing | None = None
    ) -> np.ndarray:
        """Return (cached) features of images derived from a split, e.g. a transformed copy.

        Args:
            split: the split the images come from.
            tag: names the derivation (transform name and parameters); part of the cache key.
            images: the derived uint8 images.
            pre: Their preprocessing when it is not the case's (part of the cache key).

        Raises:
            ValueError: When ``split`` or ``tag`` is not a plain name (they become part of
                a cache file name).
        """
        for what, name in (("split", split), ("tag", tag)):
            problem = unsafe_name_problem(name)
            if problem is not None:
                raise ValueError(f"derived features of case {self.case.case_id}: {what} {problem}")
        started = time.perf_counter()
        features = self._features(f"{split}:{tag}", images, pre=pre)
        self.timings["extraction_s"] = self.timings.get("extraction_s", 0.0) + (
            time.perf_counter() - started
        )
        return features

    def derived_feature_sets(
        self,
        split: str,
        prefix: str,
        sets: dict[str, np.ndarray],
        pre: Preprocessing | None = None,
    ) -> dict[str, np.ndarray]:
        """Return features of several derived image sets, extracted together as one cache entry.

        Small sets (an invariance case's 16 or 32 images per transform) would each be one
        padded batch; together they fill whole batches.

        Args:
            split: the split the images come from.
            prefix: names the derivation (e.g. the subset and seed); part of the cache key.
            sets: tag -> derived uint8 images (every set the same image shape).
            pre: Their preprocessing when it is not the case's (part of the cache key).
        """
        if not sets:
            return {}
        tags = list(sets)
        stacked = np.concatenate([sets[tag] for tag in tags])
        features = self.derived_features(split, f"{prefix}-{stable_hash(tags)}", stacked, pre)
        bounds = np.cumsum([0, *(len(sets[tag]) for tag in tags)])
        return {tag: features[a:b] for tag, a, b in zip(tags, bounds[:-1], bounds[1:], strict=True)}

    def cached_arrays(
        self,
        namespace: str,
        depends_on: dict[str, Any],
        compute: Callable[[], dict[str, np.ndarray]],
    ) -> tuple[dict[str, np.ndarray], bool]:
        """Arrays derived from this case's data, through the statistics cache.

        The key is the case's model, weights identity, dataset and version, plus
        ``depends_on`` (everything else the arrays depend on; arrays in it, e.g. the
        features the statistics come from, enter the key as digests).

        Args:
            namespace: Names the kind of arrays (a plain folder name).
            depends_on: What the arrays depend on besides the case.
            compute: Builds the arrays; called only on a miss.

        Returns:
            The arrays and whether they came from the cache.
        """
        key = {
            "model": self.case.model.name,
            "weights_id": self.backbone().weights_id,
            "dataset": self.case.dataset.name,
            "dataset_version": self.case.dataset.version,
            **depends_on,
        }
        return cached_arrays(namespace, key, compute)

    def checkpoint_dir(self) -> Path:
        """The folder for this case's training checkpoints and finished runs."""
        return inside(paths.home(), "checkpoints", safe_name(self.case.case_id))

    def run_store(self) -> RunStore:
        """This case's training store: resumable checkpoints and finished results, keyed by
        the case id plus what the protocol says its training depends on."""
        return RunStore(self.checkpoint_dir(), {"case_id": self.case.case_id})

    def run(self) -> Path:
        """Run the case's registered protocol under its profile and write the record, or
        reuse the record of the same finished case (:mod:`harness.protocols.case_resume`).

        Returns:
            The path of the record.

        Raises:
            CaseNotApplicable: When the protocol cannot run on this dataset.
        """
        from harness.protocols.case_resume import run_or_reuse

        spec = get_protocol(self.case.protocol)
        config = self.configure(spec.make_config(self))
        return run_or_reuse(self, spec, config)

    def record(
        self,
        result: ProtocolResult,
        version: int,
        config: dict[str, Any],
        primary_metric: str | None = None,
    ) -> Path:
        """Write the case's result record atomically, check it, and return its path.

        Args:
            result: What the protocol returned.
            version: The protocol's version.
            config: The protocol's settings, as recorded.
            primary_metric: The protocol's own measure; ``None`` takes the dataset's metric.
        """
        record = self.build_record(result, version, config, primary_metric)
        path = self.store_record(record)
        if self.on_record is not None:
            self.on_record(record)
        return path

    def store_record(self, record: ResultRecord) -> Path:
        """Write ``record`` atomically to the results folder and remember its path."""
        self.record_path = store(record, self.results_dir)
        self.record_written = True
        return self.record_path

    def build_record(
        self,
        result: ProtocolResult,
        version: int,
        config: dict[str, Any],
        primary_metric: str | None = None,
    ) -> ResultRecord:
        """The case's result record, not written (:func:`~harness.protocols.case_record.build_record`)."""
        return build_record(self, result, version, config, primary_metric)
