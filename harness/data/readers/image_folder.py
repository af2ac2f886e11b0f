"""The ``image_folder`` reader: one sub-folder per class, as torchvision's ImageFolder.

Without split folders::

    <root>/<class>/.../<image>

With ``split_folders: true`` (Kermany's pediatric pneumonia set, many Kaggle sets)::

    <root>/<split>/<class>/.../<image>

With ``flat: true`` (Montgomery and Shenzhen, whose label is in the file name)::

    <root>/<subfolder>/.../<image>      e.g. MontgomerySet/CXR_png/MCUCXR_0001_0.png

The raw ``label`` column holds the class folder's name (the file name when ``flat``) (the label policy maps names to
classes; ``identity`` expects the card's class names). Hidden files and folders are
skipped; only files with one of ``extensions`` (case-insensitive) are images.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data import DatasetError
from harness.data.readers.decode import ImageParams, decode_image
from harness.data.registry import register_reader
from harness.data.table import DatasetContext, FileImages, RawDataset

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True, kw_only=True)
class ImageFolderParams(ImageParams):
    """Where the class folders are.

    Attributes:
        root: the dataset folder (absolute, ``~``, or relative to the card folder); by
            default ``<MEDXFER_HOME>/data/<name>``.
        split_folders: the top-level folders are source splits, each holding class folders.
        extensions: file name endings of images.
        group_pattern: a regex applied to each file name; its first capture group (or the
            whole match) is the group id, e.g. ``^(person\\d+)_`` for Kermany's patients.
        flat: no class folders: every image under ``subfolder`` is read and the ``label``
            column holds its file name (map it with the ``name_pattern`` policy).
        subfolder: where the images are, relative to ``root`` (with ``flat``).
    """

    root: str | None = None
    split_folders: bool = False
    extensions: tuple[str, ...] = EXTENSIONS
    group_pattern: str | None = None
    flat: bool = False
    subfolder: str = "."

    def validate(self) -> None:
        """Check the geometry, the extensions and the regex."""
        super().validate()
        if not self.extensions:
            raise ValueError("'extensions' is empty")
        if self.flat and self.split_folders:
            raise ValueError("'flat' reads one folder of images; drop 'split_folders'")
        if self.subfolder != "." and not self.flat:
            raise ValueError("'subfolder' is only used with 'flat: true'")
        if self.group_pattern is not None:
            try:
                re.compile(self.group_pattern)
            except re.error as exc:
                raise ValueError(f"'group_pattern' is not a valid regex: {exc}") from None

    def gives_splits(self) -> bool:
        """Whether the top-level folders are splits."""
        return self.split_folders

    def paths(self, root: Path) -> tuple[Path, ...]:
        """The folder that must exist before the dataset can be prepared."""
        return (root / self.subfolder if self.flat else root,)


@register_reader("image_folder", version=1, params=ImageFolderParams)
def read_image_folder(params: ImageFolderParams, ctx: DatasetContext) -> RawDataset:
    """Images in one sub-folder per class (optionally inside one folder per split)."""
    if not ctx.root.is_dir():
        raise DatasetError(f"{ctx.card}: dataset folder {ctx.root} not found")
    tops = _subfolders(ctx.root) if params.split_folders else [None]
    paths: list[Path] = []
    labels: list[str] = []
    splits: list[str] = []
    digest = hashlib.sha256()
    suffixes = tuple(ext.lower() for ext in params.extensions)
    for top in tops:
        base = ctx.root if top is None else ctx.root / top
        folders = (
            [(None, base / params.subfolder)]
            if params.flat
            else [(label, base / label) for label in _subfolders(base)]
        )
        for label, folder in folders:
            for path in _files(folder, suffixes):
                relative = path.relative_to(ctx.root).as_posix()
                digest.update(f"{relative}\0{path.stat().st_size}\n".encode())
                paths.append(path)
                labels.append(path.name if label is None else label)
                splits.append(top or "")
    if not paths:
        layout = "<split>/<class>/<image>" if params.split_folders else "<class>/<image>"
        layout = f"{params.subfolder}/<image>" if params.flat else layout
        raise DatasetError(
            f"{ctx.card}: no images ({', '.join(suffixes)}) in {ctx.root} (expected {layout})"
        )
    groups = None
    if params.group_pattern is not None:
        groups = np.asarray([_group(params.group_pattern, p.name, ctx) for p in paths], dtype=str)
    return RawDataset(
        columns={"label": np.asarray(labels, dtype=str)},
        images=FileImages(tuple(paths), lambda path: decode_image(path, params), ctx.card),
        digest=digest.hexdigest(),
        groups=groups,
        split=np.asarray(splits, dtype=str) if params.split_folders else None,
    )


def _subfolders(folder: Path) -> list[str]:
    return sorted(
        entry.name
        for entry in os.scandir(folder)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [
            Path(dirpath) / name
            for name in sorted(filenames)
            if not name.startswith(".") and name.lower().endswith(suffixes)
        ]
    return found


def _group(pattern: str, name: str, ctx: DatasetContext) -> str:
    match = re.search(pattern, name)
    if match is None:
        raise DatasetError(
            f"{ctx.card}: field 'reader.group_pattern' {pattern!r} does not match file {name!r}"
        )
    return match.group(1) if match.re.groups else match.group(0)
