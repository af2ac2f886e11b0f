"""Cards: the model and dataset cards, found by name in ``models/``, ``datasets/`` and the user's folders.

A card file is YAML. A model card file holds ``models:`` (a list of entries, one
family per file; :mod:`harness.config.model_cards`); a dataset card file holds one
dataset (:mod:`harness.config.dataset_cards`). Every problem found while loading
raises :class:`CardError` naming the file and the field at fault. This module finds
cards by name; the names other modules import from here are re-exported.

Any timm model can be used without a card as ``timm:<name>`` (e.g.
``timm:resnet50.a1_in1k``); its preprocessing comes from timm's pretrained config
and its weights download only when the user runs online.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Generic, TypeVar

from harness.cache.keys import stable_hash
from harness.config.card_fields import CardError, Fields, read_yaml
from harness.config.dataset_cards import DatasetCard, load_dataset_card_file
from harness.config.derived_cards import resolve_derived
from harness.config.model_cards import (
    ARCH_LIBRARIES,
    BATCHNORM_RULES,
    CATEGORIES,
    CHECKPOINT_SOURCES,
    FEATURE_LAYERS,
    INTERPOLATIONS,
    MODEL_NAME,
    TIMM_PREFIX,
    UNPUBLISHED,
    WEIGHT_SOURCES,
    ModelCard,
    Preprocessing,
    WeightsSpec,
    load_model_card_entries,
    load_model_card_file,
)
from harness.config.names import did_you_mean
from harness.config.paths import PROJECT_ROOT, user_card_folders
from harness.config.timm_cards import timm_model_card

CardT = TypeVar("CardT", ModelCard, DatasetCard)

MODEL_CARD_DIR = PROJECT_ROOT / "models"
DATASET_CARD_DIR = PROJECT_ROOT / "datasets"

__all__ = [
    "ARCH_LIBRARIES",
    "BATCHNORM_RULES",
    "CATEGORIES",
    "CHECKPOINT_SOURCES",
    "DATASET_CARD_DIR",
    "FEATURE_LAYERS",
    "INTERPOLATIONS",
    "MODEL_CARD_DIR",
    "MODEL_NAME",
    "TIMM_PREFIX",
    "UNPUBLISHED",
    "WEIGHT_SOURCES",
    "CardError",
    "CardSet",
    "DatasetCard",
    "Fields",
    "ModelCard",
    "Preprocessing",
    "WeightsSpec",
    "all_dataset_cards",
    "all_model_cards",
    "dataset_card_set",
    "dataset_cards",
    "get_dataset_card",
    "get_model_card",
    "load_dataset_card_file",
    "load_model_card_file",
    "model_card_set",
    "model_cards",
    "read_yaml",
    "stable_hash",
    "timm_model_card",
]


@dataclass(frozen=True)
class CardSet(Generic[CardT]):
    """The cards of some folders, and what is wrong with the malformed ones.

    Attributes:
        cards: Valid cards by name.
        problems: Name -> error of every card that cannot be used (a malformed file or
            entry, a name defined twice, a twin of an unknown model). A file that cannot
            be read at all is listed under its stem and the name it gives.
    """

    cards: dict[str, CardT] = field(default_factory=dict)
    problems: dict[str, CardError] = field(default_factory=dict)
    duplicates: set[str] = field(default_factory=set)

    def strict(self) -> dict[str, CardT]:
        """The cards, or the first problem raised."""
        if self.problems:
            raise next(iter(self.problems.values()))
        return self.cards


def model_cards(directory: Path | None = None) -> dict[str, ModelCard]:
    """Return every model card in ``directory`` (default ``models/``) by name.

    Duplicate names are an error. Results are cached per folder. Derived cards are
    resolved against their parents in this folder and the card search path.

    Raises:
        CardError: On the first malformed card or duplicate name.
    """
    cards = dict(_model_cards(Path(directory or MODEL_CARD_DIR)).strict())
    if any(card.weights.derived is not None for card in cards.values()):
        known = model_card_set()
        pool = {**known.cards, **cards}
        failed = resolve_derived(pool, known.problems, dataset_problem, _model_hint(pool))
        problems = [failed[name] for name in cards if name in failed]
        if problems:
            raise problems[0]
        cards = {name: pool[name] for name in cards}
    return cards


@cache
def _model_cards(directory: Path) -> CardSet[ModelCard]:
    return _cards_in(directory, "model", load_model_card_entries)


def dataset_cards(directory: Path | None = None) -> dict[str, DatasetCard]:
    """Return every dataset card in ``directory`` (default ``datasets/``) by name.

    Duplicate names are an error. Results are cached per folder.

    Raises:
        CardError: On the first malformed card or duplicate name.
    """
    return _dataset_cards(Path(directory or DATASET_CARD_DIR)).strict()


@cache
def _dataset_cards(directory: Path) -> CardSet[DatasetCard]:
    return _cards_in(directory, "dataset", _dataset_card_entries)


def _dataset_card_entries(path: Path) -> tuple[list[DatasetCard], dict[str, CardError]]:
    try:
        return [load_dataset_card_file(path)], {}
    except CardError as exc:
        try:
            raw = read_yaml(path)
        except CardError:
            raw = None
        given = raw.get("name") if isinstance(raw, dict) else None
        names = [path.stem, *([given] if isinstance(given, str) else [])]
        return [], dict.fromkeys(names, exc)


def _cards_in(
    directory: Path,
    kind: str,
    load_file: Callable[[Path], tuple[list[CardT], dict[str, CardError]]],
) -> CardSet[CardT]:
    """Every card of the ``*.yaml`` files in a folder; malformed ones and names defined
    twice become problems of their names, never errors of the whole folder."""
    found: CardSet[CardT] = CardSet()
    for path in sorted(Path(directory).glob("*.yaml")):
        cards, problems = load_file(path)
        for name, problem in problems.items():
            found.problems.setdefault(name, problem)
        for card in cards:
            _add(found, card, kind)
    return found


def _add(into: CardSet[Any], card: Any, kind: str, note: str = "") -> None:
    """Add a valid card; a name defined twice becomes a problem (neither card is used)."""
    known = into.cards.pop(card.name, None)
    if known is None and card.name not in into.duplicates:
        into.cards[card.name] = card
        return
    if known is not None:
        into.duplicates.add(card.name)
        into.problems[card.name] = CardError(
            f"{card.source_file}: {kind} {card.name!r} is already defined in "
            f"{known.source_file}{note}"
        )


def _card_dirs(builtin: Path, kind: str) -> list[Path]:
    """The built-in folder of a card kind, then the user's ``<folder>/<kind>`` folders."""
    return [builtin, *(folder / kind for folder in user_card_folders())]


