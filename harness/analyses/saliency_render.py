"""Pictures of the image analyses: saliency overlays, reconstruction panels, image choice.

Everything here is deterministic (NumPy + PIL, no timestamps in the PNGs): the same map
and image give the same bytes. The overlay follows SSL_medicalimaging's figure
(jonahanton/SSL_medicalimaging@77fceef:saliency.py: the image in grey, the map in
matplotlib's ``jet`` at alpha 0.6 on top), drawn without matplotlib.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

OVERLAY_ALPHA = 0.6


def jet(values: np.ndarray) -> np.ndarray:
    """matplotlib's ``jet`` colormap as piecewise-linear RGB ramps.

    Args:
        values: Any shape, in [0, 1] (clipped).

    Returns:
        float64 RGB in [0, 1], shape ``values.shape + (3,)``.
    """
    x = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    red = np.interp(x, [0.0, 0.35, 0.66, 0.89, 1.0], [0.0, 0.0, 1.0, 1.0, 0.5])
    green = np.interp(x, [0.0, 0.125, 0.375, 0.64, 0.91, 1.0], [0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    blue = np.interp(x, [0.0, 0.11, 0.34, 0.65, 1.0], [0.5, 1.0, 1.0, 0.0, 0.0])
    return np.stack([red, green, blue], axis=-1)


def scale_unit(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the array's min and max (a constant array gives zeros)."""
    x = np.asarray(values, dtype=np.float64)
    low, high = float(x.min()), float(x.max())
    if high <= low:
        return np.zeros_like(x)
    return (x - low) / (high - low)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] as uint8 (rounded, clipped)."""
    return np.clip(np.rint(np.asarray(image, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def overlay(image: np.ndarray, saliency: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The map in ``jet`` (min-max scaled) blended over the image in grey.

    Args:
        image: (H, W) or (H, W, 3) float in [0, 1], the same H, W as the map.
        saliency: (H, W) map.
        alpha: Weight of the colour map.

    Returns:
        (H, W, 3) uint8.

    Raises:
        ValueError: When the shapes disagree.
    """
    grey = np.asarray(image, dtype=np.float64)
    if grey.ndim == 3:
        grey = grey.mean(axis=-1)
    if grey.shape != saliency.shape:
        raise ValueError(f"overlay: image {grey.shape} and map {saliency.shape} differ in size")
    base = np.repeat(np.clip(grey, 0.0, 1.0)[..., None], 3, axis=-1)
    return to_uint8((1.0 - alpha) * base + alpha * jet(scale_unit(saliency)))


def save_png(pixels: np.ndarray, path: Path, scale: int = 1) -> Path:
    """Write uint8 pixels as a PNG (nearest-neighbour upscaled ``scale`` times).

    Returns:
        ``path`` (its folder is created).
    """
    picture = np.asarray(pixels, dtype=np.uint8)
    if scale > 1:
        picture = picture.repeat(scale, axis=0).repeat(scale, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(path, format="PNG")
    return path


def side_by_side(panels: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Panels (H, W, 3) uint8 of one height in a row, separated by white columns."""
    height = panels[0].shape[0]
    spacer = np.full((height, gap, 3), 255, dtype=np.uint8)
    row: list[np.ndarray] = []
    for index, panel in enumerate(panels):
        if index:
            row.append(spacer)
        row.append(panel if panel.ndim == 3 else np.repeat(panel[..., None], 3, axis=-1))
    return np.concatenate(row, axis=1)


def pick_images(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """A seeded, class-balanced choice of ``count`` images of a split.

    Classes take turns (lowest first), each in its own seeded order, so a lesion task
    shows lesions as well as normal images. Multi-label rows count as the class of their
    first positive label (0 when none).

    Args:
        labels: (N,) class ids or (N, C) 0/1 labels.
        count: How many images (all of them when the split is smaller).
        seed: Seed of the order within each class.

    Returns:
        Indices into the split, in the order they were taken.
    """
    values = np.asarray(labels)
    classes = values.argmax(axis=1) if values.ndim == 2 else values.astype(np.int64)
    rng = np.random.default_rng(seed)
    queues = [list(rng.permutation(np.flatnonzero(classes == c))) for c in np.unique(classes)]
    chosen: list[int] = []
    while len(chosen) < min(count, len(classes)):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(int(queue.pop(0)))
    return np.array(chosen, dtype=np.int64)
