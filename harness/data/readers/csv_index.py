"""Readers of image files listed by a CSV index: ``csv_images`` (PNG/JPEG...) and ``dicom``.

The layout of CheXpert, NIH ChestX-ray14, ISIC, and most Kaggle medical sets: one CSV
(or one per split) with a column of image paths relative to the dataset folder, label
columns, and maybe a patient column. Every column of the CSV is kept as a raw string
column for the label policy (CheXpert's ``1.0`` / ``0.0`` / ``-1.0`` / blank included).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from harness.data import DatasetError
from harness.data.readers.decode import (
    DicomParams,
    ImageParams,
    decode_image,
    dicom_decoder,
    fit_image,
)
from harness.data.readers.graham import GrahamParams, graham_decoder
from harness.data.readers.index_rows import (
    Origin,
    first_line,
    joined_groups,
    listed_splits,
    need,
    read_csv,
    row_keys,
)
from harness.data.registry import register_reader
from harness.data.table import DatasetContext, FileImages, RawDataset

__all__ = ["CsvImagesParams", "DicomIndexParams", "GroupsFrom", "IndexParams", "read_csv"]


@dataclass(frozen=True, kw_only=True)
class GroupsFrom:
    """A group column taken from a second CSV, joined on the image id.

    HAM10000's ``HAM10000_metadata.csv`` (``lesion_id, image_id, dx, ...``) and ISIC 2019's
    ``ISIC_2019_Training_Metadata.csv`` (``image, ..., lesion_id, ...``) hold the lesion
    of each image, which the ground-truth CSVs lack.

    Attributes:
        file: the CSV, relative to ``root``.
        key_column: its column matching the index's ``path_column`` values.
        group_column: its column holding the group (lesion / patient) id.
        blank: a blank group is an ``error``, or the image is its ``own`` group (ISIC 2019
            leaves ``lesion_id`` empty for images whose lesion is not known).
    """

    file: str
    key_column: str
    group_column: str
    blank: Literal["error", "own"] = "error"


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
        split_where: as ``where``, for the rows of one source split of ``indexes``; one
            CSV may then serve several splits, e.g. EyePACS' test solution as TFDS splits
            it: ``{validation: {Usage: [Public]}, test: {Usage: [Private]}}``.
        image_dirs: glob patterns of folders (relative to ``image_root``) to look each
            listed path up in, the first folder holding it winning; for sources spread
            over several folders, e.g. ``[images_*/images]`` (NIH ChestX-ray14's
            ``images_001`` ... ``images_012``) or ``[train, test]`` (EyePACS).
        split_lists: source split -> a text file (relative to ``root``) listing one
            path-column value per line, e.g. NIH's ``{train: train_val_list.txt, test:
            test_list.txt}``; rows in no list get no split (``predefined`` leaves them out).
        header: the index has no header row; these are its column names (BACH's
            ``microscopy_ground_truth.csv`` holds bare ``b001.tif,Benign`` rows).
        groups_from: take each row's group from a second CSV joined on the path column
            (see :class:`GroupsFrom`); instead of ``group_column`` / ``group_pattern``.
        view_column: the column holding each image's view (CheXpert's ``Frontal/Lateral``),
            or, with ``view_pattern``, the text the pattern reads.
        view_pattern: a regex searched in the view column (or, without one, the path); its
            first capture group (or the whole match) is the view, e.g. ``_(left|right)$``
            on EyePACS' ``image`` column (``10_left``). Views pair multi-view images.
        study_column: the column holding each image's study (acquisition) id, or, with
            ``study_pattern``, the text the pattern reads.
        study_pattern: as ``view_pattern``, for the study, e.g. ``(patient\\d+/study\\d+)``
            on CheXpert paths. A study's views pair (without studies, a group's views do).
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
    split_where: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    image_dirs: tuple[str, ...] = ()
    split_lists: dict[str, str] | None = None
    header: tuple[str, ...] | None = None
    groups_from: GroupsFrom | None = None
    view_column: str | None = None
    view_pattern: str | None = None
    study_column: str | None = None
    study_pattern: str | None = None

    def validate(self) -> None:
        """Exactly one of ``index`` / ``indexes``; one split source at most; a valid regex."""
        if (self.index is None) == (self.indexes is None):
            raise ValueError("give exactly one of 'index' (one CSV) or 'indexes' (one per split)")
        if self.indexes is not None and self.split_column is not None:
            raise ValueError("'indexes' already names the splits; drop 'split_column'")
        if self.indexes is not None and not self.indexes:
            raise ValueError("'indexes' is empty")
        unknown = sorted(set(self.split_where) - set(self.indexes or {}))
        if unknown:
            raise ValueError(f"'split_where' names splits that 'indexes' lacks: {unknown}")
        if self.split_lists is not None:
            if self.indexes is not None or self.split_column is not None:
                raise ValueError(
                    "'split_lists' names the splits; drop 'indexes' / 'split_column' (use 'index')"
                )
            if not self.split_lists:
                raise ValueError("'split_lists' is empty")
        for name in ("group_pattern", "view_pattern", "study_pattern"):
            pattern = getattr(self, name)
            if pattern is None:
                continue
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"'{name}' is not a valid regex: {exc}") from None
        has_study = self.study_column is not None or self.study_pattern is not None
        if has_study and self.view_column is None and self.view_pattern is None:
            raise ValueError(
                "'study_column' / 'study_pattern' pair views: give 'view_column' or "
                "'view_pattern' too"
            )
        if self.groups_from is not None and (
            self.group_column is not None or self.group_pattern is not None
        ):
            raise ValueError(
                "'groups_from' gives the groups; drop 'group_column' / 'group_pattern'"
            )
        if self.header is not None and len(set(self.header)) != len(self.header):
            raise ValueError(f"'header' names a column twice: {list(self.header)}")

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
        lists = [*(self.split_lists or {}).values()]
        if self.groups_from is not None:
            lists.append(self.groups_from.file)
        names = dict.fromkeys([*self.index_files().values(), *lists])  # one CSV, two splits
        return tuple(root / name for name in names)


@dataclass(frozen=True, kw_only=True)
class CsvImagesParams(IndexParams, ImageParams):
    """A CSV index of image files decoded with PIL (see the two bases for the fields).

    Attributes:
        graham: process each image as TFDS' ``diabetic_retinopathy_detection/btgraham``
            config stores it (:mod:`harness.data.readers.graham`) before fitting it.
    """

    graham: GrahamParams | None = None

    def validate(self) -> None:
        """Check the index, the geometry and the Graham processing."""
        IndexParams.validate(self)
        ImageParams.validate(self)
        if self.graham is not None:
            self.graham.validate()
            if self.mode != "RGB":
                raise ValueError("'graham' gives colour images: set 'mode: RGB'")


@dataclass(frozen=True, kw_only=True)
class DicomIndexParams(IndexParams, DicomParams):
    """A CSV index of DICOM files, windowed to uint8 grayscale (see the two bases)."""

    def validate(self) -> None:
        """Check the index, the geometry and the window."""
        IndexParams.validate(self)
        DicomParams.validate(self)


@register_reader("csv_images", version=2, params=CsvImagesParams)
def read_csv_images(params: CsvImagesParams, ctx: DatasetContext) -> RawDataset:
    """Image files (PNG, JPEG, TIFF ...) listed in a CSV with label and patient columns."""
    if params.graham is not None:
        return _read_index(
            params, ctx, graham_decoder(params.graham, lambda image: fit_image(image, params))
        )
    return _read_index(params, ctx, lambda path: decode_image(path, params))


@register_reader("dicom", version=2, params=DicomIndexParams)
def read_dicom_index(params: DicomIndexParams, ctx: DatasetContext) -> RawDataset:
    """DICOM files listed in a CSV, rescaled and windowed to uint8 grayscale."""
    return _read_index(params, ctx, dicom_decoder(params))


def _read_index(
    params: IndexParams, ctx: DatasetContext, decode: Callable[[Path], np.ndarray]
) -> RawDataset:
    rows: list[dict[str, str]] = []
    origins: list[Origin] = []
    source_split: list[str] = []
    header: list[str] = []
    digest = hashlib.sha256()
    for split, name in params.index_files().items():
        path = ctx.root / name
        file_header, file_rows = read_csv(path, ctx, params.header)
        digest.update(f"{split}\0{name}\0".encode())
        digest.update(path.read_bytes())
        header += [column for column in file_header if column not in header]
        rows += file_rows
        start = first_line(params.header)
        origins += [Origin(name, start + k) for k in range(len(file_rows))]
        source_split += [split or ""] * len(file_rows)
    conditions = [(None, column, allowed) for column, allowed in params.where.items()]
    for name, where in params.split_where.items():
        conditions += [(name, column, allowed) for column, allowed in where.items()]
    for only, column, allowed in conditions:
        field_name = f"reader.split_where.{only}.{column}" if only else f"reader.where.{column}"
        need(column, header, ctx, field_name)
        keep = [
            (only is not None and split != only) or row.get(column, "") in allowed
            for row, split in zip(rows, source_split, strict=True)
        ]
        rows = [row for row, k in zip(rows, keep, strict=True) if k]
        origins = [o for o, k in zip(origins, keep, strict=True) if k]
        source_split = [s for s, k in zip(source_split, keep, strict=True) if k]
    if not rows:
        raise DatasetError(f"{ctx.card}: the reader's index has no rows (after 'where')")
    need(params.path_column, header, ctx, "reader.path_column")
    base = ctx.root / params.image_root
    relative = [row[params.path_column] + params.path_suffix for row in rows]
    paths = _locate(base, params.image_dirs, relative)
    columns = {c: np.asarray([row.get(c) or "" for row in rows], dtype=str) for c in header}
    if params.groups_from is not None:
        keys = [row[params.path_column] for row in rows]
        groups: np.ndarray | None = joined_groups(params.groups_from, keys, ctx)
        digest.update(f"groups\0{params.groups_from.file}\0".encode())
        digest.update((ctx.root / params.groups_from.file).read_bytes())
    else:
        groups = _keys("group", params, rows, relative, origins, header, ctx, blank_ok=True)
    views = _keys("view", params, rows, relative, origins, header, ctx)
    studies = _keys("study", params, rows, relative, origins, header, ctx)
    split: np.ndarray | None = None
    if params.indexes is not None:
        split = np.asarray(source_split, dtype=str)
    elif params.split_column is not None:
        need(params.split_column, header, ctx, "reader.split_column")
        split = columns[params.split_column]
    elif params.split_lists is not None:
        split = listed_splits(params.split_lists, [row[params.path_column] for row in rows], ctx)
        for name in params.split_lists.values():
            digest.update(f"list\0{name}\0".encode())
            digest.update((ctx.root / name).read_bytes())
    images = FileImages(paths, decode, ctx.card)
    return RawDataset(
        columns,
        images,
        digest.hexdigest(),
        groups=groups,
        split=split,
        views=views,
        studies=studies,
    )


def _keys(
    kind: str,
    params: IndexParams,
    rows: list[dict[str, str]],
    relative: list[str],
    origins: list[Origin],
    header: list[str],
    ctx: DatasetContext,
    blank_ok: bool = False,
) -> np.ndarray | None:
    """The rows' ``kind`` keys from the card's ``<kind>_column`` / ``<kind>_pattern``."""
    column, pattern = getattr(params, f"{kind}_column"), getattr(params, f"{kind}_pattern")
    return row_keys(
        rows,
        relative,
        origins,
        header,
        ctx,
        kind=kind,
        column=column,
        pattern=pattern,
        blank_ok=blank_ok,
    )


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
