"""Occlusion saliency maps and their attentive diffusion, per model and dataset.

The analysis of SSL_medicalimaging (jonahanton/SSL_medicalimaging@77fceef:saliency.py,
after Ericsson et al. 2021): a 10 x 10 window of zeros (the mean colour of the
normalised image) slides over the image; each pixel's saliency is the mean, over the
windows covering it, of the relative feature distance ``||f0 - f|| / ||f0||``; the map
is cropped to the pixels fully covered. The attentive diffusion is the percentage of
the map above its mean. See :mod:`harness.analyses.saliency` for the exact procedure.

A case draws ``num_images`` images of ``split`` (seeded, classes taking turns), runs the
case's cached backbone on many occluded copies per forward, writes an overlay PNG and
a heat-map PNG per image under
``<results>/<suite>/<case>/artefacts/<run id>/`` and records the attentive diffusion
per image (``ad_<split>_<index>``) and their mean (``attentive_diffusion``, the primary
value).

Differences from the peer: the peer runs one sample image per dataset, resized to
242 px with ImageNet statistics and stride 1, whatever the model (the
``ssl-medicalimaging`` preset does the same on the case's images); the default uses the
model's own preprocessing at the profile's size, several images, and a stride that the
cheaper profiles raise (each pixel is then divided by the windows that covered it).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from harness.analyses.saliency import (
    PEER_SIZE,
    PEER_VALUE,
    attentive_diffusion,
    occlusion_saliency,
    peak_window,
)
from harness.analyses.saliency_render import (
    jet,
    overlay,
    pick_images,
    save_png,
    scale_unit,
    to_uint8,
)
from harness.config.profiles import check_profile
from harness.data.transforms import eval_transform
from harness.features import resolve_device
from harness.protocols.base import ProtocolResult
from harness.protocols.inputs import check_images
from harness.protocols.registry import DetailTable, register_preset, register_protocol
from harness.records.results import record_dir
from harness.records.runid import session_run_id

if TYPE_CHECKING:
    from harness.protocols.case import CaseRun

VERSION = 1
PRIMARY = "attentive_diffusion"
PEER_SOURCE = "jonahanton/SSL_medicalimaging@77fceefdc4ac6bab2d3569b0ae492e582d6a421d:saliency.py"


@dataclass(frozen=True)
class SaliencyConfig:
    """Settings of the occlusion-saliency protocol.

    Attributes:
        size: Side of the occlusion window in pixels (the peer: 10).
        value: Fill value of the window, in normalised units (the peer: 0).
        stride: Step between window positions (the peer: 1).
        num_images: Images of ``split`` analysed.
        split: The split the images come from.
        batch_size: Occluded copies per forward pass.
        seed: Seed of the image choice.
        save_images: Write the overlay and heat-map PNGs.
    """

    size: int = PEER_SIZE
    value: float = PEER_VALUE
    stride: int = 1
    num_images: int = 4
    split: str = "test"
    batch_size: int = 64
    seed: int = 0
    save_images: bool = True

    def __post_init__(self) -> None:
        for name in ("size", "stride", "num_images", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SaliencyConfig.{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def for_profile(cls, profile: str) -> SaliencyConfig:
        """The configuration of a run profile.

        Every profile keeps the peer's 10 px window of zeros; the number of forwards per
        image is about ``((S - 10) / stride) ** 2``: ``smoke`` (96 px) uses stride 8 on 2
        images (144 forwards each), ``demo`` (160 px) stride 5 on 4 images (961 each),
        ``paper`` the peer's stride 1 on 4 images.

        Raises:
            ValueError: On an unknown profile.
        """
        check_profile(profile)
        stride, images = {"smoke": (8, 2), "demo": (5, 4)}.get(profile, (1, 4))
        return cls(stride=stride, num_images=images)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-friendly dict."""
        return asdict(self)


def artefact_dir(case: CaseRun) -> Path:
    """The folder for a case's pictures: ``<record folder>/artefacts/<session run id>``.

    PNGs only: the record loaders read every ``*.json`` below the results folder.
    """
    folder = record_dir(case.results_dir, case.case.suite, case.case.case_id)
    return folder / "artefacts" / session_run_id()


