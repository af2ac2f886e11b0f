"""Similarity of two models' representations, and agreement of their predictions.

Representations are matrices with one row per image (the same images, in the same order,
for both models) and one column per feature; the two may have different widths.

- Linear and RBF CKA (Kornblith, Norouzi, Lee & Hinton, "Similarity of Neural Network
  Representations Revisited", ICML 2019): HSIC of the centred Gram matrices, normalised.
  Linear CKA uses the feature-space identity ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)``
  of the column-centred features; RBF CKA uses the Gram matrix
  ``exp(-d^2 / (2 (threshold^2) median(d^2)))`` of the paper's code.
- CCA: the canonical correlations of two column-centred matrices, from the principal
  angles between their column spaces (orthonormal bases by SVD, rank-deficient directions
  dropped). :func:`cca_similarity` is their mean, which is what revisiting-transfer
  reports per layer (DovileDo/revisiting-transfer@54853c33571f37ab23ad1fc049b4c89beff418c3:
  src/CCA.py takes ``mean(cca_coef1)`` of ``cca_core.get_cca_similarity`` from
  google/svcca on 64 randomly drawn channels with spatial positions as data points, and
  averages five draws).
- SVCCA (Raghu, Gilmer, Yosinski & Sohl-Dickstein, NeurIPS 2017): each representation is
  first reduced by SVD to the fewest directions that keep 99% of its variance, then CCA,
  and the mean canonical correlation.
- Prediction agreement: the fraction of images on which two models predict the same
  class, against the agreement two independent classifiers of those accuracies reach by
  chance, ``acc1 * acc2 + (1 - acc1) * (1 - acc2)`` (both right, or both wrong; exact for
  binary tasks, an upper bound on chance for more classes, where two wrong answers may
  differ).

Every function computes in float64.
"""

from __future__ import annotations

import numpy as np

SVCCA_KEEP_VARIANCE = 0.99
RANK_TOLERANCE = 1e-10


def _matrix(name: str, x: np.ndarray) -> np.ndarray:
    """``x`` as a float64 (N, D) matrix with finite values.

    Raises:
        ValueError: Naming ``name`` on a wrong shape or non-finite values.
    """
    out = np.asarray(x, dtype=np.float64)
    if out.ndim != 2 or out.shape[0] < 2 or out.shape[1] < 1:
        raise ValueError(f"{name} must be an (N, D) matrix with N >= 2, got shape {out.shape}")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} has non-finite values")
    return out


def _pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both representations as float64 matrices over the same images.

    Raises:
        ValueError: When they differ in their number of rows.
    """
    x, y = _matrix("x", x), _matrix("y", y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must hold the same images: {x.shape[0]} rows vs {y.shape[0]} rows"
        )
    return x, y


def _centre(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=0, keepdims=True)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same images.

    Args:
        x: (N, D1) features of model 1.
        y: (N, D2) features of model 2, same images in the same order.

    Returns:
        CKA in [0, 1]; 1 when ``y`` is an orthogonal transform and isotropic scaling of
        ``x`` (up to a translation). 0 when either representation is constant.

    Raises:
        ValueError: On malformed inputs.
    """
    x, y = _pair(x, y)
    x, y = _centre(x), _centre(y)
    cross = np.linalg.norm(y.T @ x) ** 2
    norm = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / norm) if norm > 0 else 0.0


