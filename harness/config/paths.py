"""Where medxfer keeps its caches and outputs.

Everything heavy lives under one home folder (``MEDXFER_HOME``, default
``~/.cache/medxfer``): datasets (``data/``, as placed or built), their decoded copies
(``prepared/``), extracted features, downloaded weights.
Result records go to ``MEDXFER_RESULTS`` (default ``./results``). Cards a user keeps
outside the checkout live in the folders named by ``MEDXFER_CARDS`` (or pytest's
``--medxfer-cards``), each with ``models/``, ``datasets/``, ``suites/`` and ``expected/``,
and in ``<home>/cards`` (searched after them; ``medxfer derive`` writes its model cards
there by default).

A home that cannot be written (a shared, read-only copy; or ``MEDXFER_CACHE_READONLY=1``)
is used read-only: cached values are read, nothing is written there
(:func:`home_writable`).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CARDS_ENV = "MEDXFER_CARDS"
READONLY_ENV = "MEDXFER_CACHE_READONLY"
_PROBE_TTL_S = 30.0
_PROBED: dict[str, tuple[bool, float]] = {}


def user_card_folders() -> list[Path]:
    """The user's card folders: those of ``$MEDXFER_CARDS`` (``os.pathsep``-separated), in
    order, then :func:`home_card_folder`."""
    raw = os.environ.get(CARDS_ENV, "")
    named = [Path(part).expanduser() for part in raw.split(os.pathsep) if part.strip()]
    return list(dict.fromkeys([*named, home_card_folder()]))


def home_root() -> Path:
    """The medxfer home folder (``$MEDXFER_HOME``, default ``~/.cache/medxfer``), not created."""
    return Path(os.environ.get("MEDXFER_HOME", Path.home() / ".cache" / "medxfer"))


def home_card_folder() -> Path:
    """``<home>/cards``: the card folder in the home (not created; a read-only home is read)."""
    return home_root() / "cards"


def home() -> Path:
    """Return the medxfer cache home, creating it if needed."""
    root = home_root()
    root.mkdir(parents=True, exist_ok=True)
    return root


def home_writable(root: Path | None = None) -> bool:
    """Return False when the cache home is to be used read-only.

    ``MEDXFER_CACHE_READONLY=1`` (or ``true``/``yes``) says so; otherwise the home is
    probed by creating (and removing) a file in it, since permission bits do not tell
    (root writes anyway; a read-only mount denies everyone). The probe's answer is kept
    for a few seconds.

    Args:
        root: The home folder; None: :func:`home`.
    """
    if os.environ.get(READONLY_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    folder = Path(root) if root is not None else home()
    now = time.monotonic()
    known = _PROBED.get(str(folder))
    if known is not None and now - known[1] < _PROBE_TTL_S:
        return known[0]
    writable = _probe_writable(folder)
    _PROBED[str(folder)] = (writable, now)
    return writable


def _probe_writable(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".medxfer-probe-"):
            return True
    except OSError:
        return False


def data_dir() -> Path:
    """Return the folder that holds prepared datasets."""
    return _sub("data")


def prepared_dir() -> Path:
    """Return the folder that holds datasets decoded from their source folders (one .npz each)."""
    return _sub("prepared")


def feature_dir() -> Path:
    """Return the folder that holds the feature cache."""
    return _sub("features")


def weights_dir() -> Path:
    """Return the folder that holds downloaded checkpoints."""
    return _sub("weights")


def results_dir() -> Path:
    """Return the default folder for result records."""
    return Path(os.environ.get("MEDXFER_RESULTS", Path.cwd() / "results"))


def _sub(name: str) -> Path:
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path
