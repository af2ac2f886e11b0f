"""Feature inversion with a deep image prior: how much of an image a model's features keep.

SSL_medicalimaging's procedure (jonahanton/SSL_medicalimaging@77fceef:reconstruction.py,
network in reconstruction/skip.py and reconstruction/common.py, after Zhao et al. 2021,
"What makes instance discrimination good for transfer learning?", and Ulyanov et al.
2018, "Deep image prior"):

* target: the backbone's last spatial feature map (ResNet ``layer4``) of the image,
  resized (bicubic) and centre-cropped to 224 px, pixels in [0, 1];
* generator: an encoder-decoder with skip connections (``skip``) fed a fixed noise
  tensor of 32 channels, uniform in [0, 0.1), at 256 px; its output is cropped to 224 px;
  six levels with 16, 32, 64, 128, 128, 128 channels down and up, 4 skip channels,
  filters 7, 7, 5, 5, 3, 3, average-pool downsampling, nearest upsampling, batch norm,
  LeakyReLU(0.2), zero padding, no sigmoid; the network stays in training mode;
* objective: MSE between the target and the backbone's features of the generator's
  output, minimised over the generator's weights by Adam (lr 0.001) for 1001 steps (its
  loop ``while n_iter <= 1000``);
* result: the last output clipped to [0, 1].

This module rebuilds that network (same layer sequence and sizes) and loop. The
backbone sees ``(x - mean) / std`` with the model's statistics; with mean 0 and std 1
it sees raw [0, 1] pixels, as the peer's un-normalised backbones do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PriorSpec:
    """The generator's architecture (SSL_medicalimaging's values by default).

    Attributes:
        channels_down: Channels of each level's encoder convolutions.
        channels_up: Channels of each level's decoder convolutions.
        channels_skip: Channels of each level's skip branch (0: none).
        filters_down: Kernel size of each level's encoder convolutions.
        filters_up: Kernel size of each level's decoder convolution.
        input_depth: Channels of the noise input.
        noise_scale: The noise is uniform in ``[0, noise_scale)``.
    """

    channels_down: tuple[int, ...] = (16, 32, 64, 128, 128, 128)
    channels_up: tuple[int, ...] = (16, 32, 64, 128, 128, 128)
    channels_skip: tuple[int, ...] = (4, 4, 4, 4, 4, 4)
    filters_down: tuple[int, ...] = (7, 7, 5, 5, 3, 3)
    filters_up: tuple[int, ...] = (7, 7, 5, 5, 3, 3)
    input_depth: int = 32
    noise_scale: float = 0.1

    def __post_init__(self) -> None:
        lengths = {
            len(self.channels_down),
            len(self.channels_up),
            len(self.channels_skip),
            len(self.filters_down),
            len(self.filters_up),
        }
        if len(lengths) != 1 or not self.channels_down:
            raise ValueError("PriorSpec: every per-level tuple must have the same, non-zero length")

    @property
    def depth(self) -> int:
        """Number of levels (each halves, then doubles, the resolution)."""
        return len(self.channels_down)

    def input_size(self, image_size: int) -> int:
        """Side of the noise input: the smallest multiple of ``2 ** depth`` >= the image's
        (256 for the peer's 224 px images and 6 levels)."""
        unit = 2**self.depth
        return -(-image_size // unit) * unit


def _conv(cin: int, cout: int, kernel: int, downsample: bool = False) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, padding=(kernel - 1) // 2)]
    if downsample:
        layers.append(nn.AvgPool2d(2, 2))
    return layers


def _norm_act(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.LeakyReLU(0.2)]


class _Level(nn.Module):
    """One level of the skip network: a skip branch beside a deeper branch, then a merge."""

    def __init__(self, spec: PriorSpec, level: int, in_channels: int) -> None:
        super().__init__()
        down = spec.channels_down[level]
        up = spec.channels_up[level]
        skip = spec.channels_skip[level]
        self.skip = nn.Sequential(*_conv(in_channels, skip, 1), *_norm_act(skip)) if skip else None
        inner: list[nn.Module] = []
        if level + 1 < spec.depth:
            inner = [_Level(spec, level + 1, down)]
        deep_out = spec.channels_up[level + 1] if inner else down
        self.deeper = nn.Sequential(
            *_conv(in_channels, down, spec.filters_down[level], downsample=True),
            *_norm_act(down),
            *_conv(down, down, spec.filters_down[level]),
            *_norm_act(down),
            *inner,
            nn.Upsample(scale_factor=2, mode="nearest"),
        )
        merged = skip + deep_out
        self.merge = nn.Sequential(
            nn.BatchNorm2d(merged),
            *_conv(merged, up, spec.filters_up[level]),
            *_norm_act(up),
            *_conv(up, up, 1),
            *_norm_act(up),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deep = self.deeper(x)
        if self.skip is None:
            return self.merge(deep)
        side = self.skip(x)
        height = min(side.shape[2], deep.shape[2])
        width = min(side.shape[3], deep.shape[3])
        parts = [_centre(side, height, width), _centre(deep, height, width)]
        return self.merge(torch.cat(parts, dim=1))


def _centre(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    top = (x.shape[2] - height) // 2
    left = (x.shape[3] - width) // 2
    return x[:, :, top : top + height, left : left + width]


class SkipPrior(nn.Module):
    """The deep-image-prior generator: noise (1, input_depth, S, S) -> image (1, 3, S, S)."""

    def __init__(self, spec: PriorSpec, out_channels: int = 3) -> None:
        super().__init__()
        self.body = _Level(spec, 0, spec.input_depth)
        self.head = nn.Conv2d(spec.channels_up[0], out_channels, 1)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(noise))


@dataclass
class Inversion:
    """What :func:`invert` returns.

    Attributes:
        image: The reconstruction, (3, H, W) float32 in [0, 1], on the CPU.
        losses: The feature loss of every step (before that step's update).
        parameters: The generator's parameter count.
    """

    image: torch.Tensor
    losses: list[float]
    parameters: int


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Switch off gradients of ``module``'s parameters, restoring the flags afterwards."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def invert(
    features: FeatureFn,
    image: torch.Tensor,
    steps: int,
    lr: float = 1e-3,
    spec: PriorSpec | None = None,
    seed: int = 0,
    frozen_modules: Sequence[nn.Module] = (),
) -> Inversion:
    """Reconstruct ``image`` from ``features(image)`` with a deep image prior.

    Args:
        features: Maps a (B, 3, H, W) batch in [0, 1] to features (differentiable).
        image: (3, H, W) float in [0, 1], on the device ``features`` runs on.
        steps: Adam steps (the peer: 1001).
        lr: Adam's learning rate.
        spec: The generator (the peer's by default).
        seed: Seeds the generator's initialisation and its noise input.
        frozen_modules: Modules inside ``features`` whose parameters get no gradients.

    Returns:
        The reconstruction and the loss curve.

    Raises:
        ValueError: On a bad image or step count.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"invert: image must be (3, H, W), got {tuple(image.shape)}")
    if steps < 1:
        raise ValueError(f"invert: steps must be >= 1, got {steps}")
    spec = spec or PriorSpec()
    device = image.device
    height, width = int(image.shape[1]), int(image.shape[2])
    side = spec.input_size(max(height, width))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        net = SkipPrior(spec).to(device)
        noise = torch.rand(1, spec.input_depth, side, side, device=device) * spec.noise_scale
    net.train()
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    losses: list[float] = []
    with _all_frozen(frozen_modules):
        with torch.no_grad():
            target = features(image.unsqueeze(0)).detach()
        for _ in range(steps):
            optimiser.zero_grad(set_to_none=True)
            output = net(noise)[:, :, :height, :width]
            loss = nn.functional.mse_loss(features(output), target)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        with torch.no_grad():
            final = net(noise)[0, :, :height, :width].clamp(0.0, 1.0)
    parameters = sum(p.numel() for p in net.parameters())
    return Inversion(final.detach().float().cpu(), losses, int(parameters))


@contextmanager
def _all_frozen(modules: Sequence[nn.Module]) -> Iterator[None]:
    if not modules:
        yield
        return
    with frozen(modules[0]), _all_frozen(modules[1:]):
        yield


def normalised(fn: FeatureFn, mean: Sequence[float], std: Sequence[float]) -> FeatureFn:
    """``fn`` applied to ``(x - mean) / std`` (per channel): pixels in [0, 1] -> model input."""

    def apply(x: torch.Tensor) -> torch.Tensor:
        m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return fn((x - m) / s)

    return apply


def spatial_features(module: nn.Module) -> tuple[FeatureFn, str]:
    """The module's last spatial feature map (before global pooling), and its name.

    timm models: ``forward_features``; a torchvision backbone wrapper (``.model``):
    ``features`` (MobileNet, EfficientNet, DenseNet, VGG) or the ResNet stem to
    ``layer4``; anything else: the module's own (pooled) output.
    """
    if hasattr(module, "forward_features") and callable(module.forward_features):
        return module.forward_features, "forward_features"
    inner = getattr(module, "model", module)
    if isinstance(getattr(inner, "features", None), nn.Module):
        return inner.features, "features"
    if all(hasattr(inner, name) for name in ("conv1", "bn1", "relu", "maxpool", "layer4")):
        stem = nn.Sequential(
            inner.conv1, inner.bn1, inner.relu, inner.maxpool,
            inner.layer1, inner.layer2, inner.layer3, inner.layer4,
        )  # fmt: skip
        return stem, "layer4"
    return module, "pooled"
