"""Where medxfer keeps its caches and outputs.

Everything heavy lives under one home folder (``MEDXFER_HOME``, default
``~/.cache/medxfer``): datasets (``data/``, as placed or built), their decoded copies
(``prepared/``), extracted features, downloaded weights.
Result records go to ``MEDXFER_RESULTS`` (default ``./results``). Cards a user keeps
outside the checkout live in the folders named by ``MEDXFER_CARDS`` (or pytest's
``--medxfer-cards``), each with ``models/``, ``datasets/``, ``suites/`` and ``expected/``.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CARDS_ENV = "MEDXFER_CARDS"


def user_card_folders() -> list[Path]:
    """The user's card folders from ``$MEDXFER_CARDS`` (``os.pathsep``-separated), in order."""
    raw = os.environ.get(CARDS_ENV, "")
    return [Path(part).expanduser() for part in raw.split(os.pathsep) if part.strip()]


def home() -> Path:
    """Return the medxfer cache home, creating it if needed."""
    root = Path(os.environ.get("MEDXFER_HOME", Path.home() / ".cache" / "medxfer"))
    root.mkdir(parents=True, exist_ok=True)
    return root


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
