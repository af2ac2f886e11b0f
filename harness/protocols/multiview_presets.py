"""Peer-faithful presets of the multi-view invariance protocol.

``ssl-medicalimaging`` reproduces
jonahanton/SSL_medicalimaging@77fceef:invariances/invariances_multiview.py (run by its
``runner_script.sh`` on ``chexpert`` and ``diabetic_retinopathy``), itself a modification
of linusericsson/ssl-invariances@62d5085:eval_synthetic_invariance.py. What the peer
computes, read from its code:

* Two pooled datasets, each ``ConcatDataset([train, test])``: the whole dataset (its
  ``train`` holds what medxfer splits into train and val), so ``pool_splits = (train, val,
  test)``. The *clean* one holds every image (frontal and lateral, both eyes) and gives the
  mean and covariance; the *multi-view* one (``group_front_lateral=True``) holds one entry
  per pair: each CheXpert lateral with the ``view1_frontal.jpg`` of its study folder
  (datasets/custom_chexpert_dataset.py), each EyePACS left eye with the right eye of the
  same patient when both have the same ``level``
  (datasets/custom_diabetic_retinopathy_dataset.py): the card's pairing rule on the pool.
* ``np.random.seed(0)``, ``torch.manual_seed(0)``. The covariance is cached in
  ``./misc/invariances/`` (not the ``covmatrices/`` folder of the synthetic runs), and the
  runner runs each model and dataset once, so every reported run computed it: all pooled
  images when fewer than 1000, else ``np.random.choice(N, max(1000, int(0.1 N)))`` rows
  (with replacement) read through a ``SubsetRandomSampler``; ``mean`` over those rows,
  ``np.cov`` (ddof 1) plus ``1e-6 I``.
* ``--num-images 100`` pairs, each ``next(iter(DataLoader(multi_views, batch_size=1,
  shuffle=True)))``: a fresh shuffle per pair, so 100 draws **with** replacement.
  ``sampling = "legacy"`` replays these loaders (:func:`harness.protocols.pairing.legacy_draws`).
* Per pair, the cosine of ``(mu - f) chol((Sigma + eps I)^-1)`` of the two views
  (``F.cosine_similarity`` of float32 products with the float32 Cholesky factor of the
  float64 inverse: ``whitening = "float32-cholesky"``, version 3,
  :mod:`harness.protocols.whitening_peer`; any factor gives the same cosine in exact
  arithmetic, but this one moves single cosines by up to about 5e-4 when there are fewer
  covariance images than feature dimensions); the reported number is ``np.nanmean`` over the draws:
  ``mean_cosine``. Not mean-centred without whitening, and no baseline: the cross-group
  baseline stays a medxfer detail.
* Batch norm in training mode (version 2): models/backbones.py calls
  ``self.model.train()`` and the script never calls ``eval()``, so each view is
  normalised on its own statistics (a batch of one) and each covariance image on those
  of its loader batch of 256: ``batchnorm = "batch-statistics"``
  (:mod:`harness.protocols.batch_statistics`). Version 1 used the eval-mode features.
* Transform: ``Resize(224, BICUBIC)``, ``CenterCrop(224)``, ``ToTensor``, then ImageNet
  normalisation (``--no-norm`` for SimCLR-v1; HistogramNormalize for the MIMIC-CheXpert
  models): the preprocessing below, its mean / std from
  :mod:`harness.protocols.peer_normalisation` (version 3: before, the card's).

Exact rows: the draws index the pooled candidate pairs, so they pick the peer's pairs only
where the pooled order matches the peer's (CheXpert laterals in its shuffled CSV order; its
EyePACS pairs are shuffled after filtering, medxfer's are in left-eye order).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.protocols.multiview import MultiviewConfig, pairing_rule
from harness.protocols.peer_normalisation import with_normalisation
from harness.protocols.registry import register_preset

if TYPE_CHECKING:
    from harness.protocols.case import CaseRun

#: The peer's transform: Resize(224) bicubic on the shorter side, CenterCrop(224).
PEER_PREPROCESSING: dict[str, Any] = {
    "input_size": 224,
    "interpolation": "bicubic",
    "crop_pct": 1.0,
    "crop_mode": "center",
}


@register_preset(
    "multiview",
    "ssl-medicalimaging",
    version=3,
    # the runner passes --no-norm for SimCLR-v1 only
    preprocessing=with_normalisation(PEER_PREPROCESSING, "raw-input-models"),
    source="jonahanton/SSL_medicalimaging@77fceef:invariances/invariances_multiview.py",
    summary=(
        "SSL_medicalimaging's multi-view invariance: train+test pooled, covariance rows "
        "and 100 pairs drawn with replacement as its NumPy / torch loaders draw them"
    ),
)
def ssl_medical_multiview(case: CaseRun) -> MultiviewConfig:
    """The config reproducing SSL_medicalimaging's multi-view numbers on a case's dataset.

    Args:
        case: The case (its dataset card's pairing rule picks the pairs).

    Returns:
        The protocol config (see the module docstring for each setting's source).
    """
    card = case.case.dataset
    return MultiviewConfig(
        num_pairs=100,
        cov_images=1000,
        cov_fraction=0.1,
        epsilon=1e-6,
        seed=0,
        pairing_rule=pairing_rule(card.pairing, card.source_file or card.name),
        pool_splits=("train", "val", "test"),
        sampling="legacy",
        batchnorm="batch-statistics",
        whitening="float32-cholesky",
    )
