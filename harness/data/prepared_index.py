"""``index.parquet``: one row per image a decoded folder dataset kept, beside its archive.

Written by :func:`harness.data.prepare.prepare` for folder datasets, under the archive's
lock, holding the archive's key (rewritten whenever the archive is), and checked against
the labels stored in the archive before it is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from harness.cache.atomic import write_with
from harness.cache.store import STORE, Entry
from harness.config.dataset_cards import DatasetCard
from harness.data import DatasetError
from harness.data.npz import NPZ_ERRORS, SPLITS
from harness.data.pipeline import context, data_root
from harness.data.registry import LABEL_POLICIES, SPLIT_RULES
from harness.data.table import FileImages, RawDataset, SplitInput, kept_paths

INDEX_NAME = "index.parquet"
INDEX_KEY = b"medxfer_key"  # the parquet metadata entry holding the archive's key


def ensure_index(card: DatasetCard, raw: RawDataset, entry: Entry) -> None:
    """Write ``index.parquet`` beside the archive unless it already holds the archive's key.

    Args:
        card: the folder dataset's card.
        raw: what its reader read (the index; images are not decoded here).
        entry: the cache entry of the decoded archive (its key text goes into the index).

    Raises:
        DatasetError: when the split rule does not reproduce the archive's labels.
    """
    target = entry.path.parent / INDEX_NAME
    if _index_key(target) == entry.text:
        return
    with STORE.lock(entry):
        if _index_key(target) == entry.text:
            return
        table = _index_table(card, raw, entry)
        import pyarrow.parquet as pq

        write_with(target, lambda handle: pq.write_table(table, handle))


def _index_key(path: Path) -> str | None:
    """The archive key stored in an index file, or None (no file, unreadable, no key)."""
    if not path.is_file():
        return None
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, ValueError):  # pyarrow raises ArrowInvalid (a ValueError) on a bad file
        return None
    value = metadata.get(INDEX_KEY)
    return None if value is None else value.decode("utf-8")


def _index_table(card: DatasetCard, raw: RawDataset, entry: Entry) -> Any:
    """One row per kept image, in the archive's order, checked against the archive's labels."""
    import pyarrow as pa

    rows, values, assignment = _assignment(card, raw)
    root = data_root(card)
    paths = raw.images.paths if isinstance(raw.images, FileImages) else None
    views = None if raw.views is None else np.char.lower(np.char.strip(raw.views.astype(str)))
    out: dict[str, list[Any]] = {
        name: [] for name in ("path", "label", "patient", "split", "view", "study", "row")
    }
    for split in SPLITS:
        index = np.asarray(assignment[split], dtype=np.int64)
        stored = _stored_labels(entry.path, split)
        stored = stored.reshape(len(stored), -1)
        labels = values[index].reshape(len(index), -1)
        if labels.shape != stored.shape or not np.array_equal(labels, stored):
            raise DatasetError(
                f"{card.source_file or card.name}: the index of {entry.path} does not match "
                f"its '{split}' split (the split rule is not deterministic?)"
            )
        source = rows[index]
        out["row"] += source.tolist()
        out["split"] += [split] * len(source)
        out["label"] += [",".join(str(v) for v in label) for label in labels.tolist()]
        out["path"] += [None if paths is None else _shown(paths[r], root) for r in source]
        for name, column in (("patient", raw.groups), ("view", views), ("study", raw.studies)):
            found = None if column is None else np.asarray(column)[source].astype(str)
            out[name] += [None] * len(source) if found is None else found.tolist()
    schema_metadata = {
        INDEX_KEY: entry.text.encode("utf-8"),
        b"medxfer_dataset": card.name.encode(),
    }
    types = {"row": pa.int64()}
    arrays = {
        name: pa.array(column, type=types.get(name, pa.string())) for name, column in out.items()
    }
    return pa.table(arrays).replace_schema_metadata(schema_metadata)


def _stored_labels(path: Path, split: str) -> np.ndarray:
    """The labels of one split as stored in an archive.

    Raises:
        DatasetError: naming the archive when it cannot be read.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            return archive[f"{split}_labels"]
    except (*NPZ_ERRORS, KeyError) as exc:
        raise DatasetError(f"{path}: cannot read '{split}_labels': {exc}") from exc


def _assignment(
    card: DatasetCard, raw: RawDataset
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The reader rows kept by the label policy, their labels, and the split rule's rows.

    What :func:`~harness.data.pipeline.make_splits` computes before it decodes images (the
    policy and rule are deterministic); the caller checks the result against the archive.
    """
    ctx = context(card)
    policy = card.label_policy or LABEL_POLICIES.parse({"name": "identity"}, ctx.card)
    labels = LABEL_POLICIES.run(policy, raw, ctx)
    rows = np.arange(len(raw)) if labels.keep is None else np.flatnonzero(labels.keep)
    values = np.asarray(labels.values)[rows].astype(np.int64)
    data = SplitInput(
        values,
        None if raw.groups is None else np.asarray(raw.groups)[rows],
        None if raw.split is None else np.asarray(raw.split)[rows],
        lambda index: raw.images.take(rows[index]),
        source_rows=rows,
        n_source=len(raw),
        paths=kept_paths(raw.images, rows, ctx.root),
    )
    return rows, values, SPLIT_RULES.run(card.split, data, ctx)


def _shown(path: Path, root: Path) -> str:
    """A path relative to the dataset folder when it lies inside, else absolute."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
