"""The ``cbis_ddsm`` reader: CBIS-DDSM full mammograms as TCIA's NBIA retriever saves them.

The case CSVs (``mass_case_description_{train,test}_set.csv``,
``calc_case_description_{train,test}_set.csv``) hold one row per abnormality::

    patient_id, breast_density (calc: "breast density"), left or right breast, image view,
    abnormality id, abnormality type, ..., pathology, subtlety, image file path,
    cropped image file path, ROI mask file path

with ``pathology`` one of ``MALIGNANT``, ``BENIGN``, ``BENIGN_WITHOUT_CALLBACK``. The
``image file path`` (``Mass-Training_P_00001_LCC/1.3.6.1.4.1.9590.../1.3.6.../000000.dcm``)
does not match the download, whose folders are named by study date and series::

    CBIS-DDSM/Mass-Training_P_00001_LCC/07-20-2016-DDSM-74994/1.000000-full mammogram images-24515/1-1.dcm

so an image is found by the path's first component (the TCIA subject folder) alone: the
one DICOM file in that folder, or, where there are several, the one under a series
folder named ``full mammogram``. Anything else is an error naming the CSV row and the
folder. Cropped images and ROI masks live in other subject folders (``..._LCC_1``) and
are not read.

One full mammogram carries every abnormality found on it, so it is listed in several
rows (and, in the Mass and Calc CSVs, once per subject folder). With ``unit: mammogram``
(the default) a mammogram, i.e. one (source split, patient, breast side, view), is one
image: its ``pathology`` is the most severe of its rows (``severity``), its image the
first row's folder; ``unit: abnormality`` keeps one image per CSV row. Groups are the
``patient_id`` (``P_00001``), so no patient crosses the splits carved from train.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from harness.data import DatasetError
from harness.data.readers.csv_index import read_csv
from harness.data.readers.decode import DicomParams, dicom_decoder
from harness.data.registry import register_reader
from harness.data.table import DatasetContext, FileImages, RawDataset

PATH_COLUMN = "image file path"
KEY_COLUMNS = ("patient_id", "left or right breast", "image view")
NEEDED = (*KEY_COLUMNS, "abnormality id", "abnormality type", "pathology", PATH_COLUMN)
DENSITY = ("breast_density", "breast density")  # the mass and the calc CSVs' spellings
FULL_MAMMOGRAM = "full mammogram"


@dataclass(frozen=True, kw_only=True)
class CbisDdsmParams(DicomParams):
    """Where the CSVs and DICOM folders are, and what one image is.

    Attributes:
        root: the dataset folder (absolute, ``~``, or relative to the card folder); by
            default ``<MEDXFER_HOME>/data/<name>``.
        indexes: source split -> the case CSVs of that split, relative to ``root``.
        image_root: the folder holding the TCIA subject folders, relative to ``root``.
        unit: ``mammogram`` (one image per patient, side and view of a split, its
            pathology the most severe of its abnormalities) or ``abnormality`` (one
            image per CSV row; a mammogram recurs once per abnormality).
        severity: ``pathology`` values from most to least severe; any other value is an
            error naming the row.
    """

    root: str | None = None
    indexes: dict[str, tuple[str, ...]]
    image_root: str = "CBIS-DDSM"
    unit: Literal["mammogram", "abnormality"] = "mammogram"
    severity: tuple[str, ...] = ("MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK")

    def validate(self) -> None:
        """Non-empty indexes and severity; the geometry and window."""
        DicomParams.validate(self)
        if not self.indexes or not all(self.indexes.values()):
            raise ValueError("'indexes' must name at least one CSV for every split")
        if not self.severity:
            raise ValueError("'severity' is empty")

    def gives_splits(self) -> bool:
        """The CSVs are per source split."""
        return True

    def paths(self, root: Path) -> tuple[Path, ...]:
        """The CSVs and the image folder, which must exist before the dataset is read."""
        files = [name for names in self.indexes.values() for name in names]
        return (*(root / name for name in files), root / self.image_root)


@dataclass
class _Row:
    split: str
    source: str  # "<csv> row <n>", for messages
    values: dict[str, str]


@register_reader("cbis_ddsm", version=1, params=CbisDdsmParams)
def read_cbis_ddsm(params: CbisDdsmParams, ctx: DatasetContext) -> RawDataset:
    """CBIS-DDSM full mammograms from the case CSVs, found by their subject folders."""
    digest = hashlib.sha256()
    rows: list[_Row] = []
    for split, names in params.indexes.items():
        for name in names:
            path = ctx.root / name
            header, found = read_csv(path, ctx)
            missing = [c for c in NEEDED if c not in header]
            if missing:
                raise DatasetError(
                    f"{ctx.card}: {path} lacks column(s) {', '.join(map(repr, missing))} of a "
                    f"CBIS-DDSM case CSV (columns: {', '.join(header)}; field 'reader.indexes')"
                )
            digest.update(f"{split}\0{name}\0".encode())
            digest.update(path.read_bytes())
            for number, values in enumerate(found, start=2):
                clean = {k: (v or "").strip() for k, v in values.items() if k is not None}
                rows.append(_Row(split, f"{name} line {number}", clean))
    if not rows:
        raise DatasetError(f"{ctx.card}: the CBIS-DDSM case CSVs have no rows")
    rank = {value: k for k, value in enumerate(params.severity)}
    for row in rows:
        if row.values["pathology"] not in rank:
            raise DatasetError(
                f"{ctx.card}: {row.source}: pathology {row.values['pathology']!r} is not one of "
                f"{', '.join(params.severity)} (field 'reader.severity')"
            )
    units = _mammograms(rows) if params.unit == "mammogram" else [[row] for row in rows]
    base = ctx.root / params.image_root
    folders: dict[str, Path] = {}
    paths = []
    for unit in units:
        first = unit[0]
        subject = _subject(first, ctx)
        if subject not in folders:
            folders[subject] = _full_mammogram(base / subject, first, ctx)
        paths.append(folders[subject])
    columns = _columns(units, rank)
    return RawDataset(
        columns=columns,
        images=FileImages(tuple(paths), dicom_decoder(params), ctx.card),
        digest=digest.hexdigest(),
        groups=columns["patient_id"],
        split=np.asarray([unit[0].split for unit in units], dtype=str),
    )


def _mammograms(rows: list[_Row]) -> list[list[_Row]]:
    """Rows grouped by (source split, patient, side, view), in first-seen order."""
    units: dict[tuple[str, ...], list[_Row]] = {}
    for row in rows:
        key = (row.split, *(row.values[c] for c in KEY_COLUMNS))
        units.setdefault(key, []).append(row)
    return list(units.values())


def _columns(units: list[list[_Row]], rank: dict[str, int]) -> dict[str, np.ndarray]:
    """The raw table: the first row's values, the worst pathology, the abnormality count."""
    out: dict[str, list[str]] = {c: [] for c in (*NEEDED, "breast_density", "abnormalities")}
    for unit in units:
        first = unit[0].values
        for column in NEEDED:
            out[column].append(first[column])
        out["pathology"][-1] = min((r.values["pathology"] for r in unit), key=rank.__getitem__)
        out["abnormality type"][-1] = "|".join(sorted({r.values["abnormality type"] for r in unit}))
        out["breast_density"].append(next((first[c] for c in DENSITY if c in first), ""))
        out["abnormalities"].append(str(len(unit)))
    return {column: np.asarray(values, dtype=str) for column, values in out.items()}


