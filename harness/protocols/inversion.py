"""Feature inversion: deep-image-prior reconstructions from a model's features, scored by a
perceptual distance to the original.

SSL_medicalimaging's analysis (jonahanton/SSL_medicalimaging@77fceef:reconstruction.py
and perceptual_distance.py; the procedure is in :mod:`harness.analyses.inversion`, the
distances in :mod:`harness.analyses.perceptual`): a generator fed fixed noise is trained
so that the backbone's last spatial feature map of its output matches the image's; the
reconstruction's perceptual distance to the image says how much of the image the
features keep (lower: more).

A case draws ``num_images`` images of ``split`` (seeded, classes taking turns), inverts
each on the case's backbone, writes ``original | reconstruction`` PNGs under
``<results>/<suite>/<case>/artefacts/<run id>/`` and records the distance per image
(``pd_<split>_<index>``), their mean (``perceptual_distance``, the primary value), the
name of the distance used (``details.distance``: ``lpips-alex`` where LPIPS can run
offline, else ``embedded-perceptual-mobilenet_v2-v1``) and the loss curves.

Differences from the peer: the peer feeds its backbones raw [0, 1] pixels and scores a
JPEG-saved reconstruction with LPIPS; the default normalises with the model's statistics
(the ``ssl-medicalimaging`` preset feeds raw pixels at 224 px and runs 1001 steps), scores
the float reconstruction, and scales steps and the generator with the profile.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from harness.analyses.inversion import PriorSpec, invert, normalised, spatial_features
from harness.analyses.perceptual import DISTANCES, perceptual_distance, select_distance
from harness.analyses.saliency_render import pick_images, save_png, side_by_side, to_uint8
from harness.config.profiles import check_profile
from harness.data.transforms import eval_transform
from harness.features import resolve_device
from harness.protocols.base import ProtocolResult
from harness.protocols.inputs import check_images
from harness.protocols.registry import DetailTable, register_preset, register_protocol
from harness.protocols.saliency import artefact_dir, display_scale

if TYPE_CHECKING:
    from harness.protocols.case import CaseRun

VERSION = 1
PRIMARY = "perceptual_distance"
PEER_SOURCE = (
    "jonahanton/SSL_medicalimaging@77fceefdc4ac6bab2d3569b0ae492e582d6a421d:reconstruction.py"
)
SMOKE_PRIOR = PriorSpec(
    channels_down=(8, 16, 16),
    channels_up=(8, 16, 16),
    channels_skip=(4, 4, 4),
    filters_down=(3, 3, 3),
    filters_up=(3, 3, 3),
    input_depth=8,
)


@dataclass(frozen=True)
class InversionConfig:
    """Settings of the feature-inversion protocol.

    Attributes:
        steps: Adam steps on the generator (the peer: 1001).
        lr: Adam's learning rate (the peer: 0.001).
        prior: The generator's architecture (the peer's by default).
        num_images: Images of ``split`` reconstructed.
        split: The split the images come from.
        distance: ``auto`` (LPIPS-AlexNet where it runs offline, else the embedded
            distance) or a name of :data:`harness.analyses.perceptual.DISTANCES`.
        raw_pixels: Feed the backbone [0, 1] pixels without its normalisation (the peer).
        seed: Seeds the image choice and the generator.
        save_images: Write the ``original | reconstruction`` PNGs.
    """

    steps: int = 1001
    lr: float = 1e-3
    prior: PriorSpec = field(default_factory=PriorSpec)
    num_images: int = 1
    split: str = "test"
    distance: str = "auto"
    raw_pixels: bool = False
    seed: int = 0
    save_images: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.prior, dict):
            prior = {k: tuple(v) if isinstance(v, list) else v for k, v in self.prior.items()}
            object.__setattr__(self, "prior", PriorSpec(**prior))
        if self.steps < 1 or self.num_images < 1:
            raise ValueError("InversionConfig: steps and num_images must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"InversionConfig.lr must be > 0, got {self.lr}")
        if self.distance not in DISTANCES:
            raise ValueError(f"InversionConfig.distance must be one of {DISTANCES}")

    @classmethod
    def for_profile(cls, profile: str) -> InversionConfig:
        """The configuration of a run profile.

        ``smoke``: a 3-level generator with 8-16 channels, 10 steps, 1 image; ``demo``: the
        peer's generator, 100 steps, 1 image; ``paper``: the peer's 1001 steps, 2 images.

        Raises:
            ValueError: On an unknown profile.
        """
        check_profile(profile)
        if profile == "smoke":
            return cls(steps=10, prior=SMOKE_PRIOR, num_images=1)
        if profile == "demo":
            return cls(steps=100, num_images=1)
        return cls(steps=1001, num_images=2)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-friendly dict (the generator as a nested dict)."""
        out = asdict(self)
        out["prior"] = {k: list(v) if isinstance(v, tuple) else v for k, v in out["prior"].items()}
        return out


