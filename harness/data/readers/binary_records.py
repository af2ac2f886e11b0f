"""Readers of raw binary image files: ``cifar_binary`` (CIFAR-10/100) and ``stl10_binary``.

CIFAR-10's binary version (``cifar-10-binary.tar.gz``, Krizhevsky 2009) unpacks to::

    cifar-10-batches-bin/data_batch_1.bin ... data_batch_5.bin   10,000 records each
    cifar-10-batches-bin/test_batch.bin                           10,000 records
    cifar-10-batches-bin/batches.meta.txt                         the 10 class names

Each record is ``<1 label byte><3072 pixel bytes>``: the 1,024 red values of the 32x32
image row by row, then the green, then the blue plane. CIFAR-100's binary files carry two
label bytes (coarse, fine) before the pixels (``label_bytes: 2``). The python (pickle)
version is never read.

STL-10's binary version (``stl10_binary.tar.gz``, Coates et al. 2011) unpacks to::

    stl10_binary/train_X.bin  train_y.bin   5,000 images, labels
    stl10_binary/test_X.bin   test_y.bin    8,000 images, labels
    stl10_binary/class_names.txt            the 10 class names, label 1 first

``*_X.bin`` holds 96x96x3 uint8 images, each as three planes (red, green, blue) stored
column-major (Matlab order: the first 96 bytes are the first *column*); ``*_y.bin`` one
byte per image, labels 1..10. ``unlabeled_X.bin`` is not read.

Images are memory-mapped and only the rows asked for are read. The raw ``label`` column
holds the stored integers; with a names file, ``label_name`` holds each image's class name
(the ``identity`` policy with ``column: label_name`` maps names to the card's classes,
whatever their order).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from harness.cache.keys import file_sha256
from harness.data import DatasetError
from harness.data.registry import register_reader
from harness.data.table import DatasetContext, RawDataset


def _inside(name: str, field: str) -> None:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts:
        raise ValueError(f"{field} {name!r} must be a path inside the root (no '..')")


@dataclass(frozen=True, kw_only=True)
class CifarBinaryParams:
    """The batch files of a CIFAR binary download.

    Attributes:
        files: source split -> its batch files, relative to ``root``, in row order.
        label_bytes: label bytes before each image: 1 (CIFAR-10) or 2 (CIFAR-100's coarse
            and fine labels; ``label`` is the fine one, ``coarse_label`` the other).
        image_size: side of the square images (32).
        names: the class-names file (``batches.meta.txt``), line k naming label k; gives
            the ``label_name`` column.
        root: the dataset folder (absolute, ``~``, or relative to the card folder); by
            default ``<MEDXFER_HOME>/data/<name>``.
    """

    files: dict[str, tuple[str, ...]]
    label_bytes: int = 1
    image_size: int = 32
    names: str | None = None
    root: str | None = None

    def validate(self) -> None:
        """Some files per split, paths inside the root, a known record layout."""
        if not self.files:
            raise ValueError("'files' names no split")
        for split, names in self.files.items():
            if not names:
                raise ValueError(f"'files.{split}' lists no file")
            for name in names:
                _inside(name, f"'files.{split}'")
        if self.names is not None:
            _inside(self.names, "'names'")
        if self.label_bytes not in (1, 2):
            raise ValueError(f"'label_bytes' must be 1 or 2, got {self.label_bytes}")
        if not 8 <= self.image_size <= 1024:
            raise ValueError(f"'image_size' must be in 8..1024, got {self.image_size}")

    def gives_splits(self) -> bool:
        """The files are listed per source split."""
        return True

    def paths(self, root: Path) -> tuple[Path, ...]:
        """Every file named, which must exist before the dataset can be read."""
        names = [n for files in self.files.values() for n in files]
        return tuple(root / n for n in [*names, *([self.names] if self.names else [])])


@dataclass(frozen=True, kw_only=True)
class Stl10BinaryParams:
    """The image and label files of the STL-10 binary download.

    Attributes:
        images: source split -> its ``*_X.bin`` file, relative to ``root``.
        labels: source split -> its ``*_y.bin`` file (one byte per image, 1-based).
        image_size: side of the square images (96).
        names: the class-names file (``class_names.txt``), line k naming label k (1-based);
            gives the ``label_name`` column.
        root: the dataset folder (absolute, ``~``, or relative to the card folder); by
            default ``<MEDXFER_HOME>/data/<name>``.
    """

    images: dict[str, str]
    labels: dict[str, str]
    image_size: int = 96
    names: str | None = None
    root: str | None = None

    def validate(self) -> None:
        """The same splits on both sides, paths inside the root."""
        if not self.images:
            raise ValueError("'images' names no split")
        if set(self.images) != set(self.labels):
            raise ValueError(
                f"'images' splits {sorted(self.images)} differ from 'labels' splits "
                f"{sorted(self.labels)}"
            )
        for kind, files in (("images", self.images), ("labels", self.labels)):
            for split, name in files.items():
                _inside(name, f"'{kind}.{split}'")
        if self.names is not None:
            _inside(self.names, "'names'")
        if not 8 <= self.image_size <= 1024:
            raise ValueError(f"'image_size' must be in 8..1024, got {self.image_size}")

    def gives_splits(self) -> bool:
        """The files are named per source split."""
        return True

    def paths(self, root: Path) -> tuple[Path, ...]:
        """Every file named, which must exist before the dataset can be read."""
        names = [*self.images.values(), *self.labels.values()]
        return tuple(root / n for n in [*names, *([self.names] if self.names else [])])


@dataclass(frozen=True)
class RecordFile:
    """One binary file of fixed-size records, each ``header`` bytes then a 3-plane image.

    Attributes:
        path: the file.
        count: records in the file.
        header: bytes before each image (label bytes; 0 for a file of images only).
        size: the images' side.
        column_major: each plane is stored column by column (STL-10) instead of row by row.
    """

    path: Path
    count: int
    header: int
    size: int
    column_major: bool

    @property
    def record(self) -> int:
        """Bytes per record."""
        return self.header + 3 * self.size * self.size

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Images of the given local rows as uint8 ``(len(rows), size, size, 3)``."""
        mapped = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.count, self.record))
        try:
            block = np.asarray(mapped[rows, self.header :])
        finally:
            del mapped
        planes = block.reshape(len(rows), 3, self.size, self.size)
        if self.column_major:
            planes = planes.transpose(0, 1, 3, 2)
        return np.ascontiguousarray(planes.transpose(0, 2, 3, 1))


