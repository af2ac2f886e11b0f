"""Model and dataset cards: typed, validated views of the YAML files in ``models/`` and ``datasets/``.

A card file is YAML. A model card file holds ``models:`` (a list of entries, one
family per file); a dataset card file holds one dataset. Every problem found while
loading raises :class:`CardError` naming the file and the field at fault.

Any timm model can be used without a card as ``timm:<name>`` (e.g.
``timm:resnet50.a1_in1k``); its preprocessing comes from timm's pretrained config
and its weights download only when the user runs online.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from harness.config.paths import PROJECT_ROOT, user_card_folders
from harness.config.vocabulary import METRICS, TASKS
from harness.zoo.converters import converter_names

MODEL_CARD_DIR = PROJECT_ROOT / "models"
DATASET_CARD_DIR = PROJECT_ROOT / "datasets"

WEIGHT_SOURCES = ("pip", "timm", "hf-hub", "url", "file", "random")
CHECKPOINT_SOURCES = ("pip", "url", "file")
ARCH_LIBRARIES = ("timm", "torchvision")
CATEGORIES = ("supervised", "self-supervised", "in-domain", "domain-adapted", "random-init")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
# Where a model's batch-norm running statistics come from (see harness/zoo/batchnorm.py):
# the checkpoint, the initialisation, or the target's training images.
BATCHNORM_RULES = {
    "random": ("target_train", "init"),
    "pretrained": ("checkpoint", "target_train"),
}
TIMM_PREFIX = "timm:"
MODEL_NAME = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_.-]+")


class CardError(ValueError):
    """A card file is missing, malformed, or names something that does not exist."""


@dataclass(frozen=True)
class Preprocessing:
    """How images are fed to a model: the model's own pretrained config."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 0.875

    def with_input_size(self, size: int | None) -> Preprocessing:
        """Return a copy with another input size (profiles scale image size)."""
        if size is None or size == self.input_size:
            return self
        return Preprocessing(size, self.mean, self.std, self.interpolation, self.crop_pct)


@dataclass(frozen=True)
class WeightsSpec:
    """Where a model's weights come from and how their keys map onto the architecture."""

    source: str
    package: str | None = None
    path: str | None = None
    url: str | None = None
    sha256: str | None = None
    hub_id: str | None = None
    seed: int = 0
    load: str = "by_name"
    unwrap: tuple[str, ...] = ()
    strip_prefixes: tuple[str, ...] = ()
    drop_keys: tuple[str, ...] = ()
    converter: str | None = None
    batchnorm_stats: str = ""

    def __post_init__(self) -> None:
        if not self.batchnorm_stats:  # the first rule of the source's kind is its default
            kind = "random" if self.source == "random" else "pretrained"
            object.__setattr__(self, "batchnorm_stats", BATCHNORM_RULES[kind][0])


@dataclass(frozen=True)
class ModelCard:
    """One pretrained model: ``arch.tag`` name, architecture, weights, preprocessing, provenance."""

    name: str
    library: str
    architecture: str
    weights: WeightsSpec
    preprocessing: Preprocessing
    category: str
    pretraining_data: str
    paper: str = ""
    license: str = ""
    random_twin_of: str | None = None
    source_file: str = ""

    @property
    def is_random_init(self) -> bool:
        """True for a random-initialisation baseline."""
        return self.weights.source == "random"

    def fingerprint(self) -> dict[str, Any]:
        """Return the fields that decide what the model computes (used in cache keys)."""
        payload = asdict(self)
        payload.pop("source_file")
        payload.pop("paper")
        payload.pop("license")
        return payload


@dataclass(frozen=True)
class DatasetCard:
    """One target dataset: classes, reader, label policy, split rule, metric, provenance."""

    name: str
    version: int
    modality: str
    task: str
    classes: tuple[str, ...]
    reader: dict[str, Any]
    primary_metric: str
    metrics: tuple[str, ...]
    builder: dict[str, Any] | None = None
    split: dict[str, Any] = field(default_factory=dict)
    label_policy: dict[str, Any] = field(default_factory=dict)
    fewshot: dict[str, Any] = field(default_factory=dict)
    pairing: dict[str, Any] = field(default_factory=dict)
    semi_synthetic: bool = False
    description: str = ""
    obtain: dict[str, Any] = field(default_factory=dict)
    citation: str = ""
    license: str = ""
    source_file: str = ""

    @property
    def num_classes(self) -> int:
        """Number of classes (outputs of a classifier head)."""
        return len(self.classes)

    def fingerprint(self) -> dict[str, Any]:
        """Return the fields that decide the dataset's content (used in cache keys)."""
        return {
            "name": self.name,
            "version": self.version,
            "reader": self.reader,
            "builder": self.builder,
            "label_policy": self.label_policy,
            "split": self.split,
        }


