"""Building a frozen feature extractor from a model card.

The card's ``feature_layer`` decides what the module returns: ``pooled`` (the
architecture's pooled penultimate vector, timm's ``num_classes=0`` output; for CNNs the
global average of the last stage), ``cls_token`` / ``mean_tokens`` (a timm token
model's class token, or the mean of its patch tokens, after the final norm) or
``image_embedding`` (the model's own embedding head is kept: a CLIP image projection).

timm token models (ViT, Swin) are built with a dynamic image size, so they run at a
profile's input size, not only the card's; :func:`model_input_size` gives the size
images must have (a multiple of the patch size; :mod:`harness.zoo.input_sizes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from harness.cache.keys import file_sha256, module_sha256, stable_hash
from harness.config.cards import CHECKPOINT_SOURCES, ModelCard, Preprocessing
from harness.zoo.architectures import ArchitectureVariant, get_variant
from harness.zoo.converters import Converter, UnknownConverterError, apply_converter, get_converter
from harness.zoo.errors import CheckpointError
from harness.zoo.input_sizes import create_timm_model, patch_size, round_to_patch
from harness.zoo.keras_h5 import KERAS_SUFFIXES, read_keras_h5
from harness.zoo.remap import fit_to_model, rename, unwrap
from harness.zoo.sources import checkpoint_path, locate

TORCHVISION_HEADS = ("fc", "classifier", "heads", "head")
TOKEN_POOLS = {"cls_token": "token", "mean_tokens": "avg"}
# Classes some checkpoints pickle only as markers (PyTorch Lightning 1.x keys its
# ``callbacks`` state by the callback class). ``weights_only`` loading maps these names,
# and no others, to an inert stand-in; anything else that is not plain data is refused.
MARKER_CLASSES = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
    "pytorch_lightning.callbacks.lr_monitor.LearningRateMonitor",
)


class ForeignMarker:
    """Stands in for a class a checkpoint names as a marker; it runs no code of that class."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        del args, kwargs


@dataclass
class LoadedModel:
    """A backbone that maps a batch of images to pooled features."""

    card: ModelCard
    module: nn.Module
    feature_dim: int
    weights_id: str


def build_model(card: ModelCard) -> LoadedModel:
    """Instantiate the card's architecture without its classifier and load its weights.

    Args:
        card: the model card.

    Returns:
        The model in eval mode on CPU, its feature dimension and its weights identity.

    Raises:
        CheckpointError: when the weights cannot be found or do not fit the architecture.
    """
    if card.weights.converter is not None and card.weights.source not in CHECKPOINT_SOURCES:
        raise CheckpointError(
            f"model {card.name}: weights.converter applies to checkpoint files, "
            f"not to source {card.weights.source!r}"
        )
    if card.weights.source == "random":
        # seed a forked generator: building a twin must not reseed the caller's RNG
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(card.weights.seed)
            module = _instantiate(card, pretrained=False)
    elif card.weights.source in ("timm", "hf-hub"):
        module = _instantiate(card, pretrained=True)
    elif card.weights.derived is not None:
        from harness.zoo.derived import backbone_state

        module = _instantiate(card, pretrained=False)
        module.load_state_dict(backbone_state(card, module))  # fine-tunes on first use
    else:
        path = checkpoint_path(card)  # a missing file or bad checksum fails before any build
        assert path is not None
        module = _instantiate(card, pretrained=False)
        module.load_state_dict(_fitted_state(card, path, module))
    _select_layer(module, card)
    module.eval()
    return LoadedModel(card, module, _feature_dim(module, card), weights_identity(card, module))


def architecture_feature_dim(card: ModelCard) -> int:
    """The feature dimension of the card's architecture and layer, built on the meta device.

    Nothing is downloaded or allocated: the architecture is instantiated without weights
    on ``torch.device("meta")`` (a quick check that timm / torchvision can build it).

    Raises:
        CheckpointError: When the architecture or its feature layer cannot be built.
    """
    with torch.device("meta"):
        module = _instantiate(card, pretrained=False, meta=True)
        _select_layer(module, card)
        return _feature_dim(module, card)


