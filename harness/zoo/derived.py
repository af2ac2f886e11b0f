"""Models derived in the harness itself: a parent model fine-tuned on a source dataset.

A card with ``weights: {source: derived, parent: P, dataset: D, profile, seed, preset}``
(:mod:`harness.config.derived_cards`) names a network the harness makes: the parent
fine-tuned on D's train split (selected on its val split) with the ``finetune``
protocol under the profile's settings (and subset) and the seed, as cats-scans
pretrains on its sources, or, with ``protocol: dino``, pretrained on it with DINO
(:mod:`harness.protocols.dino`, medical_transformers' "ImageNet + DINO" models; the
training itself is :mod:`harness.zoo.derived_make`). :func:`derived_checkpoint` makes it once and keeps it in the
cache service (:mod:`harness.cache.store`, namespace ``derived``):

* the key is everything the network depends on: the parent's card fingerprint and
  weights identity, the dataset card's fingerprint (its version included), the protocol
  VERSION, preset and the profile-resolved config (seed included), the profile, the
  preprocessing and the torch / timm / numpy versions;
* the file is safetensors (never a pickle) holding the whole fine-tuned network
  (``backbone.*`` and the source head ``head.*``) and, as metadata, the key's full text,
  a sha256 of the tensors (both checked on load: a file is never trusted by its name)
  and the provenance (parent, dataset and its version, protocol and version, profile,
  preset, seed, validation score, steps, library versions, who made it);
* the key's lock makes two pytest-xdist workers or processes derive it once; the file
  is written atomically; its header is canonical, so one network gives one file sha256.

The file's sha256 is the derived model's weights identity (feature-cache keys change
when the checkpoint does); a card may pin it (``weights.sha256``), and a checkpoint that
differs is refused naming both hashes.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.cache.atomic import write_with
from harness.cache.keys import file_sha256, safe_name
from harness.cache.store import STORE, Entry
from harness.config.cards import DatasetCard, ModelCard, Preprocessing
from harness.config.profiles import Profile
from harness.zoo.derived_files import (
    BACKBONE_PREFIX,
    CHECKPOINTS,
    DERIVED_FORMAT,
    SafetensorsState,
)
from harness.zoo.derived_make import derive as _derive
from harness.zoo.errors import CheckpointError, WeightsUnavailable


class DerivationUnavailable(WeightsUnavailable):
    """A derived model cannot be made now: its parent's weights or its dataset are absent."""

    def __init__(self, card: ModelCard, path: Path, reason: str) -> None:
        super().__init__(card.name, path.name, path, None, reason)
        self.args = (f"model {card.name}: derived weights cannot be made now ({reason})",)


@dataclass(frozen=True)
class Derivation:
    """Everything one derived model is made from (see the module docstring)."""

    card: ModelCard
    parent: ModelCard
    dataset: DatasetCard
    profile: Profile
    config: Any  # FinetuneConfig
    preprocessing: Preprocessing
    preset: Any  # Preset | None
    run: Any  # the CaseRun that loads the dataset's splits (with the profile's subset)

    @property
    def protocol(self) -> str:
        """The protocol that trains it: ``finetune`` or ``dino``."""
        spec = self.card.weights.derived
        return "finetune" if spec is None else spec.protocol

    @property
    def protocol_version(self) -> int:
        """That protocol's version."""
        if self.protocol == "dino":
            from harness.protocols.dino import VERSION
        else:
            from harness.protocols.finetune import VERSION
        return VERSION

    @property
    def preset_id(self) -> tuple[str, int] | None:
        """The preset's name and version (None for medxfer's default)."""
        if self.protocol == "dino":
            from harness.protocols.dino import PRESETS

            name = self.card.weights.derived.preset  # type: ignore[union-attr]
            return None if name is None else (name, PRESETS[name][0])
        return None if self.preset is None else (self.preset.name, self.preset.version)

    def key_payload(self) -> dict[str, Any]:
        """The cache key: parent, dataset, protocol, config, profile, preprocessing, versions."""
        import numpy
        import timm

        from harness.zoo.build import weights_identity

        preset = self.preset_id
        return {
            "format": DERIVED_FORMAT,
            "parent": {
                "name": self.parent.name,
                "card": self.parent.fingerprint(),
                "weights_id": weights_identity(self.parent),
            },
            "dataset": {"name": self.dataset.name, "card": self.dataset.fingerprint()},
            "protocol": {
                "name": self.protocol,
                "version": self.protocol_version,
                "preset": None if preset is None else list(preset),
            },
            "config": self.config.to_dict(),
            "profile": self.profile.to_dict(),
            "preprocessing": self.preprocessing.key_payload(),
            "libraries": {
                "torch": torch.__version__,
                "timm": timm.__version__,
                "numpy": numpy.__version__,
            },
        }

    def entry(self) -> Entry:
        """The checkpoint's entry in the cache service."""
        prefix = safe_name(f"{self.parent.name}--{self.dataset.name}-")
        return STORE.entry(CHECKPOINTS, self.key_payload(), prefix=prefix)


