"""The ``npz`` reader: one MedMNIST-layout archive (see :mod:`harness.data.npz`).

The archive's ``{split}_images`` / ``{split}_labels`` / ``{split}_groups`` keys give the
source splits; the ``label`` column holds the stored labels ((N,) or (N, C)). With the
``identity`` label policy and the ``predefined`` split rule the archive is read as it is,
without a prepared copy (the path MedMNIST files and built demo datasets take).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar

import numpy as np

from harness.cache.keys import file_sha256
from harness.data import DatasetError
from harness.data.npz import SPLITS
from harness.data.registry import register_reader
from harness.data.table import ArrayImages, DatasetContext, RawDataset


@dataclass(frozen=True, kw_only=True)
class NpzParams:
    """Where the archive is.

    Attributes:
        file: the archive, relative to ``root`` (no ``..``).
        root: the folder holding it (absolute, ``~``, or relative to the card folder); by
            default ``<MEDXFER_HOME>/data/<name>/v<version>``.
    """

    ROOT_PER_VERSION: ClassVar[bool] = True
    file: str
    root: str | None = None

    def validate(self) -> None:
        """The file is a relative path inside the root."""
        parts = PurePosixPath(self.file).parts
        if not parts or PurePosixPath(self.file).is_absolute() or ".." in parts:
            raise ValueError(f"'file' must be a path inside the root (no '..'), got {self.file!r}")

    def paths(self, root: Path) -> tuple[Path, ...]:
        """The archive, which must exist before the dataset can be read."""
        return (root / self.file,)


@register_reader("npz", version=1, params=NpzParams)
def read_npz_archive(params: NpzParams, ctx: DatasetContext) -> RawDataset:
    """A MedMNIST-layout ``.npz`` archive: images, labels and groups per source split."""
    path = ctx.root / params.file
    if not path.is_file():
        raise DatasetError(f"{ctx.card}: dataset file {path} not found")
    if not zipfile.is_zipfile(path):
        raise DatasetError(f"{path}: not an .npz archive (not a zip file)")
    with np.load(path, allow_pickle=False) as archive:
        keys = set(archive.files)
        names = [s for s in SPLITS if f"{s}_images" in keys]
        names += sorted(
            k[: -len("_images")] for k in keys if k.endswith("_images") and k[:-7] not in SPLITS
        )
        if not names:
            raise DatasetError(
                f"{path}: no '<split>_images' keys (keys: {', '.join(sorted(keys))})"
            )
        labels, groups, sizes = [], [], []
        for name in names:
            if f"{name}_labels" not in keys:
                raise DatasetError(f"{path}: missing key '{name}_labels'")
            label = archive[f"{name}_labels"]
            labels.append(label.reshape(-1) if label.ndim == 2 and label.shape[1] == 1 else label)
            sizes.append(len(label))
            if f"{name}_groups" in keys:
                groups.append(archive[f"{name}_groups"].reshape(-1))
    if groups and len(groups) != len(names):
        raise DatasetError(f"{path}: '<split>_groups' is present for some splits only")

    def load() -> list[np.ndarray]:
        with np.load(path, allow_pickle=False) as archive:
            return [archive[f"{name}_images"] for name in names]

    split = np.concatenate(
        [np.full(n, name, dtype=object) for name, n in zip(names, sizes, strict=True)]
    )
    return RawDataset(
        columns={"label": np.concatenate(labels)},
        images=ArrayImages(tuple(sizes), load),
        digest=file_sha256(path),
        groups=np.concatenate(groups) if groups else None,
        split=split.astype(str),
    )