def rbf_gram(x: np.ndarray, threshold: float = 1.0) -> np.ndarray:
    """RBF Gram matrix with the bandwidth a fraction of the median distance (Kornblith 2019).

    Args:
        x: (N, D) features.
        threshold: Bandwidth ``sigma = threshold * median pairwise distance``.

    Returns:
        (N, N) ``exp(-||x_i - x_j||^2 / (2 threshold^2 median(||x_i - x_j||^2)))``.

    Raises:
        ValueError: On a non-positive threshold.
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    x = _matrix("x", x)
    sq_norms = np.einsum("ij,ij->i", x, x)
    sq_dist = np.maximum(sq_norms[:, None] + sq_norms[None, :] - 2 * (x @ x.T), 0.0)
    median = float(np.median(sq_dist))
    if median <= 0:
        return np.ones_like(sq_dist)
    return np.exp(-sq_dist / (2 * threshold**2 * median))


def _centre_gram(gram: np.ndarray) -> np.ndarray:
    return gram - gram.mean(axis=0, keepdims=True) - gram.mean(axis=1, keepdims=True) + gram.mean()


def gram_cka(gram_x: np.ndarray, gram_y: np.ndarray) -> float:
    """CKA of two Gram matrices over the same images: ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``.

    Args:
        gram_x: (N, N) kernel matrix of model 1.
        gram_y: (N, N) kernel matrix of model 2.

    Returns:
        CKA in [0, 1] (0 when either centred Gram matrix vanishes).

    Raises:
        ValueError: When the matrices differ in shape or are not square.
    """
    k, m = np.asarray(gram_x, dtype=np.float64), np.asarray(gram_y, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape != m.shape:
        raise ValueError(f"Gram matrices must be square and alike, got {k.shape} and {m.shape}")
    k, m = _centre_gram(k), _centre_gram(m)
    norm = np.sqrt(np.sum(k * k) * np.sum(m * m))
    return float(np.sum(k * m) / norm) if norm > 0 else 0.0


def rbf_cka(x: np.ndarray, y: np.ndarray, threshold: float = 1.0) -> float:
    """RBF-kernel CKA of two representations (bandwidth relative to each one's median distance).

    Args:
        x: (N, D1) features of model 1.
        y: (N, D2) features of model 2, same images.
        threshold: Bandwidth as a fraction of the median pairwise distance (the paper
            reports 0.2 to 1.0; 1.0 is the default here).

    Returns:
        CKA in [0, 1]; invariant to orthogonal transforms, isotropic scaling and
        translation of either representation.

    Raises:
        ValueError: On malformed inputs.
    """
    x, y = _pair(x, y)
    return gram_cka(rbf_gram(x, threshold), rbf_gram(y, threshold))


def _basis(x: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the column space of centred ``x`` (rank-deficient part dropped)."""
    u, s, _ = np.linalg.svd(_centre(x), full_matrices=False)
    if s.size == 0 or s[0] == 0:
        return u[:, :0]
    return u[:, s > RANK_TOLERANCE * s[0]]


def cca_correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Canonical correlations of two representations, largest first.

    The cosines of the principal angles between the column spaces of the centred
    matrices: ``min(rank x, rank y)`` values in [0, 1]. With as many directions as images
    (``rank x + rank y > N - 1``) some correlations are 1 by construction; use more
    images than feature directions, or :func:`svcca`.

    Args:
        x: (N, D1) features of model 1.
        y: (N, D2) features of model 2, same images.

    Returns:
        (min(rank x, rank y),) correlations; empty when either representation is constant.

    Raises:
        ValueError: On malformed inputs.
    """
    x, y = _pair(x, y)
    bx, by = _basis(x), _basis(y)
    if bx.shape[1] == 0 or by.shape[1] == 0:
        return np.zeros(0)
    return np.clip(np.linalg.svd(bx.T @ by, compute_uv=False), 0.0, 1.0)


def cca_similarity(x: np.ndarray, y: np.ndarray) -> float:
    """Mean canonical correlation (what revisiting-transfer reports per layer).

    Returns:
        The mean of :func:`cca_correlations`, 0.0 when there are none.
    """
    rho = cca_correlations(x, y)
    return float(rho.mean()) if rho.size else 0.0


def svd_reduce(x: np.ndarray, keep_variance: float = SVCCA_KEEP_VARIANCE) -> np.ndarray:
    """Project centred ``x`` on its fewest leading singular directions keeping ``keep_variance``.

    Args:
        x: (N, D) features.
        keep_variance: Fraction of the total variance the kept directions explain, in (0, 1].

    Returns:
        (N, k) scores ``U_k S_k``.

    Raises:
        ValueError: On a fraction outside (0, 1] or malformed input.
    """
    if not 0 < keep_variance <= 1:
        raise ValueError(f"keep_variance must be in (0, 1], got {keep_variance}")
    u, s, _ = np.linalg.svd(_centre(_matrix("x", x)), full_matrices=False)
    energy = s**2
    total = energy.sum()
    if total == 0:
        return u[:, :0]
    explained = np.cumsum(energy) / total
    k = int(np.searchsorted(explained, keep_variance - 1e-12) + 1)
    return u[:, :k] * s[:k]


def svcca(x: np.ndarray, y: np.ndarray, keep_variance: float = SVCCA_KEEP_VARIANCE) -> float:
    """SVCCA: SVD to the directions keeping ``keep_variance`` of each, then mean CCA.

    Args:
        x: (N, D1) features of model 1.
        y: (N, D2) features of model 2, same images.
        keep_variance: Variance each SVD keeps (Raghu et al. keep 99%).

    Returns:
        The mean canonical correlation of the reduced representations.

    Raises:
        ValueError: On malformed inputs.
    """
    x, y = _pair(x, y)
    return cca_similarity(svd_reduce(x, keep_variance), svd_reduce(y, keep_variance))


def prediction_agreement(predictions_1: np.ndarray, predictions_2: np.ndarray) -> float:
    """Fraction of images on which two models predict the same label.

    Args:
        predictions_1: (N,) predicted classes of model 1 (or (N, C) multilabel 0/1: a row
            agrees when every label does).
        predictions_2: The same for model 2.

    Returns:
        Agreement in [0, 1].

    Raises:
        ValueError: When the shapes differ or there are no predictions.
    """
    a, b = np.asarray(predictions_1), np.asarray(predictions_2)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"predictions must be non-empty and alike, got {a.shape} and {b.shape}")
    same = a == b
    if same.ndim > 1:
        same = same.reshape(len(same), -1).all(axis=1)
    return float(same.mean())


def chance_agreement(accuracy_1: float, accuracy_2: float | None = None) -> float:
    """Agreement of two independent classifiers: ``a1 a2 + (1 - a1)(1 - a2)``.

    Args:
        accuracy_1: Accuracy of model 1, in [0, 1].
        accuracy_2: Accuracy of model 2 (None: the same as model 1, giving
            ``a^2 + (1 - a)^2``).

    Returns:
        The chance level of :func:`prediction_agreement`.

    Raises:
        ValueError: On an accuracy outside [0, 1].
    """
    a1 = float(accuracy_1)
    a2 = a1 if accuracy_2 is None else float(accuracy_2)
    for value in (a1, a2):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"accuracies must be in [0, 1], got {value}")
    return a1 * a2 + (1 - a1) * (1 - a2)


def agreement_summary(
    predictions_1: np.ndarray, predictions_2: np.ndarray, labels: np.ndarray
) -> dict[str, float]:
    """Agreement of two models on labelled images, with both accuracies and the chance level.

    Args:
        predictions_1: (N,) predicted classes of model 1.
        predictions_2: (N,) predicted classes of model 2.
        labels: (N,) true classes.

    Returns:
        ``agreement``, ``accuracy_1``, ``accuracy_2``, ``chance_agreement`` and
        ``excess_agreement`` (agreement minus chance).
    """
    labels = np.asarray(labels)
    acc_1 = prediction_agreement(predictions_1, labels)
    acc_2 = prediction_agreement(predictions_2, labels)
    agreement = prediction_agreement(predictions_1, predictions_2)
    chance = chance_agreement(acc_1, acc_2)
    return {
        "agreement": agreement,
        "accuracy_1": acc_1,
        "accuracy_2": acc_2,
        "chance_agreement": chance,
        "excess_agreement": agreement - chance,
    }