def plan(card: ModelCard) -> Derivation:
    """Resolve a derived card's parent, dataset, profile, preset and training config.

    Raises:
        CheckpointError: When the card is not derived.
        CardError: When its parent or dataset card cannot be used, or its dino preset is
            unknown.
    """
    from harness.config.card_fields import CardError
    from harness.config.cards import get_dataset_card, get_model_card
    from harness.config.cases import Case
    from harness.config.profiles import get_profile
    from harness.protocols.case import CaseRun
    from harness.protocols.finetune.presets import with_overrides
    from harness.protocols.registry import discover, get_protocol

    spec = card.weights.derived
    if spec is None:
        raise CheckpointError(f"model {card.name}: weights source {card.weights.source!r}")
    discover()
    parent, dataset = get_model_card(spec.parent), get_dataset_card(spec.dataset)
    profile = get_profile(spec.profile)
    # a dino preset's preprocessing is the fine-tuning preset's of the same name: the
    # study pretrains and fine-tunes with one params.json
    protocol = "finetune"
    case = Case(parent, dataset, protocol, "derived", profile, preset=spec.preset or "medxfer")
    run = CaseRun(case, Path(tempfile.gettempdir()))
    if spec.protocol == "dino":
        from harness.protocols.dino import dino_config

        try:
            config = dino_config(profile.name, spec.preset, card.weights.seed)
        except ValueError as exc:
            raise CardError(f"model {card.name} ({card.source_file}): {exc}") from exc
    else:
        config = dataclasses.replace(
            get_protocol(protocol).make_config(run), seed=card.weights.seed
        )
    preset = run.preset
    pre = with_overrides(parent.preprocessing, preset.overrides(run) if preset else {})
    pre = pre.with_input_size(config.input_size or profile.input_size)
    return Derivation(card, parent, dataset, profile, config, pre, preset, run)


# Verified checkpoints of this process: (card, cache folder) -> (path, file signature, facts)
_VERIFIED: dict[tuple[ModelCard, str], tuple[Path, tuple[int, int, int], dict[str, str]]] = {}


def forget() -> None:
    """Forget the checkpoints verified in this process (the next use checks the file again)."""
    _VERIFIED.clear()


def derived_checkpoint(
    card: ModelCard, *, refresh: bool = False, device: str = "auto", progress: bool = False
) -> Path:
    """The safetensors checkpoint of a derived card, fine-tuning it on first use.

    Args:
        card: A card with ``weights.source: derived``.
        refresh: Derive again even when a valid checkpoint is stored.
        device: Where a derivation fine-tunes ("auto", "cpu", "cuda").
        progress: Show the fine-tuning's progress bars.

    Returns:
        The checkpoint file (in a private temporary folder when the home is read-only).

    Raises:
        CheckpointError: When the card pins a sha256 the checkpoint does not have.
        DatasetNotPrepared: When the source dataset must be obtained first.
    """
    memo_key = (card, str(STORE.folder(CHECKPOINTS)))
    known = _VERIFIED.get(memo_key)
    if known is not None and not refresh and _signature(known[0]) == known[1]:
        return _pinned(card, known[0])
    derivation = plan(card)
    entry = derivation.entry()
    facts = {"model": card.name, "parent": derivation.parent.name}
    lookup = STORE.get_or_compute(
        CHECKPOINTS,
        entry,
        lambda: _derive(derivation, device, progress),
        refresh=refresh,
        describe={**facts, "dataset": derivation.dataset.name},
    )
    path = entry.path
    if not lookup.hit and not path.is_file():  # a read-only home: keep it for this process
        path = Path(tempfile.gettempdir()) / f"medxfer-derived-{os.getuid()}" / entry.path.name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_with(path, lambda handle: SafetensorsState().write(handle, lookup.value, entry))
    recorded = {k: v for k, v in lookup.value[1].items() if k in _RECORDED}
    _VERIFIED[memo_key] = (path, _signature(path), recorded)
    return _pinned(card, path)


_RECORDED = ("val_score", "primary_metric", "steps", "n_train", "n_val", "device")
_NUMBERS = {"val_score": float, "steps": int, "n_train": int, "n_val": int}


