"""The MedMNIST ``.npz`` layout: reader and atomic writer.

One archive holds three splits. For each split ``s`` in ``train``, ``val``, ``test``:

- ``{s}_images``: uint8, ``(N, H, W)`` grayscale or ``(N, H, W, 3)`` RGB;
- ``{s}_labels``: integers, ``(N, 1)`` (or ``(N,)``) for binary / multiclass / ordinal
  tasks, ``(N, C)`` of 0/1 for multilabel tasks;
- ``{s}_groups`` (optional, not in MedMNIST): int64 ``(N,)``, e.g. source image or
  patient id, for grouped resampling.
- ``{s}_views`` (optional): unicode strings ``(N,)``, each image's view (``frontal``,
  ``lateral``, ``left``, ``right``) for multi-view pairing.
- ``{s}_studies`` (optional): int64 ``(N,)``, the acquisition (study) whose views pair.
- ``{s}_soft`` and ``{s}_soft_range`` (optional): bool, the labels' shape, marking labels
  whose training target is label-smoothed (CheXpert LSR), and float64 ``(2,)``, the
  uniform range those targets are drawn from (:mod:`harness.data.soft_targets`).

Real MedMNIST files (``pneumoniamnist.npz`` ...) are read by the same reader.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from harness.cache.atomic import write_with
from harness.data import DatasetError
from harness.data.npz_map import Member, members, read_member
from harness.data.table import SoftTargets, take_soft

SPLITS = ("train", "val", "test")
META_KEY = "meta_json"
#: What reading a damaged ``.npz`` raises (zlib: a corrupt compressed member; EOFError:
#: a member cut short); readers turn these into a :class:`DatasetError` naming the file.
NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


@dataclass(frozen=True, eq=False)
class SplitData:
    """One split of a dataset: images, labels and optional per-image ids.

    Attributes:
        images: uint8 ``(N, H, W)`` or ``(N, H, W, 3)``.
        labels: int64 ``(N,)`` (binary / multiclass / ordinal) or ``(N, C)`` (multilabel).
        groups: int64 ``(N,)`` group ids (source image, patient), or None.
        views: str ``(N,)`` lowercase view names (``frontal``, ``left``...), or None.
        studies: int64 ``(N,)`` ids of the study whose views pair, or None.
        soft: labels whose training target is label-smoothed (the labels stay the hard
            ones every metric scores), or None.
    """

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray | None = None
    views: np.ndarray | None = None
    studies: np.ndarray | None = None
    soft: SoftTargets | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if len(self.labels) != n:
            raise ValueError(f"SplitData: {n} images but {len(self.labels)} labels")
        for name in ("groups", "views", "studies"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"SplitData: {n} images but {len(value)} {name}")
        if self.soft is not None and np.shape(self.soft.mask) != np.shape(self.labels):
            raise ValueError(
                f"SplitData: soft-target marks of shape {np.shape(self.soft.mask)} for labels "
                f"of shape {np.shape(self.labels)}"
            )

    def __len__(self) -> int:
        return len(self.images)

    def take(self, index: np.ndarray) -> SplitData:
        """The rows ``index`` of every per-image array (images, labels, groups, views, studies)."""
        index = np.asarray(index, dtype=np.int64)
        return SplitData(
            images=self.images[index],
            labels=self.labels[index],
            **{
                name: None if getattr(self, name) is None else getattr(self, name)[index]
                for name in ("groups", "views", "studies")
            },
            soft=take_soft(self.soft, index),
        )


def read_npz(
    path: Path, task: str, num_classes: int, mmap: bool = False, check_crc: bool = True
) -> dict[str, SplitData]:
    """Read and validate a MedMNIST-layout ``.npz`` archive.

    Args:
        path: the archive.
        task: ``binary``, ``multiclass``, ``ordinal`` or ``multilabel``.
        num_classes: number of classes (labels must lie in ``0..num_classes-1``; for
            multilabel, the label width).
        mmap: map each split's images read-only from the archive file instead of reading
            them (:mod:`harness.data.npz_map`); a compressed images member is read whole,
            with a note. Labels and ids are always read.
        check_crc: with ``mmap``, check each mapped member's zip CRC-32 first (a whole read
            checks it anyway); False when the caller has checked the archive's content
            already (the sha256 a cache archive stores).

    Returns:
        ``{"train": SplitData, "val": SplitData, "test": SplitData}``; labels are int64,
        squeezed to ``(N,)`` unless the task is multilabel.

    Raises:
        DatasetError: naming the file and the key at fault.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: dataset file not found")
    if not zipfile.is_zipfile(path):
        raise DatasetError(f"{path}: not an .npz archive (not a zip file)")
    try:
        archive = np.load(path, allow_pickle=False)
        layout = members(path) if mmap else {}
    except NPZ_ERRORS as exc:
        raise DatasetError(f"{path}: cannot open as .npz: {exc}") from exc
    with archive:
        keys = set(archive.files)
        splits: dict[str, SplitData] = {}
        image_shape: tuple[int, ...] | None = None
        for split in SPLITS:
            images = _images(archive, keys, path, f"{split}_images", layout, check_crc)
            labels = _array(archive, keys, path, f"{split}_labels")
            groups_key = f"{split}_groups"
            groups = _array(archive, keys, path, groups_key) if groups_key in keys else None
            views, studies = _optional_ids(archive, keys, path, split, len(images))
            _check_images(images, path, f"{split}_images")
            if image_shape is not None and images.shape[1:] != image_shape:
                raise DatasetError(
                    f"{path}: key '{split}_images' has image shape {images.shape[1:]}, "
                    f"but '{SPLITS[0]}_images' has {image_shape}"
                )
            image_shape = images.shape[1:]
            labels = _check_labels(labels, len(images), task, num_classes, path, split)
            if groups is not None:
                groups = _check_groups(groups, len(images), path, groups_key)
            soft = _optional_soft(archive, keys, path, split, labels.shape)
            splits[split] = SplitData(
                images, labels, groups, views=views, studies=studies, soft=soft
            )
    return splits