@lru_cache(maxsize=64)
def model_input_size(card: ModelCard, requested: int | None = None) -> int:
    """The input size the card's model runs at when a profile asks for ``requested``.

    ``requested`` (None: the card's own size) rounded to the nearest multiple of a
    token model's patch size (:mod:`harness.zoo.input_sizes`; 160 is 154 for DINOv2's
    patch 14); CNNs run at any size. Images must be resized to this size, so it is the
    one the preprocessing (and every feature-cache key) must carry. The architecture is
    built on the meta device: nothing is downloaded or allocated.

    Raises:
        CheckpointError: When the architecture cannot be built or has non-square patches.
    """
    size = card.preprocessing.input_size if requested is None else int(requested)
    if card.library != "timm":
        return size
    with torch.device("meta"):
        module = _instantiate(card, pretrained=False, meta=True)
    try:
        return round_to_patch(size, patch_size(module))
    except ValueError as exc:
        raise CheckpointError(f"model {card.name}: {exc}") from exc


def model_preprocessing(card: ModelCard, requested: int | None = None) -> Preprocessing:
    """The card's preprocessing at :func:`model_input_size` for a profile's ``requested`` size."""
    return card.preprocessing.with_input_size(model_input_size(card, requested))


def weights_identity(card: ModelCard, module: nn.Module | None = None) -> str:
    """Return a sha256 that identifies the weights: the checkpoint file's, or the tensors'.

    For file-backed weights this needs no model: the file's sha256, or, when the card
    names a converter, the sha256 of {file sha256, converter name, converter version}
    (so a new converter version never reuses features cached under the old one). A
    derived model's is its checkpoint's sha256 (:mod:`harness.zoo.derived`).
    Otherwise (random init, timm hub) the loaded tensors are hashed, so a change of
    initialisation changes the identity.
    """
    path = checkpoint_path(card)
    if path is not None:
        converter = _converter(card)
        if converter is None:
            return file_sha256(path)
        payload = {
            "file_sha256": file_sha256(path),
            "converter": converter.name,
            "converter_version": converter.version,
        }
        return stable_hash(payload, length=64)
    if module is None:
        module = build_model(card).module
    return module_sha256(module)


def _instantiate(card: ModelCard, pretrained: bool, meta: bool = False) -> nn.Module:
    variant = get_variant(card.architecture)
    if variant is not None:
        return _instantiate_variant(card, variant, pretrained)
    if card.library == "timm":
        if pretrained:
            from harness.zoo.hub import sync_hub_offline

            sync_hub_offline()  # MEDXFER_OFFLINE: no hub request, a cached file or a quick failure
        hub_tag = card.weights.source == "timm" and card.weights.hub_id
        name = card.weights.hub_id if (pretrained or meta) and hub_tag else card.architecture
        if card.weights.source == "hf-hub" and pretrained:
            name = f"hf-hub:{card.weights.hub_id}"
        # an image embedding keeps the model's head (its size from the pretrained config)
        head = {} if card.feature_layer == "image_embedding" else {"num_classes": 0}
        try:
            return create_timm_model(name, pretrained, **head)
        except Exception as exc:
            location = locate(card) if pretrained else None
            if location is not None and not location.present:
                from harness.zoo.hub import unavailable

                raise unavailable(card, location, f"fetching it failed: {exc}") from exc
            raise CheckpointError(f"model {card.name}: timm cannot create {name!r}: {exc}") from exc
    import torchvision

    if pretrained:
        raise CheckpointError(
            f"model {card.name}: torchvision architectures take weights from a file, not a hub"
        )
    try:
        module = torchvision.models.get_model(card.architecture, weights=None)
    except ValueError as exc:
        raise CheckpointError(
            f"model {card.name}: torchvision has no {card.architecture!r}"
        ) from exc
    return _TorchvisionBackbone(module)


def _instantiate_variant(
    card: ModelCard, variant: ArchitectureVariant, pretrained: bool
) -> nn.Module:
    """Build the variant's base network without a classifier and apply the variant's changes.

    Raises:
        CheckpointError: When the card's library is not the variant's, or the card asks
            for hub weights (a variant takes weights from a file).
    """
    where = f"model {card.name}: architecture {variant.name!r}"
    if card.library != variant.library:
        raise CheckpointError(
            f"{where} is a {variant.library} {variant.base} variant; the card says "
            f"library {card.library!r}"
        )
    if pretrained:
        raise CheckpointError(f"{where} takes weights from a file, not a hub")
    if variant.library == "timm":
        module = create_timm_model(variant.base, False, num_classes=0)
    else:
        import torchvision

        module = _TorchvisionBackbone(torchvision.models.get_model(variant.base, weights=None))
    variant.adapt(module.model if isinstance(module, _TorchvisionBackbone) else module)
    return module


