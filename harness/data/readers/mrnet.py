"""The ``mrnet_slices`` reader: 2-D slices of MRNet knee MR volumes, as revisiting-transfer uses them.

Stanford's MRNet v1.0 unpacks as::

    train/{sagittal,coronal,axial}/0000.npy ... 1129.npy   uint8 (slices, 256, 256)
    valid/{sagittal,coronal,axial}/1130.npy ... 1249.npy
    train-acl.csv, train-meniscus.csv, train-abnormal.csv  "0000,0" rows, no header
    valid-acl.csv, valid-meniscus.csv, valid-abnormal.csv

revisiting-transfer's "knee" target is not the volumes but single sagittal slices the
authors exported to PNG, ``images/<task>/<case>_sagittal_<slice>.000000.png`` with
``<task>`` ``acl`` or ``meniscus`` (a few slices per case, chosen by the authors; the
repository holds no export code), and labelled by its ``import_knee``
(DovileDo/revisiting-transfer@54853c3:src/io_fun/data_import.py): an ``acl`` slice is
``acl`` when its case is positive in ``train-acl.csv`` + ``valid-acl.csv`` and ``normal``
otherwise; a ``meniscus`` slice is ``meniscus`` when positive in ``train-meniscus.csv`` +
``valid-abnormal.csv`` (the study reads the *abnormal* file for its validation cases) and
``normal`` otherwise; a case in neither file is dropped.

This reader rebuilds that export from the official volumes: the slices to take are the
ones the study's fold CSVs name (``slice_lists``: its ``data/knee/*_fold*.csv``), each
row's image is slice ``<slice>`` of ``<case>.npy`` (found in ``volume_dirs``), and each
row is keyed by the study's own path ``images/<task>/<case>_sagittal_<slice>.000000.png``
(the ``fold_files`` rule matches on it). The raw ``label`` column holds the class (``""``
for an unlabelled case: map with ``class_map``, ``unmapped: drop``); the group is the
case (patient), as the study's GroupKFold on ``pid``.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.data import DatasetError
from harness.data.readers.decode import ImageParams, fit_image
from harness.data.registry import register_reader
from harness.data.table import DatasetContext, FileImages, RawDataset

SLICE_NAME = re.compile(r"images/([a-z]+)/(\d+)_(sagittal|coronal|axial)_(\d+)(?:\.\d+)?\.png$")
DEFAULT_LABELS = {
    "acl": ("train-acl.csv", "valid-acl.csv"),
    "meniscus": ("train-meniscus.csv", "valid-abnormal.csv"),
}


@dataclass(frozen=True, kw_only=True)
class MrnetParams(ImageParams):
    """Where MRNet is, which slices to take and how they are labelled.

    Attributes:
        root: the dataset folder (absolute, ``~``, or relative to the card folder); by
            default ``<MEDXFER_HOME>/data/<name>``.
        slice_lists: CSVs (relative to ``root``) whose ``path_column`` names the slices,
            as ``.../images/<task>/<case>_<plane>_<slice>.000000.png``.
        path_column: that column.
        labels: task -> the label CSVs (``case,0|1`` rows, no header) whose positives are
            that task's class; a case in none of a task's files is dropped.
        volume_dirs: folders (relative to ``root``) searched in order for
            ``<case>.npy``, with ``{plane}`` replaced by the slice's plane.
    """

    root: str | None = None
    slice_lists: tuple[str, ...]
    path_column: str = "path"
    labels: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_LABELS))
    volume_dirs: tuple[str, ...] = ("train/{plane}", "valid/{plane}")

    def validate(self) -> None:
        """At least one slice list, label file and volume folder."""
        ImageParams.validate(self)
        if not self.slice_lists or not self.labels or not self.volume_dirs:
            raise ValueError("'slice_lists', 'labels' and 'volume_dirs' must not be empty")

    def paths(self, root: Path) -> tuple[Path, ...]:
        """The slice lists and label files that must exist before the data is prepared."""
        labels = [root / name for names in self.labels.values() for name in names]
        return (*(root / name for name in self.slice_lists), *labels)


def _positives(files: tuple[str, ...], ctx: DatasetContext, digest: hashlib._Hash) -> dict:
    """Case -> 0/1 from MRNet's header-less ``case,label`` CSVs (later files win)."""
    out: dict[str, int] = {}
    for name in files:
        path = ctx.root / name
        if not path.is_file():
            raise DatasetError(f"{ctx.card}: label file {path} not found (field 'reader.labels')")
        data = path.read_bytes()
        digest.update(data)
        for number, row in enumerate(csv.reader(data.decode("utf-8-sig").splitlines()), 1):
            if not row:
                continue
            if len(row) < 2 or not row[0].strip().isdigit() or row[1].strip() not in ("0", "1"):
                raise DatasetError(f"{ctx.card}: {path} line {number}: expected 'case,0|1'")
            out[f"{int(row[0]):04d}"] = int(row[1])
    return out


