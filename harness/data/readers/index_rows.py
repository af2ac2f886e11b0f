"""Reading a CSV index and the per-row keys taken from it: group, split, view, study.

Helpers of :mod:`harness.data.readers.csv_index`. Each index row remembers where it came
from (:class:`Origin`: CSV file and line), so a row whose key cannot be found is reported
by file and line.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness.data import DatasetError
from harness.data.table import DatasetContext

if TYPE_CHECKING:
    from harness.data.readers.csv_index import GroupsFrom


@dataclass(frozen=True)
class Origin:
    """Where one index row was read: the CSV (as the card names it) and its line number."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file} line {self.line}"


def read_csv(
    path: Path, ctx: DatasetContext, header: tuple[str, ...] | None = None
) -> tuple[list[str], list[dict[str, str]]]:
    """Read a CSV index as its column names and one ``{column: value}`` dict per row.

    Args:
        path: the CSV file.
        ctx: the card, for error messages.
        header: column names of a CSV without a header row (its first row is data).

    Raises:
        DatasetError: naming the file when it is missing, unreadable, has no header, or
            (with ``header``) a row holds more values than ``header`` names.
    """
    if not path.is_file():
        raise DatasetError(f"{ctx.card}: index file {path} not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, fieldnames=list(header) if header else None)
            rows = [dict(row) for row in reader]
            names = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{ctx.card}: cannot read index file {path}: {exc}") from exc
    if not names:
        raise DatasetError(f"{ctx.card}: index file {path} has no header row")
    for number, row in enumerate(rows, start=first_line(header)):
        if None in row:  # csv.DictReader's key for values beyond the header
            raise DatasetError(
                f"{ctx.card}: index file {path} line {number} has {len(names) + len(row[None])} "
                f"values for {len(names)} columns ({', '.join(names)}; field 'reader.header')"
            )
    return names, rows


def first_line(header: tuple[str, ...] | None) -> int:
    """Line number of a CSV's first data row: 2 after a header row, 1 without one."""
    return 1 if header else 2


def need(column: str, header: list[str], ctx: DatasetContext, field: str) -> None:
    """Raise a DatasetError naming ``field`` when the index has no column ``column``."""
    if column not in header:
        raise DatasetError(
            f"{ctx.card}: field '{field}' names column {column!r}, which the index does not "
            f"have (columns: {', '.join(header)})"
        )


def row_keys(
    rows: list[dict[str, str]],
    paths: list[str],
    origins: list[Origin],
    header: list[str],
    ctx: DatasetContext,
    *,
    kind: str,
    column: str | None,
    pattern: str | None,
    blank_ok: bool = False,
) -> np.ndarray | None:
    """Each row's key (group, view, study) from a column, or a regex on the column or path.

    Args:
        rows: the index rows.
        paths: each row's image path as listed (with the card's ``path_suffix``).
        origins: where each row was read, for errors.
        header: the index's columns.
        ctx: the card, for errors.
        kind: ``group``, ``view`` or ``study``: the card fields are ``reader.<kind>_column``
            and ``reader.<kind>_pattern``.
        column: the column holding the key (or the text the pattern reads), or None.
        pattern: a regex searched in the column (or, without one, the path); its first
            capture group (or the whole match) is the key.
        blank_ok: whether a blank key is allowed (groups keep this for old cards).

    Returns:
        str ``(N,)``, or None when the card gives neither column nor pattern.

    Raises:
        DatasetError: naming the card field and the CSV file and line of a row whose key
            is blank or that the pattern does not match.
    """
    if column is None and pattern is None:
        return None
    if column is not None:
        need(column, header, ctx, f"reader.{kind}_column")
        values = [row.get(column) or "" for row in rows]
    else:
        values = paths
    compiled = None if pattern is None else re.compile(pattern)
    found = []
    for value, origin in zip(values, origins, strict=True):
        key: str | None = value
        if compiled is not None:
            match = compiled.search(value)
            key = None if match is None else match.group(1 if compiled.groups else 0)
            if key is None or (not key.strip() and not blank_ok):
                what = "does not match" if match is None else f"finds a blank {kind} in"
                raise DatasetError(
                    f"{ctx.card}: field 'reader.{kind}_pattern' {pattern!r} {what} {value!r} "
                    f"({origin})"
                )
        elif not value.strip() and not blank_ok:
            raise DatasetError(
                f"{ctx.card}: {origin} has a blank {column!r}, so no {kind} "
                f"(field 'reader.{kind}_column')"
            )
        found.append(key)
    return np.asarray(found, dtype=str)


def listed_splits(lists: dict[str, str], keys: list[str], ctx: DatasetContext) -> np.ndarray:
    """Source split of each row from per-split list files (one key per line)."""
    owner: dict[str, str] = {}
    for split, name in lists.items():
        path = ctx.root / name
        if not path.is_file():
            raise DatasetError(f"{ctx.card}: split list {path} not found (reader.split_lists)")
        for line in path.read_text(encoding="utf-8-sig").splitlines():
            key = line.strip()
            if key and owner.setdefault(key, split) != split:
                raise DatasetError(
                    f"{ctx.card}: {key!r} is listed in both {lists[owner[key]]} and {name} "
                    "(reader.split_lists)"
                )
    return np.asarray([owner.get(key, "") for key in keys], dtype=str)


def joined_groups(spec: GroupsFrom, keys: list[str], ctx: DatasetContext) -> np.ndarray:
    """Each key's group from ``spec.file`` (HAM10000's lesion ids by image id)."""
    path = ctx.root / spec.file
    header, rows = read_csv(path, ctx)
    where = "reader.groups_from"
    for column, name in ((spec.key_column, "key_column"), (spec.group_column, "group_column")):
        if column not in header:
            raise DatasetError(
                f"{ctx.card}: field '{where}.{name}' names column {column!r}, which {path} does "
                f"not have (columns: {', '.join(header)})"
            )
    group_of: dict[str, str] = {}
    for number, row in enumerate(rows, start=2):
        key, group = (row.get(spec.key_column) or "").strip(), (row.get(spec.group_column) or "")
        if group_of.setdefault(key, group.strip()) != group.strip():
            raise DatasetError(
                f"{ctx.card}: {path} line {number} gives {key!r} group {group.strip()!r}, an "
                f"earlier line {group_of[key]!r} (field '{where}')"
            )
    missing = [key for key in keys if key not in group_of]
    if missing:
        raise DatasetError(
            f"{ctx.card}: {len(missing)} image(s) of the index are not in {path} (column "
            f"{spec.key_column!r}), e.g. {missing[0]!r} (field '{where}.file')"
        )
    groups = []
    for key in keys:
        group = group_of[key]
        if not group:
            if spec.blank == "error":
                raise DatasetError(
                    f"{ctx.card}: {path} gives {key!r} a blank {spec.group_column!r} (set "
                    f"'{where}.blank: own' to make such an image its own group)"
                )
            group = f"{spec.key_column}:{key}"  # cannot collide with a real lesion id
        groups.append(group)
    return np.asarray(groups, dtype=str)
