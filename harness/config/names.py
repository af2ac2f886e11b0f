"""Names as data: the one pattern of names that become paths, and "did you mean" hints.

Model, dataset and suite names, profiles, presets and split tags end up in folder and
file names (the feature cache, built datasets, result records). A name is checked
against :data:`SAFE_NAME` when its card loads, so a card cannot steer a write outside
``MEDXFER_HOME`` (see also :func:`harness.config.safe_paths.inside`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

# Starts with a letter or digit (so never "." / ".." or an option), then letters,
# digits, "_", "-", "." and "+"; no path separator. Model names are "arch.tag".
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")
SAFE_NAME_TEXT = (
    "a plain name: letters, digits, '_', '-', '.', '+', starting with a letter or digit "
    "(at most 128 characters, no '/')"
)


def unsafe_name_problem(name: object) -> str | None:
    """Return why ``name`` cannot become a path component, or None when it can."""
    if not isinstance(name, str):
        return f"must be a string, got {type(name).__name__} ({name!r})"
    if not SAFE_NAME.fullmatch(name):
        return f"must be {SAFE_NAME_TEXT}, got {name!r}"
    return None


def did_you_mean(name: str, known: Iterable[str], limit: int = 3) -> str:
    """A hint naming the known names closest to ``name`` ("" when none is close).

    Args:
        name: The name that was not found.
        known: The names that exist.
        limit: At most this many suggestions.

    Returns:
        ``" (did you mean 'a' or 'b'?)"`` or ``""``.
    """
    close = difflib.get_close_matches(name, sorted(set(known)), n=limit, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"
