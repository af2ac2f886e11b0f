"""Few-shot episodes given from a file, instead of drawn: to score the peers' own episodes.

A file holds one integer array of shape (episodes, n_way, n_shot + n_query): episode ``e``,
way ``w`` lists pool rows of one class, its first ``n_shot`` the support set and the rest
the queries, the layout of the batches ssl-transfer's ``few_shot.py`` builds
(linusericsson/ssl-transfer@416913f:few_shot.py, ``n_way`` rows of ``n_support +
n_query``). The pool rows are those of the few-shot pool, in its order: the pooled splits
in the order the config names them (e.g. train, val, test), each split in the dataset's
order, after ``pool_cap``. ``.npy`` files hold the array; ``.npz`` files hold it under
``episodes``. Files are read without pickle.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

EPISODES_KEY = "episodes"


def file_sha256(path: str | Path) -> str:
    """The sha256 of an episodes file's bytes (it names the episodes in the case key).

    Raises:
        FileNotFoundError: Naming the file when it does not exist.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"few-shot episodes file {source}: no such file")
    return hashlib.sha256(source.read_bytes()).hexdigest()


def read_episodes(path: str | Path) -> tuple[np.ndarray, str]:
    """The episode array of a ``.npy`` file, or of ``episodes`` in a ``.npz`` file.

    Args:
        path: The file.

    Returns:
        The array as int64 (not yet checked against a pool: :func:`check_episodes`) and
        the sha256 of the bytes it was read from.

    Raises:
        FileNotFoundError: When the file does not exist.
        ValueError: Naming the file when it is unreadable, holds no ``episodes`` array
            (``.npz``) or holds a non-integer array.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"few-shot episodes file {source}: no such file")
    data = source.read_bytes()
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                if EPISODES_KEY not in loaded.files:
                    raise ValueError(f"holds {loaded.files}, no {EPISODES_KEY!r} array")
                array = loaded[EPISODES_KEY]
        else:
            array = loaded
    except ValueError as exc:
        raise ValueError(f"few-shot episodes file {source}: {exc}") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"few-shot episodes file {source}: unreadable ({exc})") from exc
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"few-shot episodes file {source}: pool row indices must be integers, got {array.dtype}"
        )
    return array.astype(np.int64), hashlib.sha256(data).hexdigest()


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
