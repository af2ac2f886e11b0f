"""Converters for ``keras.applications`` weights read from ``.h5`` (RadImageNet).

:func:`harness.zoo.keras_h5.read_keras_h5` gives ``{"<layer>/<weight>": tensor}`` in
Keras' layouts; these converters name every layer the Keras network has, so a file
missing one fails naming it (and the model and file, which :func:`apply_converter`
adds), and a file with layers the network lacks (a classifier top) fails listing them.

Keras to PyTorch, for every converter here:

* convolution kernels are HWIO, PyTorch's OIHW;
* a batch norm's ``gamma`` / ``beta`` / ``moving_mean`` / ``moving_variance`` are
  ``weight`` / ``bias`` / ``running_mean`` / ``running_var``; the epsilon (1.001e-5,
  InceptionV3's 1e-3) is the architecture variant's (:mod:`harness.zoo.architectures`);
  InceptionV3's batch norms have no ``gamma`` (``scale=False``): weight 1;
* a convolution's bias (ResNet50 has them, DenseNet121 has none) is folded into the
  batch norm after it: ``BN(conv(x) + b)`` equals ``BN'(conv(x))`` with
  ``running_mean' = running_mean - b``;
* ``keras.applications`` models take BGR images (``preprocess_input`` in "caffe" mode
  flips RGB to BGR); the first convolution's input channels are reversed so the
  PyTorch model takes RGB like every other model here.

Torch is not imported at the top (see the package docstring).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from harness.zoo.converters import register_converter

if TYPE_CHECKING:
    import torch

    from harness.zoo.converters import StateDict

BN_WEIGHTS = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
RESNET50_STAGES = ((2, 3), (3, 4), (4, 6), (5, 3))  # keras conv<stage>, blocks
DENSENET121_STAGES = ((2, 6), (3, 12), (4, 24), (5, 16))


class _KerasLayers:
    """The layers of a Keras weight dict, taken one by one; reports missing and left-over ones."""

    def __init__(self, state: Mapping[str, torch.Tensor]) -> None:
        self.layers: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            layer, _, leaf = key.rpartition("/")
            self.layers.setdefault(layer, {})[leaf] = value

    def take(self, layer: str, *leaves: str) -> dict[str, torch.Tensor]:
        weights = self.layers.pop(layer, None)
        if weights is None:
            raise ValueError(f"the .h5 file has no weights for Keras layer {layer!r}")
        absent = [leaf for leaf in leaves if leaf not in weights]
        extra = sorted(set(weights) - set(leaves))
        if absent or extra:
            raise ValueError(
                f"Keras layer {layer!r} has weights {sorted(weights)}, expected {list(leaves)}"
            )
        return weights

    def finish(self) -> None:
        if self.layers:
            left = sorted(self.layers)
            raise ValueError(
                f"the .h5 file has layers the network lacks: {left[:6]}"
                f"{' ...' if len(left) > 6 else ''} ({len(left)} in all; include_top=True file?)"
            )


def _kernel(kernel: torch.Tensor, bgr_input: bool = False) -> torch.Tensor:
    out = kernel.permute(3, 2, 0, 1)  # HWIO -> OIHW
    if bgr_input:
        out = out.flip(1)
    return out.contiguous()


def _conv_bn(
    layers: _KerasLayers,
    conv: str,
    bn: str,
    conv_key: str,
    bn_key: str,
    *,
    conv_bias: bool,
    bgr_input: bool = False,
) -> Iterator[tuple[str, torch.Tensor]]:
    """A Keras conv + batch norm as PyTorch ``conv_key.weight`` and ``bn_key.*``."""
    conv_weights = layers.take(conv, "kernel", "bias") if conv_bias else layers.take(conv, "kernel")
    bn_weights = layers.take(bn, *BN_WEIGHTS)
    yield f"{conv_key}.weight", _kernel(conv_weights["kernel"], bgr_input)
    for leaf, name in BN_WEIGHTS.items():
        value = bn_weights[leaf]
        if leaf == "moving_mean" and conv_bias:
            value = value - conv_weights["bias"]
        yield f"{bn_key}.{name}", value.clone()


def keras_resnet50_keys(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Keras ResNet50 weights -> timm ``resnet50`` keys (see :func:`keras_resnet50`)."""
    layers = _KerasLayers(state)
    out: StateDict = dict(
        _conv_bn(layers, "conv1_conv", "conv1_bn", "conv1", "bn1", conv_bias=True, bgr_input=True)
    )
    for stage, blocks in RESNET50_STAGES:
        for block in range(1, blocks + 1):
            keras = f"conv{stage}_block{block}"
            torch_block = f"layer{stage - 1}.{block - 1}"
            if block == 1:
                out.update(
                    _conv_bn(
                        layers,
                        f"{keras}_0_conv",
                        f"{keras}_0_bn",
                        f"{torch_block}.downsample.0",
                        f"{torch_block}.downsample.1",
                        conv_bias=True,
                    )
                )
            for index in (1, 2, 3):
                out.update(
                    _conv_bn(
                        layers,
                        f"{keras}_{index}_conv",
                        f"{keras}_{index}_bn",
                        f"{torch_block}.conv{index}",
                        f"{torch_block}.bn{index}",
                        conv_bias=True,
                    )
                )
    layers.finish()
    return out