def write_npz(
    path: Path, splits: dict[str, SplitData], meta: Mapping[str, Any] | None = None
) -> None:
    """Atomically write splits in the MedMNIST ``.npz`` layout (see :func:`save_npz`).

    A reader never sees a partial file.
    """
    write_with(Path(path), lambda handle: save_npz(handle, splits, meta, where=str(path)))


def save_npz(
    handle: IO[bytes],
    splits: dict[str, SplitData],
    meta: Mapping[str, Any] | None = None,
    where: str = "<npz>",
) -> None:
    """Write splits in the MedMNIST ``.npz`` layout (compressed) to an open binary file.

    One-dimensional labels are stored as ``(N, 1)`` like MedMNIST; groups, views and
    studies are stored when present.

    Args:
        handle: the binary file to write.
        splits: must contain exactly ``train``, ``val`` and ``test``.
        meta: JSON-serialisable facts stored under the key ``meta_json`` (read back by
            :func:`read_npz_meta`); readers of the layout ignore it.
        where: the archive's name in errors.

    Raises:
        DatasetError: when a split is missing or unexpected.
    """
    arrays = npz_arrays(splits, where)
    if meta is not None:
        arrays[META_KEY] = meta_array(meta)
    np.savez_compressed(handle, **arrays)


def meta_array(meta: Mapping[str, Any]) -> np.ndarray:
    """The ``meta_json`` entry of an archive: ``meta`` as sorted JSON text."""
    return np.asarray(json.dumps(dict(meta), sort_keys=True, default=str))


def npz_arrays(splits: dict[str, SplitData], where: str = "<npz>") -> dict[str, np.ndarray]:
    """The arrays :func:`save_npz` writes for ``splits`` (without ``meta_json``).

    Raises:
        DatasetError: when a split is missing or unexpected.
    """
    if set(splits) != set(SPLITS):
        raise DatasetError(
            f"{where}: write_npz needs splits {', '.join(SPLITS)}, got {', '.join(sorted(splits))}"
        )
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        data = splits[split]
        labels = np.asarray(data.labels)
        arrays[f"{split}_images"] = np.asarray(data.images)
        arrays[f"{split}_labels"] = labels.reshape(-1, 1) if labels.ndim == 1 else labels
        if data.groups is not None:
            arrays[f"{split}_groups"] = np.asarray(data.groups, dtype=np.int64)
        if data.views is not None:
            arrays[f"{split}_views"] = np.asarray(data.views).astype(str)
        if data.studies is not None:
            arrays[f"{split}_studies"] = np.asarray(data.studies, dtype=np.int64)
        if data.soft is not None:
            mask = np.asarray(data.soft.mask, dtype=bool)
            arrays[f"{split}_soft"] = mask.reshape(-1, 1) if mask.ndim == 1 else mask
            arrays[f"{split}_soft_range"] = np.asarray(
                [data.soft.low, data.soft.high], dtype=np.float64
            )
    return arrays


