"""Tiling, patch sampling, augmentation and packing shared by the demo builders.

No leakage between splits: every source image is cut into a grid of tiles and each tile
is given to exactly one split (the same tiles for every frame of a multi-frame file); a
patch lies inside one tile of its split. :class:`DemoBuild` carries that bookkeeping
beside the data. Everything is deterministic from the generators passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from harness.data import DatasetError
from harness.data.builders.sources import DEFAULT_COUNTS
from harness.data.npz import SPLITS, SplitData


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


def sample_box(
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


def augment(
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


def quantise(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def soft_disk(size: int, cy: float, cx: float, radius: float, edge: float = 0.6) -> np.ndarray:
    """Return a ``size x size`` soft disk profile in [0, 1] (logistic edge of width ``edge``)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    distance = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    return 1.0 / (1.0 + np.exp((distance - radius) / edge))


def finish(
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


def check_classes(classes: Sequence[str] | None, default: Sequence[str]) -> tuple[str, ...]:
    return tuple(default if classes is None else classes)


def empty_lists(n: int) -> tuple[dict[str, list[Any]], ...]:
    return tuple({split: [] for split in SPLITS} for _ in range(n))


def kwargs(params: object) -> dict[str, Any]:
    """A params dataclass's fields as keyword arguments (shallow: values as they are)."""
    return {spec.name: getattr(params, spec.name) for spec in fields(params)}  # type: ignore[arg-type]
