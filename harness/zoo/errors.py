"""Errors raised while resolving or loading checkpoints."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, has the wrong checksum or keys that do not fit."""
