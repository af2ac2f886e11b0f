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
import mmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from queue import Full, Queue

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


_STOP_POLL_SECONDS = 0.1


class _RowReader:
    """Copies rows of an image array into a buffer: by ``pread`` for a ``.npy`` memory map.

    Touching a memory map page by page costs a page fault per 4 KiB (expensive in a
    virtual machine, and the reason reading the decoded cache, not the GPU, bounded
    extraction); one ``pread`` per batch copies straight from the page cache into the
    (pinned) buffer, releases the GIL, and adds nothing to the process's resident memory.
    Other arrays (in memory, or views of a map) are copied with NumPy, dropping the map's
    pages every ``RELEASE_EVERY`` batches.
    """

    def __init__(self, images: np.ndarray) -> None:
        self.images = images
        self.handle: int | None = None
        self.row_bytes = int(np.prod(images.shape[1:])) * images.itemsize
        self.copies = 0
        mapped_file = (
            isinstance(images, np.memmap)
            and isinstance(images.base, mmap.mmap)  # the whole map, not a view of it
            and images.flags.c_contiguous
            and images.filename is not None
        )
        if mapped_file:
            self.handle = os.open(images.filename, os.O_RDONLY)
            self.offset = int(images.offset)

    def __enter__(self) -> _RowReader:
        return self

    def __exit__(self, *_: object) -> None:
        if self.handle is not None:
            os.close(self.handle)

    def read(self, start: int, stop: int, into: np.ndarray) -> np.ndarray:
        """Rows ``start:stop`` copied into ``into`` (C-contiguous, their shape); returns it."""
        if self.handle is None:
            into[...] = self.images[start:stop]
            self.copies += 1
            if self.copies % RELEASE_EVERY == 0:
                release_pages(self.images)
            return into
        view = memoryview(into.reshape(-1).view(np.uint8))
        position, done = self.offset + start * self.row_bytes, 0
        while done < len(view):
            got = os.preadv(self.handle, [view[done:]], position + done)
            if got == 0:
                raise OSError(f"{self.images.filename}: file ends before row {stop}")
            done += got
        return into


def _device_batches(
    resized: np.ndarray, batch_size: int, device: torch.device
) -> Iterator[torch.Tensor]:
    """uint8 batches of a (memory-mapped) array on ``device``, read one ahead in a thread.

    On CUDA the reader thread copies each slice of the map into one pinned buffer and
    from there to the GPU on its own stream, so reading the map, the host-to-device copy
    and the previous batch's forward overlap. On the CPU it yields each slice copied out
    of the map. An error in the reader is raised here; stopping early stops the reader.
    """
    queue: Queue[torch.Tensor | BaseException | None] = Queue(maxsize=2)
    stop = threading.Event()
    cuda = device.type == "cuda"

    def put(item: torch.Tensor | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                queue.put(item, timeout=_STOP_POLL_SECONDS)
                return True
            except Full:
                continue
        return False

    def read() -> None:
        try:
            with _RowReader(resized) as rows:
                if cuda:
                    stream = torch.cuda.Stream(device)
                    pinned = torch.empty((batch_size, *resized.shape[1:]), dtype=torch.uint8)
                    pinned = pinned.pin_memory()
                for start in range(0, len(resized), batch_size):
                    stop_row = min(start + batch_size, len(resized))
                    if cuda:
                        host = pinned[: stop_row - start]
                        rows.read(start, stop_row, host.numpy())
                        with torch.cuda.stream(stream):
                            batch = host.to(device, non_blocking=True)
                        stream.synchronize()  # the pinned buffer is free again
                    else:
                        into = np.empty((stop_row - start, *resized.shape[1:]), resized.dtype)
                        batch = torch.from_numpy(rows.read(start, stop_row, into))
                    if not put(batch):
                        return
            put(None)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        while (item := queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            if cuda:  # allocated on the reader's stream, used on this one
                item.record_stream(torch.cuda.current_stream(device))
            yield item
    finally:
        stop.set()
        thread.join()


class _FeatureWriter:
    """Writes each batch's features into the output rows, one batch behind on CUDA.

    On CUDA the device-to-host copy of a batch's features is queued without waiting, and
    the batch before it is written out meanwhile, so the GPU always has the next forward
    queued instead of idling at every batch's copy.
    """

    def __init__(self, n_rows: int, device: torch.device, out: np.ndarray | None) -> None:
        self.n_rows = n_rows
        self.cuda = device.type == "cuda"
        self.out = out
        self.at = 0
        self.batches = 0
        self.pending: list[tuple[torch.Tensor, torch.cuda.Event | None]] = []

    def add(self, features: torch.Tensor) -> None:
        features = features.float()
        if self.cuda:
            host = torch.empty(features.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(features, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            self.pending.append((host, done))
            if len(self.pending) > 1:
                self._write(*self.pending.pop(0))
        else:
            self._write(features, None)

    def finish(self) -> np.ndarray:
        while self.pending:
            self._write(*self.pending.pop(0))
        if self.out is None:
            return np.zeros((0, 0), dtype=np.float32)
        return self.out

    def _write(self, features: torch.Tensor, done: torch.cuda.Event | None) -> None:
        if done is not None:
            done.synchronize()
        chunk = features.numpy()
        if self.out is None:
            self.out = np.empty((self.n_rows, chunk.shape[1]), dtype=np.float32)
        self.out[self.at : self.at + len(chunk)] = chunk
        self.at += len(chunk)
        self.batches += 1
        if self.batches % RELEASE_EVERY == 0:
            release_pages(self.out)


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
    writer = _FeatureWriter(len(resized), device, out)
    with torch.inference_mode(), compute_precision(device, precision):
        for batch in _device_batches(resized, batch_size, device):
            rows = len(batch)
            if rows < batch_size:
                batch = torch.cat([batch, batch[-1:].expand(batch_size - rows, *batch.shape[1:])])
            features = module(normalise_batch(batch, pre, device))
            if features.ndim != 2:
                features = torch.flatten(features, 1)
            writer.add(features[:rows])
        return writer.finish()
