"""Frozen-feature extraction, and the feature cache on top of the cache service.

The cache key hashes everything that decides the features: model name, weights
identity, dataset name/version, split, the images' content, the transform, the
layer, the batch-size setting (a number or ``auto``), the requested precision and this
module's FEATURE_VERSION.
Features live in the ``features`` namespace of :mod:`harness.cache.store`: one ``.npz``
file per key (the features and a JSON meta string that holds the key's full text and
the features' sha256, both checked on load: a file is trusted by its content, never by
its name or row count), written atomically under the key's file lock, so concurrent
pytest-xdist workers wait for one extraction instead of repeating it. Every hit and
extraction is appended to ``events.jsonl`` in the cache folder.

Every forward pass has exactly ``batch_size`` rows: the last batch is padded by
repeating its last image and the padded rows are dropped. oneDNN chooses another
convolution kernel for small batches, and where it switches depends on the thread
count (on a 2-core machine, batches under 16 rows differ in the last bits between 1
and 2 threads). With one batch shape, an image's features are the same bits whatever
else is in its batch and however many threads run (``docs/reproducibility.md``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import PIL
import torch
from tqdm.auto import tqdm

from harness.batch_size import BatchSize, batch_size_setting, resolve_batch_size
from harness.cache.atomic import is_temporary
from harness.cache.codecs import check_content
from harness.cache.keys import array_digest, stable_hash
from harness.cache.store import STORE, CacheStore, Entry, KeyMismatch, Namespace
from harness.cache.store import read_events as store_events
from harness.config.cards import DatasetCard, ModelCard, Preprocessing
from harness.config.paths import feature_dir
from harness.data.transforms import describe, eval_transform
from harness.features_stream import decoded_copy
from harness.precision import (
    DEFAULT_PRECISION,
    PrecisionDecision,
    check_lower_precision,
    check_precision_name,
    degenerate_rows,
)

FEATURE_VERSION = 2
LOG = logging.getLogger("medxfer.features")


@dataclass(frozen=True)
class CacheInfo:
    """How one split's features were obtained.

    Attributes:
        key: The cache key.
        path: The cache file.
        hit: True when the file was read, False when the backbone ran.
        seconds: Time spent (load or extraction).
        precision: The precision decision recorded with the features
            (:class:`harness.precision.PrecisionDecision` as a dict).
    """

    key: str
    path: Path
    hit: bool
    seconds: float
    precision: dict[str, Any]


def resolve_device(device: str = "auto") -> torch.device:
    """Return ``cuda`` when asked or available under ``auto``, else ``cpu``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def device_class(device: str = "auto") -> str:
    """The device class expected values are calibrated per: ``cpu`` or ``cuda``."""
    return resolve_device(device).type


def images_digest(images: np.ndarray) -> str:
    """Return the sha256 of an image array's shape, dtype and bytes."""
    return array_digest(images)


def feature_key_payload(
    model: ModelCard,
    weights_id: str,
    dataset: DatasetCard,
    split: str,
    images_sha: str,
    pre: Preprocessing,
    layer: str,
    precision: str,
    batch_size: BatchSize,
) -> dict[str, Any]:
    """Everything that decides one (model, weights, dataset, split, transform, layer) feature set.

    ``batch_size`` is the setting (a number, or ``auto`` whatever size it resolves to: see
    :mod:`harness.batch_size`).
    """
    return {
        "feature_version": FEATURE_VERSION,
        "model": model.name,
        "model_card": stable_hash(model.fingerprint()),
        "weights_sha256": weights_id,
        "dataset": dataset.name,
        "dataset_version": dataset.version,
        "split": split,
        "images_sha256": images_sha,
        "transform": describe(pre),
        "layer": layer,
        "precision": precision,
        "batch_size": batch_size,
        # a library upgrade must re-extract, or a regression check of it would
        # compare cached numbers with themselves
        "libraries": {
            "torch": torch.__version__,
            "timm": _timm_version(),
            "pillow": PIL.__version__,  # it resizes: Pillow 13 moved some pixels by one level
        },
    }


def feature_key(*args: Any, **kwargs: Any) -> str:
    """Return the cache key of one feature set.

    Args:
        *args: The arguments of :func:`feature_key_payload`.
        **kwargs: Its keyword arguments.

    Returns:
        The key the feature cache files the set under.
    """
    return stable_hash(feature_key_payload(*args, **kwargs), FEATURES.key_length)


def _timm_version() -> str:
    import timm

    return timm.__version__