@dataclass(frozen=True, eq=False)
class RecordImages:
    """Images in binary record files (in row order), read row by row when taken.

    Attributes:
        files: the files, rows numbered across them in order.
        card: the card, for error messages.
    """

    files: tuple[RecordFile, ...]
    card: str

    def __len__(self) -> int:
        return sum(f.count for f in self.files)

    def take(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            raise DatasetError(f"{self.card}: no images to read")
        offsets = np.concatenate([[0], np.cumsum([f.count for f in self.files])])
        which = np.searchsorted(offsets, rows, side="right") - 1
        size = self.files[0].size
        out = np.empty((len(rows), size, size, 3), dtype=np.uint8)
        for index, part in enumerate(self.files):
            mask = which == index
            if mask.any():
                try:
                    out[mask] = part.read(rows[mask] - offsets[index])
                except (OSError, ValueError) as exc:
                    raise DatasetError(f"{self.card}: cannot read {part.path}: {exc}") from exc
        return out


def _count(path: Path, record: int, ctx: DatasetContext, field: str) -> int:
    """Records in ``path``; its size must be a whole number of records."""
    if not path.is_file():
        raise DatasetError(f"{ctx.card}: file {path} not found (field '{field}')")
    size = path.stat().st_size
    if size == 0 or size % record:
        raise DatasetError(
            f"{ctx.card}: {path} holds {size} bytes, not a whole number of {record}-byte "
            f"records (truncated, or not this format; field '{field}')"
        )
    return size // record


def _label_names(
    names: str | None, labels: np.ndarray, first: int, ctx: DatasetContext
) -> np.ndarray | None:
    """Each label's class name from the names file (line k names label ``first + k``)."""
    if names is None:
        return None
    path = ctx.root / names
    if not path.is_file():
        raise DatasetError(f"{ctx.card}: class-names file {path} not found (field 'reader.names')")
    listed = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    listed = [name for name in listed if name]
    index = labels.astype(np.int64) - first
    bad = (index < 0) | (index >= len(listed))
    if bad.any():
        raise DatasetError(
            f"{ctx.card}: label {int(labels[bad][0])} has no name in {path} "
            f"({len(listed)} names for labels {first}..{first + len(listed) - 1})"
        )
    return np.asarray(listed, dtype=str)[index]


def _dataset(
    files: list[RecordFile],
    labels: np.ndarray,
    splits: list[str],
    names: np.ndarray | None,
    extra: dict[str, np.ndarray],
    digest: str,
    ctx: DatasetContext,
) -> RawDataset:
    columns = {"label": labels.astype(np.int64), **extra}
    if names is not None:
        columns["label_name"] = names
    split = np.concatenate(
        [np.full(f.count, s, dtype=object) for f, s in zip(files, splits, strict=True)]
    )
    return RawDataset(
        columns=columns,
        images=RecordImages(tuple(files), ctx.card),
        digest=digest,
        split=split.astype(str),
    )


@register_reader("cifar_binary", version=1, params=CifarBinaryParams)
def read_cifar_binary(params: CifarBinaryParams, ctx: DatasetContext) -> RawDataset:
    """CIFAR's binary batches: a label byte (two for CIFAR-100), then R, G, B planes."""
    files: list[RecordFile] = []
    splits: list[str] = []
    label_rows: list[np.ndarray] = []
    digest = hashlib.sha256()
    for split, names in params.files.items():
        for name in names:
            path = ctx.root / name
            record = params.label_bytes + 3 * params.image_size**2
            count = _count(path, record, ctx, f"reader.files.{split}")
            part = RecordFile(path, count, params.label_bytes, params.image_size, False)
            mapped = np.memmap(path, dtype=np.uint8, mode="r", shape=(count, part.record))
            label_rows.append(np.array(mapped[:, : params.label_bytes]))
            del mapped
            digest.update(f"{split}\0{name}\0{file_sha256(path)}\n".encode())
            files.append(part)
            splits.append(split)
    stored = np.concatenate(label_rows)
    labels = stored[:, -1]
    extra = {"coarse_label": stored[:, 0].astype(np.int64)} if params.label_bytes == 2 else {}
    names = _label_names(params.names, labels, 0, ctx)
    if params.names is not None:
        digest.update(f"names\0{file_sha256(ctx.root / params.names)}\n".encode())
    return _dataset(files, labels, splits, names, extra, digest.hexdigest(), ctx)


@register_reader("stl10_binary", version=1, params=Stl10BinaryParams)
def read_stl10_binary(params: Stl10BinaryParams, ctx: DatasetContext) -> RawDataset:
    """STL-10's binary files: column-major R, G, B planes of 96x96 and 1-based label bytes."""
    files: list[RecordFile] = []
    splits: list[str] = []
    label_parts: list[np.ndarray] = []
    digest = hashlib.sha256()
    for split, name in params.images.items():
        path = ctx.root / name
        label_path = ctx.root / params.labels[split]
        count = _count(path, 3 * params.image_size**2, ctx, f"reader.images.{split}")
        n_labels = _count(label_path, 1, ctx, f"reader.labels.{split}")
        if n_labels != count:
            raise DatasetError(
                f"{ctx.card}: {path} holds {count} images but {label_path} {n_labels} labels"
            )
        label_parts.append(np.fromfile(label_path, dtype=np.uint8))
        for file in (path, label_path):
            relative = file.relative_to(ctx.root).as_posix()
            digest.update(f"{split}\0{relative}\0{file_sha256(file)}\n".encode())
        files.append(RecordFile(path, count, 0, params.image_size, True))
        splits.append(split)
    labels = np.concatenate(label_parts)
    names = _label_names(params.names, labels, 1, ctx)
    if params.names is not None:
        digest.update(f"names\0{file_sha256(ctx.root / params.names)}\n".encode())
    return _dataset(files, labels, splits, names, {}, digest.hexdigest(), ctx)
