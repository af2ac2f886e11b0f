"""Running a card's reader, label policy and split rule: from a source to train / val / test.

    reader(params, ctx) -> RawDataset            one row per image, raw label table
    label_policy(params, raw, ctx) -> Labels     class indices (or 0/1 rows), rows to keep
    split_rule(params, data, ctx) -> rows/split  train / val / test row indices
    -> {split: SplitData}                        images decoded (and resized) only now

The entries are looked up in :mod:`harness.data.registry` by the names the card gives.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from harness.config.dataset_cards import DatasetCard
from harness.config.paths import data_dir
from harness.config.safe_paths import inside
from harness.data import DatasetError
from harness.data.npz import SPLITS, SplitData
from harness.data.registry import LABEL_POLICIES, READERS, SPLIT_RULES, LabelPolicySpec
from harness.data.table import (
    ArrayImages,
    DatasetContext,
    RawDataset,
    SplitInput,
    kept_paths,
    take_soft,
)


def card_folder(card: DatasetCard) -> Path:
    """The folder a card's relative paths start from.

    For a card in a ``datasets/`` folder, the card folder holding it (the folder named by
    ``$MEDXFER_CARDS``, or the checkout); otherwise the card file's own folder.
    """
    if not card.source_file:
        return Path.cwd()
    folder = Path(card.source_file).resolve().parent
    return folder.parent if folder.name == "datasets" else folder


def data_root(card: DatasetCard) -> Path:
    """The dataset's data folder: the reader's ``root``, or its default under ``MEDXFER_HOME``.

    A relative ``root`` starts from :func:`card_folder`; ``~`` is expanded. The default is
    ``<MEDXFER_HOME>/data/<name>``, plus ``/v<version>`` for single-file readers (``npz``).
    """
    params = card.reader.params
    root = getattr(params, "root", None)
    if root:
        path = Path(root).expanduser()
        return path if path.is_absolute() else card_folder(card) / path
    base = inside(data_dir(), card.data_name or card.name)
    return base / f"v{card.version}" if getattr(params, "ROOT_PER_VERSION", False) else base


class ConstantImagesWarning(UserWarning):
    """Every image of a dataset split is one constant value: every protocol scores chance."""


_WARNED_CONSTANT: set[tuple[str, str]] = set()


def warn_constant_images(dataset: str, splits: Mapping[str, SplitData]) -> list[str]:
    """Warn once per dataset split (per process) whose images are all one constant value.

    Such images (all zero, say, from a reader that decoded nothing) carry no signal: every
    protocol then scores exactly chance, which looks like a result rather than a fault.

    Args:
        dataset: The dataset's name, for the message.
        splits: Split name -> its data.

    Returns:
        The names of the constant splits (warned now or before).
    """
    constant = []
    for name, split in splits.items():
        images = np.asarray(split.images)
        if images.size == 0 or images.min() != images.max():
            continue
        constant.append(name)
        if (dataset, name) in _WARNED_CONSTANT:
            continue
        _WARNED_CONSTANT.add((dataset, name))
        warnings.warn(
            f"dataset {dataset!r}, split {name!r}: all {len(images)} images are constant "
            f"(every pixel is {images.flat[0]!r}); every protocol will score chance on them. "
            "Check the data files and the card's reader.",
            ConstantImagesWarning,
            stacklevel=2,
        )
    return constant


def context(card: DatasetCard) -> DatasetContext:
    """What the card's entries are told about it."""
    return DatasetContext(
        card=card.source_file or card.name,
        name=card.name,
        task=card.task,
        classes=card.classes,
        root=data_root(card),
    )


def required_paths(card: DatasetCard) -> tuple[Path, ...]:
    """The files or folders the user must put in place before the card can be read."""
    root = data_root(card)
    paths = getattr(card.reader.params, "paths", None)
    return tuple(paths(root)) if callable(paths) else (root,)


def reads_as_is(card: DatasetCard) -> bool:
    """True when the source is an ``.npz`` archive used as it is (no decoded copy needed)."""
    policy = card.label_policy
    return (
        card.reader.name == "npz"
        and (policy is None or (policy.name == "identity" and policy.params.column == "label"))
        and card.split.name == "predefined"
        and not card.split.params.names
        and card.split.params.val_fraction == 0
    )


def read_raw(card: DatasetCard) -> RawDataset:
    """Run the card's reader (the index is read; images are decoded later, on demand)."""
    return READERS.run(card.reader, context(card))  # type: ignore[no-any-return]


