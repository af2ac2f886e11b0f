"""Where a dataset card's file lives, building or locating it, and loading its splits.

A card with ``builder:`` is built locally (deterministically, from pip-shipped images)
the first time it is needed, under a file lock so that pytest-xdist workers never
build the same file twice at once. A card without a builder names a file the user
obtains (``obtain:`` in the card); until it is in place, :func:`prepare` raises
:class:`~harness.data.DatasetNotPrepared` saying how to get it and where to put it.

Files live at ``<MEDXFER_HOME>/data/<name>/v<version>/<reader.file>``. A built file has a
``<file>.built.json`` marker beside it holding the card's fingerprint and the builder
code's version: when either changes, the file is rebuilt.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from filelock import FileLock

from harness.cache.atomic import write_json
from harness.config.cards import DatasetCard, stable_hash
from harness.config.paths import data_dir
from harness.data import DatasetError, DatasetNotPrepared
from harness.data.npz import SplitData, read_npz, write_npz

READERS = ("npz",)

__all__ = [
    "DatasetError",
    "DatasetNotPrepared",
    "dataset_file",
    "how_to_prepare",
    "is_prepared",
    "load_splits",
    "prepare",
]


def dataset_file(card: DatasetCard) -> Path:
    """Return the path of a dataset card's data file (it may not exist yet).

    Raises:
        DatasetError: when the card's ``reader`` has no ``file``.
    """
    name = card.reader.get("file")
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise DatasetError(
            f"{card.source_file or card.name}: field 'reader.file' must be a bare file name, "
            f"got {name!r}"
        )
    return data_dir() / card.name / f"v{card.version}" / name


def is_prepared(card: DatasetCard) -> bool:
    """Return True when the card's data file is on disk (and, if built, up to date)."""
    return _is_current(card, dataset_file(card))


def prepare(card: DatasetCard) -> Path:
    """Make sure a dataset card's file is on disk, building it when the card has a builder.

    Args:
        card: the dataset card.

    Returns:
        The data file's path.

    Raises:
        DatasetNotPrepared: when the file is missing and must be obtained by the user.
        DatasetError: when building fails.
    """
    path = dataset_file(card)
    if _is_current(card, path):
        return path
    if card.builder is None:
        raise DatasetNotPrepared(
            f"dataset {card.name!r} is not prepared: {path} does not exist. {how_to_prepare(card)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        if not _is_current(card, path):  # another process may have built it meanwhile
            write_npz(path, _build(card))
            write_json(_marker_path(path), _marker(card))
    return path


def load_splits(card: DatasetCard) -> dict[str, SplitData]:
    """Return a dataset card's train / val / test splits, preparing the file if buildable.

    Arrays are read-only and cached in-process (keyed by path and modification time).

    Raises:
        DatasetNotPrepared: when the file is missing and must be obtained by the user.
        DatasetError: when the file is malformed or the reader is unsupported.
    """
    fmt = card.reader.get("format")
    if fmt not in READERS:
        raise DatasetError(
            f"{card.source_file or card.name}: reader format {fmt!r} is not supported by "
            f"load_splits (supported: {', '.join(READERS)})"
        )
    path = prepare(card)
    stat = path.stat()
    return _read_cached(str(path), stat.st_mtime_ns, stat.st_size, card.task, card.num_classes)


def how_to_prepare(card: DatasetCard) -> str:
    """Return how to obtain a dataset card's file and where to put it (used in skip reasons)."""
    path = dataset_file(card)
    if card.builder is not None:
        return (
            f"dataset {card.name!r} is built locally by builder {card.builder.get('name')!r} "
            f"(run `medxfer prepare {card.name}`, or let the first test build it) into {path}"
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
    parts.append(f"Put the file at {path} (MEDXFER_HOME sets the root).")
    if card.license:
        parts.append(f"License: {card.license}.")
    return " ".join(parts)


def _marker_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.built.json")


def _marker(card: DatasetCard) -> dict[str, object]:
    from harness.data.demo import VERSION

    return {"card_fingerprint": stable_hash(card.fingerprint()), "builder_version": VERSION}


def _is_current(card: DatasetCard, path: Path) -> bool:
    if not path.is_file():
        return False
    if card.builder is None:
        return True
    try:
        recorded = json.loads(_marker_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return recorded == _marker(card)


def _build(card: DatasetCard) -> dict[str, SplitData]:
    from harness.data.demo import BUILDERS

    assert card.builder is not None
    params = dict(card.builder)
    name = params.pop("name")
    if name not in BUILDERS:
        raise DatasetError(
            f"{card.source_file or card.name}: field 'builder.name' is {name!r}; known "
            f"builders: {', '.join(sorted(BUILDERS))}"
        )
    params.setdefault("seed", 0)
    params.setdefault("classes", list(card.classes))
    try:
        return BUILDERS[name](**params)
    except DatasetError as exc:
        raise DatasetError(f"{card.source_file or card.name}: building failed: {exc}") from exc


@functools.lru_cache(maxsize=8)
def _read_cached(
    path: str, mtime_ns: int, size: int, task: str, num_classes: int
) -> dict[str, SplitData]:
    splits = read_npz(Path(path), task, num_classes)
    for data in splits.values():
        for array in (data.images, data.labels, data.groups):
            if array is not None:
                array.setflags(write=False)
    return splits
