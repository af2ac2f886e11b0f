"""Pooled features of intermediate layers (network stages), cached like the final features.

A layer-wise analysis needs, for every image, one vector per stage of the backbone: the
stage's output feature map averaged over its spatial positions (or a token model's
tokens averaged), plus the model's own final features (layer ``pooled``). All layers come
from one forward pass per batch (forward hooks on the stages' modules) and are stored as
one entry of the feature cache per (model, weights, dataset, split, transform, layer set):
the same key payload as the final features (:func:`harness.features.feature_key_payload`,
whose ``layer`` field here names the stages and their modules), the same file format,
lock, atomic write and events. The per-layer widths are stored in the entry's meta.

Stages are named ``stage1`` ... ``stageK`` from shallow to deep:

- timm models: the modules of the model's ``feature_info`` (what ``features_only`` and
  ``forward_intermediates`` return; e.g. ``blocks.0`` ... ``blocks.6`` of EfficientNet).
- torchvision models: the stage ends of :data:`TORCHVISION_STAGES` (the modules
  ``torchvision.models.feature_extraction.create_feature_extractor`` would name: ResNet
  ``layer1`` ... ``layer4``, MobileNetV2's last block of each resolution).

A model card may name its own layers with a ``layers`` field (name -> module path in the
built backbone, as a mapping or as ``[name, path]`` pairs; ``ModelCard.layers`` holds the
pairs), and a protocol config may ask for a subset by name or by module path.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from harness.cache.keys import array_digest
from harness.cache.store import STORE
from harness.config.cards import ModelCard, Preprocessing
from harness.data.transforms import describe
from harness.features import FEATURES, extract_checked, feature_key_payload, resolve_device
from harness.protocols.backbone import Backbone, make_backbone
from harness.zoo.build import model_preprocessing

if TYPE_CHECKING:
    from harness.protocols.case import CaseRun

LAYER_FEATURES_VERSION = 1
FINAL_LAYER = "pooled"
TORCHVISION_PREFIX = "model."
TORCHVISION_STAGES: dict[str, tuple[str, ...]] = {
    "resnet": ("layer1", "layer2", "layer3", "layer4"),
    "resnext": ("layer1", "layer2", "layer3", "layer4"),
    "wide_resnet": ("layer1", "layer2", "layer3", "layer4"),
    "mobilenet_v2": ("features.1", "features.3", "features.6", "features.13", "features.18"),
    "densenet": (
        "features.denseblock1",
        "features.denseblock2",
        "features.denseblock3",
        "features.norm5",
    ),
    "inception_v3": ("Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c"),
}


class LayerError(ValueError):
    """A requested layer is unknown for the model, or its stages cannot be found."""


@dataclass(frozen=True)
class LayerSource:
    """A model whose layers are extracted: its card, backbone and preprocessing."""

    card: ModelCard
    backbone: Backbone
    preprocessing: Preprocessing


def _torchvision_family(architecture: str) -> str | None:
    matches = [f for f in TORCHVISION_STAGES if architecture.startswith(f)]
    return max(matches, key=len) if matches else None


def _meta_architecture(card: ModelCard) -> nn.Module:
    """The card's architecture on the meta device (no weights, nothing downloaded)."""
    with torch.device("meta"):
        if card.library == "timm":
            import timm

            return timm.create_model(card.architecture, pretrained=False, num_classes=0)
        import torchvision

        return torchvision.models.get_model(card.architecture, weights=None)


def stage_modules(card: ModelCard) -> dict[str, str]:
    """The card's stages: name (``stage1`` ...) -> module path (see :func:`_stage_modules`)."""
    return dict(_stage_modules(card))


