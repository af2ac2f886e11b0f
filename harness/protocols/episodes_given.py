"""Few-shot episodes given from a file, instead of drawn: to score the peers' own episodes.

A file holds one integer array of shape (episodes, n_way, n_shot + n_query): episode ``e``,
way ``w`` lists pool rows of one class, its first ``n_shot`` the support set and the rest
the queries, the layout of the batches ssl-transfer's ``few_shot.py`` builds
(linusericsson/ssl-transfer@416913f:few_shot.py, ``n_way`` rows of ``n_support +
n_query``). The pool rows are those of the few-shot pool, in its order: the pooled splits
in the order the config names them (e.g. train, val, test), each split in the dataset's
order, after ``pool_cap``. ``.npy`` files hold the array; ``.npz`` files hold it under
``episodes``. Files are read without pickle.

A ``.npz`` file may instead name images as the peers' samplers draw them: ``classes``
(episodes, n_way), the class id of each way, and ``images`` (episodes, n_way, n_shot +
n_query), indices into that class's images in pool order (the CD-FSL ``SetDataset`` that
ssl-transfer's and SSL_medicalimaging's few-shot loaders use keeps each class's images as
``sub_meta[class]``, in dataset order, and a way's batch indexes it). They become pool rows
(:func:`class_relative_rows`).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

EPISODES_KEY = "episodes"
#: The arrays of a file naming images by class and index within the class.
CLASS_RELATIVE_KEYS = ("classes", "images")


def file_sha256(path: str | Path) -> str:
    """The sha256 of an episodes file's bytes (it names the episodes in the case key).

    Raises:
        FileNotFoundError: Naming the file when it does not exist.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"few-shot episodes file {source}: no such file")
    return hashlib.sha256(source.read_bytes()).hexdigest()


def read_episodes(path: str | Path, labels: np.ndarray) -> tuple[np.ndarray, str]:
    """The episodes of a file as pool rows: a ``.npy`` array, ``episodes`` in a ``.npz``,
    or ``classes`` and ``images`` in a ``.npz`` (:func:`class_relative_rows`).

    Args:
        path: The file.
        labels: The pool's class ids (N,), which class-relative indices refer to.

    Returns:
        The pool rows as int64 (not yet checked against the pool: :func:`check_episodes`)
        and the sha256 of the bytes they were read from.

    Raises:
        FileNotFoundError: When the file does not exist.
        ValueError: Naming the file when it is unreadable, holds neither ``episodes`` nor
            ``classes`` and ``images`` (``.npz``), holds a non-integer array, or names an
            image its class does not have.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"few-shot episodes file {source}: no such file")
    data = source.read_bytes()
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                if EPISODES_KEY in loaded.files:
                    arrays = {EPISODES_KEY: loaded[EPISODES_KEY]}
                elif set(CLASS_RELATIVE_KEYS) <= set(loaded.files):
                    arrays = {key: loaded[key] for key in CLASS_RELATIVE_KEYS}
                else:
                    raise ValueError(
                        f"holds {loaded.files}: neither {EPISODES_KEY!r} nor "
                        f"{' and '.join(map(repr, CLASS_RELATIVE_KEYS))}"
                    )
        else:
            arrays = {EPISODES_KEY: loaded}
    except ValueError as exc:
        raise ValueError(f"few-shot episodes file {source}: {exc}") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"few-shot episodes file {source}: unreadable ({exc})") from exc
    for name, array in arrays.items():
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(
                f"few-shot episodes file {source}: {name} must be integer indices, "
                f"got {array.dtype}"
            )
    digest = hashlib.sha256(data).hexdigest()
    if EPISODES_KEY in arrays:
        return arrays[EPISODES_KEY].astype(np.int64), digest
    rows = class_relative_rows(arrays["classes"], arrays["images"], labels, str(source))
    return rows, digest


def class_relative_rows(
    classes: np.ndarray, images: np.ndarray, labels: np.ndarray, source: str
) -> np.ndarray:
    """Pool rows of images named by class and index within the class's pool images.

    Args:
        classes: (E, W) class ids.
        images: (E, W, S + Q) indices into each way's class: ``j`` is the class's
            ``j``-th image in pool order.
        labels: The pool's class ids (N,).
        source: Names the episodes in errors (the file).

    Returns:
        (E, W, S + Q) pool rows.

    Raises:
        ValueError: Naming the file (and the episode and way) for shapes that do not
            pair, a class with no image in the pool, or an index past its class's images.
    """
    where = f"few-shot episodes file {source}"
    if (
        classes.ndim != 2
        or images.ndim != 3
        or images.shape[:2] != classes.shape
        or not images.size
    ):
        raise ValueError(
            f"{where}: classes {classes.shape} and images {images.shape} do not pair as "
            "(episodes, n_way) and (episodes, n_way, n_shot + n_query)"
        )
    members = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
    rows = np.empty(images.shape, np.int64)
    for (e, w), label in np.ndenumerate(classes):
        own = members.get(int(label))
        if own is None:
            raise ValueError(f"{where}: episode {e}, way {w} names class {label}, not in the pool")
        index = images[e, w]
        if index.min() < 0 or index.max() >= len(own):
            raise ValueError(
                f"{where}: episode {e}, way {w} names image {int(index.max())} of class "
                f"{label}, which has {len(own)} in the pool"
            )
        rows[e, w] = own[index]
    return rows


def check_episodes(
    episodes: np.ndarray, labels: np.ndarray, n_way: int, n_shot: int, n_query: int, source: str
) -> np.ndarray:
    """Check given episodes against the pool: shape, row range, one class per way.

    Args:
        episodes: (E, W, S + Q) pool row indices.
        labels: The pool's class ids (N,).
        n_way: The run's ways (W).
        n_shot: Support images per way.
        n_query: Query images per way.
        source: Names the episodes in errors (the file).

    Returns:
        The episodes.

    Raises:
        ValueError: Naming the file and the first offending episode and way: a shape
            other than (E, n_way, n_shot + n_query), a row outside the pool, a way mixing
            classes, a class twice in an episode, an image twice in an episode.
    """
    where = f"few-shot episodes file {source}"
    per_class = n_shot + n_query
    if episodes.ndim != 3 or episodes.shape[1:] != (n_way, per_class) or not len(episodes):
        raise ValueError(
            f"{where}: shape {episodes.shape}, expected (episodes, n_way={n_way}, "
            f"n_shot + n_query={per_class})"
        )
    outside = np.flatnonzero(((episodes < 0) | (episodes >= len(labels))).any(axis=(1, 2)))
    if outside.size:
        raise ValueError(
            f"{where}: episode {outside[0]} names a row outside the pool of {len(labels)} images"
        )
    classes = labels[episodes]  # (E, W, S+Q)
    mixed = np.argwhere((classes != classes[:, :, :1]).any(axis=2))
    if mixed.size:
        e, w = mixed[0]
        raise ValueError(
            f"{where}: episode {e}, way {w} mixes classes {sorted(set(classes[e, w].tolist()))}"
        )
    for e in range(len(episodes)):
        if len(set(classes[e, :, 0].tolist())) < n_way:
            raise ValueError(f"{where}: episode {e} has a class in two ways")
        if len(np.unique(episodes[e])) < n_way * per_class:
            raise ValueError(f"{where}: episode {e} uses an image twice")
    return episodes
