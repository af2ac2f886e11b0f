"""Building feature extractors from model cards.

The package's exports load lazily: :mod:`harness.config.cards` checks converter names
through :mod:`harness.zoo.converters`, and card loading must not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.zoo.build import (
        LoadedModel,
        architecture_feature_dim,
        build_model,
        weights_identity,
    )
    from harness.zoo.errors import CheckpointError, WeightsUnavailable

_EXPORTS = {
    "CheckpointError": "harness.zoo.errors",
    "WeightsUnavailable": "harness.zoo.errors",
    "LoadedModel": "harness.zoo.build",
    "architecture_feature_dim": "harness.zoo.build",
    "build_model": "harness.zoo.build",
    "weights_identity": "harness.zoo.build",
}

__all__ = [
    "CheckpointError",
    "LoadedModel",
    "WeightsUnavailable",
    "architecture_feature_dim",
    "build_model",
    "weights_identity",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