class _TorchvisionBackbone(nn.Module):
    """A torchvision classifier with its head replaced by identity.

    State-dict keys stay torchvision's own (no ``model.`` prefix), so official
    checkpoints load by name once the card's ``drop_keys`` removes the head's keys.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        for attr in TORCHVISION_HEADS:
            if hasattr(model, attr):
                head = getattr(model, attr)
                linear = next((m for m in head.modules() if isinstance(m, nn.Linear)), None)
                if linear is not None:
                    # the features entering the head: no forward pass needed
                    self.num_features = linear.in_features
                setattr(model, attr, nn.Identity())
                break
        else:
            raise CheckpointError(f"cannot find the classifier head of {type(model).__name__}")
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)

    def state_dict(self, *args, **kwargs):  # type: ignore[override]
        return self.model.state_dict(*args, **kwargs)


def read_checkpoint(path: Path, where: str) -> object:
    """Read a checkpoint with safetensors, ``torch.load(weights_only=True)`` or h5py.

    A ``.h5`` / ``.hdf5`` file is read as Keras weights (:mod:`harness.zoo.keras_h5`):
    datasets only, nothing is unpickled. Only tensors, plain Python data and the :data:`MARKER_CLASSES` (as inert stand-ins)
    are accepted; a pickle that would import or call anything else is refused before
    any of it runs.

    Raises:
        CheckpointError: Naming ``where`` and the reason.
    """
    if path.suffix.lower() in KERAS_SUFFIXES:
        return read_keras_h5(path, where)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        markers = [(ForeignMarker, name) for name in MARKER_CLASSES]
        with torch.serialization.safe_globals(markers):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{where}: cannot read checkpoint: {exc}") from exc


def _fitted_state(card: ModelCard, path: Path, module: nn.Module) -> dict[str, torch.Tensor]:
    where = f"model {card.name} ({path})"
    raw = read_checkpoint(path, where)
    state = unwrap(raw, card.weights.unwrap, where)
    target = module.state_dict()
    converter = _converter(card)
    # a converted file (``medxfer convert``) is already keyed like the architecture
    if converter is not None and not card.weights.needs_conversion:
        where = f"model {card.name} ({path}, {converter.label})"
        state = apply_converter(converter, state, target, where)
    return fit_to_model(rename(state, card.weights, where), target, card.weights, where)


def _converter(card: ModelCard) -> Converter | None:
    if card.weights.converter is None:
        return None
    try:
        return get_converter(card.weights.converter)
    except UnknownConverterError as exc:
        raise CheckpointError(f"model {card.name} ({card.source_file}): {exc}") from exc


def _select_layer(module: nn.Module, card: ModelCard) -> None:
    """Make ``module`` return the card's ``feature_layer`` (see the module docstring).

    Raises:
        CheckpointError: When the architecture has no such layer.
    """
    layer = card.feature_layer
    if layer == "image_embedding":
        if not int(getattr(module, "num_classes", 0) or 0):
            raise CheckpointError(
                f"model {card.name}: feature_layer image_embedding needs a timm model with an "
                f"embedding head; {card.architecture} has none"
            )
        return
    if layer not in TOKEN_POOLS:
        return
    if not isinstance(getattr(module, "global_pool", None), str) or not hasattr(
        module, "reset_classifier"
    ):
        raise CheckpointError(
            f"model {card.name}: feature_layer {layer} needs a timm token model (ViT / Swin); "
            f"{card.architecture} pools no tokens"
        )
    if layer == "cls_token" and getattr(module, "cls_token", None) is None:
        raise CheckpointError(
            f"model {card.name}: feature_layer cls_token, but {card.architecture} has no class token"
        )
    module.reset_classifier(0, global_pool=TOKEN_POOLS[layer])


def _feature_dim(module: nn.Module, card: ModelCard) -> int:
    if card.feature_layer == "image_embedding":
        return int(module.num_classes)  # type: ignore[arg-type]
    num_features = getattr(module, "num_features", None)
    if isinstance(num_features, int) and num_features > 0:
        return num_features
    # at the card's input size: some architectures (ViT) accept no other
    size = card.preprocessing.input_size
    device = next(module.parameters()).device
    with torch.inference_mode():
        return int(module(torch.zeros(1, 3, size, size, device=device)).shape[-1])
