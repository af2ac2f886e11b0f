"""Architecture variants: a timm / torchvision network changed to compute another framework's function.

Some weights were trained in a framework whose version of a network differs from the
PyTorch one in details that change what it computes, not its parameters: Keras'
``ResNet50`` (``keras.applications``, "v1") puts a downsampling block's stride in its
first 1x1 convolution, where timm / torchvision ResNet-50 (v1.5) put it in the 3x3,
Keras' ResNet / DenseNet batch norms use epsilon 1.001e-5 (PyTorch: 1e-5), and Keras'
InceptionV3 averages its 'same' pools over the pixels inside the image, where timm
counts the zero padding. Some add a module the base network lacks: open_clip's
bias-free image projection on a timm ViT (BiomedCLIP). A card names such a variant as its architecture
(``architecture: {library: timm, name: keras_resnet50}``); :func:`harness.zoo.build`
builds the base network and applies the variant's changes, so the variant is part of
the card's fingerprint (and so of every cache key) like any other architecture name.

The parameters keep the base network's names and shapes (an added head is the timm
``head``), so a converter maps foreign weights onto the base network's state dict. Torch is imported only when building.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

# open_clip's BiomedCLIP joint image-text embedding size (open_clip_config.json embed_dim)
OPEN_CLIP_EMBED_DIM = 512
# keras.applications builds every BatchNormalization of ResNet / DenseNet with
# epsilon=1.001e-5; InceptionV3's take Keras' default, 1e-3
KERAS_BN_EPSILON = 1.001e-5
KERAS_DEFAULT_BN_EPSILON = 1e-3


@dataclass(frozen=True)
class ArchitectureVariant:
    """A base architecture and the in-place changes that make it the variant.

    Attributes:
        name: the architecture name cards use.
        library: the library of the base architecture (a card must name the same).
        base: the base architecture's name in that library.
        adapt: changes a freshly built base network in place (strides, epsilons).
        description: one line: what differs from the base and why.
    """

    name: str
    library: str
    base: str
    adapt: Callable[[nn.Module], None]
    description: str


_VARIANTS: dict[str, ArchitectureVariant] = {}


def register_variant(variant: ArchitectureVariant) -> ArchitectureVariant:
    """Register ``variant`` under its name.

    Raises:
        ValueError: When the name is taken.
    """
    if variant.name in _VARIANTS:
        raise ValueError(f"architecture variant {variant.name!r} is already registered")
    _VARIANTS[variant.name] = variant
    return variant


def get_variant(name: str) -> ArchitectureVariant | None:
    """Return the variant registered as ``name``, or None for a plain architecture name."""
    return _VARIANTS.get(name)


def variant_names() -> tuple[str, ...]:
    """Return the registered variant names, sorted."""
    return tuple(sorted(_VARIANTS))


def set_batchnorm_eps(module: nn.Module, eps: float) -> None:
    """Set ``eps`` of every batch-norm layer in ``module``."""
    from torch import nn

    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.eps = eps


def keras_resnet_strides(module: nn.Module) -> None:
    """Move each downsampling bottleneck's stride from its 3x3 conv to its first 1x1 conv.

    keras-team/keras@040582fc160b1080954ddc1f554dd70fbbb1da5a:keras/src/applications/resnet.py
    (``residual_block_v1``): ``{name}_0_conv`` (the shortcut) and ``{name}_1_conv`` both
    take ``strides=stride`` and the 3x3 ``{name}_2_conv`` is ``padding="same"`` at stride 1.
    A 1x1 convolution at stride 2 with no padding samples the same pixels as Keras'
    'valid' one, and at stride 1 'same' for 3x3 is PyTorch's padding 1, so only the
    strides move. timm's stem (7x7 / 2, padding 3; max-pool 3 / 2, padding 1) equals
    Keras' ``ZeroPadding2D(3)`` + 'valid' conv and ``ZeroPadding2D(1)`` + 'valid' max-pool:
    the pool follows a ReLU, so zero padding and PyTorch's -inf padding give the same maxima.
    """
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        block = getattr(module, stage)[0]
        stride = block.conv2.stride
        if stride != (1, 1):
            block.conv1.stride, block.conv2.stride = stride, (1, 1)


def _adapt_keras_resnet50(module: nn.Module) -> None:
    keras_resnet_strides(module)
    set_batchnorm_eps(module, KERAS_BN_EPSILON)


def _adapt_keras_densenet(module: nn.Module) -> None:
    set_batchnorm_eps(module, KERAS_BN_EPSILON)


def _exclude_pad_from_average(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: turn a zero-padded 3x3 / 1 average into one over the valid pixels only.

    timm pools with ``F.avg_pool2d(x, 3, 1, padding=1)``, which divides every window by
    9 (``count_include_pad=True``); Keras' ``AveragePooling2D(padding="same")`` (TF's
    'SAME' average) divides by the number of pixels inside the image (4 at a corner,
    6 along an edge). Dividing timm's average by the average of an all-ones image
    pooled the same way turns the first into the second.
    """
    import torch.nn.functional as F

    (x,) = args
    inside = F.avg_pool2d(x.new_ones(1, 1, *x.shape[-2:]), 3, stride=1, padding=1)
    return (x / inside,)


