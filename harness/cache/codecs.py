"""File formats of the cache service: NumPy arrays (``.npz``) and JSON documents.

Both store the key payload's full canonical text and a sha256 of their content inside
the file. On load they refuse a file whose stored key text differs
(:class:`harness.cache.store.KeyMismatch`) or whose content does not match its checksum,
or has none (:class:`harness.cache.store.Damaged`): a file is trusted by its content,
never by its name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from harness.cache.keys import arrays_digest, json_digest
from harness.cache.store import Damaged, Entry, KeyMismatch

#: Name of the entry that holds the key payload (JSON) inside each file.
KEY_ENTRY = "__key__"
#: Name of the entry that holds the arrays' sha256 (:func:`~harness.cache.keys.arrays_digest`).
CONTENT_ENTRY = "__content__"

_ARRAY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Keyword names of ``np.savez`` itself: arrays cannot be passed under these names.
_RESERVED = frozenset({KEY_ENTRY, CONTENT_ENTRY, "file", "allow_pickle"})


class NpzArrays:
    """Name -> array mappings in an ``.npz`` file, with the key text under ``__key__``.

    Arrays keep their dtype (numeric or string; no object arrays, which ``.npz`` cannot
    store without pickle).
    """

    def write(self, handle: IO[bytes], value: Mapping[str, np.ndarray], entry: Entry) -> None:
        """Write the arrays, the key text and the arrays' checksum.

        Raises:
            ValueError: On something that is not a mapping, a reserved or non-identifier
                name, or an object array.
        """
        arrays = check_arrays(value, entry.path.parent.name)
        extra = {KEY_ENTRY: np.array(entry.text), CONTENT_ENTRY: np.array(arrays_digest(arrays))}
        np.savez(handle, **arrays, **extra)

    def read(self, path: Path, entry: Entry) -> dict[str, np.ndarray]:
        """Read the arrays of ``entry``.

        Raises:
            KeyMismatch: When the file's key text is missing or another key's.
            Damaged: When the arrays do not match their stored checksum.
        """
        with np.load(path, allow_pickle=False) as payload:
            arrays = {name: payload[name] for name in payload.files}
        stored = arrays.pop(KEY_ENTRY, None)
        if stored is None or str(stored) != entry.text:
            raise KeyMismatch("the stored key differs")
        check_content(arrays.pop(CONTENT_ENTRY, None), arrays_digest(arrays))
        return arrays

    def summary(self, value: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """The arrays' names and shapes."""
        return {"arrays": {name: list(np.shape(array)) for name, array in value.items()}}


def check_content(stored: Any, actual: str) -> None:
    """Check a content checksum read from a cache file against the content's own.

    Args:
        stored: The checksum stored in the file (None or an empty array: none stored).
        actual: The checksum of the content as read.

    Raises:
        Damaged: When none was stored or it differs.
    """
    if stored is None or not str(np.asarray(stored)):
        raise Damaged("it carries no content checksum (written by an older medxfer?)")
    if str(np.asarray(stored)) != actual:
        raise Damaged(f"content sha256 {actual[:16]}... differs from the stored one")


def check_arrays(arrays: Any, where: str) -> dict[str, np.ndarray]:
    """Check that ``arrays`` can be stored in an ``.npz`` file; return them as arrays.

    Raises:
        ValueError: Naming ``where`` and the array at fault.
    """
    if not isinstance(arrays, Mapping):
        raise ValueError(
            f"array cache {where!r}: compute() must return a mapping of name -> array, "
            f"got {type(arrays).__name__}"
        )
    out: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not _ARRAY_NAME.fullmatch(name) or name in _RESERVED:
            raise ValueError(
                f"array cache {where!r}: invalid array name {name!r} (use an identifier "
                f"other than {', '.join(sorted(_RESERVED))})"
            )
        array = np.asarray(value)
        if array.dtype == object:
            raise ValueError(
                f"array cache {where!r}: array {name!r} has dtype object, which .npz "
                "cannot store without pickle"
            )
        out[name] = array
    return out


class JsonDocument:
    """A JSON object ``{"key": <key text>, "value": <value>, "sha256": <value's checksum>}``.

    UTF-8, indented; the checksum is :func:`~harness.cache.keys.json_digest` of the value.
    """

    def write(self, handle: IO[bytes], value: Any, entry: Entry) -> None:
        """Write the value with its key text and checksum."""
        plain = json.loads(json.dumps(value, default=str))  # the value as it will read back
        document = {"key": entry.text, "value": plain, "sha256": json_digest(plain)}
        handle.write((json.dumps(document, indent=2) + "\n").encode("utf-8"))

    def read(self, path: Path, entry: Entry) -> Any:
        """Read the value of ``entry``.

        Raises:
            KeyMismatch: When the file's key text is missing or another key's.
            Damaged: When the value does not match its stored checksum.
        """
        document = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(document, dict) or document.get("key") != entry.text:
            raise KeyMismatch("the stored key differs")
        check_content(document.get("sha256"), json_digest(document.get("value")))
        return document["value"]

    def summary(self, value: Any) -> dict[str, Any]:
        """Nothing: documents are summarised by their namespace's facts."""
        return {}
