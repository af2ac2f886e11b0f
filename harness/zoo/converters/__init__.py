"""Converters: named, versioned functions from a checkpoint's own layout to an architecture's keys.

A converter follows timm's ``checkpoint_filter_fn(state_dict, model)`` pattern: a pure
function that takes the source checkpoint's tensors and the architecture's state dict
(the target, for converters that need its keys or shapes) and returns a new state dict
keyed like the architecture. It never mutates its inputs and never loads anything.

A card names one with ``weights.converter``. For file-backed weights
(``harness/zoo/build.py``) the steps run in this order:

1. read the file (``torch.load(weights_only=True)``, safetensors, or a Keras ``.h5``
   with h5py);
2. ``unwrap``: follow the card's ``unwrap`` keys (or the usual wrappers) to the tensors;
3. the converter, when the card names one;
4. ``rename``: the card's ``strip_prefixes`` and ``drop_keys`` apply to the converter's output;
5. ``fit_to_model``: every key and shape must fit the architecture (never ``strict=False``).

Each converter has a version. The weights identity (the feature-cache key) of a card
with a converter hashes the file's sha256 together with the converter's name and
version, so a change to what a converter computes must bump its version. Without a
converter the identity stays the file's sha256.

The built-in converters live in :mod:`harness.zoo.converters.ssl` (self-supervised
ImageNet checkpoints), :mod:`harness.zoo.converters.medical` (chest X-ray checkpoints and
DenseNet key names), :mod:`harness.zoo.converters.vit` (Hugging Face ``transformers``
ViTs), :mod:`harness.zoo.converters.keras` (``keras.applications`` ``.h5`` weights,
read with h5py by :mod:`harness.zoo.keras_h5`), :mod:`harness.zoo.converters.byol` (a
Haiku pickle) and :mod:`harness.zoo.converters.simclr` (TensorFlow checkpoints); the
last two run in ``medxfer convert`` (:mod:`harness.zoo.convert`), which stores their
output as safetensors. Importing this package registers them. None of these modules imports torch at
the top: :mod:`harness.config.cards` checks a card's converter name when the card loads,
and loading cards must stay torch-free.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from harness.zoo.errors import CheckpointError

if TYPE_CHECKING:
    import torch

    StateDict = dict[str, torch.Tensor]
    ConverterFn = Callable[[StateDict, Mapping[str, torch.Tensor]], StateDict]

F = TypeVar("F", bound=Callable[..., object])
NAME = re.compile(r"[a-z][a-z0-9_]*")


class UnknownConverterError(LookupError):
    """No converter is registered under a name."""


@dataclass(frozen=True)
class Converter:
    """A registered converter.

    Attributes:
        name: the name cards use in ``weights.converter``.
        version: bumped whenever the output for some input changes.
        fn: ``fn(state, target) -> state`` (see the module docstring).
        description: one line: the source format and the target naming.
    """

    name: str
    version: int
    fn: ConverterFn
    description: str

    @property
    def label(self) -> str:
        """``converter 'name' v<version>``, as error messages show it."""
        return f"converter {self.name!r} v{self.version}"


_REGISTRY: dict[str, Converter] = {}


def register_converter(name: str, *, version: int, description: str = "") -> Callable[[F], F]:
    """Register the decorated function as converter ``name``.

    Args:
        name: lowercase letters, digits and underscores; unique.
        version: a positive int; bump it whenever the function's output changes.
        description: one line; defaults to the first line of the function's docstring.

    Raises:
        ValueError: for a malformed or duplicate name, a bad version or no description.
    """
    if not NAME.fullmatch(name):
        raise ValueError(f"converter name {name!r} must be lowercase letters, digits and _")
    if name in _REGISTRY:
        raise ValueError(f"converter {name!r} is already registered")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"converter {name!r}: version must be a positive int, got {version!r}")

    def decorate(fn: F) -> F:
        summary = description or (fn.__doc__ or "").strip().split("\n", 1)[0].strip()
        if not summary:
            raise ValueError(f"converter {name!r} needs a description or a docstring")
        _REGISTRY[name] = Converter(name, version, fn, summary)  # type: ignore[arg-type]
        return fn

    return decorate


def get_converter(name: str) -> Converter:
    """Return the converter registered as ``name``.

    Raises:
        UnknownConverterError: naming the known converters.
    """
    if name not in _REGISTRY:
        raise UnknownConverterError(
            f"unknown converter {name!r} (known: {', '.join(converter_names()) or 'none'})"
        )
    return _REGISTRY[name]


def converter_names() -> tuple[str, ...]:
    """Return the registered converter names, sorted."""
    return tuple(sorted(_REGISTRY))


def available_converters() -> list[tuple[str, int, str]]:
    """Return ``(name, version, description)`` of every registered converter, by name."""
    return [(c.name, c.version, c.description) for _, c in sorted(_REGISTRY.items())]


def apply_converter(
    converter: Converter,
    state: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    where: str,
) -> dict[str, torch.Tensor]:
    """Run ``converter`` on a copy of ``state`` and check that it returned tensors by name.

    Args:
        converter: the converter to run.
        state: the unwrapped checkpoint.
        target: the architecture's state dict.
        where: the model and file, for error messages.

    Raises:
        CheckpointError: when the converter raises or returns something other than a
            non-empty dict of tensors; the message names ``where`` and the converter.
    """
    import torch

    try:
        out = converter.fn(dict(state), target)
    except Exception as exc:
        raise CheckpointError(
            f"{where}: {converter.label} failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(out, Mapping) or not out:
        raise CheckpointError(f"{where}: {converter.label} returned no state dict ({out!r:.80})")
    bad = [k for k, v in out.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{where}: {converter.label} returned non-tensor entries {bad[:6]} ({len(bad)} in all)"
        )
    return dict(out)


# --------------------------------------------------------------------------- built-in converters
# Imported last: they register themselves with the functions above.
from harness.zoo.converters import byol, keras, medical, simclr, ssl, vit  # noqa: E402, F401
