"""Building feature extractors from model cards."""

from harness.zoo.build import LoadedModel, build_model, weights_identity
from harness.zoo.errors import CheckpointError

__all__ = ["CheckpointError", "LoadedModel", "build_model", "weights_identity"]
