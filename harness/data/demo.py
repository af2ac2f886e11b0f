"""Deterministic builders of the embedded demo datasets, from images shipped in pip packages.

Three builders, registered in :data:`BUILDERS` under the name a dataset card gives in
``builder: {name: ...}`` (the card's other builder fields are passed as keyword
arguments, with ``seed`` and the card's ``classes``):

- ``dicom_modality``: REAL labels. Patches of uncompressed DICOM files from ``pydicom``
  and ``pydicom-data``, labelled with the file's own Modality tag (CR, CT, MR, NM, US).
- ``cxr_lesion``: SEMI-SYNTHETIC. Patches of a real chest radiograph (``RG1_UNCI.dcm``);
  half carry a synthetic nodule (soft disk, contrast relative to the local std).
- ``fundus_lesion``: SEMI-SYNTHETIC. RGB patches of scikit-image's real fundus photo
  (``skimage.data.retina()``); half carry a few small dark-red dots
  (microaneurysm / haemorrhage-like).

No leakage between splits: every source image is cut into a grid of tiles and each tile
is given to exactly one split (the same tiles for every frame of a multi-frame file);
a patch lies inside one tile of its split. :func:`build_demo` returns that bookkeeping
(:class:`DemoBuild`) beside the data. Everything is deterministic from ``seed``.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.data import DatasetError
from harness.data.dicom import read_dicom_frames, to_uint8
from harness.data.npz import SPLITS, SplitData

VERSION = 1
DEFAULT_COUNTS = {"train": 600, "val": 200, "test": 300}
MODALITY_CLASSES = ("CR", "CT", "MR", "NM", "US")
MODALITY_FILES = (
    "RG1_UNCI.dcm",
    "RG3_UNCI.dcm",
    "693_UNCI.dcm",
    "eCT_Supplemental.dcm",
    "MR2_UNCI.dcm",
    "MR-SIEMENS-DICOM-WithOverlays.dcm",
    "JPEG2000_UNC.dcm",
    "US1_UNCI.dcm",
    "gdcm-US-ALOKA-16.dcm",
)
LESION_CLASSES = ("normal", "lesion")
# The pip-shipped CR files look conventional (bone bright, lung dark) as stored; the
# MONOCHROME1 inversion would turn them into film negatives, so the demos keep them as-is.
INVERT_MONOCHROME1 = False


@dataclass(frozen=True)
class Region:
    """A tile of one source image given to one split (applies to all its frames).

    Attributes:
        source: index of the source image.
        y0, y1, x0, x1: the tile, half-open, in source pixels.
        split: ``train``, ``val`` or ``test``.
    """

    source: int
    y0: int
    y1: int
    x0: int
    x1: int
    split: str

    def overlaps(self, other: Region) -> bool:
        """True when both tiles belong to the same source and share a pixel."""
        return (
            self.source == other.source
            and self.y0 < other.y1
            and other.y0 < self.y1
            and self.x0 < other.x1
            and other.x0 < self.x1
        )

    def contains(self, y0: int, x0: int, side: int) -> bool:
        """True when the square patch ``(y0, x0, side)`` lies inside this tile."""
        return self.y0 <= y0 and y0 + side <= self.y1 and self.x0 <= x0 and x0 + side <= self.x1


@dataclass(frozen=True, eq=False)
class DemoBuild:
    """A built demo dataset with the bookkeeping that shows its splits are disjoint.

    Attributes:
        splits: the data, ``{"train", "val", "test"} -> SplitData``.
        regions: every tile that was given to a split.
        boxes: per split, int64 ``(N, 5)``: source, frame, y0, x0, side of each patch.
        region_index: per split, int64 ``(N,)``: the index in ``regions`` of each patch's tile.
        sources: the source names, indexed by ``Region.source``.
    """

    splits: dict[str, SplitData]
    regions: tuple[Region, ...]
    boxes: dict[str, np.ndarray]
    region_index: dict[str, np.ndarray]
    sources: tuple[str, ...]


# --------------------------------------------------------------------------- sources


def pip_dicom_dirs() -> list[Path]:
    """Return the folders holding the DICOM files shipped by ``pydicom`` and ``pydicom-data``."""
    import pydicom.data

    dirs = [Path(os.path.dirname(pydicom.data.__file__)) / "test_files"]
    try:
        import data_store

        dirs.append(Path(os.path.dirname(data_store.__file__)) / "data")
    except ImportError:
        pass
    return dirs


def pip_dicom_path(name: str) -> Path:
    """Return the path of a DICOM file shipped in ``pydicom`` or ``pydicom-data``.

    Args:
        name: a bare file name such as ``RG1_UNCI.dcm``.

    Raises:
        DatasetError: when no installed package ships that file.
    """
    if not name or Path(name).name != name:
        raise DatasetError(f"{name!r}: expected a bare DICOM file name")
    dirs = pip_dicom_dirs()
    for folder in dirs:
        if (folder / name).is_file():
            return folder / name
    raise DatasetError(
        f"{name}: no such DICOM file in {', '.join(map(str, dirs))} "
        "(is the 'pydicom-data' package installed?)"
    )


def modality_tag(path: Path) -> str:
    """Return the Modality tag (0008,0060) of a DICOM file.

    Raises:
        DatasetError: when the file is unreadable or has no Modality.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise DatasetError(f"{path}: not a readable DICOM file: {exc}") from exc
    modality = str(ds.get("Modality", "")).strip()
    if not modality:
        raise DatasetError(f"{path}: DICOM file has no Modality tag")
    return modality


