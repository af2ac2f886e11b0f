"""The ``hdf5`` reader: images and labels as HDF5 datasets, one pair per source split.

PatchCamelyon's layout (Veeling et al., 2018) is one file per split and kind::

    camelyonpatch_level_2_split_train_x.h5   dataset "x": (N, 96, 96, 3) uint8
    camelyonpatch_level_2_split_train_y.h5   dataset "y": (N, 1, 1, 1) uint8
    ... _valid_x.h5 / _valid_y.h5, _test_x.h5 / _test_y.h5

A card names, per source split, ``<file>:<dataset>`` of the images and of the labels::

    reader:
      format: hdf5
      images: {train: "camelyonpatch_level_2_split_train_x.h5:x", valid: ..., test: ...}
      labels: {train: "camelyonpatch_level_2_split_train_y.h5:y", valid: ..., test: ...}

Labels are flattened to one value per image (PCam's ``(N, 1, 1, 1)``) unless they hold
several columns (multilabel indicators). Images are read from the file only for the rows
asked for, so a 7 GB training file is never loaded whole. Needs ``h5py``
(``pip install "medxfer[hdf5]"``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from harness.cache.keys import file_sha256
from harness.data import DatasetError
from harness.data.registry import register_reader
from harness.data.table import DatasetContext, RawDataset


def _parse(spec: str) -> tuple[str, str]:
    file, sep, dataset = spec.rpartition(":")
    if not sep or not file or not dataset:
        raise ValueError(f"{spec!r} must look like '<file>:<dataset>'")
    parts = PurePosixPath(file).parts
    if PurePosixPath(file).is_absolute() or ".." in parts:
        raise ValueError(f"{spec!r}: the file must be a path inside the root (no '..')")
    return file, dataset


@dataclass(frozen=True, kw_only=True)
class Hdf5Params:
    """Which HDF5 datasets hold each source split's images and labels.

    Attributes:
        images: source split -> ``<file>:<dataset>`` of uint8 images (N, H, W[, 3]).
        labels: source split -> ``<file>:<dataset>`` of labels (N, ...) with N rows.
        root: the folder holding the files (absolute, ``~``, or relative to the card
            folder); by default ``<MEDXFER_HOME>/data/<name>``.
    """

    images: dict[str, str]
    labels: dict[str, str]
    root: str | None = None

    def validate(self) -> None:
        """Same splits on both sides, every entry ``<file>:<dataset>`` inside the root."""
        if not self.images:
            raise ValueError("'images' names no split")
        if set(self.images) != set(self.labels):
            raise ValueError(
                f"'images' splits {sorted(self.images)} differ from 'labels' splits "
                f"{sorted(self.labels)}"
            )
        for spec in [*self.images.values(), *self.labels.values()]:
            _parse(spec)

    def paths(self, root: Path) -> tuple[Path, ...]:
        """Every file named, which must exist before the dataset can be read."""
        files = {_parse(spec)[0] for spec in [*self.images.values(), *self.labels.values()]}
        return tuple(root / name for name in sorted(files))


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as exc:  # an optional dependency
        raise DatasetError(
            'the hdf5 reader needs h5py: pip install "medxfer[hdf5]" (or pip install h5py)'
        ) from exc
    return h5py


@dataclass(frozen=True, eq=False)
class Hdf5Images:
    """Images in HDF5 datasets (one per source split), read row by row when taken.

    Attributes:
        parts: ``(file, dataset)`` per source split, in row order.
        sizes: rows in each part.
        card: the card, for error messages.
    """

    parts: tuple[tuple[Path, str], ...]
    sizes: tuple[int, ...]
    card: str

    def __len__(self) -> int:
        return sum(self.sizes)

    def take(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        which = np.searchsorted(offsets, rows, side="right") - 1
        h5py = _h5py()
        out: np.ndarray | None = None
        for index, (path, name) in enumerate(self.parts):
            mask = which == index
            if not mask.any():
                continue
            local = rows[mask] - offsets[index]
            order = np.argsort(local, kind="stable")
            unique, inverse = np.unique(local[order], return_inverse=True)
            with h5py.File(path, "r") as handle:
                block = handle[name][unique]  # h5py reads increasing indices only
            if block.dtype != np.uint8:
                raise DatasetError(f"{self.card}: {path}:{name} holds {block.dtype}, not uint8")
            if out is None:
                out = np.empty((len(rows), *block.shape[1:]), dtype=np.uint8)
            elif block.shape[1:] != out.shape[1:]:
                raise DatasetError(
                    f"{self.card}: {path}:{name} images have shape {block.shape[1:]}, "
                    f"others {out.shape[1:]}"
                )
            taken = np.empty((len(local), *block.shape[1:]), dtype=np.uint8)
            taken[order] = block[inverse]
            out[mask] = taken
        if out is None:
            raise DatasetError(f"{self.card}: no images to read")
        return out


@register_reader("hdf5", version=1, params=Hdf5Params)
def read_hdf5(params: Hdf5Params, ctx: DatasetContext) -> RawDataset:
    """Images and labels from HDF5 datasets, one pair per source split (PatchCamelyon)."""
    h5py = _h5py()
    parts: list[tuple[Path, str]] = []
    labels: list[np.ndarray] = []
    split_names: list[np.ndarray] = []
    digest = hashlib.sha256()
    for split in params.images:
        image_file, image_set = _parse(params.images[split])
        label_file, label_set = _parse(params.labels[split])
        label_array, n_images = None, 0
        for file, name, kind in (
            (image_file, image_set, "images"),
            (label_file, label_set, "labels"),
        ):
            path = ctx.root / file
            if not path.is_file():
                raise DatasetError(f"{ctx.card}: HDF5 file {path} not found")
            try:
                with h5py.File(path, "r") as handle:
                    if name not in handle:
                        raise DatasetError(
                            f"{path}: no dataset {name!r} (datasets: {', '.join(handle)}); "
                            f"see the card's field 'reader.{kind}.{split}'"
                        )
                    if kind == "images":
                        n_images = int(handle[name].shape[0])
                    else:
                        label_array = np.asarray(handle[name][()])
            except OSError as exc:
                raise DatasetError(f"{ctx.card}: cannot read HDF5 file {path}: {exc}") from exc
            digest.update(f"{split}\0{file}\0{name}\0{file_sha256(path)}\n".encode())
        assert label_array is not None
        label_array = label_array.reshape(len(label_array), -1)
        if label_array.shape[1] == 1:
            label_array = label_array[:, 0]
        if len(label_array) != n_images:
            raise DatasetError(
                f"{ctx.card}: split {split!r} has {n_images} images but {len(label_array)} labels"
            )
        parts.append((ctx.root / image_file, image_set))
        labels.append(label_array)
        split_names.append(np.full(n_images, split, dtype=object))
    return RawDataset(
        columns={"label": np.concatenate(labels)},
        images=Hdf5Images(tuple(parts), tuple(len(y) for y in labels), ctx.card),
        digest=digest.hexdigest(),
        split=np.concatenate(split_names).astype(str),
    )
