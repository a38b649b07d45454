"""Streaming Fréchet statistics and distance against closed forms and scipy."""

import numpy as np
import pytest
import scipy.linalg
import torch

from layersync.metrics import GaussianStats, frechet_distance


def scipy_fd(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_diagonal_closed_form():
    d1, d2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(d1) - np.sqrt(d2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(expected, rel=1e-12)


def test_standard_normal_vs_four_identity():
    dim = 16  # N(0, I) vs N(0, 4I): tr(I + 4I - 2 * 2I) = dim
    assert frechet_distance(np.zeros(dim), np.eye(dim), np.zeros(dim), 4 * np.eye(dim)) == pytest.approx(dim)


@pytest.mark.parametrize("condition", [1.0, 1e6])
def test_matches_scipy_sqrtm(condition):
    rng = np.random.default_rng(0)
    dim = 12

    def random_cov():
        q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        return (q * np.geomspace(1.0, 1.0 / condition, dim)) @ q.T

    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    s1, s2 = random_cov(), random_cov()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(scipy_fd(mu1, s1, mu2, s2), rel=1e-6, abs=1e-9)


def test_same_statistics_give_zero():
    x = np.random.default_rng(1).standard_normal((300, 20))
    stats = GaussianStats.of(x)
    assert abs(frechet_distance(stats.mean, stats.cov, stats.mean, stats.cov)) < 1e-8


def test_singular_covariance_stays_real_and_finite():
    x = np.random.default_rng(2).standard_normal((10, 50))  # fewer samples than dimensions
    stats = GaussianStats.of(x)
    value = frechet_distance(stats.mean, stats.cov, np.zeros(50), np.eye(50))
    assert np.isfinite(value) and value > 0


def test_streaming_equals_one_shot_and_ignores_chunking():
    x = torch.randn(257, 9, dtype=torch.float32) * 3 + 5
    one = GaussianStats.of(x)
    assert np.allclose(one.mean, x.double().mean(0).numpy(), atol=1e-12)
    assert np.allclose(one.cov, np.cov(x.double().numpy(), rowvar=False), atol=1e-10)
    for sizes in ([100, 157], [1] * 7 + [250], [257]):
        stream = GaussianStats(9)
        for chunk in torch.split(x, sizes):
            stream.update(chunk)
        assert stream.count == 257
        assert np.allclose(stream.mean, one.mean, atol=1e-12) and np.allclose(stream.cov, one.cov, atol=1e-10)
    a, b = GaussianStats.of(x[:100]), GaussianStats.of(x[100:])
    assert np.allclose(a.merge(b).cov, one.cov, atol=1e-10)


def test_dimension_mismatch_is_an_error():
    with pytest.raises(ValueError, match="dimension"):
        GaussianStats(4).update(torch.zeros(2, 5))
