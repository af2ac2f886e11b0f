"""``medxfer convert``: the one-time conversion of weights only a pickle or TensorFlow can read.

A card with ``weights.format: haiku_pickle`` or ``tf_checkpoint`` names a file the
harness will not load directly. The user downloads it and runs
``medxfer convert MODEL --from FILE``, which:

1. checks the file against the card's sha256 (when the publisher states one);
2. reads it: a ``haiku_pickle`` is unpickled with a restricted unpickler that builds
   numpy arrays and plain data only (:mod:`harness.zoo.haiku_pickle`); a
   ``tf_checkpoint`` (a prefix, its ``.index``, a folder holding one checkpoint, or a
   ``.zip`` of one) is read as a tensor bundle without TensorFlow
   (:mod:`harness.zoo.tf_checkpoint`);
3. runs the card's converter, then the card's ``strip_prefixes`` / ``drop_keys`` and the
   strict fit to the architecture, and loads the result into the architecture with
   ``strict=True``;
4. writes safetensors atomically to :func:`~harness.zoo.sources.converted_path`, with
   the source file's name and sha256 and the converter's name and version as metadata.

From then on the card loads that file like any safetensors checkpoint; its weights
identity is the converted file's sha256 with the converter's name and version.
"""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.cache.atomic import atomic_path
from harness.cache.keys import file_sha256
from harness.config.cards import ModelCard
from harness.zoo.converters import apply_converter, get_converter
from harness.zoo.errors import CheckpointError
from harness.zoo.haiku_pickle import haiku_arrays, load_restricted_pickle
from harness.zoo.remap import fit_to_model, rename
from harness.zoo.sources import converted_path
from harness.zoo.tf_checkpoint import read_tf_checkpoint

INDEX_SUFFIX = ".index"


@dataclass(frozen=True)
class Conversion:
    """What ``medxfer convert`` wrote.

    Attributes:
        path: The safetensors file the card now loads.
        tensors: How many tensors it holds.
        source_sha256: The sha256 of the file converted.
        weights_id: The card's weights identity from now on.
    """

    path: Path
    tensors: int
    source_sha256: str
    weights_id: str


def convert(
    card: ModelCard, source: Path, force: bool = False, say: Callable[[str], None] = print
) -> Conversion:
    """Convert ``source`` to the card's architecture and store it where the card looks.

    Args:
        card: A card whose ``weights.format`` needs conversion.
        source: The downloaded file (see the module docstring for what each format accepts).
        force: Overwrite an earlier conversion.
        say: Where the step reports what it does.

    Raises:
        CheckpointError: Naming the card and file: a native card, a missing source, an
            earlier conversion without ``force``, a checksum mismatch, a refused pickle
            global, an unreadable checkpoint, or tensors that do not fit the architecture.
    """
    spec = card.weights
    if not spec.needs_conversion:
        raise CheckpointError(
            f"model {card.name}: its weights ({spec.source}, format {spec.format}) load "
            "directly; there is nothing to convert"
        )
    source = Path(source).expanduser()
    if not source.exists() and not Path(f"{source}{INDEX_SUFFIX}").is_file():
        raise CheckpointError(f"model {card.name}: --from {source} does not exist")
    target = converted_path(card)
    if target.exists() and not force:
        raise CheckpointError(
            f"model {card.name}: already converted at {target}; pass --force to convert again"
        )
    source_sha = _source_sha256(card, source)
    converter = get_converter(spec.converter or "")
    where = f"model {card.name} ({source}, {converter.label})"
    arrays = _read(card, source, say)
    say(f"converting {len(arrays)} tensors with {converter.label}: {converter.description}")

    from harness.zoo.build import _instantiate, weights_identity

    module = _instantiate(card, pretrained=False)
    wanted = module.state_dict()
    tensors = {name: torch.from_numpy(np.array(value)) for name, value in arrays.items()}
    state = apply_converter(converter, tensors, wanted, where)
    state = fit_to_model(rename(state, spec, where), wanted, spec, where)
    state = {key: state[key].to(wanted[key].dtype).contiguous() for key in wanted}
    module.load_state_dict(state, strict=True)
    say(f"all {len(state)} tensors fit {card.architecture} strictly")
    metadata = {
        "model": card.name,
        "format": spec.format,
        "source_file": source.name,
        "source_sha256": source_sha,
        "converter": converter.name,
        "converter_version": str(converter.version),
    }
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    identity = weights_identity(card)
    say(f"wrote {target} (sha256 {file_sha256(target)}); weights identity {identity}")
    return Conversion(target, len(state), source_sha, identity)


