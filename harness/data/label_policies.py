"""Label policies: from a reader's raw label table to class indices (or multilabel 0/1).

Each policy is registered with a version and typed parameters (see
:mod:`harness.data.registry`); a card names one in ``label_policy:``. Without one, the
``identity`` policy applies. A params class may define ``validate_for(classes, task)``;
it runs when the card loads, so a policy that cannot fit the card's task or classes
fails there, naming the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from harness.data import DatasetError
from harness.data.registry import register_label_policy
from harness.data.table import DatasetContext, Labels, RawDataset, SoftTargets

LSR_DEFAULT_RANGES = {"lsr_ones": (0.55, 0.85), "lsr_zeros": (0.0, 0.3)}


@dataclass(frozen=True, kw_only=True)
class IdentityParams:
    """Parameters of ``identity``.

    Attributes:
        column: the raw column holding integer labels (or 0/1 rows) or class names.
    """

    column: str = "label"


@register_label_policy("identity", version=1, params=IdentityParams)
def identity(params: IdentityParams, raw: RawDataset, ctx: DatasetContext) -> Labels:
    """Labels as stored: integers (or 0/1 rows for multilabel), or the card's class names."""
    values = raw.column(params.column, ctx, "label_policy.column")
    if np.issubdtype(values.dtype, np.integer) or values.dtype == np.bool_:
        return Labels(values.astype(np.int64))
    if ctx.task == "multilabel":
        raise DatasetError(
            f"{ctx.card}: label_policy 'identity' needs integer 0/1 rows for a multilabel task; "
            f"column {params.column!r} holds {values.dtype} (use uncertain, onehot or multi_hot)"
        )
    return Labels(_class_index(values.astype(str), ctx, "label_policy.column"))


@dataclass(frozen=True, kw_only=True)
class ClassMapParams:
    """Parameters of ``class_map``.

    Attributes:
        column: the raw column.
        map: raw value -> class name; several raw values may map to one class (many-to-one).
            Values not listed must be class names themselves.
        unmapped: ``error`` on a value that is neither mapped nor a class, or ``drop`` the row.
    """

    column: str = "label"
    map: dict[str, str] = field(default_factory=dict)
    unmapped: Literal["error", "drop"] = "error"

    def validate_for(self, classes: tuple[str, ...], task: str) -> None:
        """Every target is a class; the task is single-label."""
        _check_single_label_map("class_map", self.map, classes, task)


@register_label_policy("class_map", version=1, params=ClassMapParams)
def class_map(params: ClassMapParams, raw: RawDataset, ctx: DatasetContext) -> Labels:
    """Map raw label values to classes, merging several into one (many-to-one)."""
    values = raw.column(params.column, ctx, "label_policy.column")
    named = np.asarray([params.map.get(_text(v), _text(v)) for v in values], dtype=str)
    keep = np.isin(named, ctx.classes)
    if params.unmapped == "error" and not keep.all():
        _unknown(named[~keep], ctx, "label_policy.map")
    index = {name: i for i, name in enumerate(ctx.classes)}
    labels = np.asarray([index.get(name, -1) for name in named], dtype=np.int64)
    return Labels(labels, None if keep.all() else keep)


@dataclass(frozen=True, kw_only=True)
class UncertainParams:
    """CheXpert's label columns: ``1.0`` positive, ``0.0`` negative, ``-1.0`` uncertain, blank.

    Attributes:
        columns: the label columns, one per class for a multilabel task (default: the
            card's class names) or exactly one for a binary task.
        uncertain: ``ones`` (U-Ones), ``zeros`` (U-Zeros), ``drop`` (U-Ignore: drop the
            image), or the label-smoothed ``lsr_ones`` / ``lsr_zeros`` (LSR-Ones / LSR-Zeros:
            training targets drawn from ``lsr_range``; evaluated as 1 / 0).
        blank: ``zeros`` (not mentioned = negative) or ``drop``.
        lsr_range: the uniform range of an uncertain entry's training target; by default
            (0.55, 0.85) for ``lsr_ones`` and (0.0, 0.3) for ``lsr_zeros``, as
            MR-HosseinzadehTaher/BenchmarkTransferLearning@5656fec:Version1/dataloader.py
            draws them.
    """

    columns: tuple[str, ...] | None = None
    uncertain: Literal["ones", "zeros", "drop", "lsr_ones", "lsr_zeros"] = "ones"
    blank: Literal["zeros", "drop"] = "zeros"
    lsr_range: tuple[float, float] | None = None

    def soft_range(self) -> tuple[float, float] | None:
        """The uniform range uncertain training targets are drawn from (None: hard targets)."""
        if not self.uncertain.startswith("lsr_"):
            return None
        if self.lsr_range is not None:
            return self.lsr_range
        return LSR_DEFAULT_RANGES[self.uncertain]

    def validate(self) -> None:
        """An ``lsr_range`` is an ordered pair inside [0, 1], given only with an LSR option."""
        if self.lsr_range is None:
            return
        if not self.uncertain.startswith("lsr_"):
            raise ValueError("'lsr_range' applies only to uncertain: lsr_ones or lsr_zeros")
        low, high = self.lsr_range
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"'lsr_range' must satisfy 0 <= low <= high <= 1, got {low}, {high}")

    def validate_for(self, classes: tuple[str, ...], task: str) -> None:
        """One column for a binary task; one per class for a multilabel task."""
        if task == "binary":
            if self.columns is None or len(self.columns) != 1:
                raise ValueError("a binary task needs exactly one label column in 'columns'")
        elif task == "multilabel":
            if self.columns is not None and len(self.columns) != len(classes):
                raise ValueError(
                    f"'columns' lists {len(self.columns)} columns for {len(classes)} classes"
                )
        else:
            raise ValueError(f"the uncertain policy is for binary or multilabel tasks, not {task}")


