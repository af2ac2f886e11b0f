"""The lesion demo builders (SEMI-SYNTHETIC: real backgrounds, synthetic lesions).

- ``cxr_lesion``: patches of a real chest radiograph (``RG1_UNCI.dcm``); half carry a
  synthetic nodule (soft disk, contrast relative to the local std).
- ``fundus_lesion``: RGB patches of scikit-image's real fundus photo
  (``skimage.data.retina()``); half carry a few small dark-red dots (microaneurysm /
  haemorrhage-like).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from harness.data import DatasetError
from harness.data.builders.sources import (
    LESION_CLASSES,
    dicom_unit_frames,
    pip_dicom_path,
    retina,
)
from harness.data.builders.tiles import (
    DemoBuild,
    Region,
    augment,
    check_classes,
    empty_lists,
    finish,
    kwargs,
    plan_tiles,
    quantise,
    resize,
    sample_box,
    soft_disk,
    split_counts,
)
from harness.data.npz import SPLITS, SplitData
from harness.data.registry import register_builder
from harness.data.table import DatasetContext


@dataclass(frozen=True, kw_only=True)
class CxrLesionParams:
    """Parameters of :func:`build_cxr_lesion` (see its arguments)."""

    seed: int = 0
    file: str = "RG1_UNCI.dcm"
    counts: dict[str, int] | None = None
    out_size: int = 64
    patch_size: int = 160
    scale_jitter: float = 0.15
    grid: int = 6
    radius: tuple[float, float] = (5.0, 10.0)
    lesion_contrast: tuple[float, float] = (1.2, 2.4)
    min_std: float = 0.03
    gamma: float = 0.3
    contrast: float = 0.25
    noise: float = 0.02


@dataclass(frozen=True, kw_only=True)
class FundusLesionParams:
    """Parameters of :func:`build_fundus_lesion` (see its arguments)."""

    seed: int = 0
    counts: dict[str, int] | None = None
    out_size: int = 64
    patch_size: int = 128
    scale_jitter: float = 0.15
    grid: int = 8
    dots: tuple[int, int] = (1, 3)
    radius: tuple[float, float] = (1.0, 2.2)
    lesion_contrast: tuple[float, float] = (0.15, 0.4)
    min_fov: float = 0.97
    gamma: float = 0.25
    contrast: float = 0.2
    noise: float = 0.03


@register_builder("cxr_lesion", version=1, params=CxrLesionParams)
def cxr_lesion(params: CxrLesionParams, ctx: DatasetContext) -> dict[str, SplitData]:
    """Nodule detection on patches of a pip-shipped chest radiograph (synthetic nodules)."""
    return build_cxr_lesion(classes=ctx.classes, **kwargs(params)).splits


@register_builder("fundus_lesion", version=1, params=FundusLesionParams)
def fundus_lesion(params: FundusLesionParams, ctx: DatasetContext) -> dict[str, SplitData]:
    """Red-lesion detection on patches of scikit-image's fundus photo (synthetic dots)."""
    return build_fundus_lesion(classes=ctx.classes, **kwargs(params)).splits