def _slices(params: MrnetParams, ctx: DatasetContext, digest: hashlib._Hash) -> list[tuple]:
    """The distinct (task, case, plane, slice) the slice lists name, in first-seen order."""
    seen: dict[tuple[str, str, str, int], None] = {}
    for name in params.slice_lists:
        path = ctx.root / name
        if not path.is_file():
            raise DatasetError(
                f"{ctx.card}: slice list {path} not found (field 'reader.slice_lists')"
            )
        text = path.read_text(encoding="utf-8-sig")
        digest.update(text.encode())
        reader = csv.DictReader(text.splitlines())
        if params.path_column not in (reader.fieldnames or []):
            raise DatasetError(f"{ctx.card}: {path} has no column {params.path_column!r}")
        for number, row in enumerate(reader, start=2):
            match = SLICE_NAME.search(row[params.path_column].replace("\\", "/"))
            if match is None:
                raise DatasetError(
                    f"{ctx.card}: {path} line {number}: {row[params.path_column]!r} is not "
                    "images/<task>/<case>_<plane>_<slice>.png"
                )
            task, case, plane, index = match.groups()
            seen[(task, f"{int(case):04d}", plane, int(index))] = None
    return list(seen)


def _volume_slice(volume: Path, index: int, params: MrnetParams) -> np.ndarray:
    from PIL import Image

    stack = np.load(volume, mmap_mode="r", allow_pickle=False)
    if stack.ndim != 3 or not 0 <= index < stack.shape[0]:
        raise ValueError(f"{volume} has shape {stack.shape}: no slice {index}")
    image = Image.fromarray(np.asarray(stack[index], dtype=np.uint8)).convert(params.mode)
    return fit_image(image, params)


@register_reader("mrnet_slices", version=1, params=MrnetParams)
def read_mrnet(params: MrnetParams, ctx: DatasetContext) -> RawDataset:
    """Listed sagittal slices of MRNet's ``.npy`` volumes, labelled as revisiting-transfer."""
    digest = hashlib.sha256()
    positives = {task: _positives(files, ctx, digest) for task, files in params.labels.items()}
    keys, volumes, labels, groups = [], {}, [], []
    for task, case, plane, index in _slices(params, ctx, digest):
        if task not in positives:
            raise DatasetError(
                f"{ctx.card}: slice task {task!r} has no label files ('reader.labels')"
            )
        volume = next(
            (
                ctx.root / folder.replace("{plane}", plane) / f"{case}.npy"
                for folder in params.volume_dirs
                if (ctx.root / folder.replace("{plane}", plane) / f"{case}.npy").is_file()
            ),
            None,
        )
        if volume is None:
            raise DatasetError(
                f"{ctx.card}: volume {case}.npy ({plane}) not found in {params.volume_dirs}"
            )
        key = ctx.root / "images" / task / f"{case}_{plane}_{index}.000000.png"
        volumes[key] = (volume, index)
        keys.append(key)
        value = positives[task].get(case)
        labels.append("" if value is None else (task if value else "normal"))
        groups.append(case)
    if not keys:
        raise DatasetError(f"{ctx.card}: the slice lists name no slice")
    for volume, _ in sorted(set(volumes.values())):
        digest.update(f"{volume.relative_to(ctx.root)}\0{volume.stat().st_size}\n".encode())

    def decode(key: Path) -> np.ndarray:
        volume, index = volumes[key]
        return _volume_slice(volume, index, params)

    return RawDataset(
        columns={"label": np.asarray(labels, dtype=str)},
        images=FileImages(tuple(keys), decode, ctx.card),
        digest=digest.hexdigest(),
        groups=np.asarray(groups, dtype=str),
    )
