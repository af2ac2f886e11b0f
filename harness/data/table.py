"""What readers, label policies and split rules pass to each other.

A reader returns a :class:`RawDataset`: one row per image, with the raw label table
(columns as the source stores them: CSV strings, folder names, integer arrays), optional
group keys (patient, study, source image), optional split names given by the source,
and the images as an :class:`ImageSource` that decodes only the rows asked for. A label
policy turns the raw table into :class:`Labels`; a split rule turns a
:class:`SplitInput` into row indices per split.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from harness.data import DatasetError

DECODE_THREADS = min(8, os.cpu_count() or 1)


@dataclass(frozen=True)
class DatasetContext:
    """What an entry knows about the card it runs for.

    Attributes:
        card: the card file (or the dataset name), for error messages.
        name: the dataset name.
        task: ``binary``, ``multiclass``, ``ordinal`` or ``multilabel``.
        classes: the class names, in label order.
        root: the dataset's data folder (readers resolve their files against it).
    """

    card: str
    name: str
    task: str
    classes: tuple[str, ...]
    root: Path


class ImageSource(Protocol):
    """Images by row, decoded on demand."""

    def __len__(self) -> int: ...

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Return uint8 images ``(len(rows), H, W)`` or ``(len(rows), H, W, 3)``."""
        ...


@dataclass(frozen=True, eq=False)
class ArrayImages:
    """Images held as arrays (one per source split), loaded on first use.

    ``take`` of a contiguous ascending run inside one part returns a view, not a copy.

    Attributes:
        sizes: rows in each part, in order.
        load: returns the parts (uint8 ``(N_i, H, W[, 3])``).
    """

    sizes: tuple[int, ...]
    load: Callable[[], Sequence[np.ndarray]]
    _parts: list[Sequence[np.ndarray]] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return sum(self.sizes)

    def parts(self) -> Sequence[np.ndarray]:
        """The loaded parts (loaded once)."""
        if not self._parts:
            self._parts.append(self.load())
        return self._parts[0]

    def take(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        parts = self.parts()
        offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        if len(rows) and np.all(np.diff(rows) == 1):
            part = int(np.searchsorted(offsets, rows[0], side="right")) - 1
            if rows[-1] < offsets[part + 1]:
                start = int(rows[0] - offsets[part])
                return parts[part][start : start + len(rows)]
        shapes = {part.shape[1:] for part in parts}
        if len(shapes) > 1:
            raise DatasetError(f"image arrays of different shapes {sorted(shapes)} cannot be mixed")
        out = np.empty((len(rows), *parts[0].shape[1:]), dtype=np.uint8)
        which = np.searchsorted(offsets, rows, side="right") - 1
        for index, part in enumerate(parts):
            mask = which == index
            out[mask] = part[rows[mask] - offsets[index]]
        return out


@dataclass(frozen=True, eq=False)
class FileImages:
    """Images in files, decoded (and resized to one shape) when taken.

    Attributes:
        paths: one file per row.
        decode: reads one file into a uint8 array; any exception is reported with the file.
        card: the card, for error messages.
    """

    paths: tuple[Path, ...]
    decode: Callable[[Path], np.ndarray]
    card: str

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, rows: np.ndarray) -> np.ndarray:
        paths = [self.paths[int(row)] for row in rows]
        if not paths:
            raise DatasetError(f"{self.card}: no images to read")
        first = self._one(paths[0])
        out = np.empty((len(paths), *first.shape), dtype=np.uint8)
        out[0] = first
        workers = min(DECODE_THREADS, len(paths))
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # decoders release the GIL
            for index, image in enumerate(pool.map(self._one, paths[1:]), start=1):
                if image.shape != first.shape:
                    raise DatasetError(
                        f"{self.card}: image {paths[index]} decoded to shape {image.shape}, "
                        f"others to {first.shape}"
                    )
                out[index] = image
        return out

    def _one(self, path: Path) -> np.ndarray:
        try:
            image = self.decode(path)
        except FileNotFoundError:
            raise DatasetError(f"{self.card}: image file {path} not found") from None
        except Exception as exc:  # decoders raise many types for a corrupt file
            raise DatasetError(f"{self.card}: cannot read image {path}: {exc}") from exc
        if image.dtype != np.uint8:
            raise DatasetError(f"{self.card}: image {path} decoded to {image.dtype}, not uint8")
        return image


