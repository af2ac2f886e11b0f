"""The ``pcam_png_names`` reader: PatchCamelyon as revisiting-transfer's PNG export names it.

revisiting-transfer and cats-scans do not read PCam's ``.h5`` files during training: a
one-off script (DovileDo/revisiting-transfer@54853c3:src/io_fun/pcam_converter.py) writes
every image of the train split, then every image of the valid split, to one folder as
``<index>_label=<y>.png`` (``<index>`` the row within its split; the test split is not
written), and the studies' subsets (PCam-small: 10,000 of those files) and fold CSVs
name those files. Because both splits start at index 0, a valid image overwrites the
train image of the same index whenever their labels agree; when they differ both files
exist.

This reader gives the ``.h5`` rows of the chosen splits (by default train then valid,
the script's order) the names the script gave them, ``<folder>/<index>_label=<y>.png``,
so the ``fold_files`` rule can pick the studies' rows; a train row whose file the valid
split overwrote is named ``<folder>/overwritten/train_<index>.png`` (no fold lists it).
Images are read from the ``.h5`` files on demand (the ``hdf5`` reader's way); the raw
``label`` column holds PCam's 0 / 1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data.readers.hdf5 import Hdf5Params, read_hdf5
from harness.data.registry import register_reader
from harness.data.table import DatasetContext, RawDataset


@dataclass(frozen=True, kw_only=True)
class PcamPngParams(Hdf5Params):
    """The ``hdf5`` reader's files, in the export's split order, and the export folder.

    Attributes:
        folder: the export folder the studies' paths name (after their data prefix).
    """

    folder: str = "PCam/png_images"


@dataclass(frozen=True, eq=False)
class NamedImages:
    """An image source with a path per row (the export's file names), read from another.

    Attributes:
        source: the images (e.g. the ``.h5`` rows).
        paths: one path per row, under the dataset folder.
    """

    source: object
    paths: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The source's images of ``rows``."""
        return self.source.take(rows)  # type: ignore[attr-defined, no-any-return]


def export_names(splits: np.ndarray, labels: np.ndarray, folder: str) -> list[str]:
    """The file each row got from the export: ``<folder>/<index>_label=<y>.png``, later splits
    overwriting earlier ones of the same name (the overwritten rows get an unlisted name)."""
    names: list[str] = []
    index_in_split: dict[str, int] = {}
    owner: dict[str, int] = {}
    for row, (split, label) in enumerate(zip(splits, labels, strict=True)):
        index = index_in_split.get(str(split), 0)
        index_in_split[str(split)] = index + 1
        name = f"{folder}/{index}_label={int(label)}.png"
        if name in owner:  # this split's file replaces the earlier split's one
            earlier = owner[name]
            names[earlier] = f"{folder}/overwritten/{splits[earlier]}_{earlier}.png"
        owner[name] = row
        names.append(name)
    return names


@register_reader("pcam_png_names", version=1, params=PcamPngParams)
def read_pcam_png(params: PcamPngParams, ctx: DatasetContext) -> RawDataset:
    """PCam's ``.h5`` rows named as revisiting-transfer's PNG export names them."""
    hdf5 = Hdf5Params(images=params.images, labels=params.labels, root=params.root)
    raw = read_hdf5(hdf5, ctx)
    labels = np.asarray(raw.columns["label"])
    assert raw.split is not None
    names = export_names(raw.split, labels, params.folder.strip("/"))
    return dataclasses.replace(
        raw, images=NamedImages(raw.images, tuple(ctx.root / name for name in names))
    )