def raw_from_splits(splits: dict[str, SplitData]) -> RawDataset:
    """Present a builder's splits as a raw dataset (source splits, labels, groups, views)."""
    names = [s for s in SPLITS if s in splits]
    parts = [splits[s] for s in names]

    def joined(name: str) -> np.ndarray | None:
        values = [getattr(p, name) for p in parts]
        return None if any(v is None for v in values) else np.concatenate(values)

    return RawDataset(
        columns={"label": np.concatenate([np.asarray(p.labels) for p in parts])},
        images=ArrayImages(tuple(len(p) for p in parts), lambda: [p.images for p in parts]),
        digest="",
        groups=joined("groups"),
        split=np.concatenate([np.full(len(p), s) for s, p in zip(names, parts, strict=True)]),
        views=joined("views"),
        studies=joined("studies"),
    )


def make_splits(card: DatasetCard, raw: RawDataset) -> dict[str, SplitData]:
    """Apply the card's label policy and split rule to a raw dataset and decode its images.

    Raises:
        DatasetError: naming the card (and the file or field) at fault.
    """
    ctx = context(card)
    policy = card.label_policy or LABEL_POLICIES.parse({"name": "identity"}, ctx.card)
    labels = LABEL_POLICIES.run(policy, raw, ctx)
    values = np.asarray(labels.values)
    if len(values) != len(raw):
        raise DatasetError(f"{ctx.card}: label policy {policy.name!r} returned a wrong row count")
    rows = np.arange(len(raw)) if labels.keep is None else np.flatnonzero(labels.keep)
    if not len(rows):
        raise DatasetError(f"{ctx.card}: label policy {policy.name!r} kept no image")
    values = _check_labels(values[rows], card, policy)
    soft = take_soft(labels.soft, rows)
    groups = None if raw.groups is None else np.asarray(raw.groups)[rows]
    split = None if raw.split is None else np.asarray(raw.split)[rows]
    data = SplitInput(
        values,
        groups,
        split,
        lambda index: raw.images.take(rows[index]),
        source_rows=rows,
        n_source=len(raw),
        paths=kept_paths(raw.images, rows, ctx.root),
    )
    assignment = SPLIT_RULES.run(card.split, data, ctx)
    _check_assignment(assignment, len(rows), card)
    codes = _group_codes(groups)
    views = _views(raw.views, rows)
    studies = None if raw.studies is None else _group_codes(np.asarray(raw.studies)[rows])
    out = {}
    for split_name in SPLITS:
        index = np.asarray(assignment[split_name], dtype=np.int64)
        out[split_name] = SplitData(
            images=raw.images.take(rows[index]),
            labels=values[index],
            groups=None if codes is None else codes[index],
            views=None if views is None else views[index],
            studies=None if studies is None else studies[index],
            soft=take_soft(soft, index),
        )
    return out


def _check_labels(values: np.ndarray, card: DatasetCard, policy: LabelPolicySpec) -> np.ndarray:
    where = f"{card.source_file or card.name}: label policy {policy.name!r}"
    if not np.issubdtype(values.dtype, np.integer):
        raise DatasetError(f"{where} returned {values.dtype} labels, not integers")
    values = values.astype(np.int64)
    if card.task == "multilabel":
        if (
            values.ndim != 2
            or values.shape[1] != card.num_classes
            or not np.isin(values, (0, 1)).all()
        ):
            raise DatasetError(
                f"{where} must give 0/1 rows of {card.num_classes} for a multilabel task"
            )
    elif values.ndim != 1 or values.min() < 0 or values.max() >= card.num_classes:
        raise DatasetError(f"{where} must give class indices in 0..{card.num_classes - 1}")
    return values


def _check_assignment(assignment: dict[str, np.ndarray], n: int, card: DatasetCard) -> None:
    where = f"{card.source_file or card.name}: split rule {card.split.name!r}"
    if set(assignment) != set(SPLITS):
        raise DatasetError(f"{where} returned splits {sorted(assignment)}, not {', '.join(SPLITS)}")
    seen = np.zeros(n, dtype=bool)
    for split in SPLITS:
        index = np.asarray(assignment[split], dtype=np.int64)
        if not len(index):
            raise DatasetError(f"{where} left split {split!r} empty (too few images or groups?)")
        if (
            index.min() < 0
            or index.max() >= n
            or seen[index].any()
            or len(np.unique(index)) < len(index)
        ):
            raise DatasetError(f"{where} returned overlapping or out-of-range rows for {split!r}")
        seen[index] = True


def _views(views: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    """Views of the kept rows as lowercase, stripped strings (``Frontal`` -> ``frontal``)."""
    if views is None:
        return None
    return np.char.lower(np.char.strip(np.asarray(views)[rows].astype(str)))


def _group_codes(groups: np.ndarray | None) -> np.ndarray | None:
    if groups is None:
        return None
    if np.issubdtype(groups.dtype, np.integer):
        return groups.astype(np.int64)
    _, codes = np.unique(groups.astype(str), return_inverse=True)
    return codes.reshape(-1).astype(np.int64)
