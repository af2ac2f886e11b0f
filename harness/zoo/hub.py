"""Where timm / Hugging Face hub weights live, so an offline run can tell what is missing.

timm fetches a ``timm`` card's weights from the Hugging Face repository in its pretrained
config (``hf_hub_id``; ``model.safetensors``, else ``pytorch_model.bin``) or, for old
configs without one, from the config's ``url`` into torch hub's checkpoint folder. An
``hf-hub`` card names the repository itself. Nothing here opens a connection.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path, PurePosixPath

from harness.config.cards import ModelCard
from harness.zoo.errors import CheckpointError, WeightsUnavailable
from harness.zoo.sources import WeightsLocation, offline

HF_OFFLINE_ENV = "HF_HUB_OFFLINE"
# the user's own setting, restored whenever MEDXFER_OFFLINE is not set
_USER_HF_OFFLINE = os.environ.get(HF_OFFLINE_ENV)


def sync_hub_offline() -> bool:
    """Put the Hugging Face hub client offline exactly when ``MEDXFER_OFFLINE`` is set.

    ``huggingface_hub`` reads ``HF_HUB_OFFLINE`` once, when it is first imported (timm
    imports it), and consults ``huggingface_hub.constants.HF_HUB_OFFLINE`` at every
    download. Offline, a cached file loads without the freshness check (a request that
    would wait for the network timeout) and an uncached one fails at once. This sets
    the variable for the process (and child processes) and, when the hub is already
    imported, its constant; without ``MEDXFER_OFFLINE`` the user's own setting is put
    back. Call it before anything imports timm / huggingface_hub, and again before a
    hub load (cheap).

    Returns:
        Whether the hub client is now offline because of ``MEDXFER_OFFLINE``.
    """
    medxfer_offline = offline()
    if medxfer_offline:
        os.environ[HF_OFFLINE_ENV] = "1"
    elif _USER_HF_OFFLINE is None:
        os.environ.pop(HF_OFFLINE_ENV, None)
    else:
        os.environ[HF_OFFLINE_ENV] = _USER_HF_OFFLINE
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        user = (_USER_HF_OFFLINE or "").upper() in ("1", "ON", "YES", "TRUE")
        constants.HF_HUB_OFFLINE = medxfer_offline or user
    return medxfer_offline


def hub_files(card: ModelCard) -> tuple[str, str | None, tuple[str, ...]]:
    """The hub source of a ``timm`` / ``hf-hub`` card: ``(kind, repo or url, file names)``.

    ``kind`` is ``hf`` (a Hugging Face repository, files tried in order) or ``url`` (a
    direct download timm keeps in torch hub's checkpoint folder).

    Raises:
        CheckpointError: When timm has no pretrained config for the card's hub id.
    """
    spec = card.weights
    if spec.source == "hf-hub":
        return "hf", spec.hub_id, HF_FILES
    import timm

    name = spec.hub_id or card.architecture
    try:
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
    except Exception as exc:
        raise CheckpointError(
            f"model {card.name}: timm has no pretrained weights {name!r}"
        ) from exc
    if cfg is None:
        raise CheckpointError(f"model {card.name}: timm has no pretrained weights {name!r}")
    if cfg.hf_hub_id:
        repo = cfg.hf_hub_id.split("@")[0]
        if cfg.hf_hub_filename:
            return "hf", repo, (*_safe_alternatives(cfg.hf_hub_filename), cfg.hf_hub_filename)
        return "hf", repo, HF_FILES
    return "url", cfg.url or None, (PurePosixPath(cfg.url or "weights").name,)


HF_FILES = ("model.safetensors", "pytorch_model.bin")


def _safe_alternatives(filename: str) -> tuple[str, ...]:
    try:
        from timm.models._hub import _get_safe_alternatives
    except ImportError:
        return ()
    return tuple(_get_safe_alternatives(filename))


def hub_location(card: ModelCard) -> WeightsLocation:
    """Where a ``timm`` / ``hf-hub`` card's weights are cached, or the cache folder they go to."""
    sync_hub_offline()
    kind, where, files = hub_files(card)
    if kind == "url":
        import torch

        path = Path(torch.hub.get_dir()) / "checkpoints" / files[0]
        return WeightsLocation(path, where, path.is_file(), files[0])
    from huggingface_hub import constants, try_to_load_from_cache

    assert where is not None
    for name in files:
        cached = try_to_load_from_cache(where, name)
        if isinstance(cached, str):
            return WeightsLocation(Path(cached), _hf_url(where, name), True, name)
    folder = Path(constants.HF_HUB_CACHE) / f"models--{where.replace('/', '--')}"
    return WeightsLocation(folder, _hf_url(where, files[0]), False, files[0])


def _hf_url(repo: str, name: str) -> str:
    return f"https://huggingface.co/{repo}/resolve/main/{name}"


def unavailable(card: ModelCard, location: WeightsLocation, reason: str) -> WeightsUnavailable:
    """The error for hub weights that are not cached and cannot be fetched now."""
    kind, where, _ = hub_files(card)
    if kind == "hf":
        how = (
            f"the Hugging Face cache layout: on a machine with network run "
            f"`hf download {where} {location.file_name}` with the same HF_HOME and copy "
            "the cache folder over, or set HF_HOME to a copy"
        )
    else:
        how = "torch hub's checkpoint folder, under the same file name"
    return WeightsUnavailable(
        card.name, location.file_name, location.path, location.url, reason, how
    )