@dataclass(frozen=True, eq=False)
class RawDataset:
    """What a reader returns: one row per image.

    Attributes:
        columns: the raw label table by column name, each of length N (a column may be
            2-D, e.g. multilabel indicators from an ``.npz``).
        images: the images, by row.
        digest: identity of the source's index (sha256 of the index files or of the file
            listing); it keys the prepared cache with the card's fingerprint.
        groups: raw group keys (patient, study, source image), or None.
        split: split names given by the source (``train``, ``valid``...), or None.
        views: the view of each image (``Frontal`` / ``Lateral``, ``left`` / ``right``) for
            multi-view pairing, or None.
        studies: raw keys of the acquisition (study, visit) whose views pair, finer than
            ``groups`` (a patient's studies), or None (views then pair within a group).
    """

    columns: Mapping[str, np.ndarray]
    images: ImageSource
    digest: str
    groups: np.ndarray | None = None
    split: np.ndarray | None = None
    views: np.ndarray | None = None
    studies: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        for name, column in self.columns.items():
            if len(column) != n:
                raise ValueError(f"RawDataset: column {name!r} has {len(column)} rows, not {n}")
        optional = (
            ("groups", self.groups),
            ("split", self.split),
            ("views", self.views),
            ("studies", self.studies),
        )
        for name, column in optional:
            if column is not None and len(column) != n:
                raise ValueError(f"RawDataset: {name} has {len(column)} rows, not {n}")

    def __len__(self) -> int:
        return len(self.images)

    def column(self, name: str, ctx: DatasetContext, field: str) -> np.ndarray:
        """Return column ``name``.

        Raises:
            DatasetError: naming the card field and the columns present.
        """
        if name not in self.columns:
            raise DatasetError(
                f"{ctx.card}: field '{field}' names column {name!r}, which the reader does not "
                f"provide (columns: {', '.join(self.columns) or 'none'})"
            )
        return self.columns[name]


@dataclass(frozen=True, eq=False)
class SoftTargets:
    """Entries whose training target is a uniform draw instead of the hard label.

    Attributes:
        mask: bool, the shape of the labels: entries with a soft training target.
        low: the lower end of the uniform range.
        high: the upper end of the uniform range.
    """

    mask: np.ndarray
    low: float
    high: float


def take_soft(soft: SoftTargets | None, rows: np.ndarray) -> SoftTargets | None:
    """The soft-target marks of some rows (None stays None)."""
    if soft is None:
        return None
    return SoftTargets(np.asarray(soft.mask)[rows], soft.low, soft.high)


@dataclass(frozen=True, eq=False)
class Labels:
    """What a label policy returns.

    Attributes:
        values: int64 ``(N,)`` class indices, or ``(N, C)`` 0/1 for multilabel tasks; the
            labels every metric scores against.
        keep: bool ``(N,)``: rows to keep (None keeps all). Dropped rows' values are ignored.
        soft: entries whose training target is label-smoothed (CheXpert LSR), or None.
    """

    values: np.ndarray
    keep: np.ndarray | None = None
    soft: SoftTargets | None = None


@dataclass(frozen=True, eq=False)
class SplitInput:
    """What a split rule sees: the kept rows' labels, groups and source split names.

    Attributes:
        labels: labels of the kept rows (``(N,)`` or ``(N, C)``).
        groups: group keys of the kept rows, or None.
        split: source split names of the kept rows, or None.
        take_images: decodes images of kept rows by index (for rules that check content).
        source_rows: each kept row's position among the reader's rows (before the label
            policy dropped any), ascending; None means the kept rows are all the rows.
        n_source: how many rows the reader gave (None: as many as kept). Rules that
            shuffle the source's whole index before filtering (SSL_medicalimaging) need both.
        paths: each kept row's image file relative to the dataset folder (posix text),
            for rules that read split files listing images (``fold_files``); None when
            the reader's images are not files.
    """

    labels: np.ndarray
    groups: np.ndarray | None
    split: np.ndarray | None
    take_images: Callable[[np.ndarray], np.ndarray]
    source_rows: np.ndarray | None = None
    n_source: int | None = None
    paths: np.ndarray | None = None

    def positions(self) -> tuple[np.ndarray, int]:
        """Each kept row's position among the reader's rows, and the reader's row count."""
        if self.source_rows is None:
            return np.arange(len(self.labels)), len(self.labels)
        rows = np.asarray(self.source_rows, dtype=np.int64)
        n_source = int(rows.max()) + 1 if self.n_source is None and len(rows) else self.n_source
        return rows, int(n_source or 0)

    def __len__(self) -> int:
        return len(self.labels)


def kept_paths(images: object, rows: np.ndarray, root: Path) -> np.ndarray | None:
    """The image files of the kept rows relative to ``root`` (None: not file images)."""
    paths = getattr(images, "paths", None)
    if paths is None:
        return None
    out = []
    for row in rows:
        path = Path(paths[int(row)])
        try:
            out.append(path.relative_to(root).as_posix())
        except ValueError:
            out.append(path.as_posix())
    return np.asarray(out, dtype=object)