@register_label_policy("uncertain", version=1, params=UncertainParams)
def uncertain(params: UncertainParams, raw: RawDataset, ctx: DatasetContext) -> Labels:
    """CheXpert-style 1 / 0 / -1 (uncertain) / blank columns to 0/1 labels.

    With ``lsr_ones`` / ``lsr_zeros`` the labels are the hard 1 / 0 every metric uses, and
    :class:`SoftTargets` marks the uncertain entries whose training targets are drawn from
    ``lsr_range`` (see :mod:`harness.data.soft_targets`).
    """
    columns = params.columns or ctx.classes
    codes = np.stack(
        [_ternary(raw.column(c, ctx, "label_policy.columns"), c, ctx) for c in columns], axis=1
    )
    keep = np.ones(len(codes), dtype=bool)
    out = codes.copy()
    for code, rule in ((-1, params.uncertain), (-2, params.blank)):
        hit = codes == code
        if rule == "drop":
            keep &= ~hit.any(axis=1)
        out[hit] = 1 if rule in ("ones", "lsr_ones") else 0
    out = out.astype(np.int64)
    values = out[:, 0] if ctx.task == "binary" else out
    soft = None
    soft_range = params.soft_range()
    if soft_range is not None:
        mask = codes == -1
        soft = SoftTargets(mask[:, 0] if ctx.task == "binary" else mask, *soft_range)
    return Labels(values, None if keep.all() else keep, soft)


@dataclass(frozen=True, kw_only=True)
class OneHotParams:
    """Parameters of ``onehot_to_index``.

    Attributes:
        columns: the one-hot columns in class order (default: the card's class names).
        empty: a row without a 1 is an ``error``, or ``drop`` it (ISIC's ``UNK``-only rows).
    """

    columns: tuple[str, ...] | None = None
    empty: Literal["error", "drop"] = "error"

    def validate_for(self, classes: tuple[str, ...], task: str) -> None:
        """One column per class, single-label task."""
        if task == "multilabel":
            raise ValueError("onehot_to_index gives one class per image; the task is multilabel")
        if self.columns is not None and len(self.columns) != len(classes):
            raise ValueError(
                f"'columns' lists {len(self.columns)} columns for {len(classes)} classes"
            )


@register_label_policy("onehot_to_index", version=1, params=OneHotParams)
def onehot_to_index(params: OneHotParams, raw: RawDataset, ctx: DatasetContext) -> Labels:
    """One-hot 0/1 columns (ISIC's ground-truth CSV) to a class index."""
    columns = params.columns or ctx.classes
    matrix = np.stack(
        [_numbers(raw.column(c, ctx, "label_policy.columns"), c, ctx) for c in columns], axis=1
    )
    if not np.isin(matrix, (0.0, 1.0)).all():
        raise DatasetError(f"{ctx.card}: label_policy 'onehot_to_index' needs 0/1 columns")
    hot = matrix.sum(axis=1)
    if (hot > 1).any():
        row = int(np.flatnonzero(hot > 1)[0])
        raise DatasetError(f"{ctx.card}: row {row + 1} has more than one class set")
    keep = hot == 1
    if params.empty == "error" and not keep.all():
        row = int(np.flatnonzero(~keep)[0])
        raise DatasetError(f"{ctx.card}: row {row + 1} has no class set (label_policy.empty)")
    return Labels(matrix.argmax(axis=1).astype(np.int64), None if keep.all() else keep)


@dataclass(frozen=True, kw_only=True)
class MultiHotParams:
    """NIH ChestX-ray14's ``Finding Labels``: class names joined by a separator.

    Attributes:
        column: the raw column.
        separator: between names.
        none: values meaning no class (an all-zero row), e.g. ``No Finding``.
        unknown: a name that is not a class is an ``error``, or ``ignore`` it.
    """

    column: str = "label"
    separator: str = "|"
    none: tuple[str, ...] = ()
    unknown: Literal["error", "ignore"] = "error"

    def validate_for(self, classes: tuple[str, ...], task: str) -> None:
        """Multilabel tasks only."""
        if task != "multilabel":
            raise ValueError(f"multi_hot gives multilabel rows; the task is {task}")