def all_model_cards() -> dict[str, ModelCard]:
    """Every model card: ``models/`` and the user's card folders (``$MEDXFER_CARDS``).

    Raises:
        CardError: On a malformed card, a name two folders define, or a twin of an
            unknown model (:func:`model_card_set` keeps them apart instead).
    """
    return model_card_set().strict()


def model_card_set() -> CardSet[ModelCard]:
    """Every model card and every problem: one malformed card does not hide the others."""
    found: CardSet[ModelCard] = CardSet()
    for directory in _card_dirs(MODEL_CARD_DIR, "models"):
        if directory.is_dir():
            _merge(found, _model_cards(directory), "model")
    for card in list(found.cards.values()):
        if card.random_twin_of and card.random_twin_of not in found.cards:
            hint = did_you_mean(card.random_twin_of, found.cards)
            found.problems[card.name] = CardError(
                f"{card.source_file}: models[{card.name}].random_twin_of names unknown model "
                f"{card.random_twin_of!r}{hint}"
            )
            del found.cards[card.name]
    found.problems.update(
        resolve_derived(found.cards, found.problems, dataset_problem, _model_hint(found.cards))
    )
    return found


def _model_hint(cards: dict[str, ModelCard]) -> Callable[[str], str]:
    return lambda name: did_you_mean(name, cards)


def forget_cards() -> None:
    """Drop the per-folder card caches (a card file was written in this process)."""
    _model_cards.cache_clear()
    _dataset_cards.cache_clear()


def dataset_problem(name: str) -> str | None:
    """Why a derived card's source dataset ``name`` cannot be used (None: it can)."""
    try:
        get_dataset_card(name)
    except CardError as exc:
        return str(exc)
    return None


def all_dataset_cards() -> dict[str, DatasetCard]:
    """Every dataset card: ``datasets/`` and the user's card folders (``$MEDXFER_CARDS``).

    Raises:
        CardError: On a malformed card or a name two folders define.
    """
    return dataset_card_set().strict()


def dataset_card_set() -> CardSet[DatasetCard]:
    """Every dataset card and every problem: one malformed card does not hide the others."""
    found: CardSet[DatasetCard] = CardSet()
    for directory in _card_dirs(DATASET_CARD_DIR, "datasets"):
        if directory.is_dir():
            _merge(found, _dataset_cards(directory), "dataset")
    return found


def _merge(into: CardSet[Any], folder: CardSet[Any], kind: str) -> None:
    for name, problem in folder.problems.items():
        into.problems.setdefault(name, problem)
    into.duplicates.update(folder.duplicates)
    for card in folder.cards.values():
        _add(into, card, kind, " (a card folder cannot redefine a card)")


def get_model_card(name: str) -> ModelCard:
    """Return the card for ``name``; ``timm:<name>`` builds a card from timm's pretrained config.

    Raises:
        CardError: When no card has that name (with the closest names), or the card of
            that name is malformed (naming its file and what is wrong).
    """
    if name.startswith(TIMM_PREFIX):
        return timm_model_card(name[len(TIMM_PREFIX) :])
    found = model_card_set()  # read at call time, so the folders can be redirected
    if name not in found.cards and name in found.problems:
        raise found.problems[name]
    if name not in found.cards:
        where = ", ".join(str(d) for d in _card_dirs(MODEL_CARD_DIR, "models"))
        raise CardError(
            f"unknown model {name!r}{did_you_mean(name, found.cards)}: no card in {where} "
            f"has that name (known: {', '.join(sorted(found.cards))}); any timm model works "
            "as 'timm:<name>'"
        )
    return found.cards[name]


def get_dataset_card(name: str) -> DatasetCard:
    """Return the dataset card for ``name``; ``<name>_<size>`` is a card's release at that size.

    Raises:
        CardError: When no card has that name (with the closest names), or the card of
            that name is malformed (naming its file and what is wrong).
    """
    found = dataset_card_set()  # read at call time, so the folders can be redirected
    cards = found.cards
    base, _, size = name.rpartition("_")
    if name not in cards and name in found.problems:
        raise found.problems[name]
    if name not in cards and base in cards and size.isdigit() and cards[base].resolutions:
        return cards[base].at_resolution(int(size))
    if name not in cards and base in found.problems and size.isdigit():
        raise found.problems[base]
    if name not in cards:
        where = ", ".join(str(d) for d in _card_dirs(DATASET_CARD_DIR, "datasets"))
        raise CardError(
            f"unknown dataset {name!r}{did_you_mean(name, cards)}: no card in {where} has "
            f"that name (known: {', '.join(sorted(cards))})"
        )
    return cards[name]
