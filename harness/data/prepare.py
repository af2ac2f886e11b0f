"""Where a dataset card's data lives, building or decoding it, and loading its splits.

Built and decoded datasets go through the cache service (:mod:`harness.cache.store`):
prepared under the key's file lock (so that pytest-xdist workers never prepare the same
dataset twice at once), written atomically, with the key's full text and the sha256 of
every array stored inside the archive and checked before the file is used (never trusted
by its name alone): an archive that was damaged or replaced is built or decoded again.
Archives are written uncompressed so that :func:`load_splits` can hand out each split's
images as a read-only memory map of the file (:mod:`harness.data.npz_map`). Three kinds
of card:

- **built** (``builder:``): built locally and deterministically the first time it is
  needed, into ``<MEDXFER_HOME>/data/<name>/v<version>/<reader.file>``; the key holds the
  card's fingerprint and the builder's name and version: when either changes, the file
  is rebuilt. The card's split rule runs on the builder's output before it is written
  (``disjoint_regions`` verifies it).
- **an archive used as it is** (``npz`` reader, ``identity`` labels, ``predefined``
  split): the user puts the file at ``<root>/<file>`` (``obtain:`` says how to get it).
- **a folder with an index** (every other card): the user puts the dataset folder at
  ``<root>`` (default ``<MEDXFER_HOME>/data/<name>``); the reader, label policy and split
  rule run once and the decoded arrays are cached as one ``.npz`` under
  ``<MEDXFER_HOME>/prepared/<name>/v<version>/``. The key holds the card's fingerprint
  (entry names, versions, parameters) and the sha256 of the source's index. Beside it,
  ``index.parquet`` lists the kept images (one row each: ``path``, ``label``, ``patient``,
  ``split``, ``view``, ``study``, ``row``) for users to inspect and filter what was
  prepared; it holds the archive's key and is rewritten whenever the archive is.

Until a user-supplied source is in place, :func:`prepare` raises
:class:`~harness.data.DatasetNotPrepared` saying how to get it and where to put it.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import IO, Any

import numpy as np

from harness.cache.codecs import check_content
from harness.cache.keys import arrays_digest, stable_hash
from harness.cache.store import STORE, Entry, KeyMismatch, Namespace
from harness.config.dataset_cards import DatasetCard
from harness.config.paths import data_dir, prepared_dir
from harness.data import DatasetError, DatasetNotPrepared
from harness.data.npz import (
    META_KEY,
    SplitData,
    meta_array,
    npz_arrays,
    read_npz,
    read_npz_meta,
)
from harness.data.npz_map import archive_digest
from harness.data.pil_resize import pillow_resizes
from harness.data.pipeline import (
    context,
    data_root,
    make_splits,
    raw_from_splits,
    read_raw,
    reads_as_is,
    required_paths,
)
from harness.data.prepared_index import INDEX_NAME, ensure_index
from harness.data.registry import BUILDERS

PREPARED_LAYOUT = 1


class SplitArchive:
    """Codec of built and decoded datasets: one MedMNIST-layout ``.npz``, uncompressed.

    Its ``meta_json`` holds the key text (``key``) and the sha256 of its arrays
    (``content_sha256``, :func:`~harness.cache.keys.arrays_digest`). Reading checks both;
    the checksum is computed once per process and file version (path, size, times,
    inode), streaming through memory-mapped members (:func:`harness.data.npz_map.archive_digest`).
    The archive is written uncompressed (``np.savez``) so that :func:`load_splits` can map
    each split's images read-only instead of reading them into memory; archives written
    compressed by an older medxfer are still read, whole.
    """

    def write(self, handle: IO[bytes], value: dict[str, SplitData], entry: Entry) -> None:
        """Write the splits (uncompressed, mappable) with the key text and their checksum."""
        arrays = npz_arrays(value, str(entry.path))
        meta = {"key": entry.text, "content_sha256": arrays_digest(arrays)}
        np.savez(handle, **arrays, **{META_KEY: meta_array(meta)})

    def read(self, path: Path, entry: Entry) -> Path:
        """Return ``path`` when it holds ``entry``'s key and its arrays match their checksum.

        Raises:
            KeyMismatch: when the archive holds another key (or none).
            Damaged: when its arrays do not match the stored checksum.
            ValueError: when it is not a readable ``.npz``.
        """
        meta = read_npz_meta(path)
        if meta is None:
            raise ValueError("not a readable .npz with a stored key")
        if meta.get("key") != entry.text:
            raise KeyMismatch("the stored key differs")
        check_content(meta.get("content_sha256"), _archive_digest(path))
        return path

    def summary(self, value: dict[str, SplitData]) -> dict[str, Any]:
        """Images per split."""
        return {"images": {name: len(data.labels) for name, data in value.items()}}


BUILT = Namespace("data", SplitArchive(), suffix=".npz")
DECODED = Namespace("prepared", SplitArchive(), suffix=".npz")

__all__ = [
    "DatasetError",
    "DatasetNotPrepared",
    "dataset_file",
    "how_to_prepare",
    "index_file",
    "is_prepared",
    "load_splits",
    "prepare",
]


def dataset_file(card: DatasetCard) -> Path:
    """Return the path of the ``.npz`` the harness reads for a card (it may not exist yet).

    A built card's file, the user's archive, or the decoded copy of a folder dataset.
    """
    if card.builder is not None:
        return data_dir() / card.name / f"v{card.version}" / card.reader.params.file
    if reads_as_is(card):
        return data_root(card) / card.reader.params.file
    return prepared_dir() / card.name / f"v{card.version}" / f"{card.name}.npz"


def index_file(card: DatasetCard) -> Path:
    """Return the path of the ``index.parquet`` beside a decoded folder dataset's ``.npz``.

    Only folder datasets (neither built nor read as they are) have one, written by
    :func:`prepare`.
    """
    return dataset_file(card).parent / INDEX_NAME


def is_prepared(card: DatasetCard) -> bool:
    """Return True when the card can be loaded without the user doing anything.

    Built cards: the file is built and up to date. Other cards: the source (archive, or
    the folder's index files) is in place; a folder is decoded on first use.
    """
    if card.builder is not None:
        return STORE.load(BUILT, _built_entry(card)) is not None
    return all(path.exists() for path in required_paths(card))


def prepare(card: DatasetCard) -> Path:
    """Make sure a card's ``.npz`` is on disk and current: build it, decode it, or find it.

    Returns:
        The path of the ``.npz`` (see :func:`dataset_file`).

    Raises:
        DatasetNotPrepared: when the source must be obtained by the user first.
        DatasetError: when building or decoding fails (naming the card, file, field).
    """
    path = dataset_file(card)
    facts = {"dataset": card.name, "version": card.version}
    if card.builder is not None:
        entry = _built_entry(card)
        _check_storable(card, BUILT, entry)
        STORE.get_or_compute(BUILT, entry, lambda: _build(card), describe=facts)
        return path
    missing = [p for p in required_paths(card) if not p.exists()]
    if missing:
        raise DatasetNotPrepared(
            f"dataset {card.name!r} is not prepared: {missing[0]} does not exist. "
            f"{how_to_prepare(card)}"
        )
    if reads_as_is(card):
        return path
    raw = read_raw(card)  # the index only: images decode on a miss
    entry = STORE.entry(
        DECODED, _prepared_key(card, raw.digest), folder=path.parent, name=path.name
    )
    _check_storable(card, DECODED, entry)
    STORE.get_or_compute(DECODED, entry, lambda: make_splits(card, raw), describe=facts)
    ensure_index(card, raw, entry)
    return path


def load_splits(card: DatasetCard) -> dict[str, SplitData]:
    """Return a dataset card's train / val / test splits, preparing them if needed.

    Arrays are read-only and cached in-process (keyed by path and modification time).
    Each split's images are a read-only ``np.memmap`` of the archive when it stores them
    uncompressed (every archive medxfer builds or decodes; see :mod:`harness.data.npz_map`),
    so they are paged in from disk as rows are used rather than held in memory.

    Raises:
        DatasetNotPrepared: when the source must be obtained by the user first.
        DatasetError: when the data is malformed.
    """
    path = prepare(card)
    stat = path.stat()
    # a built or decoded archive's sha256 was checked by prepare(); a user's is CRC-checked
    checked = card.builder is not None or not reads_as_is(card)
    return _read_cached(
        str(path), stat.st_mtime_ns, stat.st_size, card.task, card.num_classes, checked
    )


def how_to_prepare(card: DatasetCard) -> str:
    """Return how to obtain a dataset card's data and where to put it (used in skip reasons)."""
    path = dataset_file(card)
    if card.builder is not None:
        return (
            f"dataset {card.name!r} is built locally by builder {card.builder.name!r} "
            f"v{card.builder.version} (run `medxfer prepare {card.name}`, or let the first "
            f"test build it) into {path}"
        )
    obtain = card.obtain
    parts: list[str] = []
    if obtain.get("url"):
        checksums = [f"{key} {obtain[key]}" for key in ("md5", "sha256") if obtain.get(key)]
        check = f" (check {', '.join(checksums)})" if checksums else ""
        parts.append(f"Download {obtain['url']}{check}.")
    if obtain.get("credentials"):
        parts.append(f"Credentials: {obtain['credentials']}.")
    if obtain.get("instructions"):
        parts.append(str(obtain["instructions"]).strip())
    if reads_as_is(card):
        parts.append(f"Put the file at {path} (MEDXFER_HOME sets the root).")
    else:
        needed = ", ".join(str(p) for p in required_paths(card))
        parts.append(
            f"Put the dataset folder at {data_root(card)} (the reader's 'root', or "
            f"MEDXFER_HOME) so that {needed} exists; reader {card.reader.name!r} reads it and "
            f"`medxfer prepare {card.name}` (or the first test) decodes it into {path}."
        )
    if card.license:
        parts.append(f"License: {card.license}.")
    return " ".join(parts)


# --------------------------------------------------------------------------- helpers


def _check_storable(card: DatasetCard, namespace: Namespace[Any], entry: Entry) -> None:
    """Refuse early to build a dataset that a read-only cache home could not store.

    Raises:
        DatasetNotPrepared: when the home is read-only and holds no usable archive.
    """
    if STORE.writable() or STORE.load(namespace, entry) is not None:
        return
    raise DatasetNotPrepared(
        f"dataset {card.name!r} is not prepared: {entry.path} is missing or not current, and "
        "the cache home is read-only (MEDXFER_CACHE_READONLY=1, or not writable); prepare it "
        "in a writable MEDXFER_HOME first"
    )


def _built_entry(card: DatasetCard) -> Entry:
    assert card.builder is not None
    path = dataset_file(card)
    key = {
        "card_fingerprint": stable_hash(card.fingerprint()),
        "builder": card.builder.name,
        "builder_version": card.builder.version,
        "image_processing": _image_processing(card),
    }
    return STORE.entry(BUILT, key, folder=path.parent, name=path.name)


def _build(card: DatasetCard) -> dict[str, SplitData]:
    """Run the card's builder, then its label policy and split rule over the result."""
    assert card.builder is not None
    where = card.source_file or card.name
    try:
        splits = BUILDERS.run(card.builder, context(card))
        return make_splits(card, raw_from_splits(splits))
    except DatasetError as exc:
        raise DatasetError(f"{where}: building with {card.builder.name!r} failed: {exc}") from exc


def _prepared_key(card: DatasetCard, digest: str) -> dict[str, Any]:
    entries = {"reader": card.reader, "label_policy": card.label_policy, "split": card.split}
    return {
        "layout": PREPARED_LAYOUT,
        "card_fingerprint": stable_hash(card.fingerprint()),
        "entries": {
            field: f"{spec.name} v{spec.version}"
            for field, spec in entries.items()
            if spec is not None
        },
        "index_sha256": digest,
        "image_processing": _image_processing(card),
        **_split_files_digest(card),
    }


def _image_processing(card: DatasetCard) -> dict[str, str]:
    """Versions of the libraries that decode and fit the card's images (an upgrade
    re-prepares), and the pass order of the readers' resizes."""
    libraries = pillow_resizes()
    params = card.reader.params if card.reader is not None else None
    if getattr(params, "graham", None) is not None:  # the only reader field that runs OpenCV
        from harness.data.readers.graham import opencv_version

        libraries["opencv"] = opencv_version()
    return libraries


def _split_files_digest(card: DatasetCard) -> dict[str, str]:
    """The sha256 of the files a split rule reads (``fold_files``), so an edit rebuilds.

    Empty for rules that read no file, so the keys of their prepared data do not change.
    """
    listed = getattr(card.split.params, "paths", None) if card.split is not None else None
    if listed is None:
        return {}
    digest = hashlib.sha256()
    for path in listed(context(card).root):
        try:
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        except OSError as exc:
            raise DatasetError(
                f"{card.source_file or card.name}: split file {path}: {exc}"
            ) from exc
    return {"split_files_sha256": digest.hexdigest()}


def _archive_digest(path: Path) -> str:
    """:func:`~harness.cache.keys.arrays_digest` of an archive's arrays (meta left out)."""
    stat = path.stat()
    return _archive_digest_of(
        str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns
    )


@functools.lru_cache(maxsize=64)
def _archive_digest_of(path: str, size: int, mtime_ns: int, ino: int, ctime_ns: int) -> str:
    return archive_digest(Path(path), skip=(META_KEY,))


@functools.lru_cache(maxsize=8)
def _read_cached(
    path: str, mtime_ns: int, size: int, task: str, num_classes: int, checked: bool
) -> dict[str, SplitData]:
    # images are read-only memory maps of the archive (read whole when compressed)
    splits = read_npz(Path(path), task, num_classes, mmap=True, check_crc=not checked)
    for data in splits.values():
        for array in (data.images, data.labels, data.groups, data.views, data.studies):
            if array is not None:
                array.setflags(write=False)
    return splits