@register_label_policy("multi_hot", version=1, params=MultiHotParams)
def multi_hot(params: MultiHotParams, raw: RawDataset, ctx: DatasetContext) -> Labels:
    """Separator-joined class names (``Effusion|Mass``) to 0/1 rows."""
    values = raw.column(params.column, ctx, "label_policy.column")
    index = {name: i for i, name in enumerate(ctx.classes)}
    out = np.zeros((len(values), len(ctx.classes)), dtype=np.int64)
    for row, value in enumerate(values):
        for name in (n.strip() for n in _text(value).split(params.separator)):
            if not name or name in params.none:
                continue
            if name in index:
                out[row, index[name]] = 1
            elif params.unknown == "error":
                _unknown(np.asarray([name]), ctx, "label_policy.unknown")
    return Labels(out)


@dataclass(frozen=True, kw_only=True)
class NamePatternParams:
    """Parameters of ``name_pattern``.

    Attributes:
        column: the raw column (a flat ``image_folder``'s ``label`` holds file names).
        pattern: a regex searched in each value; its first capture group (or the whole
            match) is looked up in ``map``, e.g. ``_([01])\\.png$`` for MCUCXR_0001_0.png.
        map: captured text -> class name.
        unmatched: a value the pattern does not match (or whose capture is not mapped) is
            an ``error``, or ``drop`` the row.
    """

    column: str = "label"
    pattern: str
    map: dict[str, str]
    unmatched: Literal["error", "drop"] = "error"

    def validate(self) -> None:
        """A valid regex and a non-empty map."""
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"'pattern' is not a valid regex: {exc}") from None
        if not self.map:
            raise ValueError("'map' is empty")

    def validate_for(self, classes: tuple[str, ...], task: str) -> None:
        """Every target is a class; the task is single-label."""
        _check_single_label_map("name_pattern", self.map, classes, task)


@register_label_policy("name_pattern", version=1, params=NamePatternParams)
def name_pattern(params: NamePatternParams, raw: RawDataset, ctx: DatasetContext) -> Labels:
    """A class from a regex capture in each value (Montgomery's ``MCUCXR_0001_0.png``)."""
    values = raw.column(params.column, ctx, "label_policy.column")
    pattern = re.compile(params.pattern)
    index = {name: i for i, name in enumerate(ctx.classes)}
    labels = np.full(len(values), -1, dtype=np.int64)
    for row, value in enumerate(values):
        match = pattern.search(_text(value))
        found = None if match is None else (match.group(1) if pattern.groups else match.group(0))
        if found in params.map:
            labels[row] = index[params.map[found]]
        elif params.unmatched == "error":
            raise DatasetError(
                f"{ctx.card}: field 'label_policy.pattern' {params.pattern!r} gives no mapped "
                f"class for {_text(value)!r} (row {row + 1}); captured {found!r}"
            )
    keep = labels >= 0
    return Labels(labels, None if keep.all() else keep)


# --------------------------------------------------------------------------- helpers


def _text(value: object) -> str:
    return str(value).strip()


def _class_index(names: np.ndarray, ctx: DatasetContext, field: str) -> np.ndarray:
    known = np.isin(names, ctx.classes)
    if not known.all():
        _unknown(names[~known], ctx, field)
    index = {name: i for i, name in enumerate(ctx.classes)}
    return np.asarray([index[name] for name in names], dtype=np.int64)


def _unknown(values: np.ndarray, ctx: DatasetContext, field: str) -> None:
    found = sorted(set(values.tolist()))
    shown = ", ".join(repr(v) for v in found[:8]) + (" ..." if len(found) > 8 else "")
    raise DatasetError(
        f"{ctx.card}: label values {shown} are not classes ({', '.join(ctx.classes)}); "
        f"map them with field '{field}'"
    )


def _numbers(column: np.ndarray, name: str, ctx: DatasetContext) -> np.ndarray:
    try:
        return np.asarray([float(_text(v) or "nan") for v in column], dtype=np.float64)
    except ValueError as exc:
        raise DatasetError(f"{ctx.card}: column {name!r} holds a non-number: {exc}") from None


def _ternary(column: np.ndarray, name: str, ctx: DatasetContext) -> np.ndarray:
    """1 / 0 / -1 (uncertain) / -2 (blank) codes of a CheXpert-style column."""
    numbers = _numbers(column, name, ctx)
    codes = np.where(np.isnan(numbers), -2.0, numbers)
    bad = ~np.isin(codes, (1.0, 0.0, -1.0, -2.0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DatasetError(
            f"{ctx.card}: column {name!r} row {row + 1} holds {column[row]!r}; expected 1, 0, "
            "-1 (uncertain) or blank"
        )
    return codes.astype(np.int64)


def _check_single_label_map(
    policy: str, mapping: dict[str, str], classes: tuple[str, ...], task: str
) -> None:
    """A policy giving one class per image needs a single-label task and class targets."""
    if task == "multilabel":
        raise ValueError(f"{policy} gives one class per image; the task is multilabel")
    wrong = sorted({v for v in mapping.values() if v not in classes})
    if wrong:
        raise ValueError(f"'map' targets {wrong} are not classes ({', '.join(classes)})")
