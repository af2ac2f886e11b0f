"""Peer-faithful presets of the synthetic invariance protocol.

``ssl-medicalimaging`` reproduces jonahanton/SSL_medicalimaging@77fceef:invariances/invariances.py
(run by its ``runner_script.sh``), itself a modification of
linusericsson/ssl-invariances@62d5085:eval_synthetic_invariance.py. What the peer computes,
read from its code:

* The images are ``ConcatDataset([train, test])``: the whole dataset (its ``train`` holds
  what medxfer splits into train and val). Mean, covariance and evaluated images all come
  from this pool: ``pool_splits = (train, val, test)``.
* ``np.random.seed(0)``; the covariance comes from every image when the pool has fewer
  than 1000, else from ``np.random.choice(N, max(1000, int(0.1 N)))`` rows (with
  replacement); ``np.cov`` (ddof 1) plus ``1e-6 I``. The covariance is cached per model and
  dataset, so every run after the first draws its evaluated images straight after
  ``np.random.seed(0)``: ``np.random.choice(N, 100)``, with replacement. The preset
  reproduces those runs (on a pool of at least 1000 images, the one run per model and
  dataset that computed the covariance drew its images after the covariance draw instead).
* Per image ``i`` and magnitude ``j`` of a sweep of ``k`` magnitudes that includes the
  identity, ``S[i, j]`` is the cosine of ``(mu - f) chol((Sigma + eps I)^-1)`` for the
  clean and transformed features; the reported number is ``nanmean(S, axis=0).mean()``:
  ``aggregate = name``. The Cholesky factor of the float64 inverse is float32 in the
  peer, and the whitened vectors and cosines are float32 products: ``whitening =
  "float32-cholesky"`` (version 3; :mod:`harness.protocols.whitening_peer`). Any factor
  gives the same cosine in exact arithmetic, but with fewer covariance images than
  feature dimensions the float32 factor moves single cosines by up to about 5e-4.
* Sweeps (``ManualTransform``): ``h_flip`` ``[False, True]``; ``rotation``
  ``linspace(0, 360, k + 1)[:k]`` degrees; ``hue`` ``linspace(-0.5, 0.5, k)``, float32.
  Runner k: hue 5; rotation 20 on EyePACS (``diabetic_retinopathy``), else the default
  256; h_flip 2. The runner's Montgomery, Shenzhen and iChallenge lines pass ``--k None``,
  which its parser (``type=int``) rejects with "invalid int value: 'None'" before any
  work; they are read as ``--k`` left out (the parser's default None, then k 256 for
  rotation and 2 for h_flip), the only reading under which they print a number.
* Batch norm in training mode (version 2): models/backbones.py calls
  ``self.model.train()`` and invariances.py never calls ``eval()``, so each clean image
  is normalised on its own statistics (a batch of one), an image's ``k`` transformed
  copies on theirs (one batch; the identity entry is therefore not the clean feature),
  and each covariance image on its loader batch of 256: ``batchnorm = "batch-statistics"``
  (:mod:`harness.protocols.batch_statistics`). Version 1 used eval-mode features.
* Kernels: ``torchvision.transforms.functional`` on the native-resolution PIL image
  (rotation nearest-neighbour, corners black), then ``Resize(256)`` (bilinear) and
  ``CenterCrop(224)``: the ``torchvision-pil`` backend and the preprocessing below. Mean
  and std are ImageNet's except for the runner's ``--no-norm`` (SimCLR-v1) and the
  histogram-normalised MIMIC-CheXpert models (:mod:`harness.protocols.peer_normalisation`,
  version 3). For the latter the peer histogram-normalises the clean images but
  ImageNet-normalises every transformed copy, identity entries included
  (``ManualTransform.T``): ``transformed_normalisation = "imagenet-if-histogram"``
  (version 4; versions 1-3 histogram-normalised both).

Left out: translation. The peer's translation sweep is a 2-D grid of pixel shifts
(``a * 256`` native pixels) with a 1 degree x-shear in every entry (its ``shear`` values
are ``torch.ones``), which one magnitude per entry cannot express, and with the runner's
EyePACS ``k=20`` the grid has 16 entries, so the peer's loop fails with an IndexError.
SSL_medicalimaging reports no translation results. Colour transforms stay skipped on
grayscale images (the peer's PIL ``adjust_hue`` returns an ``L`` image unchanged: a
cosine of exactly 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from harness.protocols.invariance import InvarianceConfig
from harness.protocols.peer_normalisation import with_normalisation
from harness.protocols.registry import register_preset

if TYPE_CHECKING:
    from harness.protocols.case import CaseRun

#: The peer's evaluation transform: Resize(256) bilinear on the shorter side, CenterCrop(224).
PEER_PREPROCESSING: dict[str, Any] = {
    "input_size": 224,
    "interpolation": "bilinear",
    "crop_pct": 224 / 256,
    "crop_mode": "center",
}

#: SSL_medicalimaging's runner: rotation with ``--k 20`` on these datasets (card names).
ROTATION_K20 = frozenset({"eyepacs"})


def rotation_sweep(k: int) -> tuple[float, ...]:
    """ssl-invariances' rotation angles: ``linspace(0, 360, k + 1)[:k]`` in float32."""
    return tuple(torch.linspace(0, 360, k + 1)[:k].to(torch.float32).tolist())


