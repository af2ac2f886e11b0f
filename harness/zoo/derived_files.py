"""The file format of derived checkpoints (:mod:`harness.zoo.derived`): safetensors with a
canonical header, the key's full text and a sha256 of the tensors, read back only when both
match (a cache codec of :mod:`harness.cache.store`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import IO, Any

import torch

from harness.cache.store import Damaged, Entry, KeyMismatch, Namespace

DERIVED_FORMAT = 1
BACKBONE_PREFIX = "backbone."
CREATED_BY = "medxfer derive (harness.zoo.derived)"
_META_KEY = "key"
_META_CONTENT = "content_sha256"


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """The sha256 of named tensors: names, dtypes, shapes and bytes, by name."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def canonical_safetensors(state: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """safetensors bytes with a canonical header (sorted metadata), so equal content gives
    an equal file (the library writes its metadata in hash-map order)."""
    from safetensors.torch import save

    blob = save({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, metadata)
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    meta = header.pop("__metadata__", None) or {}
    ordered: dict[str, Any] = {"__metadata__": dict(sorted(meta.items()))}
    ordered.update(sorted(header.items()))
    text = json.dumps(ordered, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + size :]


class SafetensorsState:
    """Cache codec of derived checkpoints: ``(state dict, metadata)`` as safetensors."""

    def write(self, handle: IO[bytes], value: Any, entry: Entry) -> None:
        """Write the tensors with the metadata, the key text and the tensors' sha256."""
        state, metadata = value
        meta = {**metadata, _META_KEY: entry.text, _META_CONTENT: tensors_sha256(state)}
        handle.write(canonical_safetensors(state, meta))

    def read(self, path: Path, entry: Entry) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Read and check a checkpoint.

        Raises:
            KeyMismatch: When it holds another key's network.
            Damaged: When its tensors do not match their stored sha256.
        """
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            state = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        if metadata.get(_META_KEY) != entry.text:
            raise KeyMismatch("the stored key differs")
        if metadata.get(_META_CONTENT) != tensors_sha256(state):
            raise Damaged("its tensors do not match their stored sha256")
        return state, metadata

    def summary(self, value: Any) -> dict[str, Any]:
        """The number of tensors and the validation score."""
        return {"tensors": len(value[0]), "val_score": value[1].get("val_score")}


CHECKPOINTS: Namespace[Any] = Namespace(
    "derived", SafetensorsState(), suffix=".safetensors", stored_event="derive"
)
