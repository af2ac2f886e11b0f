"""The ``ddti_xml`` reader: the DDTI thyroid ultrasound set as Kaggle redistributes it.

The Digital Database of Thyroid Ultrasound Images (Pedraza et al., SIPAIM 2014), as
unpacked from Kaggle's ``dasmehdixtr/ddti-thyroid-ultrasound-images``, is one folder of

    <n>_<k>.jpg      image k of case n (a case may have several)
    <n>.xml          the case's report: <case><number>n</number> ... <tirads>4a</tirads> ...

Raw columns: ``tirads`` (the report's TI-RADS text, ``""`` when the report has none or
the image has no report) and ``label``, revisiting-transfer's reading of it
(DovileDo/revisiting-transfer@54853c3:src/io_fun/data_import.py, ``import_thyroid``):
TI-RADS 4a/4b/4c/5 (the leading number >= 4) is ``malignant``, anything lower
``benign``; a report without a ``tirads`` element counts as TI-RADS 1 (``benign``), as
the study's code sets "1.0" for it; an image without a report (the study's inner join
drops it) or a report with an empty TI-RADS gets ``""`` (map it with ``class_map``,
``unmapped: drop``). The group is the case number: one patient's nodule images stay
together.
"""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data import DatasetError
from harness.data.readers.decode import ImageParams, decode_image
from harness.data.registry import register_reader
from harness.data.table import DatasetContext, FileImages, RawDataset

IMAGE_NAME = re.compile(r"^(\d+)_(\d+)\.jpe?g$", re.IGNORECASE)
MALIGNANT_FROM = 4


@dataclass(frozen=True, kw_only=True)
class DdtiParams(ImageParams):
    """Where the DDTI files are.

    Attributes:
        root: the dataset folder (absolute, ``~``, or relative to the card folder); by
            default ``<MEDXFER_HOME>/data/<name>``.
        folder: the folder, relative to ``root``, holding the ``.jpg`` and ``.xml`` files.
    """

    root: str | None = None
    folder: str = "."

    def paths(self, root: Path) -> tuple[Path, ...]:
        """The folder that must exist before the dataset can be prepared."""
        return (root / self.folder,)


def tirads_class(tirads: str | None) -> str:
    """revisiting-transfer's class of a TI-RADS text (None: no ``tirads`` element).

    Raises:
        ValueError: when the text has no leading number.
    """
    if tirads is None:
        return "benign"
    match = re.match(r"\s*(\d+)", tirads)
    if match is None:
        raise ValueError(f"TI-RADS {tirads!r} has no leading number")
    return "malignant" if int(match.group(1)) >= MALIGNANT_FROM else "benign"


def read_report(path: Path, ctx: DatasetContext) -> tuple[str, str | None]:
    """The case number and TI-RADS text (None when absent) of one ``<n>.xml`` report."""
    try:
        case = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DatasetError(f"{ctx.card}: cannot parse report {path}: {exc}") from None
    number = (case.findtext("number") or "").strip()
    if not number.isdigit():
        raise DatasetError(f"{ctx.card}: report {path} has no <number>")
    element = case.find("tirads")
    return str(int(number)), None if element is None else (element.text or "").strip()


@register_reader("ddti_xml", version=1, params=DdtiParams)
def read_ddti(params: DdtiParams, ctx: DatasetContext) -> RawDataset:
    """DDTI's ``<n>_<k>.jpg`` images with the TI-RADS of their ``<n>.xml`` reports."""
    folder = ctx.root / params.folder
    if not folder.is_dir():
        raise DatasetError(f"{ctx.card}: folder {folder} not found (field 'reader.folder')")
    digest = hashlib.sha256()
    reports: dict[str, str | None] = {}
    for path in sorted(folder.glob("*.xml")):
        digest.update(path.read_bytes())
        number, tirads = read_report(path, ctx)
        reports[number] = tirads
    paths, groups, tirads_column, labels = [], [], [], []
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        match = IMAGE_NAME.match(path.name)
        if match is None or not path.is_file():
            continue
        case = str(int(match.group(1)))
        digest.update(f"{path.name}\0{path.stat().st_size}\n".encode())
        paths.append(path)
        groups.append(case)
        if case not in reports:
            tirads_column.append("")
            labels.append("")
            continue
        tirads = reports[case]
        tirads_column.append(tirads or "")
        try:
            labels.append("" if tirads == "" else tirads_class(tirads))
        except ValueError as exc:
            raise DatasetError(f"{ctx.card}: report {folder / (case + '.xml')}: {exc}") from None
    if not paths:
        raise DatasetError(f"{ctx.card}: no <n>_<k>.jpg images in {folder}")
    return RawDataset(
        columns={
            "tirads": np.asarray(tirads_column, dtype=str),
            "label": np.asarray(labels, dtype=str),
        },
        images=FileImages(tuple(paths), lambda path: decode_image(path, params), ctx.card),
        digest=digest.hexdigest(),
        groups=np.asarray(groups, dtype=str),
    )
