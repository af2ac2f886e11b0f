"""Perceptual distance between an image and its reconstruction.

SSL_medicalimaging scores reconstructions with LPIPS (Zhang et al. 2018, the ``lpips``
package; AlexNet, VGG and SqueezeNet variants, images in [-1, 1]) in
jonahanton/SSL_medicalimaging@77fceef:perceptual_distance.py. LPIPS's learned linear
weights ship in its wheel, but its backbones' ImageNet weights come from torchvision's
download URLs at run time. medxfer never downloads at run time, so:

* ``lpips-alex`` / ``lpips-vgg``: used when ``lpips`` is installed and the torchvision
  backbone file is already in torch's hub cache (``torch.hub.get_dir()/checkpoints``);
* ``embedded-perceptual-mobilenet_v2-v1`` otherwise: the LPIPS formula without learned
  weights (LPIPS's own ``lpips=False`` baseline) on the embedded torchvision MobileNetV2
  (model card ``mobilenet_v2.tv_in1k_pip``). For each of five stages (the outputs of
  ``features[1, 3, 6, 13, 17]``, strides 2 to 32), the feature vector at every position
  is scaled to unit length (``f / (||f|| + 1e-10)``); the layer's distance is the squared
  difference summed over channels and averaged over positions; the distance is the sum
  over the five layers. Images in [0, 1] are normalised with ImageNet statistics.

Both are 0 for identical images and grow with the difference; their values are on
different scales, so a record names the one it used (``distance``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

EMBEDDED = "embedded-perceptual-mobilenet_v2-v1"
EMBEDDED_CARD = "mobilenet_v2.tv_in1k_pip"
EMBEDDED_STAGES = (1, 3, 6, 13, 17)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's file names of the LPIPS backbones (AlexNet_Weights / VGG16_Weights IMAGENET1K_V1)
LPIPS_BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
DISTANCES = ("auto", EMBEDDED, "lpips-alex", "lpips-vgg")
EPSILON = 1e-10

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def unit_normalise(features: torch.Tensor) -> torch.Tensor:
    """Scale each position's channel vector to unit length (LPIPS's ``normalize_tensor``)."""
    norm = torch.sqrt(torch.sum(features**2, dim=1, keepdim=True))
    return features / (norm + EPSILON)


def layer_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared difference of unit-normalised features, summed over channels, averaged over
    positions: one value per image of the batch."""
    return ((unit_normalise(a) - unit_normalise(b)) ** 2).sum(dim=1).mean(dim=(1, 2))


class StagePerceptual(nn.Module):
    """The un-learned LPIPS distance on chosen stages of a sequential feature extractor.

    Args:
        stages: A sequence of modules (e.g. MobileNetV2's ``features``).
        taps: Indices of the stages whose outputs are compared.
        mean: Per-channel mean the extractor expects (images arrive in [0, 1]).
        std: Per-channel std.
    """

    def __init__(
        self,
        stages: nn.Sequential,
        taps: tuple[int, ...],
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.stages = stages[: max(taps) + 1]
        self.taps = frozenset(taps)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        x = (x - self.mean) / self.std
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in self.taps:
                out.append(x)
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distance per image between batches ``a`` and ``b`` (N, 3, H, W) in [0, 1]."""
        total = torch.zeros(a.shape[0], device=a.device)
        for fa, fb in zip(self._taps(a), self._taps(b), strict=True):
            total = total + layer_distance(fa, fb)
        return total


@lru_cache(maxsize=1)
def _embedded_stages() -> nn.Sequential:
    from harness.config.cards import get_model_card
    from harness.zoo import build_model

    module = build_model(get_model_card(EMBEDDED_CARD)).module
    features = getattr(getattr(module, "model", module), "features", None)
    if not isinstance(features, nn.Sequential):
        raise RuntimeError(f"{EMBEDDED_CARD}: expected a torchvision MobileNetV2 backbone")
    return features.eval()


def embedded_distance(device: torch.device | str = "cpu") -> StagePerceptual:
    """The ``embedded-perceptual-mobilenet_v2-v1`` distance (see the module docstring)."""
    model = StagePerceptual(_embedded_stages(), EMBEDDED_STAGES)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.to(device).eval()


def lpips_backbone_file(net: str) -> Path:
    """Where torchvision keeps the LPIPS backbone's ImageNet file (it may be absent)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONE_FILES[net]


def lpips_available(net: str = "alex") -> str | None:
    """Why LPIPS with backbone ``net`` cannot run offline, or None when it can.

    It needs the ``lpips`` package and the torchvision backbone file already in torch's
    hub cache (nothing is downloaded).
    """
    if importlib.util.find_spec("lpips") is None:
        return "the lpips package is not installed"
    path = lpips_backbone_file(net)
    if not path.is_file():
        return f"torchvision's {net} weights are not in the hub cache ({path})"
    return None


def lpips_distance(net: str = "alex", device: torch.device | str = "cpu") -> Distance:
    """LPIPS (``lpips.LPIPS(net=net)``) on images in [0, 1] (rescaled to [-1, 1]).

    Raises:
        RuntimeError: When it cannot run offline (see :func:`lpips_available`).
    """
    reason = lpips_available(net)
    if reason is not None:
        raise RuntimeError(f"lpips-{net} is unavailable: {reason}")
    import lpips

    model = lpips.LPIPS(net=net, verbose=False).to(device).eval()

    def apply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return model(2 * a - 1, 2 * b - 1).flatten()

    return apply


def select_distance(name: str = "auto", device: torch.device | str = "cpu") -> tuple[str, Distance]:
    """The perceptual distance ``name``; ``auto`` is ``lpips-alex`` when it can run
    offline, else the embedded one.

    Returns:
        The distance's name (as recorded) and the function ``(a, b) -> (N,)`` on image
        batches in [0, 1].

    Raises:
        ValueError: On an unknown name.
        RuntimeError: When ``lpips-*`` is asked for and cannot run offline.
    """
    if name not in DISTANCES:
        raise ValueError(f"unknown perceptual distance {name!r}; known: {', '.join(DISTANCES)}")
    if name == "auto":
        name = "lpips-alex" if lpips_available("alex") is None else EMBEDDED
    if name == EMBEDDED:
        return name, embedded_distance(device)
    return name, lpips_distance(name.split("-", 1)[1], device)


def perceptual_distance(distance: Distance, a: torch.Tensor, b: torch.Tensor) -> float:
    """One distance between two images (3, H, W) in [0, 1]."""
    with torch.no_grad():
        return float(distance(a.unsqueeze(0), b.unsqueeze(0))[0])
