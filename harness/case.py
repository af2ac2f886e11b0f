"""Running one benchmark case: data, cached features, the protocol, the record.

A :class:`CaseRun` is what a benchmark test receives. It loads the dataset (with
the profile's subset), gets frozen features through the cache, times the
protocol, and writes the result record. Tests stay short and declarative::

    def test_linear(bench):
        config = linear.LinearConfig.for_profile(bench.profile.name)
        feats = bench.features()
        result = bench.run_protocol(linear.run, feats["train"], feats["val"], feats["test"],
                                    bench.task, config)
        bench.record(result, linear.VERSION, config.to_dict())
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from harness.cards import ModelCard
from harness.data.npz import SplitData
from harness.data.prepare import load_splits
from harness.data.subset import stratified_indices
from harness.features import cached_features
from harness.profiles import Profile
from harness.protocols.base import ProtocolResult, SplitFeatures, TaskInfo
from harness.results import DatasetInfo, ModelInfo, ProtocolInfo, ResultRecord, new_run_id, store
from harness.suites import Case
from harness.zoo import LoadedModel, build_model, weights_identity

SPLITS = ("train", "val", "test")
RUN_ID_ENV = "MEDXFER_RUN_ID"
ConfigT = TypeVar("ConfigT")


@lru_cache(maxsize=2)
def _loaded_model(card: ModelCard) -> LoadedModel:
    return build_model(card)


@lru_cache(maxsize=32)
def _weights_id(card: ModelCard) -> str:
    if card.weights.source in ("pip", "file", "url"):
        return weights_identity(card)
    return _loaded_model(card).weights_id


def subset_splits(splits: dict[str, SplitData], profile: Profile) -> dict[str, SplitData]:
    """Apply the profile's per-split caps as seeded stratified subsets."""
    if not profile.max_per_split:
        return splits
    out = {}
    for name, split in splits.items():
        limit = profile.max_per_split.get(name)
        if limit is None or limit >= len(split.labels):
            out[name] = split
            continue
        index = stratified_indices(split.labels, limit, profile.seed)
        groups = split.groups[index] if split.groups is not None else None
        out[name] = SplitData(split.images[index], split.labels[index], groups)
    return out


class CaseRun:
    """One case being run: holds timings and cache outcomes until the record is written."""

    def __init__(self, case: Case, results_dir: Path, device: str = "auto") -> None:
        self.case = case
        self.results_dir = results_dir
        self.device = device
        self.timings: dict[str, float] = {}
        self.feature_cache: dict[str, str] = {}
        self.record_path: Path | None = None
        self._splits: dict[str, SplitData] | None = None
        self._started = time.perf_counter()
        # Called with every stored record; the plugin checks it against the expected values.
        self.on_record: Callable[[ResultRecord], None] | None = None
        self.seed: int | None = None
        self.retrain = False

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
        """Return a protocol config with the session's seed override applied (if any)."""
        if self.seed is None or not hasattr(config, "seed"):
            return config
        return dataclasses.replace(config, seed=self.seed)  # type: ignore[type-var]

    def splits(self) -> dict[str, SplitData]:
        """Return the dataset's splits after the profile's subset (prepared on first use).

        Raises:
            DatasetNotPrepared: when the dataset has to be obtained first.
        """
        if self._splits is None:
            started = time.perf_counter()
            self._splits = subset_splits(load_splits(self.case.dataset), self.profile)
            self.timings["data_s"] = time.perf_counter() - started
        return self._splits

    def features(self, splits: tuple[str, ...] = SPLITS) -> dict[str, SplitFeatures]:
        """Return frozen features per split, from the cache or extracted once."""
        data = self.splits()
        model = self.case.model
        pre = model.preprocessing.with_input_size(self.profile.input_size)
        started = time.perf_counter()
        weights_id = _weights_id(model)
        out = {}
        for name in splits:
            features, info = cached_features(
                model,
                weights_id,
                self.case.dataset,
                name,
                data[name].images,
                pre,
                lambda: _loaded_model(model),
                device=self.device,
                batch_size=self.profile.batch_size,
            )
            self.feature_cache[name] = "hit" if info.hit else "miss"
            out[name] = SplitFeatures(features, data[name].labels, data[name].groups)
        self.timings["extraction_s"] = self.timings.get("extraction_s", 0.0) + (
            time.perf_counter() - started
        )
        return out

    def derived_features(self, split: str, tag: str, images: np.ndarray) -> np.ndarray:
        """Return (cached) features of images derived from a split, e.g. a transformed copy.

        Args:
            split: the split the images come from.
            tag: names the derivation (transform name and parameters); part of the cache key.
            images: the derived uint8 images.
        """
        model = self.case.model
        pre = model.preprocessing.with_input_size(self.profile.input_size)
        started = time.perf_counter()
        features, info = cached_features(
            model,
            _weights_id(model),
            self.case.dataset,
            f"{split}:{tag}",
            images,
            pre,
            lambda: _loaded_model(model),
            device=self.device,
            batch_size=self.profile.batch_size,
        )
        self.feature_cache[f"{split}:{tag}"] = "hit" if info.hit else "miss"
        self.timings["extraction_s"] = self.timings.get("extraction_s", 0.0) + (
            time.perf_counter() - started
        )
        return features

    def run_protocol(
        self, fn: Callable[..., ProtocolResult], *args: Any, **kwargs: Any
    ) -> ProtocolResult:
        """Call a protocol's ``run`` and time it."""
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        self.timings["protocol_s"] = time.perf_counter() - started
        return result

    def record(self, result: ProtocolResult, version: int, config: dict[str, Any]) -> Path:
        """Write the case's result record atomically and return its path."""
        case = self.case
        model = ModelInfo.from_card(case.model)
        model.weights_sha256 = _weights_id(case.model)
        sizes = {name: len(split.labels) for name, split in self.splits().items()}
        timings = {key: round(value, 4) for key, value in self.timings.items()}
        timings["total_s"] = round(time.perf_counter() - self._started, 4)
        # Few-shot and invariance report their own measure, not the dataset's metric.
        primary = result.details.get("primary_metric_override", case.dataset.primary_metric)
        record = ResultRecord(
            case_id=case.case_id,
            suite=case.suite,
            profile=case.profile.name,
            model=model,
            dataset=DatasetInfo.from_card(case.dataset, sizes),
            protocol=ProtocolInfo(case.protocol, version, config),
            metrics=result.metrics,
            primary_metric=primary,
            primary_value=result.metrics[primary],
            hyperparameters=result.hyperparameters,
            details={**result.details, "profile": case.profile.to_dict()},
            seeds={"protocol": int(config.get("seed", 0)), "subset": case.profile.seed},
            feature_cache=dict(self.feature_cache),
            timings=timings,
            run_id=session_run_id(),
        )
        self.record_path = store(record, self.results_dir)
        if self.on_record is not None:
            self.on_record(record)
        return self.record_path


def session_run_id() -> str:
    """Return the run id shared by every case of one pytest session (and its xdist workers)."""
    if RUN_ID_ENV not in os.environ:
        os.environ[RUN_ID_ENV] = new_run_id()
    return os.environ[RUN_ID_ENV]