@functools.lru_cache(maxsize=16)
def _dicom_unit_frames(path: str) -> np.ndarray:
    """Frames of a DICOM file windowed per frame to [0, 1] (read-only, cached)."""
    frames = read_dicom_frames(Path(path), invert_monochrome1=INVERT_MONOCHROME1)
    unit = np.stack([to_uint8(frame) for frame in frames]).astype(np.float32) / 255.0
    unit.setflags(write=False)
    return unit


@functools.lru_cache(maxsize=1)
def _retina() -> np.ndarray:
    """scikit-image's fundus photograph as float32 RGB in [0, 1] (read-only, cached)."""
    from skimage import data

    image = data.retina().astype(np.float32) / 255.0
    image.setflags(write=False)
    return image


# --------------------------------------------------------------------------- tiling


def split_counts(counts: dict[str, int] | None, n_classes: int) -> dict[str, int]:
    """Validate per-split sample counts: every split present, divisible by the class count.

    Raises:
        DatasetError: naming the bad count.
    """
    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    if set(counts) != set(SPLITS):
        raise DatasetError(f"builder param 'counts' must give {', '.join(SPLITS)}, got {counts}")
    for split, n in counts.items():
        if not isinstance(n, int) or n <= 0 or n % n_classes:
            raise DatasetError(
                f"builder param 'counts.{split}' must be a positive multiple of {n_classes} "
                f"(balanced classes), got {n!r}"
            )
    return counts


def plan_tiles(
    source: int,
    shape: tuple[int, int],
    tile: float,
    counts: dict[str, int],
    rng: np.random.Generator,
    keep: Callable[[int, int, int, int], bool] | None = None,
) -> list[Region]:
    """Cut an image into a grid of tiles and give each kept tile to one split.

    Tiles are shared out in proportion to ``counts`` (largest remainder, at least one
    tile per split), in a random order drawn from ``rng``.

    Args:
        source: source index stored in each region.
        shape: image ``(H, W)``.
        tile: approximate tile side in pixels.
        counts: samples per split (sets the proportions).
        rng: random generator.
        keep: optional predicate ``(y0, y1, x0, x1) -> bool`` dropping empty tiles.

    Returns:
        One region per kept tile.

    Raises:
        DatasetError: when fewer than three tiles are usable.
    """
    height, width = shape
    rows, cols = max(1, round(height / tile)), max(1, round(width / tile))
    ys = np.linspace(0, height, rows + 1).round().astype(int)
    xs = np.linspace(0, width, cols + 1).round().astype(int)
    boxes = [
        (int(ys[r]), int(ys[r + 1]), int(xs[c]), int(xs[c + 1]))
        for r in range(rows)
        for c in range(cols)
    ]
    if keep is not None:
        boxes = [box for box in boxes if keep(*box)]
    if len(boxes) < len(SPLITS):
        raise DatasetError(
            f"source {source}: only {len(boxes)} usable tiles of ~{tile:.0f} px in an image of "
            f"{height}x{width}; need at least {len(SPLITS)} (use a finer grid)"
        )
    shares = _allocate(len(boxes), [counts[s] for s in SPLITS])
    order = rng.permutation(len(boxes))
    regions, start = [], 0
    for split, share in zip(SPLITS, shares, strict=True):
        for index in sorted(order[start : start + share]):
            regions.append(Region(source, *boxes[index], split))
        start += share
    return regions


def _allocate(total: int, weights: Sequence[int]) -> list[int]:
    """Share ``total`` items in proportion to ``weights``, at least one each."""
    spare = total - len(weights)
    raw = np.asarray(weights, dtype=float) / sum(weights) * spare
    shares = np.floor(raw).astype(int)
    for index in np.argsort(-(raw - shares), kind="stable")[: spare - shares.sum()]:
        shares[index] += 1
    return [int(s) + 1 for s in shares]


