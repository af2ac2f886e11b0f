"""The parts of a model card that are newer than its core: derived weights and named layers.

A *derived* model is one the harness fine-tunes itself (``weights: {source: derived,
parent: <model card>, dataset: <dataset card>, ...}``, see ``docs/derived-models.md``).
Its entry may omit ``architecture`` and ``preprocessing`` (inherited from the parent),
``pretraining_data``, ``paper`` and ``license`` (filled in from the parent and the source
dataset); what it gives must agree with the parent. Parents and datasets are resolved
when the whole card set is known (:func:`resolve_derived`, called by
:func:`harness.config.cards.model_card_set`): a derived card whose parent or dataset is
unknown, unusable or circular fails alone.

``layers`` names a model's intermediate layers for the layer-wise protocols: a mapping
name -> module path in the built backbone, or a list of ``[name, path]`` pairs.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.config.card_fields import CardError, Fields
from harness.config.profiles import PROFILES

if TYPE_CHECKING:
    from harness.config.model_cards import ModelCard

DERIVED = "derived"
DERIVE_PROTOCOLS = ("finetune", "dino")
DERIVED_FIELDS = frozenset({"parent", "dataset", "protocol", "profile", "preset"})
# Fields of other sources that say where a file is or how its keys map: a derived
# checkpoint is the harness's own, keyed like the parent's architecture.
NOT_FOR_DERIVED = (
    "package",
    "path",
    "url",
    "hub_id",
    "unwrap",
    "strip_prefixes",
    "drop_keys",
    "converter",
    "format",
    "load",
)
RESERVED_LAYER = "pooled"  # the model's final features (harness.protocols.layer_features)
_LAYER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_MODULE_PATH = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
_PRESET_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")


@dataclass(frozen=True)
class DerivedSpec:
    """How a derived model is made: its parent fine-tuned (or DINO-pretrained) on a source dataset.

    Attributes:
        parent: The model card fine-tuned.
        dataset: The dataset card it is fine-tuned on (the source).
        protocol: The protocol that trains it: ``finetune``, or ``dino`` (self-supervised
            pretraining on the dataset's train split, :mod:`harness.protocols.dino`).
        profile: The profile whose training settings and subset are used.
        preset: A preset of that protocol (``medxfer`` when None); a ``dino`` preset
            takes its preprocessing from the fine-tuning preset of the same name.
    """

    parent: str
    dataset: str
    protocol: str = "finetune"
    profile: str = "smoke"
    preset: str | None = None

    @property
    def made(self) -> str:
        """How the parent became this model, in words: ``fine-tuned`` or ``DINO-pretrained``."""
        return "DINO-pretrained" if self.protocol == "dino" else "fine-tuned"


def parse_derived(fields: Fields, source: str) -> DerivedSpec | None:
    """Read the derived-source fields of a ``weights`` mapping (None for other sources).

    Raises:
        CardError: On a derived field under another source, a field that does not apply
            to a derived source, or a bad value.
    """
    given = sorted(DERIVED_FIELDS & set(fields.raw))
    if source != DERIVED:
        if given:
            raise CardError(
                f"{fields.where}: field(s) {', '.join(given)} apply to source '{DERIVED}' only"
            )
        return None
    extra = [key for key in NOT_FOR_DERIVED if fields.raw.get(key) is not None]
    if extra:
        raise CardError(
            f"{fields.where}: field(s) {', '.join(extra)} do not apply to source "
            f"'{DERIVED}' (its checkpoint is the harness's own fine-tuned network)"
        )
    preset = fields.get("preset", str, None)
    if preset is not None and not _PRESET_NAME.fullmatch(preset):
        raise CardError(f"{fields.where}: field 'preset' is not a preset name: {preset!r}")
    return DerivedSpec(
        parent=fields.get("parent", str),
        dataset=fields.get("dataset", str),
        protocol=fields.get("protocol", str, "finetune", DERIVE_PROTOCOLS),
        profile=fields.get("profile", str, "smoke", tuple(PROFILES)),
        preset=None if preset == "medxfer" else preset,
    )


def parse_layers(fields: Fields) -> tuple[tuple[str, str], ...]:
    """Read a card's ``layers``: a mapping name -> module path, or ``[name, path]`` pairs.

    Raises:
        CardError: On another shape, a name used twice, the reserved name ``pooled``, or a
            name / path with other characters.
    """
    raw = fields.raw.get("layers")
    if raw is None:
        return ()
    where = f"{fields.where}.layers"
    if isinstance(raw, Mapping):
        pairs = list(raw.items())
    elif isinstance(raw, list) and all(isinstance(p, list | tuple) and len(p) == 2 for p in raw):
        pairs = [(p[0], p[1]) for p in raw]
    else:
        raise CardError(
            f"{where}: expected a mapping name -> module path or a list of [name, path] "
            f"pairs, got {raw!r}"
        )
    seen: set[str] = set()
    for name, path in pairs:
        if not isinstance(name, str) or not _LAYER_NAME.fullmatch(name) or name == RESERVED_LAYER:
            raise CardError(
                f"{where}: layer name {name!r} must be letters, digits, _ or - (starting with "
                f"a letter) and not '{RESERVED_LAYER}' (the model's final features)"
            )
        if name in seen:
            raise CardError(f"{where}: layer name {name!r} is given twice")
        if not isinstance(path, str) or not _MODULE_PATH.fullmatch(path):
            raise CardError(
                f"{where}: layer {name!r} has module path {path!r}; expected a dotted path "
                "of the built backbone such as 'blocks.3' or 'model.layer2'"
            )
        seen.add(name)
    return tuple((str(name), str(path)) for name, path in pairs)


def resolve_derived(
    cards: dict[str, ModelCard],
    problems: Mapping[str, CardError],
    dataset_problem: Callable[[str], str | None],
    hint: Callable[[str], str],
) -> dict[str, CardError]:
    """Resolve every derived card of a card set against its parent, in place.

    Inherited fields are filled in; a card whose parent is unknown, unusable or circular,
    whose dataset cannot be used, or whose architecture / preprocessing differ from the
    parent's is removed from ``cards`` and returned as a problem.

    Args:
        cards: Name -> card (derived cards are replaced by their resolved form).
        problems: The set's known problems (a parent listed there cannot be used).
        dataset_problem: Why a dataset name cannot be used (None: it can).
        hint: A "did you mean" suffix for an unknown model name.

    Returns:
        Name -> error of the derived cards that cannot be used.
    """
    resolved: dict[str, ModelCard] = {}
    failed: dict[str, CardError] = {}

    def resolve(name: str, chain: tuple[str, ...]) -> ModelCard:
        card = cards[name]
        spec = card.weights.derived
        if spec is None or name in resolved:
            return resolved.get(name, card)
        if name in failed:
            raise failed[name]
        where = f"{card.source_file}: models[{name}].weights"
        if spec.parent == name or spec.parent in chain:
            loop = " -> ".join((*chain, name, spec.parent))
            raise CardError(f"{where}.parent: circular derivation {loop}")
        if spec.parent not in cards:
            why = problems.get(spec.parent)
            if why is not None:
                raise CardError(f"{where}.parent: model {spec.parent!r} cannot be used: {why}")
            raise CardError(
                f"{where}.parent names unknown model {spec.parent!r}{hint(spec.parent)}"
            )
        try:
            parent = resolve(spec.parent, (*chain, name))
        except CardError as exc:
            if "circular derivation" in str(exc):
                raise
            raise CardError(f"{where}.parent: model {spec.parent!r} cannot be used: {exc}") from exc
        why = dataset_problem(spec.dataset)
        if why is not None:
            raise CardError(f"{where}.dataset: {why}")
        resolved[name] = _inherit(card, parent, spec, f"{card.source_file}: models[{name}]")
        return resolved[name]

    for name in sorted(cards):
        if cards[name].weights.derived is None:
            continue
        try:
            resolve(name, ())
        except CardError as exc:
            failed[name] = exc
    for name in failed:
        cards.pop(name, None)
    cards.update(resolved)
    return failed


def _inherit(card: ModelCard, parent: ModelCard, spec: DerivedSpec, where: str) -> ModelCard:
    """The card with the parent's architecture and preprocessing (checked when given)."""
    changes: dict[str, Any] = {}
    if not card.architecture:
        changes.update(library=parent.library, architecture=parent.architecture)
    elif (card.library, card.architecture) != (parent.library, parent.architecture):
        raise CardError(
            f"{where}.architecture: {card.library} {card.architecture} differs from parent "
            f"{parent.name}'s {parent.library} {parent.architecture}; a derived model has its "
            "parent's architecture (omit the field to inherit it)"
        )
    if card.preprocessing.input_size == 0:
        changes["preprocessing"] = parent.preprocessing
    elif card.preprocessing != parent.preprocessing:
        raise CardError(
            f"{where}.preprocessing: {card.preprocessing} differs from parent {parent.name}'s "
            f"{parent.preprocessing}; a derived model keeps its parent's preprocessing (omit "
            "the field to inherit it)"
        )
    library = changes.get("library", card.library)
    if card.feature_layer != "pooled" and library != "timm":
        raise CardError(f"{where}: feature_layer '{card.feature_layer}' needs a timm architecture")
    if not card.pretraining_data:
        changes["pretraining_data"] = f"{parent.pretraining_data} -> {spec.dataset} ({spec.made})"
    if not card.paper:
        changes["paper"] = f"derived in medxfer: {parent.name} {spec.made} on {spec.dataset}"
    if not card.license:
        changes["license"] = parent.license
    return dataclasses.replace(card, **changes)