def keras_inception_pools(module: nn.Module) -> None:
    """Make every pool branch of a timm ``InceptionV3`` average like Keras ('same', padding excluded).

    keras-team/keras@040582fc160b1080954ddc1f554dd70fbbb1da5a:keras/src/applications/inception_v3.py
    pools ``mixed0``-``mixed2``, ``mixed4``-``mixed7`` and ``mixed9``/``mixed10`` with
    ``AveragePooling2D((3, 3), strides=(1, 1), padding="same")`` before the branch's
    1x1 ``conv2d_bn``; timm (as torchvision) includes the zero padding in the average.
    The hook on each ``branch_pool`` convolution rescales its input (see
    :func:`_exclude_pad_from_average`); parameters and names stay timm's. Everything
    else already matches Keras: 'valid' convolutions are PyTorch's padding 0, 'same'
    ones at stride 1 with odd kernels are symmetric (timm's ``padding=k // 2``), max
    pools are 'valid', and BN has no scale in Keras (the converter sets weight 1).
    """
    from timm.models.inception_v3 import InceptionA, InceptionC, InceptionE

    blocks = [m for m in module.modules() if isinstance(m, (InceptionA, InceptionC, InceptionE))]
    if not blocks:
        raise TypeError(f"{type(module).__name__} has no Inception blocks with an average pool")
    for block in blocks:
        block.branch_pool.register_forward_pre_hook(_exclude_pad_from_average)


def _adapt_keras_inception_v3(module: nn.Module) -> None:
    keras_inception_pools(module)
    set_batchnorm_eps(module, KERAS_DEFAULT_BN_EPSILON)


def open_clip_projection(module: nn.Module, embed_dim: int = OPEN_CLIP_EMBED_DIM) -> None:
    """Give a timm ViT open_clip's image projection as its head: a bias-free linear map to ``embed_dim``.

    mlfoundations/open_clip@0431f57237e678dd674fd09aa0e0cec2cde259f5:src/open_clip/timm_model.py
    (``TimmModel``, ``proj="linear"``, ``proj_bias=False``) applies
    ``nn.Linear(num_features, embed_dim, bias=False)`` to the trunk's pooled output
    (``timm_pool: ""`` keeps the trunk's own pooling: a ViT's class token after the
    final norm). As the timm head, the projection is the ``image_embedding`` feature
    layer; any other feature layer replaces it (``reset_classifier``).
    """
    from torch import nn

    module.reset_classifier(embed_dim)
    module.head = nn.Linear(module.num_features, embed_dim, bias=False)


register_variant(
    ArchitectureVariant(
        name="keras_resnet50",
        library="timm",
        base="resnet50",
        adapt=_adapt_keras_resnet50,
        description="keras.applications ResNet50 (v1): stride in the first 1x1 conv, "
        "batch-norm eps 1.001e-5 (conv biases are folded into the batch norms by the converter)",
    )
)
register_variant(
    ArchitectureVariant(
        name="keras_densenet121",
        library="torchvision",
        base="densenet121",
        adapt=_adapt_keras_densenet,
        description="keras.applications DenseNet121: batch-norm eps 1.001e-5",
    )
)
register_variant(
    ArchitectureVariant(
        name="keras_inception_v3",
        library="timm",
        base="inception_v3",
        adapt=_adapt_keras_inception_v3,
        description="keras.applications InceptionV3: 'same' average pools exclude the "
        "padding, batch-norm eps 1e-3 (Keras' BN has no scale: the converter sets weight 1)",
    )
)
register_variant(
    ArchitectureVariant(
        name="open_clip_vit_base_patch16_224",
        library="timm",
        base="vit_base_patch16_224",
        adapt=open_clip_projection,
        description="open_clip image tower with a timm vit_base_patch16_224 trunk (BiomedCLIP): "
        "head = bias-free linear projection to the 512-d joint embedding",
    )
)
