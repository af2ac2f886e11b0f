"""Converters for self-supervised ImageNet checkpoints (MoCo, PCL, SimSiam, SwAV family, PyContrast, MAE).

Each converter documents the on-disk layout it reads and the repository code it was
matched against (``owner/repo@commit:path``). Torch is not imported here (see the
package docstring).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from harness.zoo.converters import register_converter

if TYPE_CHECKING:
    import torch

    from harness.zoo.converters import StateDict


def encoder_keys(state: StateDict, prefixes: tuple[str, ...], heads: tuple[str, ...]) -> StateDict:
    """Keep the keys under the first prefix present, without it, and drop the head modules.

    Args:
        state: The unwrapped checkpoint.
        prefixes: Candidate prefixes of the encoder, most specific first.
        heads: Top-level module names of the encoder to drop (e.g. ``fc``).

    Raises:
        ValueError: When no key starts with any of ``prefixes``.
    """
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
            if not name.startswith(tuple(f"{head}." for head in heads)):
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

    PCL v1/v2 (salesforce/PCL@964da1fb7c0546e8ce55627fa3c0debde4b7e456:main_pcl.py and
    ``pcl/builder.py``) save the same structure (``encoder_q`` / ``encoder_k`` built with
    ``num_classes=dim``, an MLP ``fc`` for v2, ``queue`` / ``queue_ptr``), and so do the
    MoCo-CXR ResNets (stanfordmlgroup/MoCo-CXR@d433acabe6518b332a1345a6a1fed49f0c23c253:
    moco_pretraining/moco/main_moco.py).
    """
    prefixes = ("module.encoder_q.", "encoder_q.", "module.base_encoder.", "base_encoder.")
    return encoder_keys(state, prefixes, ("fc",))


@register_converter("simsiam_resnet", version=1)
def simsiam_resnet(state: StateDict, target: Mapping[str, torch.Tensor]) -> StateDict:
    """SimSiam ResNet training checkpoint -> torchvision ResNet keys, projector dropped.

    facebookresearch/simsiam saves ``{"epoch", "arch", "state_dict", "optimizer"}``
    with the DDP-wrapped SimSiam module: the encoder under ``module.encoder.`` (a
    torchvision ResNet whose ``fc`` is the 3-layer projector) and the predictor under
    ``module.predictor.``. Like its ``main_lincls.py``, only the encoder without ``fc``
    is kept.
    """
    return encoder_keys(state, ("module.encoder.", "encoder."), ("fc",))


@register_converter("swav_resnet", version=1)
def swav_resnet(state: StateDict, target: Mapping[str, torch.Tensor]) -> StateDict:
    """SwAV / DeepCluster-v2 / SeLa-v2 ResNet -> torchvision ResNet keys, heads dropped.

    facebookresearch/swav releases (``swav_800ep_pretrain.pth.tar`` and the other
    ``dl.fbaipublicfiles.com/deepcluster`` files) are the DDP-wrapped model's plain
    state dict (training checkpoints wrap it in ``state_dict``, which ``unwrap``
    follows): every key starts with ``module.``, the trunk uses torchvision's names
    (its extra zero padding before ``conv1`` has no parameters), and the clustering
    heads are ``projection_head.*`` and ``prototypes.*`` (``prototypes.prototypesN.*``
    with several prototype sets). The repository's ``hubconf.py``
    (facebookresearch/swav@06b1b7cbaf6ba2a792300d79c7299db98b93b7f9:hubconf.py) strips
    ``module.`` and loads the rest into a torchvision ResNet; here the heads are dropped
    explicitly so that the strict key check still applies to everything else.
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


@register_converter("pycontrast_resnet", version=1)
def pycontrast_resnet(state: StateDict, target: Mapping[str, torch.Tensor]) -> StateDict:
    """PyContrast (InsDis, PIRL, InfoMin, ...) checkpoint -> torchvision ResNet keys, heads dropped.

    HobbitLong/PyContrast@84f94eabec4f031194c543579476ae52ea647b90 saves, in
    ``pycontrast/learning/contrast_trainer.py`` (``save``), ``{"model", "contrast",
    "optimizer", "epoch"}`` plus ``"model_ema"`` for the momentum-encoder methods
    (InfoMin, MoCo); the cards unwrap ``model``. That is the DDP-wrapped
    ``RGBSingleHead`` / ``RGBMultiHeads`` of ``pycontrast/networks/build_backbone.py``:
    the ResNet under ``module.encoder.`` (torchvision's names, no ``fc`` at all), the
    projection under ``module.head.`` and, for PIRL, the jigsaw head under
    ``module.head_jig.`` (``fc1`` / ``fc2``). ``contrast`` holds the memory bank.
    Like ``load_encoder_weights`` in ``pycontrast/learning/linear_trainer.py`` only the
    encoder is kept; every head is dropped.
    """
    return encoder_keys(state, ("module.encoder.", "encoder."), ("fc",))


MAE_DECODER = ("decoder_embed.", "decoder_blocks.", "decoder_norm.", "decoder_pred.")


@register_converter("mae_vit", version=1)
def mae_vit(state: StateDict, target: Mapping[str, torch.Tensor]) -> StateDict:
    """MAE pre-training checkpoint -> timm ViT keys, decoder and mask token dropped.

    facebookresearch/mae releases ``{"model": ...}`` (its training checkpoints also
    pickle ``args``, an argparse namespace, which ``weights_only`` loading refuses). The
    encoder's keys are timm's own (``cls_token``, ``pos_embed``, ``patch_embed.proj.*``,
    ``blocks.N.*``, ``norm.*``); full checkpoints add the decoder (``decoder_embed``,
    ``decoder_pos_embed``, ``decoder_blocks``, ``decoder_norm``, ``decoder_pred``) and
    ``mask_token``, which are dropped. Encoder-only releases pass through unchanged.
    """
    return {
        key: value
        for key, value in state.items()
        if key not in ("mask_token", "decoder_pos_embed") and not key.startswith(MAE_DECODER)
    }