def display_scale(side: int, target: int = 224) -> int:
    """Whole-number upscaling that brings a picture of ``side`` px to at least ``target``."""
    return max(1, -(-target // max(side, 1)))


def display_image(
    tensor: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> np.ndarray:
    """A normalised (C, H, W) tensor back in [0, 1] as (H, W, 3) float."""
    pixels = tensor.detach().cpu().double().numpy().transpose(1, 2, 0)
    return np.clip(pixels * np.asarray(std) + np.asarray(mean), 0.0, 1.0)


def run_saliency(case: CaseRun, config: SaliencyConfig) -> ProtocolResult:
    """Saliency maps of ``config.num_images`` images of the case (see the module docstring).

    Raises:
        ValueError: When the split is missing or its images are malformed.
    """
    splits = case.splits()
    if config.split not in splits:
        raise ValueError(f"saliency: the dataset has no split {config.split!r}")
    split = splits[config.split]
    images = check_images(f"{config.split} split", split.images)
    pre = case.preprocessing()
    transform = eval_transform(pre)
    device = resolve_device(case.device)
    module = case.backbone().load().to(device).eval()
    chosen = pick_images(split.labels, config.num_images, config.seed)
    folder = artefact_dir(case) if config.save_images else None
    metrics: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    crop = config.size - 1
    for index in chosen:
        tensor = transform(images[index]).to(device)
        saliency = occlusion_saliency(
            module, tensor, config.size, config.value, config.stride, config.batch_size
        )
        score = attentive_diffusion(saliency)
        key = f"{config.split}_{int(index)}"
        metrics[f"ad_{key}"] = score
        label = np.asarray(split.labels[index]).tolist()
        row: dict[str, Any] = {
            "index": int(index),
            "label": label,
            "attentive_diffusion": score,
            "map_shape": list(saliency.shape),
            "map_min": float(saliency.min()),
            "map_max": float(saliency.max()),
            "map_mean": float(saliency.mean()),
            "peak_window": list(peak_window(saliency, min(config.size, *saliency.shape))),
        }
        if folder is not None:
            shown = display_image(tensor, pre.mean, pre.std)
            shown = shown[crop : shown.shape[0] - crop, crop : shown.shape[1] - crop]
            scale = display_scale(saliency.shape[0])
            over = save_png(overlay(shown, saliency), folder / f"saliency-{key}-overlay.png", scale)
            heat = save_png(
                to_uint8(jet(scale_unit(saliency))), folder / f"saliency-{key}-heatmap.png", scale
            )
            row["overlay"] = str(over.relative_to(case.results_dir))
            row["heatmap"] = str(heat.relative_to(case.results_dir))
        rows.append(row)
    metrics[PRIMARY] = float(np.mean([row["attentive_diffusion"] for row in rows]))
    return ProtocolResult(
        metrics=metrics,
        details={
            "images": rows,
            "split": config.split,
            "input_size": pre.input_size,
            "forwards_per_image": _forwards(pre.input_size, config),
            "saliency_s": round(time.perf_counter() - started, 3),
            "peer": PEER_SOURCE,
        },
    )


def _forwards(input_size: int, config: SaliencyConfig) -> int:
    steps = (input_size - config.size) // config.stride + 1
    steps += (input_size - config.size) % config.stride != 0
    return int(steps * steps)


@register_protocol(
    "saliency",
    version=VERSION,
    marker="occlusion saliency maps and their attentive diffusion (SSL_medicalimaging)",
    config=SaliencyConfig,
    primary_metric=PRIMARY,
    display="descriptive",
    needs="images",
    detail_tables=(
        DetailTable(
            "ad_",
            "Attentive diffusion per image",
            "Percentage of the occlusion-saliency map above its mean (lower: the features "
            "depend on a smaller part of the image). Columns are <split>_<image index>; "
            "overlays are under each case's artefacts folder.",
            summary_header="mean",
        ),
    ),
)
def run_case(case: CaseRun, config: SaliencyConfig) -> ProtocolResult:
    """One saliency case."""
    return run_saliency(case, config)


@register_preset(
    "saliency",
    "ssl-medicalimaging",
    version=1,
    preprocessing={
        "input_size": 242,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    },
    source=PEER_SOURCE,
    summary="one image per dataset at 242 px (ImageNet statistics), stride 1: a 224 px map",
)
def ssl_medicalimaging(case: CaseRun) -> SaliencyConfig:
    """SSL_medicalimaging's settings: 10 px window of zeros, stride 1, one image."""
    return SaliencyConfig(stride=1, num_images=1)
