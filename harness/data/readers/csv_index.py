"""Readers of image files listed by a CSV index: ``csv_images`` (PNG/JPEG...) and ``dicom``.

The layout of CheXpert, NIH ChestX-ray14, ISIC, and most Kaggle medical sets: one CSV
(or one per split) with a column of image paths relative to the dataset folder, label
columns, and maybe a patient column. Every column of the CSV is kept as a raw string
column for the label policy (CheXpert's ``1.0`` / ``0.0`` / ``-1.0`` / blank included).
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.data import DatasetError
from harness.data.readers.decode import GeometryParams, ImageParams, decode_image, dicom_to_pil
from harness.data.readers.decode import fit_image as _fit
from harness.data.registry import register_reader
from harness.data.table import DatasetContext, FileImages, RawDataset


@dataclass(frozen=True, kw_only=True)
class IndexParams:
    """Where the index is and how its rows name images, groups and splits.

    Attributes:
        root: the dataset folder (absolute, ``~``, or relative to the card folder); by
            default ``<MEDXFER_HOME>/data/<name>``.
        index: the CSV, relative to ``root`` (give this or ``indexes``).
        indexes: one CSV per source split, e.g. ``{train: train.csv, valid: valid.csv}``;
            the keys become the source split names.
        path_column: the column holding each image's path.
        image_root: the folder the paths are relative to, relative to ``root``.
        path_suffix: appended to every path (ISIC lists ``ISIC_0000000`` without ``.jpg``).
        group_column: the column holding the patient / study id, if any.
        group_pattern: a regex applied to the group column (or, without one, to the
            path); its first capture group (or the whole match) is the group id, e.g.
            ``patient(\\d+)`` for CheXpert paths.
        split_column: a column holding source split names, if any.
        where: keep only rows whose column value is listed, e.g.
            ``{Frontal/Lateral: [Frontal]}``.
        image_dirs: glob patterns of folders (relative to ``image_root``) to look each
            listed path up in, the first folder holding it winning; for sources spread
            over several folders, e.g. ``[images_*/images]`` (NIH ChestX-ray14's
            ``images_001`` ... ``images_012``) or ``[train, test]`` (EyePACS).
        split_lists: source split -> a text file (relative to ``root``) listing one
            path-column value per line, e.g. NIH's ``{train: train_val_list.txt, test:
            test_list.txt}``; rows in no list get no split (``predefined`` leaves them out).
    """

    root: str | None = None
    index: str | None = None
    indexes: dict[str, str] | None = None
    path_column: str = "Path"
    image_root: str = "."
    path_suffix: str = ""
    group_column: str | None = None
    group_pattern: str | None = None
    split_column: str | None = None
    where: dict[str, tuple[str, ...]] = field(default_factory=dict)
    image_dirs: tuple[str, ...] = ()
    split_lists: dict[str, str] | None = None

    def validate(self) -> None:
        """Exactly one of ``index`` / ``indexes``; one split source at most; a valid regex."""
        if (self.index is None) == (self.indexes is None):
            raise ValueError("give exactly one of 'index' (one CSV) or 'indexes' (one per split)")
        if self.indexes is not None and self.split_column is not None:
            raise ValueError("'indexes' already names the splits; drop 'split_column'")
        if self.indexes is not None and not self.indexes:
            raise ValueError("'indexes' is empty")
        if self.split_lists is not None:
            if self.indexes is not None or self.split_column is not None:
                raise ValueError(
                    "'split_lists' names the splits; drop 'indexes' / 'split_column' (use 'index')"
                )
            if not self.split_lists:
                raise ValueError("'split_lists' is empty")
        if self.group_pattern is not None:
            try:
                re.compile(self.group_pattern)
            except re.error as exc:
                raise ValueError(f"'group_pattern' is not a valid regex: {exc}") from None

    def index_files(self) -> dict[str | None, str]:
        """Source split name (None for a single index) -> CSV path relative to the root."""
        if self.indexes is not None:
            return dict(self.indexes)
        assert self.index is not None
        return {None: self.index}

    def gives_splits(self) -> bool:
        """Whether the source names splits (per-split indexes or a split column)."""
        return (
            self.indexes is not None
            or self.split_column is not None
            or self.split_lists is not None
        )

    def paths(self, root: Path) -> tuple[Path, ...]:
        """The index (and split list) files that must exist before the dataset can be read."""
        lists = (self.split_lists or {}).values()
        return tuple(root / name for name in [*self.index_files().values(), *lists])


@dataclass(frozen=True, kw_only=True)
class CsvImagesParams(IndexParams, ImageParams):
    """A CSV index of image files decoded with PIL (see the two bases for the fields)."""

    def validate(self) -> None:
        """Check the index and the geometry."""
        IndexParams.validate(self)
        ImageParams.validate(self)


@dataclass(frozen=True, kw_only=True)
class DicomIndexParams(IndexParams, GeometryParams):
    """A CSV index of DICOM files, windowed to uint8 grayscale like ``harness.data.dicom``.

    Attributes:
        frame: the frame of a multi-frame file to use.
        window: ``[low, high]`` values (after the modality rescale) mapped to 0 and 255;
            by default each image's robust ``percentiles``.
        percentiles: lower and upper percentiles used when ``window`` is not given.
        invert_monochrome1: flip MONOCHROME1 images so that larger means brighter.
    """

    frame: int = 0
    window: tuple[float, float] | None = None
    percentiles: tuple[float, float] = (0.5, 99.5)
    invert_monochrome1: bool = True

    def validate(self) -> None:
        """Check the index, the geometry and the window."""
        IndexParams.validate(self)
        GeometryParams.validate(self)
        if self.window is not None and not self.window[1] > self.window[0]:
            raise ValueError(f"'window' must be [low, high] with high > low, got {self.window}")
        if not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            raise ValueError(
                f"'percentiles' must be 0 <= low < high <= 100, got {self.percentiles}"
            )


@register_reader("csv_images", version=1, params=CsvImagesParams)
def read_csv_images(params: CsvImagesParams, ctx: DatasetContext) -> RawDataset:
    """Image files (PNG, JPEG, TIFF ...) listed in a CSV with label and patient columns."""
    return _read_index(params, ctx, lambda path: decode_image(path, params))


@register_reader("dicom", version=1, params=DicomIndexParams)
def read_dicom_index(params: DicomIndexParams, ctx: DatasetContext) -> RawDataset:
    """DICOM files listed in a CSV, rescaled and windowed to uint8 grayscale."""
    from harness.data.dicom import read_dicom_frames, to_uint8

    def decode(path: Path) -> np.ndarray:
        frames = read_dicom_frames(path, invert_monochrome1=params.invert_monochrome1)
        if not -len(frames) <= params.frame < len(frames):
            raise DatasetError(f"has {len(frames)} frame(s); reader.frame is {params.frame}")
        frame = to_uint8(frames[params.frame], params.window, params.percentiles)
        return _fit(dicom_to_pil(frame), params)

    return _read_index(params, ctx, decode)


def _read_index(
    params: IndexParams, ctx: DatasetContext, decode: Callable[[Path], np.ndarray]
) -> RawDataset:
    rows: list[dict[str, str]] = []
    source_split: list[str] = []
    header: list[str] = []
    digest = hashlib.sha256()
    for split, name in params.index_files().items():
        path = ctx.root / name
        file_header, file_rows = _read_csv(path, ctx)
        digest.update(f"{split}\0{name}\0".encode())
        digest.update(path.read_bytes())
        header += [column for column in file_header if column not in header]
        rows += file_rows
        source_split += [split or ""] * len(file_rows)
    for column, allowed in params.where.items():
        _need(column, header, ctx, f"reader.where.{column}")
        keep = [row.get(column, "") in allowed for row in rows]
        rows = [row for row, k in zip(rows, keep, strict=True) if k]
        source_split = [s for s, k in zip(source_split, keep, strict=True) if k]
    if not rows:
        raise DatasetError(f"{ctx.card}: the reader's index has no rows (after 'where')")
    _need(params.path_column, header, ctx, "reader.path_column")
    base = ctx.root / params.image_root
    relative = [row[params.path_column] + params.path_suffix for row in rows]
    paths = _locate(base, params.image_dirs, relative)
    columns = {c: np.asarray([row.get(c) or "" for row in rows], dtype=str) for c in header}
    groups = _groups(params, rows, relative, header, ctx)
    split: np.ndarray | None = None
    if params.indexes is not None:
        split = np.asarray(source_split, dtype=str)
    elif params.split_column is not None:
        _need(params.split_column, header, ctx, "reader.split_column")
        split = columns[params.split_column]
    elif params.split_lists is not None:
        split = _listed_splits(params.split_lists, [row[params.path_column] for row in rows], ctx)
        for name in params.split_lists.values():
            digest.update(f"list\0{name}\0".encode())
            digest.update((ctx.root / name).read_bytes())
    images = FileImages(paths, decode, ctx.card)
    return RawDataset(columns, images, digest.hexdigest(), groups=groups, split=split)


def _locate(base: Path, patterns: tuple[str, ...], relative: list[str]) -> tuple[Path, ...]:
    """Each relative path under ``base``, or under the first ``patterns`` folder holding it."""
    if not patterns:
        return tuple(base / rel for rel in relative)
    folders = [f for pattern in patterns for f in sorted(base.glob(pattern)) if f.is_dir()]
    by_name: dict[str, Path] = {}
    for folder in reversed(folders):  # the first folder wins
        by_name.update((entry.name, folder) for entry in os.scandir(folder) if entry.is_file())
    found = []
    for rel in relative:
        if "/" in rel:
            hits = (f / rel for f in folders if (f / rel).is_file())
            found.append(next(hits, (folders[0] if folders else base) / rel))
        else:
            found.append(by_name.get(rel, folders[0] if folders else base) / rel)
    return tuple(found)


def _listed_splits(lists: dict[str, str], keys: list[str], ctx: DatasetContext) -> np.ndarray:
    """Source split of each row from per-split list files (one key per line)."""
    owner: dict[str, str] = {}
    for split, name in lists.items():
        path = ctx.root / name
        if not path.is_file():
            raise DatasetError(f"{ctx.card}: split list {path} not found (reader.split_lists)")
        for line in path.read_text(encoding="utf-8-sig").splitlines():
            key = line.strip()
            if key and owner.setdefault(key, split) != split:
                raise DatasetError(
                    f"{ctx.card}: {key!r} is listed in both {lists[owner[key]]} and {name} "
                    "(reader.split_lists)"
                )
    return np.asarray([owner.get(key, "") for key in keys], dtype=str)


def _read_csv(path: Path, ctx: DatasetContext) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise DatasetError(f"{ctx.card}: index file {path} not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = [dict(row) for row in reader]
            header = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{ctx.card}: cannot read index file {path}: {exc}") from exc
    if not header:
        raise DatasetError(f"{ctx.card}: index file {path} has no header row")
    return header, rows


def _groups(
    params: IndexParams,
    rows: list[dict[str, str]],
    relative: list[str],
    header: list[str],
    ctx: DatasetContext,
) -> np.ndarray | None:
    if params.group_column is None and params.group_pattern is None:
        return None
    if params.group_column is not None:
        _need(params.group_column, header, ctx, "reader.group_column")
        values = [row.get(params.group_column) or "" for row in rows]
    else:
        values = relative
    if params.group_pattern is not None:
        pattern = re.compile(params.group_pattern)
        found = []
        for index, value in enumerate(values):
            match = pattern.search(value)
            if match is None:
                raise DatasetError(
                    f"{ctx.card}: field 'reader.group_pattern' {params.group_pattern!r} does not "
                    f"match {value!r} (index row {index + 1})"
                )
            found.append(match.group(1) if pattern.groups else match.group(0))
        values = found
    return np.asarray(values, dtype=str)


def _need(column: str, header: list[str], ctx: DatasetContext, field: str) -> None:
    if column not in header:
        raise DatasetError(
            f"{ctx.card}: field '{field}' names column {column!r}, which the index does not "
            f"have (columns: {', '.join(header)})"
        )