def build_cxr_lesion(
    *,
    seed: int,
    classes: Sequence[str] | None = None,
    file: str,
    counts: dict[str, int] | None,
    out_size: int,
    patch_size: int,
    scale_jitter: float,
    grid: int,
    radius: Sequence[float],
    lesion_contrast: Sequence[float],
    min_std: float,
    gamma: float,
    contrast: float,
    noise: float,
) -> DemoBuild:
    """Build the chest X-ray nodule task (SEMI-SYNTHETIC: real background, synthetic lesion).

    Args:
        seed: random seed.
        classes: two class names (label 0 = normal, 1 = lesion).
        file: the chest radiograph (a DICOM file shipped in ``pydicom-data``).
        counts: samples per split (even: half are positives).
        out_size: output patch side (uint8 grayscale).
        patch_size: source patch side in pixels (jittered by ``scale_jitter``).
        scale_jitter: relative jitter of the source patch side.
        grid: tiles along the short side of the radiograph.
        radius: nodule radius range, in output pixels.
        lesion_contrast: nodule amplitude range, in units of the local std of the patch.
        min_std: patches with a lower intensity std are redrawn (flat background).
        gamma: log-range of the random gamma.
        contrast: range of the random contrast / brightness change.
        noise: maximum std of the added Gaussian noise.

    Returns:
        The dataset and its split bookkeeping; ``groups`` holds the tile index.
    """
    classes = check_classes(classes, LESION_CLASSES)
    _check_binary(classes, "cxr_lesion")
    counts = split_counts(counts, 2)
    path = pip_dicom_path(file)
    image = dicom_unit_frames(str(path))[0]
    tile = min(image.shape) / grid

    def keep(y0: int, y1: int, x0: int, x1: int) -> bool:
        return float(image[y0:y1, x0:x1].std()) >= min_std

    regions = plan_tiles(0, image.shape, tile, counts, np.random.default_rng([seed, 1000]), keep)

    def std(y0: int, x0: int, side: int) -> float:
        return float(image[y0 : y0 + side, x0 : x0 + side].std())

    def add_nodule(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        r = rng.uniform(*radius)
        margin = r + 2.0
        cy, cx = rng.uniform(margin, out_size - margin, size=2)
        window = patch[
            max(0, int(cy - 3 * r)) : int(cy + 3 * r) + 1,
            max(0, int(cx - 3 * r)) : int(cx + 3 * r) + 1,
        ]
        amplitude = rng.uniform(*lesion_contrast) * max(float(window.std()), 0.02)
        return patch + amplitude * soft_disk(out_size, cy, cx, r)

    def sample(rng: np.random.Generator, region: Region) -> tuple[np.ndarray, tuple[int, ...]]:
        side = int(patch_size * rng.uniform(1 - scale_jitter, 1 + scale_jitter))
        y0, x0, side = sample_box(rng, region, side, std, min_std)
        patch = resize(image[y0 : y0 + side, x0 : x0 + side], out_size)
        return patch, (0, 0, y0, x0, side)

    return _build_lesion_task(
        seed, counts, regions, (file,), sample, add_nodule, gamma, contrast, noise
    )


def build_fundus_lesion(
    *,
    seed: int,
    classes: Sequence[str] | None = None,
    counts: dict[str, int] | None,
    out_size: int,
    patch_size: int,
    scale_jitter: float,
    grid: int,
    dots: Sequence[int],
    radius: Sequence[float],
    lesion_contrast: Sequence[float],
    min_fov: float,
    gamma: float,
    contrast: float,
    noise: float,
) -> DemoBuild:
    """Build the fundus red-lesion task (SEMI-SYNTHETIC: real fundus, synthetic dots).

    Positives carry ``dots`` small dark-red dots (green darkened most, red least), like
    microaneurysms or small haemorrhages.

    Args:
        seed: random seed.
        classes: two class names (label 0 = normal, 1 = lesion).
        counts: samples per split (even: half are positives).
        out_size: output patch side (uint8 RGB).
        patch_size: source patch side in pixels (jittered by ``scale_jitter``).
        scale_jitter: relative jitter of the source patch side.
        grid: tiles along the side of the photograph.
        dots: range (inclusive) of the number of dots on a positive.
        radius: dot radius range, in output pixels.
        lesion_contrast: fractional darkening of the green channel at a dot's centre.
        min_fov: minimum fraction of a patch inside the camera's field of view.
        gamma: log-range of the random gamma.
        contrast: range of the random contrast / brightness change.
        noise: maximum std of the added Gaussian noise.

    Returns:
        The dataset and its split bookkeeping; ``groups`` holds the tile index.
    """
    classes = check_classes(classes, LESION_CLASSES)
    _check_binary(classes, "fundus_lesion")
    counts = split_counts(counts, 2)
    image = retina()
    fov = _fov_integral(image.mean(axis=-1) > 0.08)
    tile = min(image.shape[:2]) / grid

    def fov_fraction(y0: int, y1: int, x0: int, x1: int) -> float:
        inside = fov[y1, x1] - fov[y0, x1] - fov[y1, x0] + fov[y0, x0]
        return float(inside) / max(1, (y1 - y0) * (x1 - x0))

    def keep(y0: int, y1: int, x0: int, x1: int) -> bool:
        return fov_fraction(y0, y1, x0, x1) >= 0.75

    regions = plan_tiles(
        0, image.shape[:2], tile, counts, np.random.default_rng([seed, 1000]), keep
    )
    tint = np.array([0.55, 1.0, 0.85], dtype=np.float32)

    def add_dots(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        darkening = np.zeros(patch.shape[:2], dtype=np.float32)
        for _ in range(int(rng.integers(dots[0], dots[1] + 1))):
            r = rng.uniform(*radius)
            cy, cx = rng.uniform(r + 2.0, out_size - r - 2.0, size=2)
            amount = rng.uniform(*lesion_contrast) * soft_disk(out_size, cy, cx, r, edge=0.5)
            darkening = np.maximum(darkening, amount)
        return patch * (1.0 - darkening[..., None] * tint)

    def sample(rng: np.random.Generator, region: Region) -> tuple[np.ndarray, tuple[int, ...]]:
        side = int(patch_size * rng.uniform(1 - scale_jitter, 1 + scale_jitter))

        def score(y0: int, x0: int, s: int) -> float:
            return fov_fraction(y0, y0 + s, x0, x0 + s)

        y0, x0, side = sample_box(rng, region, side, score, min_fov)
        patch = resize(image[y0 : y0 + side, x0 : x0 + side], out_size)
        return patch, (0, 0, y0, x0, side)

    return _build_lesion_task(
        seed, counts, regions, ("skimage.data.retina",), sample, add_dots, gamma, contrast, noise
    )


def _build_lesion_task(
    seed: int,
    counts: dict[str, int],
    regions: list[Region],
    sources: Sequence[str],
    sample: Callable[[np.random.Generator, Region], tuple[np.ndarray, tuple[int, ...]]],
    add_lesion: Callable[[np.ndarray, np.random.Generator], np.ndarray],
    gamma: float,
    contrast: float,
    noise: float,
) -> DemoBuild:
    """Draw balanced normal / lesion patches from each split's tiles."""
    images, labels, groups, boxes, region_ids = empty_lists(5)
    for split_no, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, split_no])
        own = [i for i, r in enumerate(regions) if r.split == split]
        for k in range(counts[split]):
            label = k % 2
            region_no = own[int(rng.integers(len(own)))]
            patch, box = sample(rng, regions[region_no])
            if label:
                patch = add_lesion(patch, rng)
            images[split].append(quantise(augment(patch, rng, gamma, contrast, noise)))
            labels[split].append(label)
            groups[split].append(0)
            boxes[split].append(box)
            region_ids[split].append(region_no)
    shuffle_rng = np.random.default_rng([seed, 2000])
    return finish(
        images, labels, groups, boxes, region_ids, regions, sources, shuffle_rng, "region"
    )


def _check_binary(classes: Sequence[str], name: str) -> None:
    if len(classes) != 2:
        raise DatasetError(f"builder {name}: needs exactly 2 classes, got {list(classes)}")


def _fov_integral(mask: np.ndarray) -> np.ndarray:
    """Summed-area table of a boolean mask, padded with a leading row and column of zeros."""
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    table[1:, 1:] = mask.cumsum(0).cumsum(1)
    return table
