"""Errors raised while resolving or loading checkpoints."""

from __future__ import annotations

from pathlib import Path


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, has the wrong checksum or keys that do not fit."""


class WeightsUnavailable(CheckpointError):
    """A model's weights are not on this machine and cannot be fetched now.

    Benchmark cases of the model skip with this message (as cases of an unprepared
    dataset do); building the model raises it.

    Attributes:
        model: The model card's name.
        file_name: The weights file's name.
        path: Where the harness looks for the file (where to put it).
        url: Where to download it from (``None`` when the card names no address).
        reason: Why it is absent now.
    """

    def __init__(
        self,
        model: str,
        file_name: str,
        path: Path,
        url: str | None,
        reason: str,
        instructions: str = "",
    ) -> None:
        self.model = model
        self.file_name = file_name
        self.path = path
        self.url = url
        self.reason = reason
        source = f"download {url}" if url else "obtain it"
        text = (
            f"model {model}: weights file {file_name} is not available ({reason}); "
            f"{source} and put it at {path}"
        )
        if instructions:
            text += f" ({instructions.strip()})"
        super().__init__(text)
