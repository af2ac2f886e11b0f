"""Split rules: which rows of a dataset go to train, val and test.

Each rule is registered with a version and typed parameters (see
:mod:`harness.data.registry`); a card names one in ``split:``. Without one, the
``predefined`` rule applies. A rule returns row indices for each of ``train``, ``val``
and ``test``; the caller checks that they are disjoint and none is empty. The rules that
reproduce the peers' splits (``shuffled_fraction``, ``kfold``, ``group_kfold``) live in
:mod:`harness.data.split_peers`, imported (and so registered) at the end of this module.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np

from harness.data import DatasetError
from harness.data.npz import SPLITS
from harness.data.registry import register_split_rule
from harness.data.table import DatasetContext, SplitInput


def check_split_keys(mapping: dict[str, str], field_name: str) -> None:
    """Refuse a parameter keyed by split (``{val: valid}``) that names an unknown split."""
    unknown = sorted(set(mapping) - set(SPLITS))
    if unknown:
        raise ValueError(f"'{field_name}' keys must be among {', '.join(SPLITS)}, got {unknown}")


def head_rows(rank: np.ndarray, cut: int, groups: np.ndarray | None) -> np.ndarray:
    """Rows whose rank is below ``cut``; with groups, rows whose group's first row's is.

    A group follows its first row (in index order): one draw per group, so groups of
    every size land in the head with the same chance (the minimum rank would favour
    large groups).
    """
    if groups is None:
        return rank < cut
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    return rank[first][inverse.reshape(-1)] < cut


def numpy_shuffle_val(
    n_train: int, fraction: float, seed: int, groups: np.ndarray | None, ctx: DatasetContext
) -> np.ndarray:
    """ssl-transfer's validation carve: which of ``n_train`` train rows (in order) are val.

    linusericsson/ssl-transfer@416913f:linear.py ``get_train_valid_loader`` (and
    SSL_medicalimaging's copy): ``np.random.seed(seed)``, ``np.random.shuffle`` of
    ``list(range(n_train))``, the first ``floor(fraction * n_train)`` positions are val.
    With groups, a group goes where its first row goes.

    Returns:
        A boolean mask over the train rows.

    Raises:
        DatasetError: When the fraction gives no validation image.
    """
    n_val = math.floor(fraction * n_train)
    if n_val < 1:
        raise DatasetError(
            f"{ctx.card}: field 'split.val_fraction': {fraction} of {n_train} train images "
            "is no image"
        )
    carve = list(range(n_train))
    np.random.RandomState(seed).shuffle(carve)
    rank = np.empty(n_train, dtype=np.int64)
    rank[np.asarray(carve)] = np.arange(n_train)
    return head_rows(rank, n_val, groups)


@dataclass(frozen=True, kw_only=True)
class PredefinedParams:
    """Splits as the source gives them (archive keys, split folders, per-split CSVs, a column).

    Attributes:
        names: our split -> the source's split name, for names that differ, e.g.
            ``{val: valid}``; a source split not named is left out.
        val_fraction: when > 0, ``val`` is carved out of the source's ``train`` instead,
            for sources without one.
        seed: seed of that carving.
        val_carve: how: ``stratified`` (grouped and stratified like
            ``seeded_fractions``) or ``numpy-shuffle`` (ssl-transfer's
            ``get_train_valid_loader``: :func:`numpy_shuffle_val` over the train rows in
            source order).
    """

    NEEDS_SOURCE_SPLITS: ClassVar[bool] = True
    names: dict[str, str] = field(default_factory=dict)
    val_fraction: float = 0.0
    seed: int = 0
    val_carve: Literal["stratified", "numpy-shuffle"] = "stratified"

    def validate(self) -> None:
        """Known split names; a fraction in [0, 1)."""
        check_split_keys(self.names, "names")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"'val_fraction' must be in [0, 1), got {self.val_fraction}")


@register_split_rule("predefined", version=1, params=PredefinedParams)
def predefined(
    params: PredefinedParams, data: SplitInput, ctx: DatasetContext
) -> dict[str, np.ndarray]:
    """The source's own splits (official lists), optionally with val carved from train."""
    source = source_split(data, ctx, "predefined")
    wanted = [s for s in SPLITS if not (s == "val" and params.val_fraction > 0)]
    out = {}
    for split in wanted:
        name = params.names.get(split, split)
        out[split] = np.flatnonzero(source == name)
        if not len(out[split]):
            present = ", ".join(sorted(set(source.tolist())))
            raise DatasetError(
                f"{ctx.card}: field 'split.names': the source has no split {name!r} for "
                f"{split} (source splits: {present})"
            )
    if params.val_fraction > 0:
        train = out["train"]
        groups = None if data.groups is None else data.groups[train]
        if params.val_carve == "numpy-shuffle":
            is_val = numpy_shuffle_val(len(train), params.val_fraction, params.seed, groups, ctx)
        else:
            fractions = {"train": 1.0 - params.val_fraction, "val": params.val_fraction}
            is_val = assign_fractions(data.labels[train], groups, fractions, params.seed, True) == 1
        out["train"], out["val"] = train[~is_val], train[is_val]
    return out


@dataclass(frozen=True, kw_only=True)
class SeededFractionsParams:
    """Random splits by fractions, keeping each group (patient) inside one split.

    Attributes:
        fractions: ``{train: f, val: f, test: f}``, summing to 1.
        seed: the seed; the same seed gives the same split.
        grouped: keep every group (the reader's patient / study ids) in one split.
        stratify: keep class proportions per split where groups allow.
    """

    fractions: dict[str, float]
    seed: int = 0
    grouped: bool = True
    stratify: bool = True

    def validate(self) -> None:
        """train / val / test fractions in (0, 1) summing to 1."""
        if set(self.fractions) != set(SPLITS):
            raise ValueError(
                f"'fractions' must give {', '.join(SPLITS)}, got {sorted(self.fractions)}"
            )
        if any(not 0.0 < f < 1.0 for f in self.fractions.values()):
            raise ValueError(f"every fraction must be in (0, 1), got {self.fractions}")
        if abs(sum(self.fractions.values()) - 1.0) > 1e-6:
            raise ValueError(f"'fractions' must sum to 1, got {sum(self.fractions.values())}")


@register_split_rule("seeded_fractions", version=1, params=SeededFractionsParams)
def seeded_fractions(
    params: SeededFractionsParams, data: SplitInput, ctx: DatasetContext
) -> dict[str, np.ndarray]:
    """Seeded train / val / test fractions, grouped by patient and stratified by class.

    The default for datasets without official splits. A single-label class with fewer
    groups (images, when ungrouped) than splits cannot reach every split: an error.
    """
    groups = data.groups if params.grouped else None
    if params.stratify and np.asarray(data.labels).ndim == 1:
        _check_class_units(np.asarray(data.labels), groups, ctx)
    fractions = {s: params.fractions[s] for s in SPLITS}
    assigned = assign_fractions(data.labels, groups, fractions, params.seed, params.stratify)
    return {split: np.flatnonzero(assigned == k) for k, split in enumerate(SPLITS)}


@dataclass(frozen=True, kw_only=True)
class DisjointRegionsParams:
    """The builder's own splits, from disjoint regions of the source images.

    Attributes:
        unit: what the stored groups are: ``tile`` (a region of one split: groups must
            not cross splits) or ``source`` (a source image cut into tiles of every split).
    """

    NEEDS_SOURCE_SPLITS: ClassVar[bool] = True
    unit: Literal["tile", "source"] = "tile"


@register_split_rule("disjoint_regions", version=1, params=DisjointRegionsParams)
def disjoint_regions(
    params: DisjointRegionsParams, data: SplitInput, ctx: DatasetContext
) -> dict[str, np.ndarray]:
    """A builder's splits, verified: no image in two splits, no tile group across splits.

    Constant images (a patch saturated by the augmentation) are not compared.
    """
    source = source_split(data, ctx, "disjoint_regions")
    out = {split: np.flatnonzero(source == split) for split in SPLITS}
    if params.unit == "tile":
        if data.groups is None:
            raise DatasetError(f"{ctx.card}: split rule disjoint_regions (unit tile) needs groups")
        check_groups_disjoint(data.groups, out, ctx)
    digests: dict[str, str] = {}
    for split, rows in out.items():
        for row, image in zip(rows, data.take_images(rows), strict=True):
            if image.min() == image.max():
                continue  # a constant (e.g. saturated) patch carries nothing to leak
            key = hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()
            if digests.setdefault(key, split) != split:
                raise DatasetError(
                    f"{ctx.card}: split rule disjoint_regions: image {row} of {split} also "
                    f"appears in {digests[key]}"
                )
    return out


# --------------------------------------------------------------------------- helpers


def check_groups_disjoint(
    groups: np.ndarray, splits: dict[str, np.ndarray], ctx: DatasetContext
) -> None:
    """Raise :class:`DatasetError` when a group has rows in two splits."""
    seen: dict[object, str] = {}
    for split, rows in splits.items():
        for group in np.unique(groups[rows]).tolist():
            if seen.setdefault(group, split) != split:
                raise DatasetError(
                    f"{ctx.card}: group {group!r} has images in both {seen[group]} and {split}"
                )


def assign_fractions(
    labels: np.ndarray,
    groups: np.ndarray | None,
    fractions: dict[str, float],
    seed: int,
    stratify: bool,
) -> np.ndarray:
    """Assign each row to one of ``fractions`` (by position), whole groups at a time.

    Groups are shuffled with ``numpy.random.default_rng(seed)`` inside each stratum (the
    majority class of the group's rows; multilabel rows by their first positive label),
    and laid end to end by row count: a group goes to the split whose share of the
    stratum holds the middle of the group. Fractions hold to within one group per stratum.

    Returns:
        int64 ``(N,)``: the index in ``fractions`` of each row's split.
    """
    n = len(labels)
    if groups is None:
        inverse = np.arange(n)
        n_units = n
    else:
        _, inverse = np.unique(groups, return_inverse=True)
        inverse = inverse.reshape(-1)
        n_units = int(inverse.max()) + 1 if n else 0
    keys = np.asarray(labels)
    if keys.ndim == 2:
        keys = np.where(keys.any(axis=1), keys.argmax(axis=1), -1)
    unit_key = np.zeros(n_units, dtype=np.int64)
    if stratify and n:
        classes, per_row = np.unique(keys, return_inverse=True)
        counts = np.zeros((n_units, len(classes)), dtype=np.int64)
        np.add.at(counts, (inverse, per_row.reshape(-1)), 1)
        unit_key = counts.argmax(axis=1)
    sizes = np.bincount(inverse, minlength=n_units)
    bounds = np.cumsum(list(fractions.values()))
    rng = np.random.default_rng(seed)
    unit_split = np.zeros(n_units, dtype=np.int64)
    for key in np.unique(unit_key):
        order = rng.permutation(np.flatnonzero(unit_key == key))
        cumulative = np.cumsum(sizes[order])
        middle = (cumulative - sizes[order] / 2.0) / cumulative[-1]
        unit_split[order] = np.minimum(
            np.searchsorted(bounds, middle, side="right"), len(bounds) - 1
        )
    return unit_split[inverse]


def _check_class_units(labels: np.ndarray, groups: np.ndarray | None, ctx: DatasetContext) -> None:
    units = np.arange(len(labels)) if groups is None else np.asarray(groups)
    few = []
    for label in np.unique(labels).tolist():
        n = len(np.unique(units[labels == label]))
        if n < len(SPLITS):
            name = ctx.classes[label] if 0 <= label < len(ctx.classes) else label
            few.append(f"{name} ({n})")
    if few:
        unit = "images" if groups is None else "groups (patients)"
        raise DatasetError(
            f"{ctx.card}: field 'split.fractions': seeded_fractions stratifies by class and "
            f"needs at least {len(SPLITS)} {unit} of every class; too few: {', '.join(few)}"
        )


def source_split(data: SplitInput, ctx: DatasetContext, rule: str) -> np.ndarray:
    """The source split name of every kept row (an error naming the rule when there are none)."""
    if data.split is None:
        raise DatasetError(
            f"{ctx.card}: field 'split.rule': {rule!r} needs splits from the reader, which gives "
            "none (use seeded_fractions, or a reader with split folders / per-split indexes / "
            "split_column)"
        )
    return np.asarray(data.split).astype(str)


# The peers' split rules register when this module loads (they import the helpers above).
import harness.data.split_peers  # noqa: E402
import harness.data.split_subsets  # noqa: E402, F401
from harness.data import split_tfds  # noqa: E402, F401
