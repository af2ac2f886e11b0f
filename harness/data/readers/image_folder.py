"""The ``image_folder`` reader: one sub-folder per class, as torchvision's ImageFolder.

Without split folders::

    <root>/<class>/.../<image>

With ``split_folders: true`` (Kermany's pediatric pneumonia set, many Kaggle sets)::

    <root>/<split>/<class>/.../<image>

With ``flat: true`` (Montgomery and Shenzhen, whose label is in the file name)::

    <root>/<subfolder>/.../<image>      e.g. MontgomerySet/CXR_png/MCUCXR_0001_0.png

With ``split_lists`` (DTD: ``images/<class>/<image>.jpg`` and ``labels/train1.txt``,
``val1.txt``, ``test1.txt`` listing ``banded/banded_0002.jpg``), the source split of each
image comes from list files naming its path relative to ``<root>/<subfolder>``; images in
no list get no split (``predefined`` leaves them out) and a listed image that is not on
disk is an error naming the list.

The raw ``label`` column holds the class folder's name (the file name when ``flat``); the
label policy maps names to classes (``identity`` expects the card's class names). Hidden
files and folders are skipped; only files with one of ``extensions`` (case-insensitive)
are images.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        subfolder: the folder, relative to ``root``, holding the class folders (the split
            folders with ``split_folders``, the images with ``flat``).
        split_lists: source split -> a text file (relative to ``root``) listing one image
            per line by its path relative to ``subfolder``, e.g. DTD's ``{train:
            labels/train1.txt, val: labels/val1.txt, test: labels/test1.txt}``.
    """

    root: str | None = None
    split_folders: bool = False
    extensions: tuple[str, ...] = EXTENSIONS
    group_pattern: str | None = None
    flat: bool = False
    subfolder: str = "."
    split_lists: dict[str, str] | None = None

    def validate(self) -> None:
        """Check the geometry, the extensions, the regex and the split source."""
        super().validate()
        if not self.extensions:
            raise ValueError("'extensions' is empty")
        if self.flat and self.split_folders:
            raise ValueError("'flat' reads one folder of images; drop 'split_folders'")
        if self.split_lists is not None:
            if self.split_folders:
                raise ValueError("'split_lists' names the splits; drop 'split_folders'")
            if not self.split_lists:
                raise ValueError("'split_lists' is empty")
        if self.group_pattern is not None:
            try:
                re.compile(self.group_pattern)
            except re.error as exc:
                raise ValueError(f"'group_pattern' is not a valid regex: {exc}") from None

    def gives_splits(self) -> bool:
        """Whether the source names splits (split folders or split lists)."""
        return self.split_folders or self.split_lists is not None

    def paths(self, root: Path) -> tuple[Path, ...]:
        """The folder (and split lists) that must exist before the dataset can be prepared."""
        lists = (self.split_lists or {}).values()
        return (root / self.subfolder, *(root / name for name in lists))


@register_reader("image_folder", version=1, params=ImageFolderParams)
def read_image_folder(params: ImageFolderParams, ctx: DatasetContext) -> RawDataset:
    """Images in one sub-folder per class (optionally inside one folder per split)."""
    if not ctx.root.is_dir():
        raise DatasetError(f"{ctx.card}: dataset folder {ctx.root} not found")
    home = ctx.root / params.subfolder
    if not home.is_dir():
        raise DatasetError(f"{ctx.card}: folder {home} not found (field 'reader.subfolder')")
    tops = _subfolders(home) if params.split_folders else [None]
    paths: list[Path] = []
    labels: list[str] = []
    splits: list[str] = []
    digest = hashlib.sha256()
    suffixes = tuple(ext.lower() for ext in params.extensions)
    for top in tops:
        base = home if top is None else home / top
        folders = (
            [(None, base)]
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
        layout = "<image>" if params.flat else layout
        raise DatasetError(
            f"{ctx.card}: no images ({', '.join(suffixes)}) in {home} (expected {layout})"
        )
    split = np.asarray(splits, dtype=str) if params.split_folders else None
    if params.split_lists is not None:
        keys = [path.relative_to(home).as_posix() for path in paths]
        split = _listed_splits(params.split_lists, keys, home, ctx, digest)
    groups = None
    if params.group_pattern is not None:
        groups = np.asarray([_group(params.group_pattern, p.name, ctx) for p in paths], dtype=str)
    return RawDataset(
        columns={"label": np.asarray(labels, dtype=str)},
        images=FileImages(tuple(paths), lambda path: decode_image(path, params), ctx.card),
        digest=digest.hexdigest(),
        groups=groups,
        split=split,
    )


def _listed_splits(
    lists: dict[str, str], keys: list[str], home: Path, ctx: DatasetContext, digest: Any
) -> np.ndarray:
    """Source split of each image from per-split list files; every listed image must exist."""
    index = {key: row for row, key in enumerate(keys)}
    out = np.full(len(keys), "", dtype=object)
    for split, name in lists.items():
        path = ctx.root / name
        if not path.is_file():
            raise DatasetError(f"{ctx.card}: split list {path} not found (reader.split_lists)")
        text = path.read_text(encoding="utf-8-sig")
        digest.update(f"list\0{split}\0{name}\0".encode() + text.encode())
        for number, line in enumerate(text.splitlines(), start=1):
            key = line.strip()
            if not key:
                continue
            row = index.get(key)
            if row is None:
                raise DatasetError(
                    f"{ctx.card}: {path} line {number} lists {key!r}, which is not an image "
                    f"under {home} (reader.split_lists)"
                )
            if out[row] not in ("", split):
                raise DatasetError(
                    f"{ctx.card}: {key!r} is listed in both {lists[out[row]]} and {name} "
                    "(reader.split_lists)"
                )
            out[row] = split
    return out.astype(str)


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