def _sample_box(
    rng: np.random.Generator,
    region: Region,
    side: int,
    score: Callable[[int, int, int], float],
    threshold: float,
    tries: int = 30,
) -> tuple[int, int, int]:
    """Draw a square patch inside ``region``; keep the first scoring >= threshold (else the best)."""
    side = min(side, region.y1 - region.y0, region.x1 - region.x0)
    best, best_score = None, -np.inf
    for _ in range(tries):
        y0 = int(rng.integers(region.y0, region.y1 - side + 1))
        x0 = int(rng.integers(region.x0, region.x1 - side + 1))
        value = score(y0, x0, side)
        if value >= threshold:
            return y0, x0, side
        if value > best_score:
            best, best_score = (y0, x0, side), value
    assert best is not None
    return best


# --------------------------------------------------------------------------- image ops


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a float image ``(H, W)`` or ``(H, W, C)`` to ``size x size`` (antialiased bilinear)."""
    from PIL import Image

    if image.ndim == 3:
        return np.stack([resize(image[..., c], size) for c in range(image.shape[-1])], axis=-1)
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32))
    return np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def _augment(
    image: np.ndarray, rng: np.random.Generator, gamma: float, contrast: float, noise: float
) -> np.ndarray:
    """Random flips / rotation, gamma, contrast + brightness, Gaussian noise; same for all labels."""
    image = np.rot90(image, k=int(rng.integers(4)))
    if rng.random() < 0.5:
        image = image[:, ::-1]
    image = np.clip(image, 0.0, 1.0) ** float(np.exp(rng.uniform(-gamma, gamma)))
    scale = rng.uniform(1.0 - contrast, 1.0 + contrast)
    shift = rng.uniform(-contrast, contrast) / 2
    image = (image - 0.5) * scale + 0.5 + shift
    if image.ndim == 3:
        image = image * rng.uniform(0.95, 1.05, size=image.shape[-1]).astype(np.float32)
    sigma = rng.uniform(0.0, noise)
    image = image + rng.normal(0.0, sigma, size=image.shape).astype(np.float32)
    return image


def _quantise(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def soft_disk(size: int, cy: float, cx: float, radius: float, edge: float = 0.6) -> np.ndarray:
    """Return a ``size x size`` soft disk profile in [0, 1] (logistic edge of width ``edge``)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    distance = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    return 1.0 / (1.0 + np.exp((distance - radius) / edge))


def _finish(
    images: dict[str, list[np.ndarray]],
    labels: dict[str, list[int]],
    groups: dict[str, list[int]],
    boxes: dict[str, list[tuple[int, ...]]],
    region_ids: dict[str, list[int]],
    regions: list[Region],
    sources: Sequence[str],
    rng: np.random.Generator,
    group_by: str,
) -> DemoBuild:
    """Shuffle each split (classes interleaved) and pack arrays."""
    splits, box_arrays, index_arrays = {}, {}, {}
    for split in SPLITS:
        order = rng.permutation(len(images[split]))
        region_index = np.asarray(region_ids[split], dtype=np.int64)[order]
        group_ids = groups[split] if group_by == "source" else region_ids[split]
        splits[split] = SplitData(
            images=np.stack(images[split])[order],
            labels=np.asarray(labels[split], dtype=np.int64)[order],
            groups=np.asarray(group_ids, dtype=np.int64)[order],
        )
        box_arrays[split] = np.asarray(boxes[split], dtype=np.int64)[order]
        index_arrays[split] = region_index
    return DemoBuild(splits, tuple(regions), box_arrays, index_arrays, tuple(sources))


def _check_classes(classes: Sequence[str] | None, default: Sequence[str]) -> tuple[str, ...]:
    return tuple(default if classes is None else classes)


# --------------------------------------------------------------------------- builders