def stable_hash(payload: Any, length: int = 16) -> str:
    """Return a short sha256 of a JSON-serialisable payload (key order independent)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


# --------------------------------------------------------------------------- loading


def _read_yaml(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except FileNotFoundError as exc:
        raise CardError(f"{path}: card file not found") from exc
    except yaml.YAMLError as exc:
        raise CardError(f"{path}: not valid YAML: {exc}") from exc


class _Fields:
    """Reads typed fields from one mapping and names file + field in every error."""

    def __init__(self, raw: Any, where: str) -> None:
        if not isinstance(raw, dict):
            raise CardError(f"{where}: expected a mapping, got {type(raw).__name__}")
        self.raw = raw
        self.where = where

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., choices: Any = None):
        if key not in self.raw or self.raw[key] is None:
            if default is ...:
                raise CardError(f"{self.where}: missing required field '{key}'")
            return default
        value = self.raw[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            expected = (
                kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            )
            raise CardError(
                f"{self.where}: field '{key}' must be {expected}, got {type(value).__name__} "
                f"({value!r})"
            )
        if choices is not None and value not in choices:
            raise CardError(
                f"{self.where}: field '{key}' is {value!r}; expected one of {', '.join(choices)}"
            )
        return value

    def sub(self, key: str, default: Any = ...) -> _Fields:
        return _Fields(self.get(key, dict, default), f"{self.where}.{key}")

    def unknown(self, allowed: set[str]) -> None:
        extra = sorted(set(self.raw) - allowed)
        if extra:
            raise CardError(f"{self.where}: unknown field(s) {', '.join(extra)}")


def _triple(fields: _Fields, key: str) -> tuple[float, float, float]:
    value = fields.get(key, list)
    if len(value) != 3 or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise CardError(f"{fields.where}: field '{key}' must be a list of 3 numbers, got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


def _parse_preprocessing(fields: _Fields) -> Preprocessing:
    fields.unknown({"input_size", "mean", "std", "interpolation", "crop_pct"})
    size = fields.get("input_size", int)
    if size < 16:
        raise CardError(f"{fields.where}: field 'input_size' must be >= 16, got {size}")
    crop_pct = fields.get("crop_pct", float, 0.875)
    if not 0.1 <= crop_pct <= 1.0:
        raise CardError(f"{fields.where}: field 'crop_pct' must be in [0.1, 1], got {crop_pct}")
    return Preprocessing(
        input_size=size,
        mean=_triple(fields, "mean"),
        std=_triple(fields, "std"),
        interpolation=fields.get("interpolation", str, "bicubic", INTERPOLATIONS),
        crop_pct=crop_pct,
    )


def _str_tuple(fields: _Fields, key: str) -> tuple[str, ...]:
    value = fields.get(key, list, [])
    if not all(isinstance(v, str) for v in value):
        raise CardError(f"{fields.where}: field '{key}' must be a list of strings")
    return tuple(value)


def _parse_weights(fields: _Fields) -> WeightsSpec:
    fields.unknown(
        {"source", "package", "path", "url", "sha256", "hub_id", "seed", "load", "unwrap"}
        | {"strip_prefixes", "drop_keys", "converter", "batchnorm_stats"}
    )
    source = fields.get("source", str, choices=WEIGHT_SOURCES)
    bn_rules = BATCHNORM_RULES["random" if source == "random" else "pretrained"]
    spec = WeightsSpec(
        source=source,
        package=fields.get("package", str, None),
        path=fields.get("path", str, None),
        url=fields.get("url", str, None),
        sha256=fields.get("sha256", str, None),
        hub_id=fields.get("hub_id", str, None),
        seed=fields.get("seed", int, 0),
        load=fields.get("load", str, "by_name", ("by_name", "positional")),
        unwrap=_str_tuple(fields, "unwrap"),
        strip_prefixes=_str_tuple(fields, "strip_prefixes"),
        drop_keys=_str_tuple(fields, "drop_keys"),
        converter=fields.get("converter", str, None),
        batchnorm_stats=fields.get("batchnorm_stats", str, bn_rules[0], bn_rules),
    )
    required = {"pip": ("package", "path"), "url": ("url", "sha256"), "file": ("path",)}
    for key in required.get(source, ()):
        if getattr(spec, key) is None:
            raise CardError(f"{fields.where}: source '{source}' needs field '{key}'")
    if spec.converter is not None:
        if spec.converter not in converter_names():
            raise CardError(
                f"{fields.where}.converter: unknown converter {spec.converter!r} "
                f"(known: {', '.join(converter_names())})"
            )
        if source not in CHECKPOINT_SOURCES:
            raise CardError(
                f"{fields.where}.converter: a converter applies to checkpoint files "
                f"(source {', '.join(CHECKPOINT_SOURCES)}), not to source '{source}'"
            )
    if spec.sha256 is not None and (
        len(spec.sha256) != 64 or not all(c in "0123456789abcdef" for c in spec.sha256)
    ):
        raise CardError(
            f"{fields.where}: field 'sha256' must be 64 lowercase hex digits, got {spec.sha256!r}"
        )
    return spec


def _parse_model(fields: _Fields) -> ModelCard:
    fields.unknown(
        {"name", "architecture", "weights", "preprocessing", "category", "pretraining_data"}
        | {"paper", "license", "random_twin_of"}
    )
    name = fields.get("name", str)
    if not MODEL_NAME.fullmatch(name):
        raise CardError(
            f"{fields.where}: model name {name!r} must be 'arch.tag' (letters, digits, _ - . only)"
        )
    arch = fields.sub("architecture")
    arch.unknown({"library", "name"})
    return ModelCard(
        name=name,
        library=arch.get("library", str, choices=ARCH_LIBRARIES),
        architecture=arch.get("name", str),
        weights=_parse_weights(fields.sub("weights")),
        preprocessing=_parse_preprocessing(fields.sub("preprocessing")),
        category=fields.get("category", str, choices=CATEGORIES),
        pretraining_data=fields.get("pretraining_data", str),
        paper=fields.get("paper", str, ""),
        license=fields.get("license", str, ""),
        random_twin_of=fields.get("random_twin_of", str, None),
    )


def load_model_card_file(path: Path) -> list[ModelCard]:
    """Load and validate every model entry of one model card file.

    Args:
        path: a YAML file with a top-level ``models:`` list.

    Returns:
        The validated cards, in file order.

    Raises:
        CardError: naming the file, entry and field at fault.
    """
    top = _Fields(_read_yaml(path), str(path))
    top.unknown({"models"})
    entries = top.get("models", list)
    cards = []
    for index, raw in enumerate(entries):
        label = raw.get("name", index) if isinstance(raw, dict) else index
        card = _parse_model(_Fields(raw, f"{path}: models[{label}]"))
        cards.append(_replace_source(card, str(path)))
    return cards


def _replace_source(card: ModelCard, source_file: str) -> ModelCard:
    return ModelCard(**{**card.__dict__, "source_file": source_file})


def load_dataset_card_file(path: Path) -> DatasetCard:
    """Load and validate one dataset card file.

    Args:
        path: a YAML dataset card.

    Returns:
        The validated card.

    Raises:
        CardError: naming the file and field at fault.
    """
    fields = _Fields(_read_yaml(path), str(path))
    fields.unknown(
        {"name", "version", "modality", "task", "classes", "reader", "builder", "split"}
        | {"label_policy", "primary_metric", "metrics", "fewshot", "pairing", "semi_synthetic"}
        | {"description", "obtain", "citation", "license"}
    )
    task = fields.get("task", str, choices=TASKS)
    classes = _str_tuple(fields, "classes")
    if len(classes) < 2:
        raise CardError(f"{path}: field 'classes' must list at least 2 classes")
    primary = fields.get("primary_metric", str, choices=METRICS)
    metrics = _str_tuple(fields, "metrics") or (primary,)
    for metric in metrics:
        if metric not in METRICS:
            raise CardError(f"{path}: field 'metrics' has unknown metric {metric!r}")
    if primary not in metrics:
        metrics = (primary, *metrics)
    reader = fields.sub("reader")
    reader.get("format", str)
    version = fields.get("version", int)
    builder = fields.get("builder", dict, None)
    if builder is not None:
        _Fields(builder, f"{path}.builder").get("name", str)
    return DatasetCard(
        name=fields.get("name", str),
        version=version,
        modality=fields.get("modality", str),
        task=task,
        classes=classes,
        reader=reader.raw,
        primary_metric=primary,
        metrics=metrics,
        builder=builder,
        split=fields.get("split", dict, {}),
        label_policy=fields.get("label_policy", dict, {}),
        fewshot=fields.get("fewshot", dict, {}),
        pairing=fields.get("pairing", dict, {}),
        semi_synthetic=fields.get("semi_synthetic", bool, False),
        description=fields.get("description", str, ""),
        obtain=fields.get("obtain", dict, {}),
        citation=fields.get("citation", str, ""),
        license=fields.get("license", str, ""),
        source_file=str(path),
    )


def model_cards(directory: Path | None = None) -> dict[str, ModelCard]:
    """Return every model card in ``directory`` (default ``models/``) by name.

    Duplicate names are an error. Results are cached per folder.
    """
    return _model_cards(Path(directory or MODEL_CARD_DIR))


@cache
def _model_cards(directory: Path) -> dict[str, ModelCard]:
    cards: dict[str, ModelCard] = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        for card in load_model_card_file(path):
            if card.name in cards:
                raise CardError(
                    f"{path}: model {card.name!r} is already defined in {cards[card.name].source_file}"
                )
            cards[card.name] = card
    return cards


def dataset_cards(directory: Path | None = None) -> dict[str, DatasetCard]:
    """Return every dataset card in ``directory`` (default ``datasets/``) by name.

    Duplicate names are an error. Results are cached per folder.
    """
    return _dataset_cards(Path(directory or DATASET_CARD_DIR))


@cache
def _dataset_cards(directory: Path) -> dict[str, DatasetCard]:
    cards: dict[str, DatasetCard] = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        card = load_dataset_card_file(path)
        if card.name in cards:
            raise CardError(
                f"{path}: dataset {card.name!r} is already defined in {cards[card.name].source_file}"
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
    """Return the dataset card for ``name``.

    Raises:
        CardError: when no card has that name.
    """
    cards = all_dataset_cards()  # read at call time, so the folders can be redirected
    if name not in cards:
        where = ", ".join(str(d) for d in _card_dirs(DATASET_CARD_DIR, "datasets"))
        raise CardError(
            f"unknown dataset {name!r}: no card in {where} has that name "
            f"(known: {', '.join(sorted(cards))})"
        )
    return cards[name]


def timm_model_card(timm_name: str) -> ModelCard:
    """Build a model card for any timm model from timm's own pretrained config.

    Args:
        timm_name: ``architecture`` or ``architecture.tag`` as timm names it.

    Raises:
        CardError: when timm does not know the name.
    """
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(timm_name, allow_unregistered=False)
    except Exception as exc:
        raise CardError(f"timm does not know model {timm_name!r}: {exc}") from exc
    if cfg is None:
        raise CardError(f"timm has no pretrained config for {timm_name!r}")
    arch, _, tag = timm_name.partition(".")
    tag = tag or cfg.tag or "default"
    interpolation = cfg.interpolation if cfg.interpolation in INTERPOLATIONS else "bicubic"
    return ModelCard(
        name=f"{arch}.{tag}",
        library="timm",
        architecture=arch,
        weights=WeightsSpec(source="timm", hub_id=f"{arch}.{tag}"),
        preprocessing=Preprocessing(
            input_size=int(cfg.input_size[-1]),
            mean=tuple(float(v) for v in cfg.mean),  # type: ignore[arg-type]
            std=tuple(float(v) for v in cfg.std),  # type: ignore[arg-type]
            interpolation=interpolation,
            crop_pct=float(cfg.crop_pct or 0.875),
        ),
        category="supervised",
        pretraining_data=str(tag),
        paper=str(cfg.paper_ids or ""),
        license=str(cfg.license or ""),
        source_file=f"timm pretrained_cfg {timm_name}",
    )
