"""Dataset cards: the typed, validated YAML files in ``datasets/`` (one dataset per file).

The reader, label policy, split rule and builder of a card are named, versioned entries
of the registries in :mod:`harness.data.registry`, each with typed parameters; they are
parsed and checked when the card loads (an unknown name or a wrong parameter is a
:class:`~harness.config.card_fields.CardError` naming the file and the field). Their
names, versions and parameters enter :meth:`DatasetCard.fingerprint`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from harness.config.card_fields import CardError, Fields, read_yaml
from harness.config.names import unsafe_name_problem
from harness.config.vocabulary import METRICS, TASKS
from harness.data.registry import (
    BUILDERS,
    LABEL_POLICIES,
    READERS,
    SPLIT_RULES,
    BuilderSpec,
    EntrySpec,
    LabelPolicySpec,
    ReaderSpec,
    SplitRuleSpec,
)

DEFAULT_SPLIT = {"rule": "predefined"}
CARD_FIELDS = {
    "name", "version", "modality", "task", "classes", "reader", "builder", "split",
    "label_policy", "primary_metric", "metrics", "fewshot", "pairing", "semi_synthetic",
    "description", "obtain", "citation", "license", "resolutions", "data_folder",
}  # fmt: skip
RESOLUTION_FIELDS = {"file", "md5", "sha256"}
FEWSHOT_FIELDS = {"n_way"}
DATA_FOLDER = re.compile(r"[a-z0-9][a-z0-9_-]*")


@dataclass(frozen=True)
class DatasetCard:
    """One target dataset: classes, reader, label policy, split rule, metric, provenance.

    ``reader``, ``builder``, ``label_policy`` and ``split`` may be given as the card's
    mappings (as in the YAML); they are parsed into specs on construction.

    Attributes:
        reader: the reader and its parameters.
        label_policy: the label policy (None: ``identity``).
        split: the split rule (default ``predefined``).
        builder: the builder of a locally built dataset, or None.
        resolutions: released sizes -> ``{file, md5 | sha256}`` (MedMNIST+), see
            :meth:`at_resolution`.
        resolution: the size of a card made by :meth:`at_resolution`.
        data_name: the data folder under ``<MEDXFER_HOME>/data`` when it is not the card's
            name: twins of one source (the YAML field ``data_folder``, e.g. chexpert_uzeros
            reads the ``chexpert`` folder) and the sizes of a release.
    """

    name: str
    version: int
    modality: str
    task: str
    classes: tuple[str, ...]
    reader: ReaderSpec
    primary_metric: str
    metrics: tuple[str, ...]
    builder: BuilderSpec | None = None
    split: SplitRuleSpec = None  # type: ignore[assignment]  # None -> the default rule
    label_policy: LabelPolicySpec | None = None
    fewshot: dict[str, Any] = field(default_factory=dict)
    pairing: dict[str, Any] = field(default_factory=dict)
    semi_synthetic: bool = False
    description: str = ""
    obtain: dict[str, Any] = field(default_factory=dict)
    citation: str = ""
    license: str = ""
    source_file: str = ""
    resolutions: dict[int, dict[str, str]] = field(default_factory=dict)
    resolution: int | None = None
    data_name: str = ""

    def __post_init__(self) -> None:
        where = self.source_file or str(self.name)
        problem = unsafe_name_problem(self.name)
        if problem is not None:  # the name becomes folders under MEDXFER_HOME
            raise CardError(f"{where}: field 'name' {problem}")
        if self.data_name and not DATA_FOLDER.fullmatch(self.data_name):
            raise CardError(
                f"{where}: field 'data_folder' must be a plain folder name (lowercase letters, "
                f"digits, '_', '-'), got {self.data_name!r}"
            )
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "reader", _spec(READERS, self.reader, where))
        split = DEFAULT_SPLIT if self.split is None else self.split
        object.__setattr__(self, "split", _spec(SPLIT_RULES, split, where))
        if self.builder is not None:
            object.__setattr__(self, "builder", _spec(BUILDERS, self.builder, where))
            if self.reader.name != "npz":
                raise CardError(
                    f"{where}: field 'builder': a builder writes an .npz archive, so "
                    f"'reader.format' must be npz, not {self.reader.name!r}"
                )
        _check_resolutions(self, where)
        _check_fewshot(self, where)
        built_file = getattr(self.reader.params, "file", None)
        if self.builder is not None and isinstance(built_file, str):
            _check_plain_file(built_file, where, "reader.file")
        if self.label_policy is not None:
            policy = _spec(LABEL_POLICIES, self.label_policy, where)
            object.__setattr__(self, "label_policy", policy)
        gives_splits = getattr(self.reader.params, "gives_splits", None)
        needs_splits = getattr(self.split.params, "NEEDS_SOURCE_SPLITS", False)
        if needs_splits and callable(gives_splits) and not gives_splits():
            raise CardError(
                f"{where}: field 'split.rule': {self.split.name!r} takes the splits the source "
                f"names, and reader {self.reader.name!r} names none here (give it per-split "
                "indexes, a split column or split folders, or use seeded_fractions)"
            )
        for field_name, spec in (("label_policy", self.label_policy), ("split", self.split)):
            check = getattr(getattr(spec, "params", None), "validate_for", None)
            if callable(check):
                try:
                    check(self.classes, self.task)
                except ValueError as exc:
                    raise CardError(f"{where}: field '{field_name}': {exc}") from None

    @property
    def num_classes(self) -> int:
        """Number of classes (outputs of a classifier head)."""
        return len(self.classes)

    def at_resolution(self, size: int) -> DatasetCard:
        """The card of one of the sizes the source is released at (MedMNIST+'s 28 ... 224).

        The derived card is named ``<name>_<size>`` (so the size is part of every case id and
        cache key), reads the size's own file, and keeps its data in the base card's folder.

        Raises:
            CardError: when the card does not declare that size.
        """
        if size not in self.resolutions:
            offered = ", ".join(map(str, sorted(self.resolutions))) or "none"
            raise CardError(
                f"{self.source_file or self.name}: dataset {self.name!r} is not released at "
                f"size {size} (field 'resolutions' offers: {offered})"
            )
        release = self.resolutions[size]
        reader = replace(self.reader, params=replace(self.reader.params, file=release["file"]))
        obtain = {k: v for k, v in self.obtain.items() if k not in ("md5", "sha256")}
        obtain.update({k: release[k] for k in ("md5", "sha256") if k in release})
        if obtain.get("url"):
            obtain["url"] = str(obtain["url"]).rsplit("/", 1)[0] + "/" + release["file"]
        return replace(
            self,
            name=f"{self.name}_{size}",
            reader=reader,
            obtain=obtain,
            resolutions={},
            resolution=size,
            data_name=self.data_name or self.name,
        )

    def with_split(self, split: Mapping[str, Any], suffix: str) -> DatasetCard:
        """The card under another split rule (a suite's ``split`` override).

        The derived card is named ``<name>_<suffix>`` and reads the same data from the base
        card's folder; the rule's name, version and parameters enter its fingerprint, so
        its prepared splits, features and results are kept apart from the base card's.

        Raises:
            CardError: when the rule is unknown, its parameters are malformed, or it does
                not fit the card (e.g. it needs the source's own splits and the reader
                names none).
        """
        return replace(
            self,
            name=f"{self.name}_{suffix}",
            split=dict(split),
            data_name=self.data_name or self.name,
        )

    def fingerprint(self) -> dict[str, Any]:
        """Return what decides the dataset's content (used in cache keys and build markers).

        The reader, label policy, split rule and builder enter with their names,
        versions and parameters (not their notes); descriptions and provenance do not.
        """
        return {
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "classes": list(self.classes),
            "reader": self.reader.identity(),
            "builder": None if self.builder is None else self.builder.identity(),
            "label_policy": None if self.label_policy is None else self.label_policy.identity(),
            "split": self.split.identity(),
        }


def _check_resolutions(card: DatasetCard, where: str) -> None:
    """``resolutions`` maps sizes to released files; only single-archive (npz) cards have them."""
    if not card.resolutions:
        return
    if card.builder is not None or card.reader.name != "npz":
        raise CardError(
            f"{where}: field 'resolutions' needs a card that reads a released archive "
            "('reader.format: npz', no builder)"
        )
    for size, release in card.resolutions.items():
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise CardError(
                f"{where}: field 'resolutions': sizes are positive integers, got {size!r}"
            )
        if not isinstance(release, Mapping) or not isinstance(release.get("file"), str):
            raise CardError(
                f"{where}: field 'resolutions.{size}' needs a 'file' (and an md5 or sha256)"
            )
        extra = set(release) - RESOLUTION_FIELDS
        if extra:
            raise CardError(
                f"{where}: field 'resolutions.{size}': unknown field(s) {', '.join(sorted(extra))}"
            )
        _check_plain_file(release["file"], where, f"resolutions.{size}.file")


def _check_plain_file(name: str, where: str, field_name: str) -> None:
    """A file the harness writes or names under its own folders is one plain file name."""
    file = PurePosixPath(name)
    if file.is_absolute() or ".." in file.parts or len(file.parts) != 1 or "\\" in name:
        raise CardError(f"{where}: field '{field_name}' must be a plain file name, got {name!r}")


def _check_fewshot(card: DatasetCard, where: str) -> None:
    """``fewshot.n_way``: an integer number of ways between 2 and the number of classes."""
    extra = sorted(set(card.fewshot) - FEWSHOT_FIELDS)
    if extra:
        raise CardError(
            f"{where}: field 'fewshot' has unknown field(s) {', '.join(map(str, extra))} "
            f"(known: {', '.join(sorted(FEWSHOT_FIELDS))})"
        )
    n_way = card.fewshot.get("n_way")
    if n_way is None:
        return
    if not isinstance(n_way, int) or isinstance(n_way, bool):
        raise CardError(
            f"{where}: field 'fewshot.n_way' must be an integer number of classes per "
            f"episode, got {type(n_way).__name__} ({n_way!r})"
        )
    if not 2 <= n_way <= card.num_classes:
        raise CardError(
            f"{where}: field 'fewshot.n_way' must lie in [2, {card.num_classes}] (the card "
            f"lists {card.num_classes} classes), got {n_way}"
        )


def _spec(registry: Any, value: Any, where: str) -> EntrySpec:
    if isinstance(value, registry.spec_type):
        return value
    if isinstance(value, Mapping):
        return registry.parse(value, where)  # type: ignore[no-any-return]
    raise CardError(
        f"{where}: field '{registry.field}' must be a mapping, got {type(value).__name__}"
    )


def load_dataset_card_file(path: Path) -> DatasetCard:
    """Load and validate one dataset card file.

    Args:
        path: a YAML dataset card.

    Returns:
        The validated card.

    Raises:
        CardError: naming the file and field at fault.
    """
    fields = Fields(read_yaml(path), str(path))
    fields.unknown(CARD_FIELDS)
    task = fields.get("task", str, choices=TASKS)
    classes = fields.str_tuple("classes")
    if len(classes) < 2:
        raise CardError(f"{path}: field 'classes' must list at least 2 classes")
    primary = fields.get("primary_metric", str, choices=METRICS)
    metrics = fields.str_tuple("metrics") or (primary,)
    for metric in metrics:
        if metric not in METRICS:
            raise CardError(f"{path}: field 'metrics' has unknown metric {metric!r}")
    if primary not in metrics:
        metrics = (primary, *metrics)
    return DatasetCard(
        name=fields.get("name", str),
        version=fields.get("version", int),
        modality=fields.get("modality", str),
        task=task,
        classes=classes,
        reader=fields.get("reader", dict),
        primary_metric=primary,
        metrics=metrics,
        builder=fields.get("builder", dict, None),
        split=fields.get("split", dict, None),
        label_policy=fields.get("label_policy", dict, None),
        fewshot=fields.get("fewshot", dict, {}),
        pairing=fields.get("pairing", dict, {}),
        semi_synthetic=fields.get("semi_synthetic", bool, False),
        description=fields.get("description", str, ""),
        obtain=fields.get("obtain", dict, {}),
        citation=fields.get("citation", str, ""),
        license=fields.get("license", str, ""),
        resolutions=fields.get("resolutions", dict, {}),
        data_name=fields.get("data_folder", str, ""),
        source_file=str(path),
    )
