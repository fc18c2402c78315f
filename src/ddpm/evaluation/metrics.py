"""Distances between two sets of image features: FID and KID.

FID (Heusel et al. 2017) fits a Gaussian to each set and takes the Frechet distance
    d^2 = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)),
in float64. It is biased: it grows as the sample count shrinks, so compare FIDs only at equal
counts.

KID (Binkowski et al. 2018, §3) is the squared MMD with the cubic polynomial kernel
k(x, y) = (x.y / d + 1)^3, estimated without bias on random subsets; near 0 for equal
distributions at any sample count.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of features [N, D], in float64."""
    features = np.asarray(features, dtype=np.float64)
    if len(features) < 2:
        raise ValueError("FID needs at least 2 images per set")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Only the trace of (S_1 S_2)^(1/2) is needed: the sum of the square roots of the eigenvalues of
    S_1 S_2. Those are also the eigenvalues of the symmetric S_1^(1/2) S_2 S_1^(1/2) (AB and BA share
    their eigenvalues), so two symmetric eigendecompositions give it. At 2,048 dimensions that takes
    about 5 s on 2 CPU cores, where scipy.linalg.sqrtm of the non-symmetric product takes about 35 s;
    the two agree to 1e-8, and singular covariances (fewer images than dimensions) need no offset.
    """
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * _trace_sqrt_product(sigma1, sigma2))


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((S_1 S_2)^(1/2)) for covariance matrices S_1, S_2, by eigenvalues (see frechet_distance)."""
    w, v = scipy.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(w.clip(min=0))) @ v.T  # S_1^(1/2); rounding can leave eigenvalues just below 0
    return float(np.sqrt(scipy.linalg.eigvalsh(root1 @ sigma2 @ root1).clip(min=0)).sum())


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


def kernel_inception_distance(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """Unbiased MMD^2 with the kernel (x.y / d + 1)^3, mean and std over random subsets."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    m = min(len(a), len(b), subset_size)
    if m < 2:
        raise ValueError("KID needs at least 2 images per set")
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        k_xx, k_yy, k_xy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        # the diagonal terms k(x_i, x_i) are left out: that is what makes the estimate unbiased
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        estimates.append(within - 2 * k_xy.mean())
    return float(np.mean(estimates)), float(np.std(estimates))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, chunk: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of features [N, D].

    Each set's manifold is the union of balls around its points, each ball reaching the point's k-th
    nearest neighbour in its own set. Precision is the share of fake points inside the real manifold
    (are the samples realistic?); recall the share of real points inside the fake manifold (is the
    data covered?). A generator that drops modes keeps its precision and loses recall.
    """
    import torch

    real_t, fake_t = (torch.as_tensor(np.asarray(x, dtype=np.float32)) for x in (real, fake))
    if min(len(real_t), len(fake_t)) <= k:
        raise ValueError(f"precision and recall with k = {k} need more than {k} points per set")

    def radii(points):  # distance of each point to its k-th nearest neighbour among the others
        return torch.cat([torch.cdist(points[i:i + chunk], points).kthvalue(k + 1, dim=1).values
                          for i in range(0, len(points), chunk)])

    def covered(points, centres, radius):  # is each point within some centre's ball?
        return torch.cat([(torch.cdist(points[i:i + chunk], centres) <= radius[None, :]).any(dim=1)
                          for i in range(0, len(points), chunk)])

    precision = covered(fake_t, real_t, radii(real_t)).float().mean().item()
    recall = covered(real_t, fake_t, radii(fake_t)).float().mean().item()
    return precision, recall