def _subject(row: _Row, ctx: DatasetContext) -> str:
    value = row.values[PATH_COLUMN].replace("\\", "/")
    subject = value.split("/", 1)[0].strip()
    if not subject or subject in (".", ".."):
        raise DatasetError(
            f"{ctx.card}: {row.source}: 'image file path' {value!r} names no subject folder"
        )
    return subject


def _full_mammogram(folder: Path, row: _Row, ctx: DatasetContext) -> Path:
    """The one full-mammogram DICOM under a TCIA subject folder."""
    if not folder.is_dir():
        raise DatasetError(
            f"{ctx.card}: {row.source}: subject folder {folder} (from 'image file path' "
            f"{row.values[PATH_COLUMN]!r}) not found; download the full mammograms of this "
            "collection with TCIA's NBIA Data Retriever into reader.image_root"
        )
    found = sorted(
        Path(dirpath) / name
        for dirpath, _, names in os.walk(folder)
        for name in names
        if name.lower().endswith(".dcm")
    )
    if len(found) > 1:
        full = [p for p in found if FULL_MAMMOGRAM in p.relative_to(folder).as_posix().lower()]
        found = full if full else found
    if len(found) != 1:
        shown = ", ".join(p.relative_to(folder).as_posix() for p in found[:4])
        what = "no DICOM file" if not found else f"{len(found)} candidate DICOM files ({shown})"
        raise DatasetError(
            f"{ctx.card}: {row.source}: subject folder {folder} holds {what}; expected one "
            "full mammogram"
        )
    return found[0]
