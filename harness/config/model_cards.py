"""Model cards: the typed, validated entries of the YAML files in ``models/``.

A model card file holds ``models:``, a list of entries (one family per file). Any timm
model can be used without a card as ``timm:<name>`` (e.g. ``timm:resnet50.a1_in1k``);
its preprocessing comes from timm's pretrained config and its weights download only
when the user runs online.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.config.card_fields import CardError, Fields, read_yaml
from harness.config.derived_cards import (
    DERIVED,
    DERIVED_FIELDS,
    DerivedSpec,
    parse_derived,
    parse_layers,
)
from harness.config.names import unsafe_name_problem
from harness.zoo.converters import converter_names

WEIGHT_SOURCES = ("pip", "timm", "hf-hub", "url", "file", "random", DERIVED)
CHECKPOINT_SOURCES = ("pip", "url", "file")
# How a checkpoint file is read: ``native`` formats (PyTorch, safetensors, Keras .h5)
# load directly; the others only a pickle or TensorFlow can read, so the user runs
# ``medxfer convert`` once (harness/zoo/convert.py) and the harness loads its output.
NATIVE_FORMAT = "native"
CONVERTED_FORMATS = ("haiku_pickle", "tf_checkpoint")
WEIGHT_FORMATS = (NATIVE_FORMAT, *CONVERTED_FORMATS)
ARCH_LIBRARIES = ("timm", "torchvision")
CATEGORIES = ("supervised", "self-supervised", "in-domain", "domain-adapted", "random-init")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
# Which features a model gives (harness/zoo/build.py acts on it): the architecture's
# pooled penultimate vector (CNNs: global average of the last stage), a ViT's class
# token, the mean of its patch tokens, or the image embedding of a CLIP-style head.
FEATURE_LAYERS = ("pooled", "cls_token", "mean_tokens", "image_embedding")
DEFAULT_FEATURE_LAYER = FEATURE_LAYERS[0]
# A card's sha256 where the publisher states none: the file used is still hashed and
# its sha256 enters the weights identity and the records.
UNPUBLISHED = "unpublished"
# Where a model's batch-norm running statistics come from (see harness/zoo/batchnorm.py):
# the checkpoint, the initialisation, or the target's training images.
BATCHNORM_RULES = {
    "random": ("target_train", "init"),
    "pretrained": ("checkpoint", "target_train"),
}
TIMM_PREFIX = "timm:"
# How an image's channels reach the model (Preprocessing.channels).
CHANNEL_RULES = ("rgb", "grey-first")
MODEL_NAME = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Preprocessing:
    """How images are fed to a model: the model's own pretrained config.

    ``channels`` is ``rgb`` (three channels, grey replicated) or ``grey-first``: the grey
    image in the first channel and nothing in the other two, which is what a network sees
    whose first layer was cut to one input channel keeping the first (red) channel's
    pretrained weights (feature-reuse's single-channel targets,
    :mod:`harness.protocols.peer_normalisation`).
    """

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    histogram_normalize: bool = False
    crop_mode: str = "center"
    channels: str = "rgb"

    def with_input_size(self, size: int | None) -> Preprocessing:
        """Return a copy with another input size (profiles scale image size)."""
        if size is None or size == self.input_size:
            return self
        return dataclasses.replace(self, input_size=size)

    def key_payload(self) -> dict[str, Any]:
        """The fields as a dict for cache keys; ``histogram_normalize``, ``crop_mode`` and
        ``channels`` only when not their defaults, so the keys of cards written before them
        do not change."""
        payload = asdict(self)
        if not self.histogram_normalize:
            payload.pop("histogram_normalize")
        if self.crop_mode == "center":
            payload.pop("crop_mode")
        if self.channels == "rgb":
            payload.pop("channels")
        return payload


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
    instructions: str = ""
    format: str = NATIVE_FORMAT
    derived: DerivedSpec | None = None

    def __post_init__(self) -> None:
        if not self.batchnorm_stats:  # the first rule of the source's kind is its default
            kind = "random" if self.source == "random" else "pretrained"
            object.__setattr__(self, "batchnorm_stats", BATCHNORM_RULES[kind][0])

    @property
    def needs_conversion(self) -> bool:
        """True when the file must go through ``medxfer convert`` before it can be loaded."""
        return self.format in CONVERTED_FORMATS

    @property
    def expected_sha256(self) -> str | None:
        """The publisher's sha256 of the file, or None where none is published."""
        return None if self.sha256 in (None, UNPUBLISHED) else self.sha256


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
    feature_layer: str = DEFAULT_FEATURE_LAYER
    layers: tuple[tuple[str, str], ...] = ()

    @property
    def is_random_init(self) -> bool:
        """True for a random-initialisation baseline."""
        return self.weights.source == "random"

    @property
    def derived_from(self) -> dict[str, Any] | None:
        """How a derived model is made (parent, source dataset, protocol, profile, preset,
        seed, pinned sha256), as records carry it; None for other models."""
        spec = self.weights.derived
        if spec is None:
            return None
        return {
            **asdict(spec),
            "preset": spec.preset or "medxfer",
            "seed": self.weights.seed,
            "sha256": self.weights.sha256,
        }

    def fingerprint(self) -> dict[str, Any]:
        """Return the fields that decide what the model computes (used in cache keys)."""
        payload = asdict(self)
        payload.pop("source_file")
        payload.pop("paper")
        payload.pop("license")
        payload["weights"].pop("instructions")
        if payload["weights"]["format"] == NATIVE_FORMAT:
            payload["weights"].pop("format")
        payload["preprocessing"] = self.preprocessing.key_payload()
        # fields added later enter the payload only when set, so older cards keep their keys
        if payload["feature_layer"] == DEFAULT_FEATURE_LAYER:
            payload.pop("feature_layer")
        if not payload["layers"]:
            payload.pop("layers")
        else:
            payload["layers"] = [list(pair) for pair in self.layers]
        if payload["weights"]["derived"] is None:
            payload["weights"].pop("derived")
        return payload


