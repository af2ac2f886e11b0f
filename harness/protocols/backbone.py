"""The frozen backbone of a case: built once per model card, batch norm set by the card's rule.

A random twin whose card asks for ``target_train`` batch-norm statistics gets them from
the case's training images (:mod:`harness.zoo.batchnorm`); its identity, which keys
the feature cache, then hashes the initialisation, the recalibration and the transform.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
from torch import nn

from harness.cache.arrays import cached_arrays
from harness.cache.keys import array_digest, stable_hash
from harness.config.cards import ModelCard, Preprocessing
from harness.data.transforms import describe, eval_transform
from harness.features import resolve_device
from harness.zoo import LoadedModel, build_model, weights_identity
from harness.zoo.batchnorm import (
    MAX_IMAGES,
    RECALIBRATION_VERSION,
    batchnorm_state,
    load_batchnorm_state,
    recalibrate_batchnorm,
    recalibration_indices,
)


@lru_cache(maxsize=2)
def loaded_model(card: ModelCard) -> LoadedModel:
    """The card's model, built once per process (the two most recent cards are kept)."""
    return build_model(card)


@lru_cache(maxsize=32)
def _weights_id(card: ModelCard) -> str:
    if card.weights.source in ("pip", "file", "url"):
        return weights_identity(card)
    return loaded_model(card).weights_id


@dataclasses.dataclass(frozen=True)
class Backbone:
    """The frozen backbone of a case: its identity, how to get it, and its batch-norm rule.

    Attributes:
        weights_id: Identity of the weights as the features see them (enters cache keys).
        load: Returns the module in eval mode; called only when features must be extracted.
        batchnorm: How the batch-norm statistics were set (recorded with every result).
    """

    weights_id: str
    load: Callable[[], nn.Module]
    batchnorm: dict[str, Any]


_RECALIBRATED: dict[str, nn.Module] = {}


def _recalibrated(
    card: ModelCard,
    identity: str,
    images: np.ndarray,
    pre: Preprocessing,
    batch_size: int,
    device: str,
) -> nn.Module:
    """A fresh copy of the card's model with batch-norm statistics from ``images``.

    The statistics are computed once per (identity, device type) and kept in the cache
    service (``arrays/batchnorm-stats``), so every later case and every other worker or
    session loads them instead of running the training images through the network
    again; the last module is also memoised in the process.
    """
    if identity not in _RECALIBRATED:
        module = build_model(card).module
        target = resolve_device(device)

        def recalibrate() -> dict[str, np.ndarray]:
            recalibrate_batchnorm(module, images, eval_transform(pre), batch_size, target)
            state = batchnorm_state(module)  # buffer names are not array names: index them
            return {
                "names": np.array(list(state)),
                **{f"b{i}": v for i, v in enumerate(state.values())},
            }

        key = {"backbone": identity, "device": target.type, "version": RECALIBRATION_VERSION}
        stored, _ = cached_arrays("batchnorm-stats", key, recalibrate)
        names = [str(name) for name in stored["names"]]
        load_batchnorm_state(module, {name: stored[f"b{i}"] for i, name in enumerate(names)})
        module.to(target).eval()
        _RECALIBRATED.clear()  # one at a time: a process holds one recalibrated network
        _RECALIBRATED[identity] = module
    return _RECALIBRATED[identity]


def make_backbone(
    card: ModelCard,
    train_images: Callable[[], np.ndarray],
    pre: Preprocessing,
    batch_size: int,
    device: str,
) -> Backbone:
    """The backbone of a case under the card's batch-norm rule.

    Args:
        card: The model card.
        train_images: Returns the case's training images (read only for ``target_train``).
        pre: The preprocessing features are extracted with.
        batch_size: The extraction batch size (also the recalibration's).
        device: ``auto``, ``cpu`` or ``cuda``.

    Returns:
        The backbone.
    """
    rule = card.weights.batchnorm_stats
    if rule != "target_train":
        return Backbone(_weights_id(card), lambda: loaded_model(card).module, {"rule": rule})
    train = train_images()
    index = recalibration_indices(len(train), batch_size)
    images = train[index]
    batchnorm = {
        "rule": rule,
        "split": "train",
        "images": len(index),
        "max_images": MAX_IMAGES,
        "batch_size": batch_size,
        "images_sha256": array_digest(images),
        "version": RECALIBRATION_VERSION,
    }
    identity = stable_hash(
        {"init": _weights_id(card), "batchnorm": batchnorm, "transform": describe(pre)},
        length=64,
    )
    return Backbone(
        identity,
        lambda: _recalibrated(card, identity, images, pre, batch_size, device),
        batchnorm,
    )