@lru_cache(maxsize=64)
def _stage_modules(card: ModelCard) -> tuple[tuple[str, str], ...]:
    """The card's stages: name (``stage1`` ...) -> module path in the built backbone.

    Args:
        card: The model card; a ``layers`` mapping on it (name -> module path) wins.

    Returns:
        Stage name -> module path, shallow to deep (the final ``pooled`` not included).

    Raises:
        LayerError: When the architecture's stages are unknown.
    """
    named = getattr(card, "layers", None)  # ModelCard.layers: (name, path) pairs
    if named:
        pairs = named.items() if isinstance(named, Mapping) else named
        return tuple((str(k), str(v)) for k, v in pairs)
    if card.library == "timm":
        try:
            info = getattr(_meta_architecture(card), "feature_info", None)
        except Exception as exc:  # an unknown name or a variant timm cannot build by name
            raise LayerError(f"model {card.name}: cannot list the stages: {exc}") from exc
        paths = [str(entry["module"]) for entry in info or () if "module" in entry]
        if not paths:
            raise LayerError(f"model {card.name}: timm {card.architecture} has no feature_info")
        return tuple((f"stage{i + 1}", path) for i, path in enumerate(paths))
    family = _torchvision_family(card.architecture)
    if family is None:
        raise LayerError(
            f"model {card.name}: no known stages for torchvision {card.architecture}; "
            "name module paths in the protocol's `layers`"
        )
    stages = TORCHVISION_STAGES[family]
    return tuple((f"stage{i + 1}", TORCHVISION_PREFIX + path) for i, path in enumerate(stages))


def resolve_layers(card: ModelCard, requested: Sequence[str] = ()) -> dict[str, str]:
    """Layer name -> module path for a request (empty: every stage, then ``pooled``).

    A requested entry is a stage name (``stage2``), ``pooled`` (the model's final
    features, path ``""``) or a module path of the built backbone (named by itself).

    Raises:
        LayerError: When no layers are left.
    """
    try:
        stages = stage_modules(card)
    except LayerError:
        if not requested or any(r.startswith("stage") for r in requested):
            raise
        stages = {}
    if not requested:
        return {**stages, FINAL_LAYER: ""}
    out: dict[str, str] = {}
    for name in requested:
        out[name] = "" if name == FINAL_LAYER else stages.get(name, name)
    return out


def _pool(output: Any) -> torch.Tensor:
    """One vector per image: mean over spatial positions (NCHW) or tokens (NTC)."""
    if isinstance(output, tuple | list):
        output = output[0]
    if output.ndim == 4:
        return output.mean(dim=(2, 3))
    if output.ndim == 3:
        return output.mean(dim=1)
    return torch.flatten(output, 1)


class PooledLayers(nn.Module):
    """Runs a backbone once and returns its layers' pooled outputs side by side.

    Args:
        backbone: The frozen backbone (its own output is layer ``pooled``).
        layers: Layer name -> module path (``""``: the backbone's output).
    """

    def __init__(self, backbone: nn.Module, layers: Mapping[str, str]) -> None:
        super().__init__()
        self.backbone = backbone
        self.layers = dict(layers)
        for name, path in self.layers.items():
            if path:
                try:
                    backbone.get_submodule(path)
                except AttributeError as exc:
                    raise LayerError(f"layer {name}: the backbone has no module {path!r}") from exc
        self.widths: dict[str, int] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled outputs of every layer, concatenated in the order of ``layers``."""
        captured: dict[str, torch.Tensor] = {}
        handles = []
        for name, path in self.layers.items():
            if path:
                module = self.backbone.get_submodule(path)

                def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
                    captured[name] = _pool(out)

                handles.append(module.register_forward_hook(hook))
        try:
            final = self.backbone(x)
        finally:
            for handle in handles:
                handle.remove()
        parts = [captured[n] if p else _pool(final) for n, p in self.layers.items()]
        self.widths = {
            name: int(part.shape[1]) for name, part in zip(self.layers, parts, strict=True)
        }
        return torch.cat([part.float() for part in parts], dim=1)


_MEMO: weakref.WeakKeyDictionary[Any, dict[tuple[str, str, str], dict[str, np.ndarray]]] = (
    weakref.WeakKeyDictionary()
)


def case_source(case: CaseRun) -> LayerSource:
    """The case's own model as a layer source."""
    return LayerSource(case.case.model, case.backbone(), case.preprocessing())


def reference_source(case: CaseRun, card: ModelCard) -> LayerSource:
    """Another model (e.g. the random twin) on the case's images, under its own preprocessing
    at the profile's input size (a random twin's batch norm set from the case's train split)."""
    pre = model_preprocessing(card, case.profile.input_size)
    backbone = make_backbone(
        card, lambda: case.splits()["train"].images, pre, case.profile.batch_size, case.device
    )
    return LayerSource(card, backbone, pre)


