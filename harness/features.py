"""Frozen-feature extraction and the feature cache.

The cache key hashes everything that decides the features: model name, weights
sha256, dataset name/version, split, the images' content, the transform, the
layer, the numeric precision and this module's FEATURE_VERSION. One file per key
(``.npz`` with the features and a JSON meta string), written to a temporary name
and renamed; a file lock per key makes concurrent pytest-xdist workers wait for
one extraction instead of repeating it. Every hit and extraction is appended to
``events.jsonl`` in the cache folder and counted in :data:`STATS`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from tqdm.auto import tqdm

from harness.atomic import TMP_INFIX, is_temporary, write_with
from harness.cards import DatasetCard, ModelCard, Preprocessing, stable_hash
from harness.data.transforms import describe, eval_transform
from harness.paths import feature_dir
from harness.zoo import LoadedModel

FEATURE_VERSION = 1
EVENTS_FILE = "events.jsonl"
LOG = logging.getLogger("medxfer.features")
STATS: Counter[str] = Counter()


@dataclass(frozen=True)
class CacheInfo:
    """How one split's features were obtained."""

    key: str
    path: Path
    hit: bool
    seconds: float


def resolve_device(device: str = "auto") -> torch.device:
    """Return ``cuda`` when asked or available under ``auto``, else ``cpu``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def images_digest(images: np.ndarray) -> str:
    """Return the sha256 of an image array's shape, dtype and bytes."""
    digest = hashlib.sha256(f"{images.shape}|{images.dtype}".encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()


def feature_key(
    model: ModelCard,
    weights_id: str,
    dataset: DatasetCard,
    split: str,
    images_sha: str,
    pre: Preprocessing,
    layer: str,
    precision: str,
) -> str:
    """Return the cache key of one (model, weights, dataset, split, transform, layer) feature set."""
    return stable_hash(
        {
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
            # a library upgrade must re-extract, or a regression check of it would
            # compare cached numbers with themselves
            "libraries": {"torch": torch.__version__, "timm": _timm_version()},
        },
        length=32,
    )


def _timm_version() -> str:
    import timm

    return timm.__version__


def extract(
    module: torch.nn.Module,
    images: np.ndarray,
    pre: Preprocessing,
    device: torch.device,
    batch_size: int = 64,
    desc: str = "features",
) -> np.ndarray:
    """Run ``module`` over ``images`` in batches and return float32 features (N, D).

    Uses ``torch.inference_mode``, ``channels_last`` and, on CUDA, float16 autocast.
    """
    transform = eval_transform(pre)
    module = module.to(device).to(memory_format=torch.channels_last).eval()
    chunks: list[np.ndarray] = []
    use_amp = device.type == "cuda"
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=torch.float16, enabled=use_amp),
        tqdm(total=len(images), desc=desc, unit="img", leave=False, disable=None) as bar,
    ):
        for start in range(0, len(images), batch_size):
            batch = torch.stack([transform(img) for img in images[start : start + batch_size]])
            batch = batch.to(device, non_blocking=True).to(memory_format=torch.channels_last)
            out = module(batch)
            if out.ndim != 2:
                out = torch.flatten(out, 1)
            chunks.append(out.float().cpu().numpy())
            bar.update(len(batch))
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)


def cached_features(
    model: ModelCard,
    weights_id: str,
    dataset: DatasetCard,
    split: str,
    images: np.ndarray,
    pre: Preprocessing,
    load_model: Callable[[], LoadedModel],
    *,
    device: str = "auto",
    batch_size: int = 64,
    layer: str = "pooled",
) -> tuple[np.ndarray, CacheInfo]:
    """Return the features of one split, from the cache or by running the backbone once.

    Args:
        model: model card.
        weights_id: sha256 identity of the weights (see ``harness.zoo.weights_identity``).
        dataset: dataset card.
        split: split name.
        images: uint8 images of the split (after any profile subset).
        pre: the preprocessing to apply (the model's, with the profile's input size).
        load_model: builds the backbone; called only on a cache miss.
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: images per forward pass.
        layer: which features (``pooled``: the penultimate pooled vector).

    Returns:
        Features (N, D) float32 and how they were obtained.
    """
    torch_device = resolve_device(device)
    precision = "fp16-autocast" if torch_device.type == "cuda" else "fp32"
    key = feature_key(
        model, weights_id, dataset, split, images_digest(images), pre, layer, precision
    )
    path = feature_dir() / model.name / dataset.name / f"{split}-{key}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cached = _load(path, len(images))
    if cached is None:
        with FileLock(str(path) + ".lock"):
            cached = _load(path, len(images))
            if cached is None:
                _remove_stale_temporaries(path)
                features = extract(
                    load_model().module,
                    images,
                    pre,
                    torch_device,
                    batch_size,
                    desc=f"{model.name} {dataset.name}/{split}",
                )
                meta = {
                    "key": key,
                    "model": model.name,
                    "weights_sha256": weights_id,
                    "dataset": dataset.name,
                    "dataset_version": dataset.version,
                    "split": split,
                    "n": int(features.shape[0]),
                    "dim": int(features.shape[1]) if features.ndim == 2 else 0,
                    "transform": describe(pre),
                    "layer": layer,
                    "precision": precision,
                    "device": str(torch_device),
                    "seconds": round(time.perf_counter() - started, 3),
                }
                write_with(
                    path,
                    lambda handle: np.savez(
                        handle, features=features, meta=np.array(json.dumps(meta))
                    ),
                )
                _event("extract", meta)
                info = CacheInfo(key, path, hit=False, seconds=time.perf_counter() - started)
                return features, info
    _event("hit", {"key": key, "model": model.name, "dataset": dataset.name, "split": split})
    return cached, CacheInfo(key, path, hit=True, seconds=time.perf_counter() - started)


def _load(path: Path, expected_rows: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as payload:
            features = payload["features"]
    except Exception as exc:  # a corrupt file is re-extracted, never trusted
        LOG.warning("feature cache file %s is unreadable (%s); extracting again", path, exc)
        return None
    if features.shape[0] != expected_rows:
        LOG.warning(
            "feature cache file %s has %d rows, expected %d", path, len(features), expected_rows
        )
        return None
    return features


def _remove_stale_temporaries(path: Path) -> None:
    # Only the lock holder writes this key, so any temporary beside it was left by a
    # writer that was killed (SIGKILL skips the cleanup in atomic_path).
    for stale in path.parent.glob(f"{path.name}{TMP_INFIX}*"):
        stale.unlink(missing_ok=True)
        LOG.warning("removed %s, left by an interrupted extraction", stale)


def _event(kind: str, payload: dict[str, Any]) -> None:
    STATS[kind] += 1
    LOG.info(
        "feature cache %s: %s %s/%s",
        kind,
        payload.get("model"),
        payload.get("dataset"),
        payload.get("split"),
    )
    line = json.dumps({"event": kind, "pid": os.getpid(), "time": time.time(), **payload})
    # One short O_APPEND write per event: lines from concurrent workers do not interleave.
    with open(feature_dir() / EVENTS_FILE, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def read_events(directory: Path | None = None) -> list[dict[str, Any]]:
    """Return the cache's event log (hits and extractions), oldest first."""
    path = (directory or feature_dir()) / EVENTS_FILE
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill mid-write
    return events


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
