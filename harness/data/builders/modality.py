"""The ``dicom_modality`` demo builder: imaging modality from real DICOM files (REAL labels).

Patches of uncompressed DICOM files from ``pydicom`` and ``pydicom-data``, labelled with
the file's own Modality tag (CR, CT, MR, NM, US).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from harness.data import DatasetError
from harness.data.builders.sources import (
    MODALITY_CLASSES,
    MODALITY_FILES,
    dicom_unit_frames,
    modality_tag,
    pip_dicom_path,
)
from harness.data.builders.tiles import (
    DemoBuild,
    augment,
    check_classes,
    empty_lists,
    finish,
    kwargs,
    plan_tiles,
    quantise,
    resize,
    sample_box,
    split_counts,
)
from harness.data.npz import SPLITS, SplitData
from harness.data.registry import register_builder
from harness.data.table import DatasetContext


@dataclass(frozen=True, kw_only=True)
class ModalityParams:
    """Parameters of :func:`build_dicom_modality` (see its arguments)."""

    seed: int = 0
    files: tuple[str, ...] = MODALITY_FILES
    counts: dict[str, int] | None = None
    out_size: int = 64
    grid: int = 4
    scale: tuple[float, float] = (0.35, 1.0)
    min_std: float = 0.06
    gamma: float = 0.4
    contrast: float = 0.3
    noise: float = 0.06


@register_builder("dicom_modality", version=1, params=ModalityParams)
def dicom_modality(params: ModalityParams, ctx: DatasetContext) -> dict[str, SplitData]:
    """Imaging modality of patches of pip-shipped DICOM files (labels from the Modality tag)."""
    return build_dicom_modality(classes=ctx.classes, **kwargs(params)).splits


def build_dicom_modality(
    *,
    seed: int,
    classes: Sequence[str] | None = None,
    files: Sequence[str],
    counts: dict[str, int] | None,
    out_size: int,
    grid: int,
    scale: Sequence[float],
    min_std: float,
    gamma: float,
    contrast: float,
    noise: float,
) -> DemoBuild:
    """Build the imaging-modality task (real labels from each file's Modality tag).

    Args:
        seed: random seed.
        classes: modality names in label order (default CR, CT, MR, NM, US).
        files: DICOM file names shipped in ``pydicom`` / ``pydicom-data``; each file's
            Modality tag must be one of ``classes`` and every class needs a file.
        counts: samples per split (multiples of the class count).
        out_size: output patch side (uint8 grayscale).
        grid: tiles along the short side of each image.
        scale: patch side as a fraction of the tile side (min, max).
        min_std: patches with a lower intensity std are redrawn (empty background).
        gamma: log-range of the random gamma.
        contrast: range of the random contrast / brightness change.
        noise: maximum std of the added Gaussian noise.

    Returns:
        The dataset and its split bookkeeping; ``groups`` holds the source file index.

    Raises:
        DatasetError: for a missing file, an unknown modality, or a class without files.
    """
    classes = check_classes(classes, MODALITY_CLASSES)
    counts = split_counts(counts, len(classes))
    layout_rng = np.random.default_rng([seed, 1000])
    sources, labels_of, frames_of, regions = [], [], [], []
    for index, name in enumerate(files):
        path = pip_dicom_path(name)
        modality = modality_tag(path)
        if modality not in classes:
            raise DatasetError(
                f"{path}: Modality tag is {modality!r}, not one of the classes {list(classes)}"
            )
        frames = dicom_unit_frames(str(path))
        tile = min(frames.shape[1:]) / grid

        def keep(y0: int, y1: int, x0: int, x1: int, frames: np.ndarray = frames) -> bool:
            return float(frames[:, y0:y1, x0:x1].std()) >= min_std

        regions += plan_tiles(index, frames.shape[1:], tile, counts, layout_rng, keep)
        sources.append(name)
        labels_of.append(classes.index(modality))
        frames_of.append(frames)
    missing = [c for k, c in enumerate(classes) if k not in labels_of]
    if missing:
        raise DatasetError(f"builder dicom_modality: no file has modality {', '.join(missing)}")

    images, labels, groups, boxes, region_ids = empty_lists(5)
    for split_no, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, split_no])
        split_regions = [i for i, r in enumerate(regions) if r.split == split]
        for label in range(len(classes)):
            class_sources = [s for s, lab in enumerate(labels_of) if lab == label]
            for _ in range(counts[split] // len(classes)):
                source = class_sources[int(rng.integers(len(class_sources)))]
                frames = frames_of[source]
                frame = int(rng.integers(len(frames)))
                own = [i for i in split_regions if regions[i].source == source]
                region_no = own[int(rng.integers(len(own)))]
                region = regions[region_no]
                tile_side = min(region.y1 - region.y0, region.x1 - region.x0)
                side = max(8, int(rng.uniform(*scale) * tile_side))

                def std(y0: int, x0: int, s: int, image: np.ndarray = frames[frame]) -> float:
                    return float(image[y0 : y0 + s, x0 : x0 + s].std())

                y0, x0, side = sample_box(rng, region, side, std, min_std)
                patch = resize(frames[frame][y0 : y0 + side, x0 : x0 + side], out_size)
                images[split].append(quantise(augment(patch, rng, gamma, contrast, noise)))
                labels[split].append(label)
                groups[split].append(source)
                boxes[split].append((source, frame, y0, x0, side))
                region_ids[split].append(region_no)
    shuffle_rng = np.random.default_rng([seed, 2000])
    return finish(
        images, labels, groups, boxes, region_ids, regions, sources, shuffle_rng, "source"
    )