def read_npz_meta(path: Path) -> dict[str, Any] | None:
    """Return the ``meta`` stored by :func:`write_npz`, or None (no file, no meta, unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if META_KEY not in archive.files:
                return None
            value = json.loads(str(archive[META_KEY]))
    except (*NPZ_ERRORS, KeyError):
        return None
    return value if isinstance(value, dict) else None


# --------------------------------------------------------------------------- checks


def _array(archive: np.lib.npyio.NpzFile, keys: set[str], path: Path, key: str) -> np.ndarray:
    if key not in keys:
        raise DatasetError(f"{path}: missing key '{key}' (keys present: {', '.join(sorted(keys))})")
    try:
        return archive[key]
    except NPZ_ERRORS as exc:
        raise DatasetError(
            f"{path}: key '{key}' cannot be read ({type(exc).__name__}: {exc}); the file is damaged"
        ) from exc


def _images(
    archive: np.lib.npyio.NpzFile,
    keys: set[str],
    path: Path,
    key: str,
    layout: dict[str, Member],
    check_crc: bool,
) -> np.ndarray:
    """One images array: mapped from the file when ``layout`` lists it, else read."""
    if key not in layout:
        return _array(archive, keys, path, key)
    try:
        return read_member(path, layout[key], mmap=True, check=check_crc)
    except NPZ_ERRORS as exc:
        raise DatasetError(
            f"{path}: key '{key}' cannot be mapped ({type(exc).__name__}: {exc}); the file is "
            "damaged"
        ) from exc


def _check_images(images: np.ndarray, path: Path, key: str) -> None:
    if images.dtype != np.uint8:
        raise DatasetError(f"{path}: key '{key}' must be uint8, got {images.dtype}")
    rgb = images.ndim == 4 and images.shape[-1] == 3
    if images.ndim != 3 and not rgb:
        raise DatasetError(
            f"{path}: key '{key}' must have shape (N, H, W) or (N, H, W, 3), got {images.shape}"
        )
    if len(images) == 0:
        raise DatasetError(f"{path}: key '{key}' holds no images")


def _check_labels(
    labels: np.ndarray, n: int, task: str, num_classes: int, path: Path, split: str
) -> np.ndarray:
    key = f"{split}_labels"
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise DatasetError(f"{path}: key '{key}' must hold integers, got {labels.dtype}")
    if len(labels) != n:
        raise DatasetError(
            f"{path}: key '{key}' has {len(labels)} labels but '{split}_images' has {n} images"
        )
    if task == "multilabel":
        if labels.ndim != 2 or labels.shape[1] != num_classes:
            raise DatasetError(
                f"{path}: key '{key}' must have shape (N, {num_classes}) for a multilabel "
                f"task, got {labels.shape}"
            )
        if labels.size and (labels.min() < 0 or labels.max() > 1):
            raise DatasetError(f"{path}: key '{key}' must hold 0/1 for a multilabel task")
        return labels.astype(np.int64)
    if not (labels.ndim == 1 or (labels.ndim == 2 and labels.shape[1] == 1)):
        raise DatasetError(
            f"{path}: key '{key}' must have shape (N,) or (N, 1), got {labels.shape}"
        )
    flat = labels.reshape(-1).astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= num_classes):
        raise DatasetError(
            f"{path}: key '{key}' has labels in {flat.min()}..{flat.max()}, outside "
            f"0..{num_classes - 1} ({num_classes} classes)"
        )
    return flat


def _check_groups(groups: np.ndarray, n: int, path: Path, key: str) -> np.ndarray:
    if not np.issubdtype(groups.dtype, np.integer):
        raise DatasetError(f"{path}: key '{key}' must hold integers, got {groups.dtype}")
    if groups.shape != (n,):
        raise DatasetError(f"{path}: key '{key}' must have shape ({n},), got {groups.shape}")
    return groups.astype(np.int64)


def _optional_ids(
    archive: np.lib.npyio.NpzFile, keys: set[str], path: Path, split: str, n: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    views = studies = None
    key = f"{split}_views"
    if key in keys:
        views = _array(archive, keys, path, key)
        if views.dtype.kind != "U":
            raise DatasetError(f"{path}: key '{key}' must hold strings, got {views.dtype}")
        if views.shape != (n,):
            raise DatasetError(f"{path}: key '{key}' must have shape ({n},), got {views.shape}")
    key = f"{split}_studies"
    if key in keys:
        studies = _check_groups(_array(archive, keys, path, key), n, path, key)
    return views, studies


def _optional_soft(
    archive: np.lib.npyio.NpzFile, keys: set[str], path: Path, split: str, shape: tuple[int, ...]
) -> SoftTargets | None:
    key, range_key = f"{split}_soft", f"{split}_soft_range"
    if key not in keys:
        return None
    mask = _array(archive, keys, path, key)
    bounds = _array(archive, keys, path, range_key)
    if mask.dtype != np.bool_ or mask.size != int(np.prod(shape)):
        raise DatasetError(
            f"{path}: key '{key}' must hold booleans of the labels' shape {shape}, got "
            f"{mask.dtype} {mask.shape}"
        )
    if bounds.shape != (2,) or not 0.0 <= bounds[0] <= bounds[1] <= 1.0:
        raise DatasetError(f"{path}: key '{range_key}' must hold 0 <= low <= high <= 1")
    return SoftTargets(mask.reshape(shape), float(bounds[0]), float(bounds[1]))