# Stands in for a derived card's omitted preprocessing until the parent's is filled in.
INHERITED_PREPROCESSING = Preprocessing(0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def _triple(fields: Fields, key: str) -> tuple[float, float, float]:
    value = fields.get(key, list)
    if len(value) != 3 or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise CardError(f"{fields.where}: field '{key}' must be a list of 3 numbers, got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


def _parse_preprocessing(fields: Fields) -> Preprocessing:
    fields.unknown(
        {"input_size", "mean", "std", "interpolation", "crop_pct", "histogram_normalize"}
    )
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
        histogram_normalize=fields.get("histogram_normalize", bool, False),
    )


def _parse_weights(fields: Fields) -> WeightsSpec:
    fields.unknown(
        {"source", "package", "path", "url", "sha256", "hub_id", "seed", "load", "unwrap"}
        | {"strip_prefixes", "drop_keys", "converter", "batchnorm_stats", "instructions"}
        | {"format"}
        | DERIVED_FIELDS
    )
    source = fields.get("source", str, choices=WEIGHT_SOURCES)
    derived = parse_derived(fields, source)
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
        unwrap=fields.str_tuple("unwrap"),
        strip_prefixes=fields.str_tuple("strip_prefixes"),
        drop_keys=fields.str_tuple("drop_keys"),
        converter=fields.get("converter", str, None),
        batchnorm_stats=fields.get("batchnorm_stats", str, bn_rules[0], bn_rules),
        instructions=fields.get("instructions", str, ""),
        format=fields.get("format", str, NATIVE_FORMAT, WEIGHT_FORMATS),
        derived=derived,
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
    if spec.needs_conversion and (source != "url" or spec.converter is None):
        raise CardError(
            f"{fields.where}.format: '{spec.format}' weights are converted by "
            "`medxfer convert`; the card needs source 'url' (where to download the file) "
            "and a converter"
        )
    if spec.sha256 not in (None, UNPUBLISHED) and (
        len(spec.sha256) != 64 or not all(c in "0123456789abcdef" for c in spec.sha256)
    ):
        raise CardError(
            f"{fields.where}: field 'sha256' must be 64 lowercase hex digits or "
            f"'{UNPUBLISHED}' (the publisher states none), got {spec.sha256!r}"
        )
    return spec


def _parse_model(fields: Fields) -> ModelCard:
    fields.unknown(
        {"name", "architecture", "weights", "preprocessing", "category", "pretraining_data"}
        | {"paper", "license", "random_twin_of", "feature_layer", "layers"}
    )
    name = fields.get("name", str)
    if not MODEL_NAME.fullmatch(name) or unsafe_name_problem(name) is not None:
        raise CardError(
            f"{fields.where}: model name {name!r} must be 'arch.tag' (letters, digits, _ - . only)"
        )
    weights = _parse_weights(fields.sub("weights"))
    # a derived card may inherit these from its parent (harness/config/derived_cards.py)
    inherits = weights.derived is not None
    library, architecture = "", ""
    if not inherits or fields.raw.get("architecture") is not None:
        arch = fields.sub("architecture")
        arch.unknown({"library", "name"})
        library = arch.get("library", str, choices=ARCH_LIBRARIES)
        architecture = arch.get("name", str)
    layer = fields.get("feature_layer", str, DEFAULT_FEATURE_LAYER, FEATURE_LAYERS)
    if layer != DEFAULT_FEATURE_LAYER and library not in ("timm", ""):
        raise CardError(
            f"{fields.where}: feature_layer '{layer}' needs a timm architecture "
            f"(torchvision backbones give the pooled features only)"
        )
    preprocessing = INHERITED_PREPROCESSING
    if not inherits or fields.raw.get("preprocessing") is not None:
        preprocessing = _parse_preprocessing(fields.sub("preprocessing"))
    return ModelCard(
        name=name,
        library=library,
        architecture=architecture,
        weights=weights,
        preprocessing=preprocessing,
        category=fields.get("category", str, choices=CATEGORIES),
        pretraining_data=fields.get("pretraining_data", str, "" if inherits else ...),
        paper=fields.get("paper", str, ""),
        license=fields.get("license", str, ""),
        random_twin_of=fields.get("random_twin_of", str, None),
        feature_layer=layer,
        layers=parse_layers(fields),
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
    cards, problems = load_model_card_entries(path)
    if problems:
        raise next(iter(problems.values()))
    return cards


def load_model_card_entries(path: Path) -> tuple[list[ModelCard], dict[str, CardError]]:
    """Load every model entry of one file, keeping each malformed entry's error apart.

    One bad entry does not take its family down: the other entries load, and the bad
    one's error is kept under the name it gives (or ``<file stem>[<index>]``), so only
    the cases that use it fail.

    Args:
        path: a YAML file with a top-level ``models:`` list.

    Returns:
        The valid cards in file order, and name -> error of the malformed entries (a
        file that cannot be read at all is one error under its stem and the names it
        lists, as far as they can be read).
    """
    try:
        top = Fields(read_yaml(path), str(path))
        top.unknown({"models"})
        entries = top.get("models", list)
    except CardError as exc:
        return [], dict.fromkeys([path.stem, *_listed_names(path)], exc)
    cards: list[ModelCard] = []
    problems: dict[str, CardError] = {}
    for index, raw in enumerate(entries):
        label = raw.get("name", index) if isinstance(raw, dict) else index
        try:
            card = _parse_model(Fields(raw, f"{path}: models[{label}]"))
        except CardError as exc:
            problems[label if isinstance(label, str) else f"{path.stem}[{index}]"] = exc
            continue
        cards.append(_replace_source(card, str(path)))
    return cards, problems


def _listed_names(path: Path) -> list[str]:
    """The entry names a broken model file lists, where its YAML can be read at all."""
    try:
        raw = read_yaml(path)
    except CardError:
        return []
    entries = raw.get("models") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        return []
    return [e["name"] for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)]


def _replace_source(card: ModelCard, source_file: str) -> ModelCard:
    return ModelCard(**{**card.__dict__, "source_file": source_file})