def _signature(path: Path) -> tuple[int, int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (-1, -1, -1)
    return (stat.st_size, stat.st_mtime_ns, stat.st_ino)


def _pinned(card: ModelCard, path: Path) -> Path:
    expected = card.weights.expected_sha256
    got = file_sha256(path)
    if expected and got != expected:
        raise CheckpointError(
            f"model {card.name}: derived checkpoint {path} has sha256 {got}, the card "
            f"({card.source_file}) pins {expected} (fine-tuning gave other weights here, e.g. "
            f"on another device or CPU kind, or the pin is stale). Re-derive with `medxfer derive "
            f"{card.name} --refresh` and set weights.sha256 to the new checkpoint's sha256 (or "
            "remove the pin)"
        )
    return path


def backbone_state(card: ModelCard, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The backbone part of a derived checkpoint, keyed like ``module`` (the source head dropped).

    Raises:
        CheckpointError: When the checkpoint's backbone does not fit ``module`` (naming
            the missing and unexpected keys and the first shape that differs).
    """
    from harness.zoo.build import read_checkpoint

    path = derived_checkpoint(card)
    where = f"model {card.name} ({path})"
    state = read_checkpoint(path, where)
    assert isinstance(state, dict)
    backbone = {
        k[len(BACKBONE_PREFIX) :]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)
    }
    target = module.state_dict()
    missing = sorted(set(target) - set(backbone))
    unexpected = sorted(set(backbone) - set(target))
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: the derived backbone does not fit {card.architecture}: "
            f"{len(missing)} missing key(s) {missing[:5]}, {len(unexpected)} unexpected "
            f"key(s) {unexpected[:5]}"
        )
    for name, tensor in backbone.items():
        if tuple(tensor.shape) != tuple(target[name].shape):
            raise CheckpointError(
                f"{where}: key {name} has shape {tuple(tensor.shape)}, "
                f"{card.architecture} expects {tuple(target[name].shape)}"
            )
    return backbone


def derived_location(card: ModelCard) -> tuple[Path | None, bool]:
    """Where a derived card's checkpoint is or would be, and whether it is there.

    Nothing is derived or downloaded: without the parent's weights here the path is
    unknown (None).
    """
    from harness.zoo.sources import locate

    spec = card.weights.derived
    assert spec is not None
    from harness.config.cards import get_model_card

    parent_at = locate(get_model_card(spec.parent))
    if parent_at is not None and not parent_at.present:
        return None, False
    path = plan(card).entry().path
    return path, path.is_file()


def ensure_derivable(card: ModelCard) -> None:
    """Make sure a derived card's checkpoint is here or can be made now.

    Raises:
        WeightsUnavailable: When the parent's weights are absent and cannot be fetched, or
            the source dataset is not prepared.
    """
    from harness.config.cards import get_dataset_card, get_model_card
    from harness.data.prepare import DatasetNotPrepared, prepare
    from harness.zoo.sources import ensure_weights

    spec = card.weights.derived
    assert spec is not None
    path, present = derived_location(card)
    if present:
        return
    ensure_weights(get_model_card(spec.parent))
    try:
        prepare(get_dataset_card(spec.dataset))
    except DatasetNotPrepared as exc:
        where = path or STORE.folder(CHECKPOINTS)
        raise DerivationUnavailable(card, where, f"source dataset: {exc}") from exc


def provenance(card: ModelCard) -> dict[str, Any] | None:
    """How a derived model was made, for records: the card's ``derived_from`` plus, once its
    checkpoint was used in this process, the checkpoint's sha256 and validation score."""
    info = card.derived_from
    if info is None:
        return None
    known = _VERIFIED.get((card, str(STORE.folder(CHECKPOINTS))))
    if known is not None:
        info["checkpoint_sha256"] = file_sha256(known[0])
        for name, text in known[2].items():  # metadata is text: numbers back as numbers
            convert = _NUMBERS.get(name, str)
            info[name] = convert(text) if text != "" else None
    return info


def provenance_text(card: ModelCard) -> str:
    """One line on a derived card: parent -> dataset (protocol, profile, seed, sha256)."""
    info = card.derived_from
    if info is None:
        return ""
    try:
        path, present = derived_location(card)
        state = f"sha256 {file_sha256(path)[:12]}" if present and path else "not derived yet"
    except Exception as exc:  # listing must not fail on one card: say why instead
        state = f"not derived yet ({type(exc).__name__})"
    if info["sha256"] and state == "not derived yet":
        state += f", pinned sha256 {info['sha256'][:12]}"
    preset = "" if info["preset"] == "medxfer" else f", preset {info['preset']}"
    return (
        f"derived: {info['parent']} -> {info['dataset']} ({info['protocol']}, "
        f"{info['profile']}, seed {info['seed']}{preset}, {state})"
    )