def _padded_batches(
    images: np.ndarray, transform: Callable[[np.ndarray], torch.Tensor], batch_size: int
) -> Iterator[tuple[torch.Tensor, int]]:
    """Yield ``(batch, rows)``: every batch has ``batch_size`` rows, the first ``rows`` real."""
    for start in range(0, len(images), batch_size):
        batch = torch.stack([transform(img) for img in images[start : start + batch_size]])
        rows = len(batch)
        if rows < batch_size:
            batch = torch.cat([batch, batch[-1:].expand(batch_size - rows, *batch.shape[1:])])
        yield batch, rows


def extract(
    module: torch.nn.Module,
    images: np.ndarray,
    pre: Preprocessing,
    device: torch.device,
    batch_size: int = 64,
    desc: str = "features",
    precision: str = DEFAULT_PRECISION,
    resized: np.ndarray | None = None,
) -> np.ndarray:
    """Run ``module`` over ``images`` in fixed-shape batches and return float32 features (N, D).

    The eval transform runs in two parts (:mod:`harness.data.decoded`): resize and crop
    to uint8, then normalisation batched on ``device``; the result equals the per-image
    transform's bit for bit. With ``resized`` (the decoded-image cache's copy, see
    :func:`harness.features_stream.resized_images`) the first part is skipped. Uses
    ``torch.inference_mode`` and ``channels_last``; ``precision`` is applied as given
    (see :func:`extract_checked` for the checked policy); float32 on CUDA switches TF32 off.
    """
    from harness.data.decoded import resize_crop_batches
    from harness.features_stream import extract_resized

    if resized is None:
        resized = np.empty((len(images), pre.input_size, pre.input_size, 3), dtype=np.uint8)
        at = 0
        for batch in resize_crop_batches(images, pre, batch_size):
            resized[at : at + len(batch)] = batch
            at += len(batch)
    with tqdm(total=len(images), desc=desc, unit="img", leave=False, disable=None):
        return extract_resized(module, resized, pre, device, batch_size, precision)


def extract_checked(
    module: torch.nn.Module,
    images: np.ndarray,
    pre: Preprocessing,
    device: torch.device,
    batch_size: int = 64,
    desc: str = "features",
    precision: str = DEFAULT_PRECISION,
    resized: np.ndarray | None = None,
) -> tuple[np.ndarray, PrecisionDecision]:
    """Extract features in ``precision`` where a check allows it, else in float32.

    The check runs on the first batch (:func:`harness.precision.check_lower_precision`);
    if the whole matrix then still has an all-zero or non-finite row, it is extracted
    again in float32. Float32 itself is never refused.

    Returns:
        The features and the precision decision.
    """
    check_precision_name(precision)
    decision = PrecisionDecision(precision, precision)
    if precision != "fp32" and len(images):
        module = module.to(device).to(memory_format=torch.channels_last).eval()
        probe, _ = next(_padded_batches(images, eval_transform(pre), batch_size))
        probe = probe.to(device).to(memory_format=torch.channels_last)
        decision = check_lower_precision(module, probe, device, precision)
    features = extract(module, images, pre, device, batch_size, desc, decision.effective, resized)
    zero, nonfinite = degenerate_rows(features)
    if decision.effective != "fp32" and (zero or nonfinite):
        reason = (
            f"{precision} gave {zero} all-zero and {nonfinite} non-finite feature row(s) "
            "beyond the probe batch"
        )
        LOG.warning("%s: %s; extracting again in fp32", desc, reason)
        decision = dataclasses.replace(decision, effective="fp32", reason=reason)
        features = extract(module, images, pre, device, batch_size, desc, "fp32", resized)
    return features, decision


