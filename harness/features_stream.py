"""Extraction at the forward limit in bounded memory: resized images once, features streamed.

:mod:`harness.data.decoded` splits the eval transform into a geometric part (resize and
crop, uint8) and a normalisation that runs batched on the device. This module stores the
geometric part per (images, geometry) as a memory-mapped ``.npy`` (so every model with
the same input size and every later run skips decoding and resizing) and runs the
backbone over it batch by batch, writing the features into an output array that may
itself be a memory map. Neither the resized images nor the features are ever held whole.

Integrity: a resized copy is trusted only when its sidecar names the same key and the
file has exactly the size its header promises; it is written under a temporary name and
renamed, so a kill leaves either nothing or a complete file.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from queue import Queue

import numpy as np
import torch

from harness.cache.mapped import release_pages
from harness.config.cards import Preprocessing
from harness.data.decoded import (
    RELEASE_EVERY,
    geometry,
    geometry_key,
    normalise_batch,
    resize_crop_batches,
)
from harness.precision import compute_precision


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _expected_bytes(path: Path) -> int | None:
    """The size a ``.npy`` file must have by its header, or None when the header is unreadable."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(handle)
            offset = handle.tell()
    except (OSError, ValueError):
        return None
    return offset + int(np.prod(shape)) * np.dtype(dtype).itemsize


def open_resized(path: Path, key: str) -> np.ndarray | None:
    """A stored resized copy as a read-only memory map, or None when absent or not trusted."""
    try:
        meta = json.loads(_sidecar(path).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != key or _expected_bytes(path) != path.stat().st_size:
        return None
    return np.load(path, mmap_mode="r")


def resized_images(
    images: np.ndarray,
    images_digest: str,
    pre: Preprocessing,
    folder: Path,
    workers: int = 0,
) -> np.ndarray:
    """The images resized and cropped to the model's geometry, from the cache or made now.

    Args:
        images: uint8 ``(N, H, W)`` or ``(N, H, W, 3)``.
        images_digest: identity of ``images`` (e.g. :func:`harness.features.images_digest`).
        pre: the model's preprocessing.
        folder: the decoded-image cache folder.
        workers: loader worker processes for resizing on a miss.

    Returns:
        A read-only uint8 memory map ``(N, S, S, 3)``.
    """
    key = geometry_key(images_digest, pre)
    path = folder / f"{key}.npy"
    found = open_resized(path, key)
    if found is not None and len(found) == len(images):
        return found
    folder.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    size = pre.input_size
    try:
        out = np.lib.format.open_memmap(
            temporary, mode="w+", dtype=np.uint8, shape=(len(images), size, size, 3)
        )
        at = 0
        for number, batch in enumerate(resize_crop_batches(images, pre, workers=workers)):
            out[at : at + len(batch)] = batch
            at += len(batch)
            if number % RELEASE_EVERY == RELEASE_EVERY - 1:
                release_pages(out)
        out.flush()
        del out
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    meta = {"key": key, "images": images_digest, "rows": len(images), **geometry(pre)}
    side = _sidecar(path)
    side_tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")
    side_tmp.write_text(json.dumps(meta, sort_keys=True))
    os.replace(side_tmp, side)
    return np.load(path, mmap_mode="r")


DECODE_WORKERS_ENV = "MEDXFER_DECODE_WORKERS"


def decoded_copy(images: np.ndarray, images_sha: str, pre: Preprocessing) -> np.ndarray | None:
    """The decoded-image cache's resized copy of ``images`` for ``pre``'s geometry.

    Made on a miss (resizing in ``$MEDXFER_DECODE_WORKERS`` loader processes, default 0)
    and shared by every model with the same input size, interpolation and crop. On a
    read-only home only an existing copy is used; None means resize on the fly.
    """
    from harness.config.paths import home, home_writable

    folder = home() / "decoded"
    if not home_writable():
        key = geometry_key(images_sha, pre)
        found = open_resized(folder / f"{key}.npy", key)
        return found if found is not None and len(found) == len(images) else None
    workers = int(os.environ.get(DECODE_WORKERS_ENV, "0") or 0)
    return resized_images(images, images_sha, pre, folder, workers=workers)


def _prefetched(resized: np.ndarray, batch_size: int, pin: bool) -> Iterator[torch.Tensor]:
    """Batches of a (memory-mapped) uint8 array, read one ahead in a thread."""
    queue: Queue[torch.Tensor | None] = Queue(maxsize=2)

    def read() -> None:
        for number, start in enumerate(range(0, len(resized), batch_size)):
            batch = torch.from_numpy(np.array(resized[start : start + batch_size]))
            queue.put(batch.pin_memory() if pin else batch)
            if number % RELEASE_EVERY == RELEASE_EVERY - 1:
                release_pages(resized)
        queue.put(None)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    while (batch := queue.get()) is not None:
        yield batch
    thread.join()


def extract_resized(
    module: torch.nn.Module,
    resized: np.ndarray,
    pre: Preprocessing,
    device: torch.device,
    batch_size: int = 64,
    precision: str = "fp32",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Run ``module`` over resized uint8 images in fixed-shape batches; features ``(N, D)``.

    Args:
        module: the backbone (returns ``(B, D)`` or something flattened to it).
        resized: uint8 ``(N, S, S, 3)``, e.g. from :func:`resized_images`.
        pre: the model's preprocessing (mean, std, histogram normalisation).
        device: where the model runs; normalisation runs there too.
        batch_size: rows per forward; the last batch is padded to it, so every forward
            has one shape (as :func:`harness.features.extract` does).
        precision: as :func:`harness.features.extract`.
        out: a float32 ``(N, D)`` array (e.g. a memory map) to write into; allocated
            after the first batch when None.

    Returns:
        ``out``, filled.
    """
    module = module.to(device).to(memory_format=torch.channels_last).eval()
    at = 0
    with torch.inference_mode(), compute_precision(device, precision):
        for batch in _prefetched(resized, batch_size, pin=device.type == "cuda"):
            rows = len(batch)
            if rows < batch_size:
                batch = torch.cat([batch, batch[-1:].expand(batch_size - rows, *batch.shape[1:])])
            features = module(normalise_batch(batch, pre, device))
            if features.ndim != 2:
                features = torch.flatten(features, 1)
            chunk = features[:rows].float().cpu().numpy()
            if out is None:
                out = np.empty((len(resized), chunk.shape[1]), dtype=np.float32)
            out[at : at + rows] = chunk
            at += rows
            if (at // rows) % RELEASE_EVERY == 0:
                release_pages(out)
    if out is None:
        return np.zeros((0, 0), dtype=np.float32)
    return out
