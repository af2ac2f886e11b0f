"""The peers' whitening arithmetic: a float32 Cholesky factor of the float64 inverse.

``whitening = "float32-cholesky"`` in an invariance or multi-view config computes the
statistics and similarities the way jonahanton/SSL_medicalimaging@77fceef does in
``invariances/invariances.py`` and ``invariances/invariances_multiview.py`` (after
linusericsson/ssl-invariances@62d5085:eval_synthetic_invariance.py):

* ``mean_feature = all_features.mean(dim=0)``: a torch float32 mean of float32 features;
* ``np.cov(all_features, rowvar=False)`` (float64, ddof 1) ``+ 1e-6 * np.eye(D)``, inverted
  with ``np.linalg.inv`` in float64;
* ``torch.linalg.cholesky`` of that inverse cast to float32;
* per image, ``(mean_feature - f) @ cholesky`` in float32 and ``F.cosine_similarity`` of
  the two whitened vectors (torch clamps a zero norm, so a cosine is never NaN);
* ``scipy.spatial.distance.mahalanobis(f1, f2, inv)``: the float32 difference against the
  float64 inverse;
* both stored in float32 tensors, then averaged (medxfer averages in float64: a relative
  difference of about 1e-7 in the reported mean).

Any factor ``W`` with ``W W^T = (Sigma + eps I)^-1`` gives the same cosine in exact
arithmetic; medxfer's default (:mod:`harness.protocols.whitening`) uses a float64
eigendecomposition. With fewer covariance images than feature dimensions the inverse has a
condition number near 1e7, and the float32 factor moves single cosines by up to about 5e-4
(the mean over 100 images by about 1e-5): this module reproduces those digits, one image
at a time as the peers multiply (a batched product sums in another order, itself a
1e-5 change on such factors).

When the float32 inverse is not positive definite (the condition number of
``Sigma + eps I`` near 1e7 or above, depending on the spectrum), ``torch.linalg.cholesky``
fails and the peers' script stops without a number. medxfer then computes the same measure
in its float64 arithmetic and says so in the record (``details.whitening`` and
``details.whitening_note``), so the case still gives the number the peers' procedure
defines, without their rounding.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

#: The values of a config's ``whitening`` field; the first is medxfer's default.
WHITENINGS = ("float64-eigh", "float32-cholesky")
PEER_WHITENING = WHITENINGS[1]


class PeerCholeskyError(ValueError):
    """The peers' float32 factor does not exist for these statistics."""


def check_whitening(owner: str, whitening: str) -> None:
    """Refuse a ``whitening`` value other than :data:`WHITENINGS`."""
    if whitening not in WHITENINGS:
        raise ValueError(f"{owner}.whitening must be one of {WHITENINGS}, got {whitening!r}")


def peer_decompose(features: np.ndarray, epsilon: float) -> dict[str, np.ndarray]:
    """The peers' mean, inverse covariance and float32 Cholesky factor of that inverse.

    Args:
        features: (n, D) covariance features (float64 holding float32 values, or float32).
        epsilon: Added to the covariance's diagonal.

    Returns:
        ``mean32`` (D,) float32, ``precision`` (D, D) float64 ``(Sigma + eps I)^-1``,
        ``cholesky32`` (D, D) float32 lower factor, ``eigenvalues`` (D,) of ``Sigma``
        (for the rank facts every record carries), ``n`` and ``epsilon``.

    Raises:
        PeerCholeskyError: When the float32 inverse is not positive definite, so that the
            peers' ``torch.linalg.cholesky`` stops.
    """
    x32 = np.ascontiguousarray(features, dtype=np.float32)
    n, dim = x32.shape
    mean32 = torch.from_numpy(x32).mean(dim=0).numpy()
    with threadpool_limits(limits=1):
        covariance = np.cov(x32, rowvar=False)
        precision = np.linalg.inv(covariance + epsilon * np.eye(dim))
        eigenvalues = np.clip(np.linalg.eigvalsh(covariance), 0.0, None)
    try:
        cholesky32 = torch.linalg.cholesky(torch.from_numpy(precision).to(torch.float32))
    except RuntimeError as exc:
        raise PeerCholeskyError(
            f"the peers' float32 Cholesky factor of (Sigma + {epsilon:g} I)^-1 does not exist "
            f"for these {n} covariance vectors of dimension {dim}: the inverse is not "
            "positive definite in float32, and SSL_medicalimaging's script stops here"
        ) from exc
    return {
        "mean32": mean32,
        "precision": precision,
        "cholesky32": cholesky32.numpy(),
        "eigenvalues": eigenvalues,
        "n": np.array(n, dtype=np.int64),
        "epsilon": np.array(epsilon, dtype=np.float64),
    }


def peer_similarity(
    clean: np.ndarray, transformed: np.ndarray, stats: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair cosine and Mahalanobis distance in the peers' arithmetic.

    Args:
        clean: (N, D) features of the clean images (or first views).
        transformed: (N, D) features paired row by row with ``clean``.
        stats: :func:`peer_decompose`'s arrays as :func:`harness.protocols.whitening.feature_stats`
            returns them (``mean``, ``cholesky32``, ``precision``).

    Returns:
        ``cosine`` and ``mahalanobis`` (N,): float64 arrays holding float32 values, as
        the peers' ``S`` and ``L`` tensors hold them.
    """
    mean = torch.from_numpy(np.asarray(stats["mean"], dtype=np.float32))  # float32 values
    factor = torch.from_numpy(np.asarray(stats["cholesky32"], dtype=np.float32))
    a32 = np.ascontiguousarray(clean, dtype=np.float32)
    b32 = np.ascontiguousarray(transformed, dtype=np.float32)
    cosine = np.empty(len(a32), dtype=np.float64)
    with torch.no_grad():
        # one image at a time, as the peers: a batched product sums in another order,
        # which moves cosines of these ill-conditioned factors by up to about 1e-5
        for i, (clean_row, other_row) in enumerate(zip(a32, b32, strict=True)):
            a = (mean - torch.from_numpy(clean_row[None])) @ factor
            b = (mean - torch.from_numpy(other_row[None])) @ factor
            cosine[i] = F.cosine_similarity(a, b, dim=-1).item()
    delta = (a32 - b32).astype(np.float64)
    with threadpool_limits(limits=1):
        squared = np.einsum("ij,ij->i", delta @ np.asarray(stats["precision"]), delta)
    # the peers store both in float32 tensors (``S``, ``L``) before averaging
    distance = np.sqrt(np.clip(squared, 0.0, None)).astype(np.float32)
    return cosine, distance.astype(np.float64)
