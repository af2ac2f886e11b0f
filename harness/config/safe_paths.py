"""Paths built from names: joined and checked to stay inside their root folder.

Card names (models, datasets, suites), case ids and split tags become folder and file
names under ``MEDXFER_HOME`` and the results folder. Names are checked when their card
loads (:mod:`harness.config.names`); :func:`inside` checks the path itself, so a name
that slipped past (a card built in code, a command-line argument) still cannot make the
harness write outside the root.
"""

from __future__ import annotations

import os
from pathlib import Path


class UnsafePath(ValueError):
    """A path built from names would leave the folder it must stay in."""


def inside(root: Path, *parts: str | os.PathLike[str]) -> Path:
    """Join ``parts`` under ``root`` and return the path, checked to stay inside ``root``.

    The check is on the names: a part that is absolute or climbs out with ``..`` is
    refused, and so are parts that lead back to ``root`` itself (``x/..``, they name
    nothing inside it). Links inside ``root`` are not followed: the harness places some
    itself (``medxfer prepare --root`` links a user's copy into the data folder).

    Args:
        root: The folder the path must stay in.
        *parts: Path components (names, or relative sub-paths).

    Returns:
        ``root`` joined with ``parts``.

    Raises:
        UnsafePath: Naming the parts and the root when the path leaves ``root``.
    """
    root = Path(root)
    path = root.joinpath(*parts)
    base = os.path.normpath(os.path.abspath(root))
    joined = os.path.normpath(os.path.abspath(path))
    if os.path.commonpath([base, joined]) != base or (parts and joined == base):
        shown = "/".join(str(part) for part in parts)
        raise UnsafePath(
            f"path {shown!r} leaves {root} (it names {joined}); names that become paths "
            "must be plain names"
        )
    return path