def layer_features(
    case: CaseRun,
    splits: Sequence[str] = ("train", "val", "test"),
    layers: Sequence[str] = (),
    source: LayerSource | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Pooled features of each layer of a model on the case's splits (cached, memoised).

    Args:
        case: The running case (its dataset, profile subset, device and precision).
        splits: Split names.
        layers: Layer names or module paths (empty: every stage and ``pooled``).
        source: The model (None: the case's own, :func:`case_source`).

    Returns:
        Split -> layer name -> float32 (N, C_layer) features.

    Raises:
        LayerError: On unknown layers.
    """
    source = source or case_source(case)
    resolved = resolve_layers(source.card, layers)
    layer_text = f"layers:v{LAYER_FEATURES_VERSION}:" + ",".join(
        f"{name}={path or FINAL_LAYER}" for name, path in resolved.items()
    )
    memo = _MEMO.setdefault(case, {})
    data = case.splits()
    out: dict[str, dict[str, np.ndarray]] = {}
    started = time.perf_counter()
    for split in splits:
        memo_key = (source.card.name, split, layer_text)
        if memo_key not in memo:
            memo[memo_key] = _split_layers(
                case, source, split, data[split].images, resolved, layer_text
            )
        out[split] = memo[memo_key]
    case.timings["extraction_s"] = case.timings.get("extraction_s", 0.0) + (
        time.perf_counter() - started
    )
    return out


def _split_layers(
    case: CaseRun,
    source: LayerSource,
    split: str,
    images: np.ndarray,
    layers: dict[str, str],
    layer_text: str,
) -> dict[str, np.ndarray]:
    card, dataset = source.card, case.case.dataset
    batch_size = case.profile.batch_size
    payload = feature_key_payload(
        card,
        source.backbone.weights_id,
        dataset,
        split,
        array_digest(images),
        source.preprocessing,
        layer_text,
        case.precision,
        batch_size,
    )
    entry = STORE.entry(
        FEATURES, payload, subfolders=(card.name, dataset.name), prefix=f"{split}-layers-"
    )
    device = resolve_device(case.device)

    def compute() -> tuple[np.ndarray, dict[str, Any]]:
        module = PooledLayers(source.backbone.load(), layers)
        features, decision = extract_checked(
            module,
            images,
            source.preprocessing,
            device,
            batch_size,
            desc=f"{card.name} {dataset.name}/{split} layers",
            precision=case.precision,
        )
        widths = module.widths or {name: 0 for name in layers}
        meta = {
            "model": card.name,
            "weights_sha256": source.backbone.weights_id,
            "dataset": dataset.name,
            "dataset_version": dataset.version,
            "split": split,
            "n": int(features.shape[0]),
            "dim": int(features.shape[1]) if features.ndim == 2 else 0,
            "transform": describe(source.preprocessing),
            "layer": layer_text,
            "layer_names": list(layers),
            "layer_widths": [widths[name] for name in layers],
            "batch_size": batch_size,
            "precision": decision.to_dict(),
            "device": str(device),
        }
        return features, meta

    def validate(value: tuple[np.ndarray, dict[str, Any]]) -> str | None:
        features, meta = value
        if features.shape[0] != len(images):
            return f"{features.shape[0]} rows, expected {len(images)}"
        if meta.get("layer_names") != list(layers) or sum(meta.get("layer_widths", [])) != (
            features.shape[1] if features.ndim == 2 else -1
        ):
            return "layer widths do not match the features"
        return None

    lookup = STORE.get_or_compute(
        FEATURES,
        entry,
        compute,
        validate=validate,
        describe={"model": card.name, "dataset": dataset.name, "split": split, "layers": True},
    )
    features, meta = lookup.value
    case.feature_cache[f"{split}:layers:{card.name}"] = "hit" if lookup.hit else "miss"
    bounds = np.cumsum([0, *meta["layer_widths"]])
    return {
        name: features[:, a:b]
        for name, a, b in zip(meta["layer_names"], bounds[:-1], bounds[1:], strict=True)
    }
