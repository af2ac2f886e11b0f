"""TensorFlow 1's bilinear resize, for pipelines that reproduce a TF peer's pixels.

VTAB (google-research/task_adaptation@d7630d3:task_adaptation/data_loader.py) resizes
with ``tf.image.resize`` of ``tensorflow.compat.v1``: ``resize_bilinear`` with
``align_corners=False`` and ``half_pixel_centers=False``, no antialiasing. Readers use it
to store images at the size such a peer feeds its network; the ``vtab`` fine-tuning
preset uses it as its transform.
"""

from __future__ import annotations

import numpy as np


def tf1_bilinear_resize(image: np.ndarray, size: int) -> np.ndarray:
    """TF1's ``resize_bilinear`` of an image to ``size`` x ``size``.

    Output pixel ``i`` samples input coordinate ``i * in / out`` (no half-pixel offset),
    between pixels ``floor`` and ``min(ceil, in - 1)``; the rows are interpolated first,
    then the columns, in float32.

    Args:
        image: (H, W) or (H, W, C), any real dtype.
        size: output height and width.

    Returns:
        float32 (size, size) or (size, size, C).
    """
    x = np.asarray(image, dtype=np.float32)

    def axis(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        where = np.arange(size, dtype=np.float32) * np.float32(n_in / size)
        low = np.floor(where)
        high = np.minimum(np.ceil(where), np.float32(n_in - 1))
        return low.astype(np.int64), high.astype(np.int64), where - low

    y0, y1, dy = axis(x.shape[0])
    x0, x1, dx = axis(x.shape[1])
    dx = dx.reshape((1, -1) + (1,) * (x.ndim - 2))
    dy = dy.reshape((-1,) + (1,) * (x.ndim - 1))
    top, bottom = x[y0], x[y1]
    top = top[:, x0] + (top[:, x1] - top[:, x0]) * dx
    bottom = bottom[:, x0] + (bottom[:, x1] - bottom[:, x0]) * dx
    return top + (bottom - top) * dy
