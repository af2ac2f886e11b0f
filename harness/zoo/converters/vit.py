"""Converters for Vision Transformer checkpoints saved by Hugging Face ``transformers`` or open_clip.

Torch is imported only inside the functions (see the package docstring).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from harness.zoo.converters import register_converter

if TYPE_CHECKING:
    import torch

    from harness.zoo.converters import StateDict

# transformers' Dinov2Model names -> timm's VisionTransformer names, per encoder layer
_LAYER = re.compile(r"^encoder\.layer\.(?P<i>\d+)\.(?P<rest>.+)$")
_LAYER_NAMES = {
    "norm1": "norm1",
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "attention.output.dense": "attn.proj",
}
_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "embeddings.register_tokens": "reg_token",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_QKV = ("query", "key", "value")


@register_converter("hf_dinov2_vit", version=1)
def hf_dinov2_vit(state: StateDict, target: Mapping[str, torch.Tensor]) -> StateDict:
    """Hugging Face ``Dinov2Model`` weights -> timm DINOv2 ViT keys (q/k/v fused, mask token dropped).

    ``save_pretrained`` of a transformers ``Dinov2Model`` writes ``model.safetensors``
    with the names of ``src/transformers/models/dinov2/modeling_dinov2.py``; the
    mapping from the original DINOv2 (= timm) names is the one
    huggingface/transformers@06fefc4d4fec6025a798bfac282af3a3884a11fc:
    src/transformers/models/dinov2/convert_dinov2_to_hf.py applies, run backwards:
    ``embeddings.cls_token`` / ``position_embeddings`` / ``patch_embeddings.projection``
    -> ``cls_token`` / ``pos_embed`` / ``patch_embed.proj``; per layer ``norm1``,
    ``norm2``, ``mlp.fc1``, ``mlp.fc2`` keep their names, ``attention.output.dense``
    -> ``attn.proj``, ``layer_scale1.lambda1`` / ``layer_scale2.lambda1`` ->
    ``ls1.gamma`` / ``ls2.gamma``, and ``attention.attention.{query,key,value}`` are
    concatenated (in that order) into ``attn.qkv``; ``layernorm`` -> ``norm``. The
    ``embeddings.mask_token`` (used only for masked training) is dropped, as are a
    ``Dinov2ForImageClassification``'s ``dinov2.`` prefix and ``classifier``. Used for
    RAD-DINO (microsoft/rad-dino), published in this format only.
    """
    import torch

    out: StateDict = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        name = key.removeprefix("dinov2.")
        if name.startswith("classifier.") or name == "embeddings.mask_token":
            continue
        if name in _TOP:
            out[_TOP[name]] = value
            continue
        match = _LAYER.match(name)
        if match is None:
            raise ValueError(f"unexpected key {key} for a Dinov2Model")
        block, rest = f"blocks.{match['i']}", match["rest"]
        if rest.startswith("attention.attention."):
            part, _, leaf = rest.removeprefix("attention.attention.").partition(".")
            qkv.setdefault((block, leaf), {})[part] = value
        elif rest.startswith(("layer_scale1.", "layer_scale2.")):
            out[f"{block}.ls{rest[len('layer_scale')]}.gamma"] = value
        else:
            module, _, leaf = rest.rpartition(".")
            if module not in _LAYER_NAMES:
                raise ValueError(f"unexpected key {key} for a Dinov2Model")
            out[f"{block}.{_LAYER_NAMES[module]}.{leaf}"] = value
    for (block, leaf), parts in qkv.items():
        missing = [p for p in _QKV if p not in parts]
        if missing:
            raise ValueError(f"{block}: attention {leaf} lacks {', '.join(missing)}")
        out[f"{block}.attn.qkv.{leaf}"] = torch.cat([parts[p] for p in _QKV])
    return out


OPEN_CLIP_TRUNK = "visual.trunk."
OPEN_CLIP_PROJECTION = "visual.head.proj.weight"
# the rest of an open_clip CLIP model: its text tower and the contrastive temperature
OPEN_CLIP_NOT_IMAGE = ("text.", "logit_scale", "logit_bias")


@register_converter("open_clip_timm_vit", version=1)
def open_clip_timm_vit(state: StateDict, target: Mapping[str, torch.Tensor]) -> StateDict:
    """open_clip checkpoint with a timm ViT image tower -> timm ViT keys (+ ``head.weight``: the projection).

    open_clip's ``TimmModel`` (mlfoundations/open_clip@0431f57237e678dd674fd09aa0e0cec2cde259f5:
    src/open_clip/timm_model.py) keeps the timm network as ``visual.trunk`` (its
    classifier reset, so no ``head`` keys) and the projection to the joint embedding
    as ``visual.head.proj`` (``timm_proj: linear``, no bias by default). timm's own
    filter reads the same layout (huggingface/pytorch-image-models@v1.0.31:
    timm/models/vision_transformer.py, ``checkpoint_filter_fn``, the
    ``visual.trunk.`` branch). ``visual.trunk.`` is stripped; the projection becomes
    ``head.weight`` when the architecture keeps a head (``feature_layer:
    image_embedding``) and is dropped when the features are the trunk's pooled token;
    the text tower (``text.*``) and ``logit_scale`` are dropped. A DDP ``module.``
    prefix is removed first. Used for BiomedCLIP
    (microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224, ``open_clip_pytorch_model.bin``).
    """
    out: StateDict = {}
    unknown: list[str] = []
    projection = None
    for key, value in state.items():
        name = key.removeprefix("module.")
        if name.startswith(OPEN_CLIP_TRUNK):
            out[name[len(OPEN_CLIP_TRUNK) :]] = value
        elif name == OPEN_CLIP_PROJECTION:
            projection = value
        elif not name.startswith(OPEN_CLIP_NOT_IMAGE):
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"keys {unknown[:6]} ({len(unknown)} in all) are neither the timm image tower "
            f"({OPEN_CLIP_TRUNK}*), its projection ({OPEN_CLIP_PROJECTION}) nor the text tower"
        )
    if not out:
        raise ValueError(f"no {OPEN_CLIP_TRUNK}* keys: not an open_clip model with a timm tower")
    if "head.weight" in target:
        if projection is None:
            raise ValueError(
                f"the architecture keeps the image embedding head, but the checkpoint has no "
                f"{OPEN_CLIP_PROJECTION}"
            )
        out["head.weight"] = projection
    return out
