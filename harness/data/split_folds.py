"""The ``fold_files`` split rule: a study's own committed fold files, row for row.

DovileDo/revisiting-transfer ships every fold it trained on as CSV files,
``data/<target>/{train,val,test}_fold{1..5}.csv`` (made once by its
``src/make_dataframe.py``), each row naming one image by a path on the authors' disk,
e.g. ``../../../data/breast/benign (248).png``. Re-deriving those folds with
scikit-learn (the ``kfold`` / ``group_kfold`` rules) gives the same folds only where the
image order, the library version and the study's own filtering all agree; reading the
files gives the study's folds exactly. This rule reads one fold's three files and puts
each image of the dataset into the split whose file lists it:

* a listed path is matched after removing ``strip_prefix`` (e.g. ``../../../data/``) and
  compared with each image's path relative to the dataset folder (``match: path``) or by
  file name alone (``match: name``: BUSI's ``benign (248).png`` lies in ``benign/`` on
  the official download but flat in the study's folder);
* an image no file lists is left out (BUSI's ``*_mask.png``, images the study dropped);
* a listed path with no image is an error naming the file and line (``missing: drop``
  leaves it out), and so is a path listed in two splits or a name two images share.

The images' paths come from the reader (``SplitInput.paths``: each kept row's image
path relative to the dataset folder, posix). The fold files themselves are found under
the dataset folder (``files`` are relative to it), so the study's CSVs are copied there
beside the images.
"""

from __future__ import annotations

import csv
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from harness.data import DatasetError
from harness.data.npz import SPLITS
from harness.data.registry import register_split_rule
from harness.data.split_rules import check_groups_disjoint
from harness.data.table import DatasetContext, SplitInput

DEFAULT_FILES = {split: f"folds/{split}_fold{{fold}}.csv" for split in SPLITS}


@dataclass(frozen=True, kw_only=True)
class FoldFilesParams:
    """Which fold files, and how their paths name the dataset's images.

    Attributes:
        fold: the fold (1-based), substituted for ``{fold}`` in ``files``.
        files: split -> the fold file, relative to the dataset folder, with ``{fold}``
            where the fold number goes (revisiting-transfer: ``train_fold1.csv``...).
        path_column: the files' column holding each image's path.
        strip_prefix: removed from the start of every listed path before matching (a
            path without it is matched as it is).
        match: ``path``: the rest must equal the image's path relative to the dataset
            folder; ``name``: only the file names are compared.
        missing: a listed image the dataset lacks is an ``error``, or ``drop`` it.
        check_groups: when the reader gives groups (patients), fail if one has images in
            two splits (the study's patient folds keep patients apart).
    """

    fold: int = 1
    files: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_FILES))
    path_column: str = "path"
    strip_prefix: str = ""
    match: Literal["path", "name"] = "path"
    missing: Literal["error", "drop"] = "error"
    check_groups: bool = True

    def validate(self) -> None:
        """A positive fold; one file for each of train, val and test."""
        if self.fold < 1:
            raise ValueError(f"'fold' must be >= 1, got {self.fold}")
        if sorted(self.files) != sorted(SPLITS):
            raise ValueError(
                f"'files' must name one file for each of {', '.join(SPLITS)}, got "
                f"{sorted(self.files)}"
            )

    def paths(self, root: Path) -> tuple[Path, ...]:
        """The fold files that must exist (and whose content keys the prepared data)."""
        return tuple(root / self.file(split) for split in SPLITS)

    def file(self, split: str) -> str:
        """The fold file of ``split`` for this fold, relative to the dataset folder."""
        return self.files[split].replace("{fold}", str(self.fold))


def _key(path: str, match: str, strip_prefix: str = "") -> str:
    """The match key of a path: prefix removed, normalised, the file name alone for ``name``."""
    path = path.replace("\\", "/")
    if strip_prefix and path.startswith(strip_prefix):
        path = path[len(strip_prefix) :]
    path = posixpath.normpath(path.lstrip("/")) if path else path
    return posixpath.basename(path) if match == "name" else path


def read_fold_file(
    path: Path, params: FoldFilesParams, ctx: DatasetContext
) -> list[tuple[int, str]]:
    """The (line number, match key) of every row of one fold file.

    Raises:
        DatasetError: when the file is absent, lacks the path column, or lists a path twice.
    """
    if not path.is_file():
        raise DatasetError(
            f"{ctx.card}: fold file {path} not found (field 'split.files'); copy the study's "
            "fold CSVs into the dataset folder"
        )
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        if params.path_column not in (reader.fieldnames or []):
            raise DatasetError(
                f"{ctx.card}: fold file {path} has no column {params.path_column!r} "
                f"(field 'split.path_column'; columns: {', '.join(reader.fieldnames or [])})"
            )
        rows = [
            (number, _key(row[params.path_column], params.match, params.strip_prefix))
            for number, row in enumerate(reader, start=2)
        ]
    seen: dict[str, int] = {}
    for number, key in rows:
        if key in seen:
            raise DatasetError(
                f"{ctx.card}: fold file {path} lists {key!r} twice (lines {seen[key]} and {number})"
            )
        seen[key] = number
    return rows


def _image_keys(data: SplitInput, params: FoldFilesParams, ctx: DatasetContext) -> dict[str, int]:
    paths = getattr(data, "paths", None)
    if paths is None:
        raise DatasetError(
            f"{ctx.card}: split rule 'fold_files' needs each image's path, and this reader "
            "gives none (use a file-based reader: image_folder, csv_images, dicom)"
        )
    keys: dict[str, int] = {}
    for index, path in enumerate(paths):
        key = _key(str(path), params.match)
        if key in keys:
            raise DatasetError(
                f"{ctx.card}: images {paths[keys[key]]} and {path} share the name {key!r}; "
                "fold files cannot tell them apart (field 'split.match': use path)"
            )
        keys[key] = index
    return keys


@register_split_rule("fold_files", version=1, params=FoldFilesParams)
def fold_files(
    params: FoldFilesParams, data: SplitInput, ctx: DatasetContext
) -> dict[str, np.ndarray]:
    """One fold of a study's committed fold files (see the module docstring)."""
    images = _image_keys(data, params, ctx)
    out: dict[str, np.ndarray] = {}
    owner: dict[str, str] = {}
    for split in SPLITS:
        path = ctx.root / params.file(split)
        rows = []
        for number, key in read_fold_file(path, params, ctx):
            if key in owner:
                raise DatasetError(
                    f"{ctx.card}: {key!r} is listed for both {owner[key]} and {split} "
                    f"({path} line {number})"
                )
            owner[key] = split
            index = images.get(key)
            if index is None:
                if params.missing == "drop":
                    continue
                raise DatasetError(
                    f"{ctx.card}: {path} line {number} lists {key!r}, which is not an image of "
                    f"the dataset (after the reader and label policy; fields 'split.strip_prefix' "
                    f"and 'split.match')"
                )
            rows.append(index)
        out[split] = np.sort(np.asarray(rows, dtype=np.int64))
    if params.check_groups and data.groups is not None:
        check_groups_disjoint(data.groups, out, ctx)
    return out
