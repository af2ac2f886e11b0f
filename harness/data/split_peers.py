"""Split rules that reproduce the peers' own splits, so paper suites can compare like with like.

- ``shuffled_fraction``: SSL_medicalimaging's pandas shuffle (seed 42), the first 80% as
  train, and 20% of train as val (numpy seed 0);
- ``kfold``: ``StratifiedKFold(5, shuffle=True, random_state=2)`` as cats-scans and
  revisiting-transfer's non-patient targets, one fold as test;
- ``group_kfold``: revisiting-transfer's ``GroupKFold(5)`` on patient id.

The fold rules call scikit-learn's splitters themselves: the peers' folds are whatever
those classes return, and ``StratifiedKFold``'s shuffling changed in scikit-learn 0.22,
so folds match the installed scikit-learn (>= 1.5). Every rule keeps a group (patient)
inside one split when the reader gives groups, or says which group it could not keep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from harness.data import DatasetError
from harness.data.registry import register_split_rule
from harness.data.split_rules import check_groups_disjoint, head_rows, numpy_shuffle_val
from harness.data.table import DatasetContext, SplitInput


@dataclass(frozen=True, kw_only=True)
class ShuffledFractionParams:
    """SSL_medicalimaging's split: shuffle the whole index, head is train, tail is test.

    Attributes:
        train_fraction: train is the first ``floor(train_fraction * N)`` shuffled rows.
        train_count: a fixed train size instead (CheXpert: ``134049`` of ``train.csv``).
        seed: pandas' ``random_state`` of the shuffle.
        val_fraction: val is ``floor(val_fraction * len(train))`` train rows, as the
            peer's ``linear.py`` / ``finetune.py`` carve it.
        val_seed: the numpy seed of that carving.
        grouped: when the reader gives groups, a group goes wholly to the split of its
            first row (in index order); identical to the peer's split when every group is
            one image (the peer itself does not group, so its patients can cross splits).
    """

    train_fraction: float = 0.8
    train_count: int | None = None
    seed: int = 42
    val_fraction: float = 0.2
    val_seed: int = 0
    grouped: bool = True

    def validate(self) -> None:
        """Fractions in (0, 1); a positive count."""
        for name in ("train_fraction", "val_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"'{name}' must be in (0, 1), got {getattr(self, name)}")
        if self.train_count is not None and self.train_count < 1:
            raise ValueError(f"'train_count' must be >= 1, got {self.train_count}")


@register_split_rule("shuffled_fraction", version=1, params=ShuffledFractionParams)
def shuffled_fraction(
    params: ShuffledFractionParams, data: SplitInput, ctx: DatasetContext
) -> dict[str, np.ndarray]:
    """SSL_medicalimaging's pandas-shuffled 80 / 20 split, with 20% of train as val.

    Reproduces, without pandas, jonahanton/SSL_medicalimaging@77fceef:
    datasets/custom_montgomery_cxr_dataset.py (and its siblings for Shenzhen, BACH,
    iChallenge, STOIC, ChestX; custom_chexpert_dataset.py with 134049 rows): the reader's
    whole index is shuffled by ``df.sample(frac=1, random_state=42).reset_index(drop=True)``
    (pandas draws ``RandomState(42).choice(N, N, replace=False)``, i.e.
    ``RandomState(42).permutation(N)``), rows ``[:int(math.floor(0.8 * N))]`` are train and
    the rest test, and images the dataset class drops (label filters) are dropped after
    the split. Val is linear.py's ``get_train_valid_loader``: ``np.random.seed(0)``,
    ``np.random.shuffle(list(range(len(train))))``, the first ``floor(0.2 * len(train))``.
    """
    positions, n_source = data.positions()
    cut = (
        params.train_count
        if params.train_count is not None
        else math.floor(params.train_fraction * n_source)
    )
    if not 0 < cut < n_source:
        raise DatasetError(
            f"{ctx.card}: field 'split.train_count': {cut} train rows of {n_source} leaves no "
            "train or no test"
        )
    rank = np.empty(n_source, dtype=np.int64)
    rank[np.random.RandomState(params.seed).permutation(n_source)] = np.arange(n_source)
    shuffled = rank[positions]
    groups = data.groups if params.grouped else None
    is_train = head_rows(shuffled, cut, groups)
    train = np.flatnonzero(is_train)
    train = train[np.argsort(shuffled[train], kind="stable")]  # the peer's train order
    is_val = numpy_shuffle_val(
        len(train),
        params.val_fraction,
        params.val_seed,
        None if groups is None else groups[train],
        ctx,
    )
    out = {
        "train": np.sort(train[~is_val]),
        "val": np.sort(train[is_val]),
        "test": np.flatnonzero(~is_train),
    }
    if groups is not None:
        check_groups_disjoint(groups, out, ctx)
    return out


@dataclass(frozen=True, kw_only=True)
class KFoldParams:
    """One fold of a (stratified) k-fold split as test.

    Attributes:
        n_splits: folds of the outer split.
        fold: which fold is test, 1..n_splits (the peers' ``fold_no``).
        shuffle: shuffle before folding (``StratifiedKFold(shuffle=...)``).
        seed: ``random_state`` when shuffling (both peers use 2).
        stratify: ``StratifiedKFold`` on the labels (else ``KFold``).
        val: where val comes from: ``held_out`` splits the test fold again by a
            non-shuffled k-fold of ``val_splits`` and takes its last fold as val
            (revisiting-transfer); ``train`` takes that last fold of the train part
            (cats-scans validates on its test fold, which a harness split cannot).
        val_splits: folds of that second split.
    """

    n_splits: int = 5
    fold: int = 1
    shuffle: bool = True
    seed: int = 2
    stratify: bool = True
    val: Literal["held_out", "train"] = "held_out"
    val_splits: int = 5

    def validate(self) -> None:
        """At least 2 folds; a fold in 1..n_splits."""
        _check_folds(self.n_splits, self.fold, self.val_splits)


@register_split_rule("kfold", version=1, params=KFoldParams)
def kfold(params: KFoldParams, data: SplitInput, ctx: DatasetContext) -> dict[str, np.ndarray]:
    """A (stratified) k-fold split's fold as test, as cats-scans and revisiting-transfer.

    cats-scans (vcheplygina/cats-scans@9bc5d8a:src/models/model_preparation_saving.py)
    folds with ``StratifiedKFold(n_splits=k, shuffle=True, random_state=2)`` on the class
    column and scores each held-out fold. revisiting-transfer
    (DovileDo/revisiting-transfer@54853c3:src/make_dataframe.py) does the same for its
    non-patient targets, then splits the held-out fold by
    ``StratifiedKFold(n_splits=5, shuffle=False)`` and keeps the *last* inner split:
    its held-out part is val, the rest test. When the reader gives groups, a group split
    across the result is an error (use ``group_kfold``).
    """
    from sklearn.model_selection import KFold as PlainKFold  # sklearn loads only when used
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(data.labels)
    if params.stratify:
        labels = _single_label(labels, ctx, "kfold")
        _check_class_counts(labels, params.n_splits, ctx, "kfold")
    outer = (
        StratifiedKFold(params.n_splits, shuffle=params.shuffle, random_state=_state(params))
        if params.stratify
        else PlainKFold(params.n_splits, shuffle=params.shuffle, random_state=_state(params))
    )
    inner = StratifiedKFold(params.val_splits) if params.stratify else PlainKFold(params.val_splits)
    y = labels if params.stratify else None
    train, held_out = _nth(outer.split(np.zeros(len(labels)), y), params.fold, ctx)
    part = held_out if params.val == "held_out" else train
    rest, val = _last(inner.split(np.zeros(len(part)), None if y is None else y[part]), ctx)
    out = _assemble(train, held_out, part[rest], part[val], params.val)
    if data.groups is not None:
        check_groups_disjoint(data.groups, out, ctx)
    return out


@dataclass(frozen=True, kw_only=True)
class GroupKFoldParams:
    """One fold of a k-fold split by group (patient) as test.

    Attributes:
        n_splits: folds of the outer split.
        fold: which fold is test, 1..n_splits.
        val: ``held_out`` splits the test fold again by ``GroupKFold(val_splits)`` and
            takes the last inner fold as val (revisiting-transfer); ``train`` takes it from
            the train part.
        val_splits: folds of that second split.
    """

    n_splits: int = 5
    fold: int = 1
    val: Literal["held_out", "train"] = "held_out"
    val_splits: int = 4

    def validate(self) -> None:
        """At least 2 folds; a fold in 1..n_splits."""
        _check_folds(self.n_splits, self.fold, self.val_splits)


@register_split_rule("group_kfold", version=1, params=GroupKFoldParams)
def group_kfold(
    params: GroupKFoldParams, data: SplitInput, ctx: DatasetContext
) -> dict[str, np.ndarray]:
    """A ``GroupKFold`` fold by patient as test, with val as revisiting-transfer chooses it.

    DovileDo/revisiting-transfer@54853c3:src/make_dataframe.py folds chest, thyroid,
    mammograms and knee with ``GroupKFold(n_splits=5)`` on ``pid`` (no shuffle), splits
    each held-out fold by ``GroupKFold(n_splits=4)`` on ``pid`` and keeps the last inner
    split: its held-out part is val, the rest test. No group is in two splits.
    """
    from sklearn.model_selection import GroupKFold

    if data.groups is None:
        raise DatasetError(
            f"{ctx.card}: field 'split.rule': group_kfold needs groups from the reader "
            "(group_column or group_pattern), which gives none"
        )
    groups = np.asarray(data.groups)
    n_groups = len(np.unique(groups))
    if n_groups < params.n_splits:
        raise DatasetError(
            f"{ctx.card}: field 'split.n_splits': {params.n_splits} folds need at least as many "
            f"groups, the data has {n_groups}"
        )
    x = np.zeros(len(groups))
    train, held_out = _nth(GroupKFold(params.n_splits).split(x, groups=groups), params.fold, ctx)
    part = held_out if params.val == "held_out" else train
    inner = GroupKFold(params.val_splits)
    rest, val = _last(inner.split(np.zeros(len(part)), groups=groups[part]), ctx)
    out = _assemble(train, held_out, part[rest], part[val], params.val)
    check_groups_disjoint(groups, out, ctx)
    return out


# --------------------------------------------------------------------------- helpers


def _check_folds(n_splits: int, fold: int, val_splits: int) -> None:
    if n_splits < 2 or val_splits < 2:
        raise ValueError(f"'n_splits' and 'val_splits' must be >= 2, got {n_splits}, {val_splits}")
    if not 1 <= fold <= n_splits:
        raise ValueError(f"'fold' must be in 1..{n_splits} (n_splits), got {fold}")


def _state(params: KFoldParams) -> int | None:
    return params.seed if params.shuffle else None  # sklearn rejects a seed without shuffle


def _single_label(labels: np.ndarray, ctx: DatasetContext, rule: str) -> np.ndarray:
    if labels.ndim != 1:
        raise DatasetError(
            f"{ctx.card}: field 'split.stratify': {rule} stratifies single-label tasks only "
            f"(labels of shape {labels.shape}); set stratify: false"
        )
    return labels


def _check_class_counts(labels: np.ndarray, n_splits: int, ctx: DatasetContext, rule: str) -> None:
    classes, counts = np.unique(labels, return_counts=True)
    few = [
        f"{ctx.classes[c] if 0 <= c < len(ctx.classes) else c} ({n})"
        for c, n in zip(classes.tolist(), counts.tolist(), strict=True)
        if n < n_splits
    ]
    if few:
        raise DatasetError(
            f"{ctx.card}: field 'split.n_splits': {rule} with {n_splits} stratified folds needs "
            f"at least {n_splits} images of every class; too few: {', '.join(few)}"
        )


def _nth(folds: object, fold: int, ctx: DatasetContext) -> tuple[np.ndarray, np.ndarray]:
    try:
        for number, (train, test) in enumerate(folds, start=1):  # type: ignore[call-overload]
            if number == fold:
                return np.asarray(train), np.asarray(test)
    except ValueError as exc:  # sklearn's own checks (too few members, groups)
        raise DatasetError(f"{ctx.card}: field 'split': {exc}") from exc
    raise DatasetError(f"{ctx.card}: field 'split.fold': no fold {fold}")


def _last(folds: object, ctx: DatasetContext) -> tuple[np.ndarray, np.ndarray]:
    last = None
    try:
        for last in folds:  # type: ignore[attr-defined]  # noqa: B007
            pass
    except ValueError as exc:
        raise DatasetError(f"{ctx.card}: field 'split.val_splits': {exc}") from exc
    if last is None:
        raise DatasetError(f"{ctx.card}: field 'split.val_splits': no inner fold")
    return np.asarray(last[0]), np.asarray(last[1])


def _assemble(
    train: np.ndarray, held_out: np.ndarray, rest: np.ndarray, val: np.ndarray, source: str
) -> dict[str, np.ndarray]:
    if source == "held_out":
        return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(rest)}
    return {"train": np.sort(rest), "val": np.sort(val), "test": np.sort(held_out)}