def _source_sha256(card: ModelCard, source: Path) -> str:
    """The source file's sha256, checked against the card.

    A folder or a checkpoint prefix hashes its files' names and sha256s in name order.
    """
    if source.is_file():
        got = file_sha256(source)
    else:
        import hashlib

        if source.is_dir():
            files = [p for p in source.rglob("*") if p.is_file()]
        else:
            files = list(source.parent.glob(f"{source.name}.*"))
        digest = hashlib.sha256()
        for path in sorted(files):
            digest.update(path.name.encode())
            digest.update(bytes.fromhex(file_sha256(path)))
        got = digest.hexdigest()
    expected = card.weights.expected_sha256
    if expected and got != expected:
        raise CheckpointError(
            f"model {card.name}: {source} has sha256 {got}, the card ({card.source_file}) "
            f"expects {expected}; nothing was converted"
        )
    return got


def _read(card: ModelCard, source: Path, say: Callable[[str], None]) -> dict[str, np.ndarray]:
    where = f"model {card.name} ({source})"
    if card.weights.format == "haiku_pickle":
        if source.is_dir():
            raise CheckpointError(f"{where}: a Haiku pickle is one file, not a folder")
        say(
            f"unpickling {source}, a file you trust: only numpy arrays and plain data are "
            "built, any other global is refused before it runs"
        )
        return haiku_arrays(load_restricted_pickle(source), where)
    with ExitStack() as stack:
        prefix = _tf_prefix(source, stack, where)
        say(f"reading TensorFlow checkpoint {prefix} (its tensor bundle; TensorFlow is not used)")
        checkpoint = read_tf_checkpoint(prefix)
        if checkpoint.skipped:
            say(f"skipped {len(checkpoint.skipped)} string tensors: {checkpoint.skipped[:3]}")
        return checkpoint.tensors


def _tf_prefix(source: Path, stack: ExitStack, where: str) -> Path:
    """The checkpoint prefix inside ``source`` (a prefix, ``.index``, folder or ``.zip``)."""
    if source.is_file() and zipfile.is_zipfile(source):
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="medxfer-tf-")))
        with zipfile.ZipFile(source) as archive:
            index = _one_index(
                [n for n in archive.namelist() if n.endswith(INDEX_SUFFIX)], where, "the zip"
            )
            stem = index[: -len(INDEX_SUFFIX)]
            for name in archive.namelist():
                if name == index or name.startswith(f"{stem}.data-"):
                    # members are copied by base name: no path in the archive is followed
                    with archive.open(name) as src:
                        (folder / Path(name).name).write_bytes(src.read())
        return folder / Path(stem).name
    if source.is_dir():
        found = [str(p) for p in source.rglob(f"*{INDEX_SUFFIX}")]
        return Path(_one_index(found, where, str(source))[: -len(INDEX_SUFFIX)])
    return source.with_suffix("") if source.suffix == INDEX_SUFFIX else source


def _one_index(names: list[str], where: str, inside: str) -> str:
    if len(names) != 1:
        listed = ", ".join(sorted(names)) or "none"
        raise CheckpointError(
            f"{where}: expected one TensorFlow checkpoint (*.index) in {inside}, found {listed}; "
            "pass the checkpoint prefix or its .index file"
        )
    return names[0]