@register_converter("keras_resnet50", version=1)
def keras_resnet50(state: StateDict, target: Mapping[str, torch.Tensor]) -> StateDict:
    """keras.applications ResNet50 ``.h5`` (include_top=False) -> timm resnet50 keys (architecture keras_resnet50).

    Layer names as keras-team/keras@040582fc160b1080954ddc1f554dd70fbbb1da5a:
    keras/src/applications/resnet.py builds them: the stem ``conv1_conv`` / ``conv1_bn``,
    then ``conv{2..5}_block{n}_{1,2,3}_conv`` / ``_bn`` with the shortcut
    ``conv{s}_block1_0_conv`` / ``_0_bn`` (3, 4, 6, 3 blocks). Keras stage ``conv{s}``
    block ``n`` is timm's ``layer{s-1}.{n-1}``; ``_0_`` is ``downsample.0`` / ``.1``.
    Every convolution has a bias, folded into the batch norm after it. The card must
    name the ``keras_resnet50`` architecture: the keys are timm's, the strides Keras'.
    """
    return keras_resnet50_keys(state)


def keras_densenet121_keys(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Keras DenseNet121 weights -> torchvision ``densenet121`` keys (see :func:`keras_densenet121`)."""
    layers = _KerasLayers(state)
    out: StateDict = {}

    def bn(keras: str, key: str) -> None:
        weights = layers.take(keras, *BN_WEIGHTS)
        out.update({f"{key}.{name}": weights[leaf].clone() for leaf, name in BN_WEIGHTS.items()})

    def conv(keras: str, key: str, bgr_input: bool = False) -> None:
        out[f"{key}.weight"] = _kernel(layers.take(keras, "kernel")["kernel"], bgr_input)

    conv("conv1/conv", "features.conv0", bgr_input=True)
    bn("conv1/bn", "features.norm0")
    for stage, blocks in DENSENET121_STAGES:
        for block in range(1, blocks + 1):
            keras = f"conv{stage}_block{block}"
            torch_layer = f"features.denseblock{stage - 1}.denselayer{block}"
            bn(f"{keras}_0_bn", f"{torch_layer}.norm1")
            conv(f"{keras}_1_conv", f"{torch_layer}.conv1")
            bn(f"{keras}_1_bn", f"{torch_layer}.norm2")
            conv(f"{keras}_2_conv", f"{torch_layer}.conv2")
        if stage < 5:
            bn(f"pool{stage}_bn", f"features.transition{stage - 1}.norm")
            conv(f"pool{stage}_conv", f"features.transition{stage - 1}.conv")
    bn("bn", "features.norm5")
    layers.finish()
    return out


@register_converter("keras_densenet121", version=1)
def keras_densenet121(state: StateDict, target: Mapping[str, torch.Tensor]) -> StateDict:
    """keras.applications DenseNet121 ``.h5`` (include_top=False) -> torchvision densenet121 keys (architecture keras_densenet121).

    Layer names as keras-team/keras@cb6ece3e2ead7baec874cb71e579fbf310b1b05c:
    keras/src/applications/densenet.py builds them: the stem ``conv1/conv`` / ``conv1/bn``;
    dense layer ``n`` of stage ``conv{s}`` is ``conv{s}_block{n}_0_bn``, ``_1_conv``,
    ``_1_bn``, ``_2_conv`` (torchvision ``denseblock{s-1}.denselayer{n}`` ``norm1``,
    ``conv1``, ``norm2``, ``conv2``); transition ``pool{s}_bn`` / ``pool{s}_conv``
    (``transition{s-1}.norm`` / ``.conv``); the final ``bn`` (``norm5``). No convolution
    has a bias. The card must name the ``keras_densenet121`` architecture (eps 1.001e-5).
    """
    return keras_densenet121_keys(state)


# timm InceptionV3 conv-bn blocks (``ConvNormAct``) in the order keras.applications
# creates its ``conv2d_bn`` layers: Keras numbers them ``conv2d``, ``conv2d_1``, ...
_INCEPTION_A = (
    "branch1x1",
    "branch5x5_1",
    "branch5x5_2",
    "branch3x3dbl_1",
    "branch3x3dbl_2",
    "branch3x3dbl_3",
    "branch_pool",
)
_INCEPTION_B = ("branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3")
_INCEPTION_C = (
    "branch1x1",
    "branch7x7_1",
    "branch7x7_2",
    "branch7x7_3",
    *(f"branch7x7dbl_{i}" for i in range(1, 6)),
    "branch_pool",
)
_INCEPTION_D = ("branch3x3_1", "branch3x3_2", *(f"branch7x7x3_{i}" for i in range(1, 5)))
_INCEPTION_E = (
    "branch1x1",
    "branch3x3_1",
    "branch3x3_2a",
    "branch3x3_2b",
    "branch3x3dbl_1",
    "branch3x3dbl_2",
    "branch3x3dbl_3a",
    "branch3x3dbl_3b",
    "branch_pool",
)
INCEPTION_V3_BLOCKS: tuple[str, ...] = (
    "Conv2d_1a_3x3",
    "Conv2d_2a_3x3",
    "Conv2d_2b_3x3",
    "Conv2d_3b_1x1",
    "Conv2d_4a_3x3",
    *(f"{mixed}.{b}" for mixed in ("Mixed_5b", "Mixed_5c", "Mixed_5d") for b in _INCEPTION_A),
    *(f"Mixed_6a.{b}" for b in _INCEPTION_B),
    *(
        f"{mixed}.{b}"
        for mixed in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e")
        for b in _INCEPTION_C
    ),
    *(f"Mixed_7a.{b}" for b in _INCEPTION_D),
    *(f"{mixed}.{b}" for mixed in ("Mixed_7b", "Mixed_7c") for b in _INCEPTION_E),
)
_NUMBERED = re.compile(r"(?P<kind>conv2d|batch_normalization)(?:_(?P<n>\d+))?")
KERAS_BN_NO_SCALE = ("beta", "moving_mean", "moving_variance")


def _numbered_layers(layers: _KerasLayers, kind: str) -> list[str]:
    """Keras' auto-named ``kind`` layers in creation order (``kind`` is number 0, ``kind_1`` is 1, ...)."""
    found: list[tuple[int, str]] = []
    for name in layers.layers:
        match = _NUMBERED.fullmatch(name)
        if match and match["kind"] == kind:
            found.append((int(match["n"] or 0), name))
    return [name for _, name in sorted(found)]


def keras_inception_v3_keys(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Keras InceptionV3 weights -> timm ``inception_v3`` keys (see :func:`keras_inception_v3`)."""
    import torch

    layers = _KerasLayers(state)
    convs = _numbered_layers(layers, "conv2d")
    norms = _numbered_layers(layers, "batch_normalization")
    wanted = len(INCEPTION_V3_BLOCKS)
    if len(convs) != wanted or len(norms) != wanted:
        raise ValueError(
            f"expected {wanted} auto-named conv2d_N and batch_normalization_N layers "
            f"(keras.applications InceptionV3), found {len(convs)} and {len(norms)}"
        )
    out: StateDict = {}
    for index, (block, conv, bn) in enumerate(zip(INCEPTION_V3_BLOCKS, convs, norms, strict=True)):
        kernel = layers.take(conv, "kernel")["kernel"]
        out[f"{block}.conv.weight"] = _kernel(kernel, bgr_input=index == 0)
        weights = layers.take(bn, *KERAS_BN_NO_SCALE)
        out[f"{block}.bn.weight"] = torch.ones_like(weights["beta"])  # scale=False
        for leaf in KERAS_BN_NO_SCALE:
            out[f"{block}.bn.{BN_WEIGHTS[leaf]}"] = weights[leaf].clone()
    layers.finish()
    return out


@register_converter("keras_inception_v3", version=1)
def keras_inception_v3(state: StateDict, target: Mapping[str, torch.Tensor]) -> StateDict:
    """keras.applications InceptionV3 ``.h5`` (include_top=False) -> timm inception_v3 keys (architecture keras_inception_v3).

    keras-team/keras@040582fc160b1080954ddc1f554dd70fbbb1da5a:keras/src/applications/inception_v3.py
    builds every convolution with ``conv2d_bn(..., name=None)``: a bias-free ``Conv2D``
    and a ``BatchNormalization(scale=False)`` (weights ``beta``, ``moving_mean``,
    ``moving_variance``; no ``gamma``, so the PyTorch weight is 1) that Keras names
    ``conv2d_N`` / ``batch_normalization_N`` by creation order (TF 2 Keras starts at
    ``conv2d``, Keras 2.2 at ``conv2d_1``; a session that built other layers first
    starts later). The layers are therefore sorted by that number, not by the file's
    layer order, and paired with timm's conv-bn blocks in Keras' creation order
    (:data:`INCEPTION_V3_BLOCKS`: stem, ``mixed0``-``mixed10`` = timm
    ``Mixed_5b``-``Mixed_7c``, branches in the order the Keras code builds them, which
    is timm's attribute order). A missing or extra conv / batch norm fails with the
    counts; a shape that does not fit fails in the strict load naming the key.
    """
    return keras_inception_v3_keys(state)
