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
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from harness.cache.keys import stable_hash
from harness.config.card_fields import CardError, Fields, read_yaml
from harness.config.dataset_cards import DatasetCard, load_dataset_card_file
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
    load_model_card_file,
    timm_model_card,
)
from harness.config.paths import PROJECT_ROOT, user_card_folders

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
    "DatasetCard",
    "Fields",
    "ModelCard",
    "Preprocessing",
    "WeightsSpec",
    "all_dataset_cards",
    "all_model_cards",
    "dataset_cards",
    "get_dataset_card",
    "get_model_card",
    "load_dataset_card_file",
    "load_model_card_file",
    "model_cards",
    "read_yaml",
    "stable_hash",
    "timm_model_card",
]


def model_cards(directory: Path | None = None) -> dict[str, ModelCard]:
    """Return every model card in ``directory`` (default ``models/``) by name.

    Duplicate names are an error. Results are cached per folder.
    """
    return _model_cards(Path(directory or MODEL_CARD_DIR))


@cache
def _model_cards(directory: Path) -> dict[str, ModelCard]:
    return _cards_in(directory, "model", load_model_card_file)


def dataset_cards(directory: Path | None = None) -> dict[str, DatasetCard]:
    """Return every dataset card in ``directory`` (default ``datasets/``) by name.

    Duplicate names are an error. Results are cached per folder.
    """
    return _dataset_cards(Path(directory or DATASET_CARD_DIR))


@cache
def _dataset_cards(directory: Path) -> dict[str, DatasetCard]:
    return _cards_in(directory, "dataset", lambda path: [load_dataset_card_file(path)])


def _cards_in(
    directory: Path, kind: str, load_file: Callable[[Path], list[CardT]]
) -> dict[str, CardT]:
    """Every card of the ``*.yaml`` files in a folder by name; a name defined twice is an error."""
    cards: dict[str, CardT] = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        for card in load_file(path):
            if card.name in cards:
                raise CardError(
                    f"{path}: {kind} {card.name!r} is already defined in "
                    f"{cards[card.name].source_file}"
                )
            cards[card.name] = card
    return cards


def _card_dirs(builtin: Path, kind: str) -> list[Path]:
    """The built-in folder of a card kind, then the user's ``<folder>/<kind>`` folders."""
    return [builtin, *(folder / kind for folder in user_card_folders())]


def all_model_cards() -> dict[str, ModelCard]:
    """Every model card: ``models/`` and the user's card folders (``$MEDXFER_CARDS``).

    Raises:
        CardError: When two folders define one name, or a twin names an unknown model.
    """
    cards: dict[str, ModelCard] = {}
    for directory in _card_dirs(MODEL_CARD_DIR, "models"):
        if directory.is_dir():
            _merge(cards, model_cards(directory), "model")
    for card in cards.values():
        if card.random_twin_of and card.random_twin_of not in cards:
            raise CardError(
                f"{card.source_file}: models[{card.name}].random_twin_of names unknown model "
                f"{card.random_twin_of!r}"
            )
    return cards


def all_dataset_cards() -> dict[str, DatasetCard]:
    """Every dataset card: ``datasets/`` and the user's card folders (``$MEDXFER_CARDS``).

    Raises:
        CardError: When two folders define one name.
    """
    cards: dict[str, DatasetCard] = {}
    for directory in _card_dirs(DATASET_CARD_DIR, "datasets"):
        if directory.is_dir():
            _merge(cards, dataset_cards(directory), "dataset")
    return cards


def _merge(into: dict[str, Any], found: dict[str, Any], kind: str) -> None:
    for name, card in found.items():
        if name in into:
            raise CardError(
                f"{card.source_file}: {kind} {name!r} is already defined in "
                f"{into[name].source_file} (a card folder cannot redefine a card)"
            )
        into[name] = card


def get_model_card(name: str) -> ModelCard:
    """Return the card for ``name``; ``timm:<name>`` builds a card from timm's pretrained config.

    Raises:
        CardError: when no card has that name.
    """
    if name.startswith(TIMM_PREFIX):
        return timm_model_card(name[len(TIMM_PREFIX) :])
    cards = all_model_cards()  # read at call time, so the folders can be redirected
    if name not in cards:
        where = ", ".join(str(d) for d in _card_dirs(MODEL_CARD_DIR, "models"))
        raise CardError(
            f"unknown model {name!r}: no card in {where} has that name "
            f"(known: {', '.join(sorted(cards))}); any timm model works as 'timm:<name>'"
        )
    return cards[name]


def get_dataset_card(name: str) -> DatasetCard:
    """Return the dataset card for ``name``; ``<name>_<size>`` is a card's release at that size.

    Raises:
        CardError: when no card has that name.
    """
    cards = all_dataset_cards()  # read at call time, so the folders can be redirected
    base, _, size = name.rpartition("_")
    if name not in cards and base in cards and size.isdigit() and cards[base].resolutions:
        return cards[base].at_resolution(int(size))
    if name not in cards:
        where = ", ".join(str(d) for d in _card_dirs(DATASET_CARD_DIR, "datasets"))
        raise CardError(
            f"unknown dataset {name!r}: no card in {where} has that name "
            f"(known: {', '.join(sorted(cards))})"
        )
    return cards[name]
