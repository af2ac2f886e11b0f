"""The one input validator of the protocols: features, labels and images, checked alike.

Every protocol calls these before it fits or evaluates anything, so a bad split fails
with the same message everywhere: which split (``where``), what is wrong, and what was
expected. Protocol-specific checks (a label column constant in train, too few images per
class for an episode) stay with the protocol and run after these.
"""

from __future__ import annotations

import numpy as np

from harness.protocols.base import SplitFeatures, TaskInfo
from harness.protocols.metrics import is_integer_valued


def check_features(where: str, features: np.ndarray, n_features: int | None = None) -> np.ndarray:
    """Check one split's features: a non-empty 2-D array of finite real numbers.

    Args:
        where: what the array is, for messages (e.g. ``"val split"``).
        features: the (N, D) array.
        n_features: the dimension the other splits have, when known.

    Returns:
        The features as a NumPy array (not copied).

    Raises:
        ValueError: naming ``where`` and the problem.
    """
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"{where}: features must be 2-D (N, D), got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{where} is empty")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"{where}: features must be real numbers, got {x.dtype}")
    if not np.all(np.isfinite(x)):
        bad = int(np.sum(~np.all(np.isfinite(x), axis=1)))
        raise ValueError(f"{where}: features contain NaN or inf ({bad} rows)")
    if n_features is not None and x.shape[1] != n_features:
        raise ValueError(
            f"{where}: features have dimension {x.shape[1]}, but train has {n_features}"
        )
    return x


def check_labels(where: str, labels: np.ndarray, n: int, task: TaskInfo) -> np.ndarray:
    """Check one split's labels against its task and return them as int64.

    Single-label tasks need ``n`` integer class ids in ``[0, num_classes)``; multilabel
    tasks need an (n, num_classes) 0/1 matrix.

    Raises:
        ValueError: naming ``where`` and the problem.
    """
    y = np.asarray(labels)
    k = task.num_classes
    if task.task == "multilabel":
        if y.shape != (n, k):
            raise ValueError(
                f"{where}: multilabel labels must have shape ({n}, {k}), got {y.shape}"
            )
        if not np.all((y == 0) | (y == 1)):
            raise ValueError(f"{where}: multilabel labels must be 0/1")
        return y.astype(np.int64)
    if y.shape != (n,):
        raise ValueError(f"{where}: labels must have shape ({n},), got {y.shape}")
    if not is_integer_valued(y):
        raise ValueError(f"{where}: labels must be integer class ids, got {y.dtype}")
    y = y.astype(np.int64)
    if n and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"{where}: labels must lie in [0, {k}), got range [{y.min()}, {y.max()}]")
    return y


def check_split(
    where: str, split: SplitFeatures, task: TaskInfo, n_features: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Check a split's features and labels together; returns ``(features, int64 labels)``."""
    x = check_features(where, split.features, n_features)
    return x, check_labels(where, split.labels, x.shape[0], task)


def check_images(where: str, images: np.ndarray) -> np.ndarray:
    """Check one split's images: a non-empty uint8 (N, H, W) or (N, H, W, 3) array.

    Raises:
        ValueError: naming ``where`` and the problem.
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise ValueError(f"{where}: images must be a uint8 array")
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[3] == 3)):
        raise ValueError(f"{where}: images must be (N, H, W) or (N, H, W, 3), got {images.shape}")
    if len(images) == 0:
        raise ValueError(f"{where} is empty")
    return images


def require_single_label(task: TaskInfo, protocol: str) -> None:
    """Raise unless the task is single-label (for protocols that need one class per image)."""
    if task.task == "multilabel":
        raise ValueError(
            f"{protocol} needs single-label classes; multilabel tasks need a many-to-one "
            "label policy first"
        )
