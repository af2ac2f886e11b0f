"""Converters: named, versioned functions from a checkpoint's own layout to an architecture's keys.

A converter follows timm's ``checkpoint_filter_fn(state_dict, model)`` pattern: a pure
function that takes the source checkpoint's tensors and the architecture's state dict
(the target, for converters that need its keys or shapes) and returns a new state dict
keyed like the architecture. It never mutates its inputs and never loads anything.

A card names one with ``weights.converter``. For file-backed weights
(``harness/zoo/build.py``) the steps run in this order:

1. read the file (``torch.load(weights_only=True)`` or safetensors);
2. ``unwrap``: follow the card's ``unwrap`` keys (or the usual wrappers) to the tensors;
3. the converter, when the card names one;
4. ``rename``: the card's ``strip_prefixes`` and ``drop_keys`` apply to the converter's output;
5. ``fit_to_model``: every key and shape must fit the architecture (never ``strict=False``).

Each converter has a version. The weights identity (the feature-cache key) of a card
with a converter hashes the file's sha256 together with the converter's name and
version, so a change to what a converter computes must bump its version. Without a
converter the identity stays the file's sha256.

This module does not import torch: :mod:`harness.config.cards` checks a card's converter name
when the card loads, and loading cards must stay torch-free.
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


def _encoder(state: StateDict, prefixes: tuple[str, ...], head: str) -> StateDict:
    """Keep the keys under the first prefix present, without it, and drop ``head.*``."""
    prefix = next((p for p in prefixes if any(k.startswith(p) for k in state)), None)
    if prefix is None:
        raise ValueError(
            f"no key starts with {' or '.join(prefixes)}; the checkpoint's keys look like "
            f"{', '.join(list(state)[:4])}"
        )
    out = {}
    for key, value in state.items():
        if key.startswith(prefix):
            name = key[len(prefix) :]
            if not name.startswith(f"{head}."):
                out[name] = value
    return out


@register_converter("moco_resnet", version=1)
def moco_resnet(state: StateDict, target: Mapping[str, torch.Tensor]) -> StateDict:
    """MoCo v1/v2/v3 ResNet training checkpoint -> torchvision ResNet keys, projection head dropped.

    ``main_moco.py`` of facebookresearch/moco saves ``{"epoch", "arch", "state_dict",
    "optimizer"}``; ``state_dict`` is the DistributedDataParallel-wrapped MoCo module:
    the query encoder under ``module.encoder_q.``, the momentum (key) encoder under
    ``module.encoder_k.``, and the negatives queue ``module.queue`` / ``module.queue_ptr``.
    Each encoder is a torchvision ResNet whose ``fc`` is the projection head (v1 a
    linear layer, v2 an MLP ``fc.0`` / ``fc.2``). MoCo v3 (facebookresearch/moco-v3)
    names the encoders ``module.base_encoder.`` / ``module.momentum_encoder.`` and adds
    ``module.predictor.``; its ``fc`` is again the projector. As the repositories' own
    ``main_lincls.py`` does, only the query (base) encoder is kept, without its ``fc``;
    keys saved without DDP's ``module.`` are accepted too.
    """
    prefixes = ("module.encoder_q.", "encoder_q.", "module.base_encoder.", "base_encoder.")
    return _encoder(state, prefixes, "fc")


@register_converter("simsiam_resnet", version=1)
def simsiam_resnet(state: StateDict, target: Mapping[str, torch.Tensor]) -> StateDict:
    """SimSiam ResNet training checkpoint -> torchvision ResNet keys, projector dropped.

    facebookresearch/simsiam saves ``{"epoch", "arch", "state_dict", "optimizer"}``
    with the DDP-wrapped SimSiam module: the encoder under ``module.encoder.`` (a
    torchvision ResNet whose ``fc`` is the 3-layer projector) and the predictor under
    ``module.predictor.``. Like its ``main_lincls.py``, only the encoder without ``fc``
    is kept.
    """
    return _encoder(state, ("module.encoder.", "encoder."), "fc")


@register_converter("swav_resnet", version=1)
def swav_resnet(state: StateDict, target: Mapping[str, torch.Tensor]) -> StateDict:
    """SwAV / DeepCluster-v2 / SeLa-v2 ResNet -> torchvision ResNet keys, heads dropped.

    facebookresearch/swav releases (``swav_800ep_pretrain.pth.tar`` and the other
    ``dl.fbaipublicfiles.com/deepcluster`` files) are the DDP-wrapped model's plain
    state dict (training checkpoints wrap it in ``state_dict``, which ``unwrap``
    follows): every key starts with ``module.``, the trunk uses torchvision's names
    (its extra zero padding before ``conv1`` has no parameters), and the clustering
    heads are ``projection_head.*`` and ``prototypes.*`` (``prototypes.prototypesN.*``
    with several prototype sets). The repository's ``hubconf.py`` strips ``module.``
    and loads the rest into a torchvision ResNet; here the heads are dropped explicitly
    so that the strict key check still applies to everything else.
    """
    out: StateDict = {}
    for key, value in state.items():
        name = key.removeprefix("module.")
        if name.startswith(("projection_head.", "prototypes.")):
            continue
        if name in out:
            raise ValueError(f"keys {name} and module.{name} are both present")
        out[name] = value
    return out


MAE_DECODER = ("decoder_embed.", "decoder_blocks.", "decoder_norm.", "decoder_pred.")


@register_converter("mae_vit", version=1)
def mae_vit(state: StateDict, target: Mapping[str, torch.Tensor]) -> StateDict:
    """MAE pre-training checkpoint -> timm ViT keys, decoder and mask token dropped.

    facebookresearch/mae releases ``{"model": ...}`` (its training checkpoints also
    pickle ``args``, an argparse namespace, which ``weights_only`` loading refuses). The encoder's keys are timm's own (``cls_token``,
    ``pos_embed``, ``patch_embed.proj.*``, ``blocks.N.*``, ``norm.*``); full
    checkpoints add the decoder (``decoder_embed``, ``decoder_pos_embed``,
    ``decoder_blocks``, ``decoder_norm``, ``decoder_pred``) and ``mask_token``, which
    are dropped. Encoder-only releases pass through unchanged.
    """
    return {
        key: value
        for key, value in state.items()
        if key not in ("mask_token", "decoder_pos_embed") and not key.startswith(MAE_DECODER)
    }
