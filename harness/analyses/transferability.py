"""Transferability estimates from frozen features, computed before any training on the target.

- LogME (You, Liu, Wang & Long, "LogME: Practical Assessment of Pre-trained Models for
  Transfer Learning", ICML 2021): for each target column ``y`` (one-hot classes, or a
  multilabel task's 0/1 labels) the maximised log evidence of Bayesian linear regression
  ``y = F w + e``, ``w ~ N(0, 1/alpha)``, ``e ~ N(0, 1/beta)``, divided by the number of
  images and averaged over columns. Alpha and beta follow the paper's fixed-point
  updates in the eigenbasis of ``F F^T``, run here to a relative change of 1e-8 in
  ``alpha / beta`` (the paper's code stops at 1% or after 11 iterations). With fewer
  images than feature dimensions the evidence often grows all the way to noise-free
  interpolation (``beta -> inf``); the value is then that limit, the supremum, where the
  paper's code returns wherever its 11 iterations stopped.
- LEEP (Nguyen, Hassner, Seeger & Archambeau, ICML 2020): from the source model's class
  probabilities ``theta(x)`` on the target images, the empirical conditional
  ``P(y | z)`` of target label given source label, and the mean log of the "expected
  empirical predictor" ``sum_z P(y_i | z) theta(x_i)_z``.
- N-LEEP (Li et al., "Ranking Neural Checkpoints", CVPR 2021): LEEP with ``theta`` the
  posteriors of a Gaussian mixture fitted to the features after PCA (keeping 80% of the
  variance), so it needs no source classifier.
- Fréchet distance between two feature distributions, each summarised as a Gaussian
  (mean and covariance): ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``, as in FID
  (Heusel et al., NeurIPS 2017).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import softmax

LOGME_TOLERANCE = 1e-8
LOGME_MAX_ITERATIONS = 1000
NLEEP_PCA_VARIANCE = 0.8


def _features(name: str, x: np.ndarray, min_rows: int = 2) -> np.ndarray:
    out = np.asarray(x, dtype=np.float64)
    if out.ndim != 2 or out.shape[0] < min_rows or out.shape[1] < 1:
        raise ValueError(f"{name} must be an (N, D) matrix with N >= {min_rows}, got {out.shape}")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} has non-finite values")
    return out


def label_targets(labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Target columns for LogME: one-hot of class ids, or a multilabel (N, C) matrix as is.

    Args:
        labels: (N,) class ids or (N, C) 0/1 labels.
        num_classes: Number of classes (None: ``max(labels) + 1``).

    Returns:
        (N, C) float64 targets.
    """
    y = np.asarray(labels)
    if y.ndim == 2:
        return y.astype(np.float64)
    y = y.astype(np.int64)
    classes = int(num_classes if num_classes is not None else y.max() + 1)
    return np.eye(classes)[y]