def build_dicom_modality(
    *,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    files: Sequence[str] = MODALITY_FILES,
    counts: dict[str, int] | None = None,
    out_size: int = 64,
    grid: int = 4,
    scale: Sequence[float] = (0.35, 1.0),
    min_std: float = 0.06,
    gamma: float = 0.4,
    contrast: float = 0.3,
    noise: float = 0.06,
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
    classes = _check_classes(classes, MODALITY_CLASSES)
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
        frames = _dicom_unit_frames(str(path))
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

    images, labels, groups, boxes, region_ids = _empty(5)
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

                y0, x0, side = _sample_box(rng, region, side, std, min_std)
                patch = resize(frames[frame][y0 : y0 + side, x0 : x0 + side], out_size)
                images[split].append(_quantise(_augment(patch, rng, gamma, contrast, noise)))
                labels[split].append(label)
                groups[split].append(source)
                boxes[split].append((source, frame, y0, x0, side))
                region_ids[split].append(region_no)
    shuffle_rng = np.random.default_rng([seed, 2000])
    return _finish(
        images, labels, groups, boxes, region_ids, regions, sources, shuffle_rng, "source"
    )


def build_cxr_lesion(
    *,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    file: str = "RG1_UNCI.dcm",
    counts: dict[str, int] | None = None,
    out_size: int = 64,
    patch_size: int = 160,
    scale_jitter: float = 0.15,
    grid: int = 6,
    radius: Sequence[float] = (5.0, 10.0),
    lesion_contrast: Sequence[float] = (1.2, 2.4),
    min_std: float = 0.03,
    gamma: float = 0.3,
    contrast: float = 0.25,
    noise: float = 0.02,
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
    classes = _check_classes(classes, LESION_CLASSES)
    _check_binary(classes, "cxr_lesion")
    counts = split_counts(counts, 2)
    path = pip_dicom_path(file)
    image = _dicom_unit_frames(str(path))[0]
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
        y0, x0, side = _sample_box(rng, region, side, std, min_std)
        patch = resize(image[y0 : y0 + side, x0 : x0 + side], out_size)
        return patch, (0, 0, y0, x0, side)

    return _build_lesion_task(
        seed, counts, regions, (file,), sample, add_nodule, gamma, contrast, noise
    )


def build_fundus_lesion(
    *,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    counts: dict[str, int] | None = None,
    out_size: int = 64,
    patch_size: int = 128,
    scale_jitter: float = 0.15,
    grid: int = 8,
    dots: Sequence[int] = (1, 3),
    radius: Sequence[float] = (1.0, 2.2),
    lesion_contrast: Sequence[float] = (0.15, 0.4),
    min_fov: float = 0.97,
    gamma: float = 0.25,
    contrast: float = 0.2,
    noise: float = 0.03,
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
    classes = _check_classes(classes, LESION_CLASSES)
    _check_binary(classes, "fundus_lesion")
    counts = split_counts(counts, 2)
    image = _retina()
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

        y0, x0, side = _sample_box(rng, region, side, score, min_fov)
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
    images, labels, groups, boxes, region_ids = _empty(5)
    for split_no, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, split_no])
        own = [i for i, r in enumerate(regions) if r.split == split]
        for k in range(counts[split]):
            label = k % 2
            region_no = own[int(rng.integers(len(own)))]
            patch, box = sample(rng, regions[region_no])
            if label:
                patch = add_lesion(patch, rng)
            images[split].append(_quantise(_augment(patch, rng, gamma, contrast, noise)))
            labels[split].append(label)
            groups[split].append(0)
            boxes[split].append(box)
            region_ids[split].append(region_no)
    shuffle_rng = np.random.default_rng([seed, 2000])
    return _finish(
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


def _empty(n: int) -> tuple[dict[str, list[Any]], ...]:
    return tuple({split: [] for split in SPLITS} for _ in range(n))


# --------------------------------------------------------------------------- registry

_FULL_BUILDERS: dict[str, Callable[..., DemoBuild]] = {
    "dicom_modality": build_dicom_modality,
    "cxr_lesion": build_cxr_lesion,
    "fundus_lesion": build_fundus_lesion,
}


def build_demo(name: str, **params: Any) -> DemoBuild:
    """Build a demo dataset by builder name, with its split bookkeeping.

    Args:
        name: a key of :data:`BUILDERS`.
        **params: the builder's keyword arguments (``seed``, ``classes``, card params).

    Raises:
        DatasetError: for an unknown builder, unknown parameters, or bad parameters.
    """
    if name not in _FULL_BUILDERS:
        raise DatasetError(
            f"unknown dataset builder {name!r} (known: {', '.join(sorted(_FULL_BUILDERS))})"
        )
    builder = _FULL_BUILDERS[name]
    try:
        inspect.signature(builder).bind(**params)
    except TypeError as exc:
        raise DatasetError(f"builder {name}: bad parameters {sorted(params)}: {exc}") from exc
    return builder(**params)


def _splits_only(name: str) -> Callable[..., dict[str, SplitData]]:
    def build(**params: Any) -> dict[str, SplitData]:
        return build_demo(name, **params).splits

    build.__name__ = name
    build.__doc__ = (
        f"Build the ``{name}`` demo dataset; see :func:`{_FULL_BUILDERS[name].__name__}`."
    )
    return build


BUILDERS: dict[str, Callable[..., dict[str, SplitData]]] = {
    name: _splits_only(name) for name in _FULL_BUILDERS
}
