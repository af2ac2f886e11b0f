"""Types shared by the protocols: frozen features in, metrics and chosen settings out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.data.table import SoftTargets


@dataclass(frozen=True)
class SplitFeatures:
    """Frozen features of one split and their labels.

    Attributes:
        features: float32 array (N, D).
        labels: int64 array (N,) for binary/multiclass/ordinal, or (N, C) 0/1 for multilabel.
        groups: optional (N,) array of group ids (patient, source image) for pairing/splits.
        soft: labels whose training target is label-smoothed (CheXpert LSR), or None.
    """

    features: np.ndarray
    labels: np.ndarray
    groups: np.ndarray | None = None
    soft: SoftTargets | None = None

    def __len__(self) -> int:
        return int(self.features.shape[0])


@dataclass(frozen=True)
class TaskInfo:
    """What a protocol needs to know about the target task (from the dataset card)."""

    task: str
    num_classes: int
    primary_metric: str
    metrics: tuple[str, ...]


@dataclass
class ProtocolResult:
    """What a protocol returns: metrics on test, the chosen hyperparameters, and extras;
    ``primary_metric`` names the case's own primary metric (a preset's), None: the
    protocol's or the dataset's."""

    metrics: dict[str, float]
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    primary_metric: str | None = None


def without_defaults(out: dict[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the fields of a config dict that hold the given inert defaults.

    A field added to a config after records were written is left out of ``to_dict`` at
    its inert default, so those records keep their case keys.

    Args:
        out: The config as a dict (changed in place).
        defaults: Field -> the value at which it is left out.

    Returns:
        ``out``.
    """
    for name, default in defaults.items():
        if out[name] == default:
            del out[name]
    return out