def _logme_basis(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-zero eigenvalues ``sigma`` of ``F^T F`` and the matching left singular vectors ``U``.

    Uses the smaller Gram matrix (``F F^T`` when N <= D, else ``F^T F``); directions of
    rounding-level eigenvalues contribute as zero ones would.
    """
    n, d = f.shape
    if n <= d:
        sigma, u = np.linalg.eigh(f @ f.T)
        return np.clip(sigma, 0.0, None), u
    sigma, v = np.linalg.eigh(f.T @ f)
    keep = sigma > 1e-12 * max(float(sigma.max()), 1e-300)
    sigma, v = sigma[keep], v[:, keep]
    return sigma, (f @ v) / np.sqrt(sigma)


def _log_evidence(
    alpha: float, beta: float, sigma: np.ndarray, z: np.ndarray, y_out: float, n: int
) -> float:
    """log p(y | alpha, beta) in F's eigenbasis: ``y ~ N(0, I / beta + F F^T / alpha)``.

    Along ``u_i`` the variance is ``1 / beta + sigma_i / alpha``; the ``n - len(sigma)``
    directions outside F's column space carry ``1 / beta`` and the residual ``y_out``.
    ``beta = inf`` is the noise-free limit (then every direction must be in the basis).
    """
    if math.isinf(beta):
        var = sigma / alpha
        return -0.5 * float(n * math.log(2 * math.pi) + np.sum(np.log(var)) + np.sum(z**2 / var))
    var = 1.0 / beta + sigma / alpha
    outside = n - sigma.size
    return -0.5 * float(
        n * math.log(2 * math.pi)
        + np.sum(np.log(var))
        + np.sum(z**2 / var)
        - outside * math.log(beta)
        + beta * y_out
    )


def _evidence(sigma: np.ndarray, u: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Maximised log evidence per image of one target column, alpha and beta (see logme)."""
    n = len(y)
    if not float(y @ y) > 0:
        return math.nan, math.nan, math.nan  # an all-zero column (a class with no image)
    z = u.T @ y  # coordinates of y in F's column space
    y_out = max(float(y @ y - z @ z), 0.0)  # squared residual of y outside it
    alpha, beta = 1.0, 1.0
    for _ in range(LOGME_MAX_ITERATIONS):
        lam = alpha / beta
        gamma = float(np.sum(sigma / (sigma + lam)))
        m_sq = float(np.sum(sigma * z**2 / (sigma + lam) ** 2))  # |m|^2
        residual = float(np.sum((lam * z / (sigma + lam)) ** 2)) + y_out  # |y - F m|^2
        if n - gamma <= 1e-9 * n or residual <= 1e-300:
            # the evidence grows towards noise-free interpolation (N <= D, y in F's span):
            # its supremum is the beta -> inf limit, maximised at alpha = n / sum(z^2 / sigma)
            positive = sigma > 0
            if sigma.size < n or not positive.all():
                break
            alpha = n / float(np.sum(z**2 / sigma))
            return _log_evidence(alpha, math.inf, sigma, z, 0.0, n) / n, alpha, math.inf
        alpha = gamma / max(m_sq, 1e-300)
        beta = (n - gamma) / residual
        if abs(alpha / beta - lam) <= LOGME_TOLERANCE * lam:
            break
    return _log_evidence(alpha, beta, sigma, z, y_out, n) / n, alpha, beta


def logme_evidence(features: np.ndarray, target: np.ndarray) -> tuple[float, float, float]:
    """Maximised log evidence per image of one target column, with the maximising alpha, beta.

    Args:
        features: (N, D) features.
        target: (N,) real-valued target.

    Returns:
        ``(evidence / N, alpha, beta)``.
    """
    f = _features("features", features)
    y = np.asarray(target, dtype=np.float64).reshape(-1)
    if len(y) != len(f):
        raise ValueError(f"{len(y)} targets for {len(f)} feature rows")
    sigma, u = _logme_basis(f)
    return _evidence(sigma, u, y)


def logme(features: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> float:
    """LogME of features for a classification target (higher: more transferable).

    Args:
        features: (N, D) frozen features of the target's training images.
        labels: (N,) class ids, or (N, C) multilabel 0/1.
        num_classes: Number of classes of single-label ``labels``.

    Returns:
        Mean over target columns of the maximised log evidence per image.

    Raises:
        ValueError: On malformed inputs.
    """
    f = _features("features", features)
    targets = label_targets(labels, num_classes)
    if targets.shape[0] != f.shape[0]:
        raise ValueError(f"{targets.shape[0]} labels for {f.shape[0]} feature rows")
    sigma, u = _logme_basis(f)
    columns = [_evidence(sigma, u, targets[:, c])[0] for c in range(targets.shape[1])]
    finite = [value for value in columns if not math.isnan(value)]
    return float(np.mean(finite)) if finite else math.nan


def leep(
    source_probabilities: np.ndarray, labels: np.ndarray, num_classes: int | None = None
) -> float:
    """LEEP of a source classifier's probabilities on the target images (higher: better).

    Args:
        source_probabilities: (N, Z) source-class probabilities of each target image (rows
            sum to 1).
        labels: (N,) target class ids.
        num_classes: Number of target classes (None: ``max(labels) + 1``).

    Returns:
        ``mean_i log sum_z P(y_i | z) theta(x_i)_z``; at most 0.

    Raises:
        ValueError: On multilabel labels or malformed probabilities.
    """
    theta = _features("source_probabilities", source_probabilities, min_rows=1)
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != len(theta):
        raise ValueError(f"LEEP needs (N,) class ids for {len(theta)} images, got shape {y.shape}")
    if np.any(theta < 0) or not np.allclose(theta.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("source_probabilities must be non-negative rows summing to 1")
    onehot = label_targets(y, num_classes)
    joint = theta.T @ onehot / len(y)  # (Z, C): P(z, y)
    marginal = joint.sum(axis=1, keepdims=True)  # P(z)
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    eep = np.sum(theta * conditional[:, y.astype(np.int64)].T, axis=1)
    return float(np.mean(np.log(np.maximum(eep, 1e-300))))


def leep_from_logits(
    logits: np.ndarray, labels: np.ndarray, num_classes: int | None = None
) -> float:
    """LEEP from a source classifier's logits (softmax first).

    Returns:
        :func:`leep` of ``softmax(logits)``.
    """
    return leep(softmax(_features("logits", logits, 1), axis=1), labels, num_classes)


def nleep(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int | None = None,
    *,
    components: int | None = None,
    pca_variance: float = NLEEP_PCA_VARIANCE,
    seed: int = 0,
) -> float:
    """N-LEEP: LEEP with Gaussian-mixture posteriors of PCA-reduced features.

    Args:
        features: (N, D) frozen features of the target's training images.
        labels: (N,) target class ids.
        num_classes: Number of target classes (None: ``max(labels) + 1``).
        components: Mixture components (None: the number of classes, as Li et al.).
        pca_variance: Fraction of variance the PCA keeps.
        seed: Seed of the mixture's initialisation.

    Returns:
        LEEP of the mixture's posteriors.

    Raises:
        ValueError: On malformed inputs or more components than images.
    """
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    f = _features("features", features)
    y = np.asarray(labels).astype(np.int64)
    classes = int(num_classes if num_classes is not None else y.max() + 1)
    k = int(components or classes)
    if k > len(f):
        raise ValueError(f"N-LEEP: {k} mixture components for {len(f)} images")
    reduced = PCA(n_components=pca_variance, svd_solver="full").fit_transform(f)
    mixture = GaussianMixture(k, covariance_type="full", reg_covar=1e-4, random_state=seed)
    posteriors = mixture.fit(reduced).predict_proba(reduced)
    return leep(posteriors, y, classes)


def gaussian_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of the rows of ``x``."""
    f = _features("x", x)
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance_gaussians(
    mu_1: np.ndarray, sigma_1: np.ndarray, mu_2: np.ndarray, sigma_2: np.ndarray
) -> float:
    """Fréchet (2-Wasserstein squared) distance of two Gaussians.

    ``tr((S1 S2)^(1/2))`` is computed as ``sum sqrt(eig(S1^(1/2) S2 S1^(1/2)))``, a
    symmetric positive semi-definite matrix, so no complex square roots arise.

    Returns:
        ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``, clipped at 0.

    Raises:
        ValueError: When the dimensions differ.
    """
    mu_1, mu_2 = np.atleast_1d(mu_1).astype(np.float64), np.atleast_1d(mu_2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma_1).astype(np.float64), np.atleast_2d(sigma_2).astype(np.float64)
    if mu_1.shape != mu_2.shape or s1.shape != s2.shape or s1.shape != (mu_1.size, mu_1.size):
        raise ValueError(
            f"Gaussians must have one dimension: {mu_1.shape}, {s1.shape}, {mu_2.shape}, {s2.shape}"
        )
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root_1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root_1 @ ((s2 + s2.T) / 2) @ root_1
    cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)))
    value = float(np.sum((mu_1 - mu_2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * cross)
    return max(value, 0.0)


def frechet_distance(x_1: np.ndarray, x_2: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets of equal width.

    With fewer images than dimensions the D x D covariances are never formed: with
    ``S1 = A^T A`` and ``S2 = B^T B`` (``A``, ``B`` the centred rows over ``sqrt(n - 1)``),
    the eigenvalues of ``S1 S2`` are the squared singular values of ``A B^T``, so
    ``tr((S1 S2)^(1/2))`` is the nuclear norm of that N1 x N2 matrix.

    Args:
        x_1: (N1, D) features of dataset 1.
        x_2: (N2, D) features of dataset 2.

    Returns:
        The distance (0 for identical statistics).

    Raises:
        ValueError: When the widths differ.
    """
    a, b = _features("x_1", x_1), _features("x_2", x_2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature widths differ: {a.shape[1]} vs {b.shape[1]}")
    if a.shape[1] <= min(len(a), len(b)):
        return frechet_distance_gaussians(*gaussian_statistics(a), *gaussian_statistics(b))
    mu_1, mu_2 = a.mean(axis=0), b.mean(axis=0)
    a = (a - mu_1) / math.sqrt(len(a) - 1)
    b = (b - mu_2) / math.sqrt(len(b) - 1)
    cross = float(np.sum(np.linalg.svd(a @ b.T, compute_uv=False)))
    value = float(np.sum((mu_1 - mu_2) ** 2) + np.sum(a * a) + np.sum(b * b) - 2 * cross)
    return max(value, 0.0)