def run_inversion(case: CaseRun, config: InversionConfig) -> ProtocolResult:
    """Reconstruct ``config.num_images`` images of the case (see the module docstring).

    Raises:
        ValueError: When the split is missing or its images are malformed.
    """
    splits = case.splits()
    if config.split not in splits:
        raise ValueError(f"inversion: the dataset has no split {config.split!r}")
    split = splits[config.split]
    images = check_images(f"{config.split} split", split.images)
    pre = case.preprocessing()
    # pixels in [0, 1]: the model's statistics are applied inside the feature function;
    # histogram equalisation (CovidPrognosis cards) is not differentiable and is left out
    raw = dataclasses.replace(pre, mean=(0.0,) * 3, std=(1.0,) * 3, histogram_normalize=False)
    pixels = eval_transform(raw)
    device = resolve_device(case.device)
    module = case.backbone().load().to(device).eval()
    layer_fn, layer = spatial_features(module)
    mean, std = ((0.0,) * 3, (1.0,) * 3) if config.raw_pixels else (pre.mean, pre.std)
    features = normalised(layer_fn, mean, std)
    distance_name, distance = select_distance(config.distance, device)
    chosen = pick_images(split.labels, config.num_images, config.seed)
    folder = artefact_dir(case) if config.save_images else None
    metrics: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for index in chosen:
        original = pixels(images[index]).to(device).clamp(0.0, 1.0)
        result = invert(
            features, original, config.steps, config.lr, config.prior, config.seed, [module]
        )
        rebuilt = result.image.to(device)
        score = perceptual_distance(distance, original, rebuilt)
        key = f"{config.split}_{int(index)}"
        metrics[f"pd_{key}"] = score
        row: dict[str, Any] = {
            "index": int(index),
            "label": np.asarray(split.labels[index]).tolist(),
            "perceptual_distance": score,
            "pixel_mse": float(((original - rebuilt) ** 2).mean()),
            "loss_first": result.losses[0],
            "loss_last": result.losses[-1],
            "loss_curve": _thin(result.losses),
        }
        if folder is not None:
            panel = side_by_side([_rgb(original), _rgb(rebuilt)])
            scale = display_scale(panel.shape[0])
            path = save_png(panel, folder / f"inversion-{key}.png", scale)
            row["panel"] = str(path.relative_to(case.results_dir))
        rows.append(row)
    metrics[PRIMARY] = float(np.mean([row["perceptual_distance"] for row in rows]))
    metrics["pixel_mse"] = float(np.mean([row["pixel_mse"] for row in rows]))
    metrics["loss_ratio"] = float(np.mean([r["loss_last"] / r["loss_first"] for r in rows]))
    return ProtocolResult(
        metrics=metrics,
        details={
            "distance": distance_name,
            "layer": layer,
            "images": rows,
            "split": config.split,
            "input_size": pre.input_size,
            "histogram_normalize_skipped": bool(pre.histogram_normalize),
            "prior_parameters": result.parameters,
            "inversion_s": round(time.perf_counter() - started, 3),
            "peer": PEER_SOURCE,
        },
    )


def _rgb(image: torch.Tensor) -> np.ndarray:
    """A (3, H, W) tensor in [0, 1] as (H, W, 3) uint8."""
    return to_uint8(image.detach().cpu().double().numpy().transpose(1, 2, 0))


def _thin(losses: list[float], points: int = 50) -> list[list[float]]:
    """``[step, loss]`` pairs at about ``points`` evenly spaced steps (first and last kept)."""
    steps = np.unique(np.linspace(0, len(losses) - 1, min(points, len(losses))).round())
    return [[int(s), float(losses[int(s)])] for s in steps]


@register_protocol(
    "inversion",
    version=VERSION,
    marker="deep-image-prior feature inversion scored by perceptual distance (SSL_medicalimaging)",
    config=InversionConfig,
    primary_metric=PRIMARY,
    display="descriptive",
    needs="images",
    detail_metric_prefixes=("pixel_mse", "loss_ratio"),
    detail_tables=(
        DetailTable(
            "pd_",
            "Perceptual distance of feature inversions per image",
            "Perceptual distance between each image and its deep-image-prior reconstruction "
            "from the model's last spatial features (lower: the features keep more of the "
            "image). Columns are <split>_<image index>; the distance used is in each "
            "record's details.",
            summary_header="mean",
        ),
    ),
)
def run_case(case: CaseRun, config: InversionConfig) -> ProtocolResult:
    """One feature-inversion case."""
    return run_inversion(case, config)


@register_preset(
    "inversion",
    "ssl-medicalimaging",
    version=1,
    preprocessing={"input_size": 224, "crop_pct": 1.0, "interpolation": "bicubic"},
    source=PEER_SOURCE,
    summary="raw [0, 1] pixels at 224 px, the peer's generator, Adam lr 0.001, 1001 steps",
)
def ssl_medicalimaging(case: CaseRun) -> InversionConfig:
    """SSL_medicalimaging's settings: one image, raw pixels, 1001 steps."""
    return InversionConfig(steps=1001, num_images=1, raw_pixels=True)