def cached_features(
    model: ModelCard,
    weights_id: str,
    dataset: DatasetCard,
    split: str,
    images: np.ndarray,
    pre: Preprocessing,
    load_model: Callable[[], torch.nn.Module],
    *,
    device: str = "auto",
    batch_size: BatchSize = 64,
    layer: str = "pooled",
    precision: str = DEFAULT_PRECISION,
    images_sha: str | None = None,
    store: CacheStore = STORE,
) -> tuple[np.ndarray, CacheInfo]:
    """Return the features of one split, from the cache or by running the backbone once.

    Args:
        model: model card.
        weights_id: identity of the weights (see ``harness.zoo.weights_identity``).
        dataset: dataset card.
        split: split name.
        images: uint8 images of the split (after any profile subset).
        pre: the preprocessing to apply (the model's, with the profile's input size).
        load_model: returns the backbone; called only on a cache miss.
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: images per forward pass, or ``auto`` (:mod:`harness.batch_size`);
            ``$MEDXFER_BATCH_SIZE`` overrides it. The setting is part of the key (a number
            can change the last bits); the size ``auto`` resolves to is recorded in the meta.
        layer: which features: the model card's ``feature_layer`` (``pooled``: the
            penultimate pooled vector; the module returns that layer, this names it).
        precision: requested precision (``fp32``, or ``bf16`` / ``fp16`` where checked).
        images_sha: :func:`images_digest` of ``images`` when the caller has it already.
        store: the cache store (its ``features`` namespace).

    Returns:
        Features (N, D) float32 and how they were obtained.
    """
    torch_device = resolve_device(device)
    check_precision_name(precision)
    batch_size = batch_size_setting(batch_size)
    payload = feature_key_payload(
        model,
        weights_id,
        dataset,
        split,
        images_sha or images_digest(images),
        pre,
        layer,
        precision,
        batch_size,
    )
    entry = store.entry(
        FEATURES, payload, subfolders=(model.name, dataset.name), prefix=f"{split}-"
    )
    started = time.perf_counter()

    def compute() -> tuple[np.ndarray, dict[str, Any]]:
        module = load_model()
        size = resolve_batch_size(
            batch_size, module, pre, torch_device, precision, len(images), model.name
        )
        features, decision = extract_checked(
            module,
            images,
            pre,
            torch_device,
            size,
            desc=f"{model.name} {dataset.name}/{split}",
            precision=precision,
            resized=decoded_copy(images, payload["images_sha256"], pre),
        )
        meta = {
            "key": entry.key,
            "model": model.name,
            "weights_sha256": weights_id,
            "dataset": dataset.name,
            "dataset_version": dataset.version,
            "split": split,
            "n": int(features.shape[0]),
            "dim": int(features.shape[1]) if features.ndim == 2 else 0,
            "transform": describe(pre),
            "layer": layer,
            "batch_size": size,
            "batch_size_setting": batch_size,
            "precision": decision.to_dict(),
            "device": str(torch_device),
            "seconds": round(time.perf_counter() - started, 3),
        }
        return features, meta

    def validate(value: tuple[np.ndarray, dict[str, Any]]) -> str | None:
        rows = value[0].shape[0]
        return None if rows == len(images) else f"{rows} rows, expected {len(images)}"

    lookup = store.get_or_compute(
        FEATURES,
        entry,
        compute,
        validate=validate,
        describe={"model": model.name, "dataset": dataset.name, "split": split},
    )
    features, meta = lookup.value
    info = CacheInfo(entry.key, entry.path, lookup.hit, lookup.seconds, meta.get("precision", {}))
    return features, info


class FeatureFile:
    """The feature cache's file: ``features`` (N, D) float32 and ``meta`` (JSON).

    The meta holds the key (``key``), the key payload's full text (``key_text``) and the
    features' sha256 (``features_sha256``, :func:`~harness.cache.keys.array_digest`).
    """

    def write(
        self, handle: IO[bytes], value: tuple[np.ndarray, dict[str, Any]], entry: Entry
    ) -> None:
        """Write the features and their meta, with the entry's key, key text and checksum."""
        features, meta = value
        meta = {
            **meta,
            "key": entry.key,
            "key_text": entry.text,
            "features_sha256": array_digest(features),
        }
        np.savez(handle, features=features, meta=np.array(json.dumps(meta)))

    def read(self, path: Path, entry: Entry) -> tuple[np.ndarray, dict[str, Any]]:
        """Read the features of ``entry``.

        Raises:
            KeyMismatch: When the file's meta names another key (or key text).
            Damaged: When the features do not match the checksum in the meta.
        """
        with np.load(path, allow_pickle=False) as payload:
            features = payload["features"]
            meta = json.loads(str(payload["meta"]))
        if meta.get("key") != entry.key or meta.get("key_text") != entry.text:
            raise KeyMismatch(f"it holds key {meta.get('key')!r}")
        check_content(meta.get("features_sha256"), array_digest(features))
        return features, meta

    def summary(self, value: tuple[np.ndarray, dict[str, Any]]) -> dict[str, Any]:
        """The meta written with the features."""
        return dict(value[1])


FEATURES: Namespace[tuple[np.ndarray, dict[str, Any]]] = Namespace(
    "features", FeatureFile(), suffix=".npz", stored_event="extract"
)


def read_events(directory: Path | None = None) -> list[dict[str, Any]]:
    """Return the feature cache's event log (hits and extractions), oldest first."""
    return store_events(directory or feature_dir())


def list_cache(directory: Path | None = None) -> list[dict[str, Any]]:
    """Return the meta of every complete feature file in the cache."""
    root = directory or feature_dir()
    entries = []
    for path in sorted(root.rglob("*.npz")):
        if is_temporary(path):
            continue
        try:
            with np.load(path, allow_pickle=False) as payload:
                meta = json.loads(str(payload["meta"]))
        except Exception:
            meta = {"model": "?", "dataset": "?", "split": "?", "corrupt": True}
        meta["path"] = str(path)
        meta["bytes"] = path.stat().st_size
        entries.append(meta)
    return entries
