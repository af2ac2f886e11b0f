"""Architecture variants: a timm / torchvision network changed to compute another framework's function.

Some weights were trained in a framework whose version of a network differs from the
PyTorch one in details that change what it computes, not its parameters: Keras'
``ResNet50`` (``keras.applications``, "v1") puts a downsampling block's stride in its
first 1x1 convolution, where timm / torchvision ResNet-50 (v1.5) put it in the 3x3, and
every Keras ``BatchNormalization`` of ``keras.applications`` uses epsilon 1.001e-5
(PyTorch: 1e-5). A card names such a variant as its architecture
(``architecture: {library: timm, name: keras_resnet50}``); :func:`harness.zoo.build`
builds the base network and applies the variant's changes, so the variant is part of
the card's fingerprint (and so of every cache key) like any other architecture name.

The parameters keep the base network's names and shapes, so a converter maps foreign
weights onto the base network's state dict. Torch is imported only when building.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

# keras.applications builds every BatchNormalization with epsilon=1.001e-5
KERAS_BN_EPSILON = 1.001e-5


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
