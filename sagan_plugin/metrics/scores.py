"""FID, KID and Inception Score from Inception activations (float64 numpy)."""

from __future__ import annotations

import numpy as np


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the activations, as pytorch-fid computes them."""
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


SVD_MAX_SIZE = 1024


def _covariance_factor(features: np.ndarray) -> np.ndarray:
    """F with F^T F = the covariance (np.cov's, n - 1 divisor), with min(n, d) rows."""
    n, d = features.shape
    centred = features - features.mean(axis=0)
    if n <= d:
        return centred / np.sqrt(n - 1)
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / (n - 1))
    return (eigenvectors * np.sqrt(eigenvalues.clip(0))).T


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^1/2), the quantity
    pytorch-fid computes, without its 2048x2048 scipy sqrtm (tens of seconds on a CPU).

    With S = F^T F, the eigenvalues of S_a S_b are the squared singular values of F_a F_b^T, so
    the trace of the root is their sum; F is the centred features themselves when n <= d.
    """
    if min(len(features_a), len(features_b)) < 2:
        raise ValueError("FID needs at least 2 samples per set")
    factor_a, factor_b = _covariance_factor(features_a), _covariance_factor(features_b)
    cross = factor_a @ factor_b.T
    if min(cross.shape) <= SVD_MAX_SIZE:  # cheap enough for the most accurate route
        trace_root = np.linalg.svd(cross, compute_uv=False).sum()
    else:  # eigenvalues of the smaller Gram matrix: several times faster than an SVD
        gram = cross @ cross.T if cross.shape[0] <= cross.shape[1] else cross.T @ cross
        trace_root = np.sqrt(np.linalg.eigvalsh(gram).clip(0)).sum()
    mean_term = np.sum((features_a.mean(axis=0) - features_b.mean(axis=0)) ** 2)
    return float(mean_term + np.sum(factor_a**2) + np.sum(factor_b**2) - 2 * trace_root)


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1) ** 3


def kernel_inception_distance(features_a: np.ndarray, features_b: np.ndarray,
                              subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float | None]:
    """KID (Binkowski et al., 2018): the unbiased MMD^2 estimate with the cubic polynomial
    kernel, averaged over random subsets; returns (mean, standard deviation over subsets),
    the deviation None when there is one distinct subset."""
    m = min(subset_size, len(features_a), len(features_b))
    if m < 2:
        raise ValueError("KID needs at least 2 samples per set")
    if m == len(features_a) == len(features_b):
        subsets = 1  # every subset would hold all samples: the same estimate each time
    rng = np.random.default_rng(seed)
    estimates = np.empty(subsets)
    for i in range(subsets):
        x = features_a[rng.choice(len(features_a), m, replace=False)]
        y = features_b[rng.choice(len(features_b), m, replace=False)]
        k_xx, k_yy = _polynomial_kernel(x, x), _polynomial_kernel(y, y)
        k_xy = _polynomial_kernel(x, y)
        # Off-diagonal means: dropping k(x_i, x_i) is what makes the estimate unbiased.
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        estimates[i] = within - 2 * k_xy.mean()
    return float(estimates.mean()), float(estimates.std()) if subsets > 1 else None


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) over the 1008-way softmax, per split; (mean, std)."""
    splits = max(1, min(splits, len(logits)))
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    scores = []
    for part in np.array_split(log_p, splits):
        log_marginal = np.log(np.exp(part).mean(axis=0))
        kl = (np.exp(part) * (part - log_marginal)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))