def hue_sweep(k: int) -> tuple[float, ...]:
    """ssl-invariances' hue shifts: ``linspace(-0.5, 0.5, k)`` in float32."""
    return tuple(torch.linspace(-0.5, 0.5, k).to(torch.float32).tolist())


def ssl_medical_transforms(dataset: str) -> tuple[tuple[str, float], ...]:
    """The (name, magnitude) entries SSL_medicalimaging's runner evaluates on a dataset.

    Args:
        dataset: The dataset card's name.

    Returns:
        h-flip's two values, the rotation sweep (k 20 on EyePACS, else 256) and the hue
        sweep (k 5), identities included.
    """
    rotation_k = 20 if dataset in ROTATION_K20 else 256
    return (
        *(("hflip", value) for value in (0.0, 1.0)),
        *(("rotation", angle) for angle in rotation_sweep(rotation_k)),
        *(("hue", shift) for shift in hue_sweep(5)),
    )


@register_preset(
    "invariance",
    "ssl-medicalimaging",
    version=4,
    # the runner passes --no-norm for SimCLR-v1 only
    preprocessing=with_normalisation(PEER_PREPROCESSING, "raw-input-models"),
    source="jonahanton/SSL_medicalimaging@77fceef:invariances/invariances.py",
    summary=(
        "SSL_medicalimaging's synthetic invariance: train+test pooled, legacy NumPy draws "
        "with replacement, sweeps with the identity averaged per transform, PIL kernels"
    ),
)
def ssl_medical_invariance(case: CaseRun) -> InvarianceConfig:
    """The config reproducing SSL_medicalimaging's invariance numbers on a case's dataset.

    Args:
        case: The case (its dataset card's name picks the runner's rotation k; a
            histogram-normalising model card, how the transformed images are normalised).

    Returns:
        The protocol config (see the module docstring for each setting's source).
    """
    return InvarianceConfig(
        transforms=ssl_medical_transforms(case.case.dataset.name),
        num_images=100,
        cov_images=1000,
        cov_fraction=0.1,
        epsilon=1e-6,
        seed=0,
        pool_splits=("train", "val", "test"),
        sampling="numpy-legacy",
        aggregate="name",
        transform_backend="torchvision-pil",
        batchnorm="batch-statistics",
        whitening="float32-cholesky",
        transformed_normalisation=(
            "imagenet-if-histogram" if histogram_normalised(case) else "same"
        ),
    )


def histogram_normalised(case: CaseRun) -> bool:
    """Whether the case's model card histogram-normalises its input (the MIMIC-CheXpert
    models); False for a stand-in case that carries no model card."""
    model = getattr(case.case, "model", None)
    return bool(getattr(getattr(model, "preprocessing", None), "histogram_normalize", False))
