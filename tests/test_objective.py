"""Transport paths and the flow loss against closed forms."""

import math

import pytest
import torch

from layersync import FlowObjective
from layersync.paths import make_path


@pytest.mark.parametrize("name", ["linear", "gvp", "vp"])
def test_derivatives_match_finite_differences(name):
    path = make_path(name)
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    for fn in (path.alpha, path.sigma):
        value, slope = fn(t)
        numeric = (fn(t + h)[0] - fn(t - h)[0]) / (2 * h)
        assert torch.allclose(slope, numeric, atol=1e-5)


def test_path_ends():
    t = torch.tensor([0.0, 1.0])
    assert make_path("linear").alpha(t)[0].tolist() == [0.0, 1.0]
    assert torch.allclose(make_path("gvp").alpha(t)[0] ** 2 + make_path("gvp").sigma(t)[0] ** 2, torch.ones(2))
    a, _ = make_path("vp").alpha(torch.tensor([1.0]))
    assert a.item() == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["linear", "gvp", "vp"])
def test_prediction_conversions_agree(name):
    """For x_t from (x1, x0): the true noise, score and velocity map onto each other."""
    obj = FlowObjective(name)
    x1, x0 = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64)
    xt, ut = obj.path.interpolate(x1, x0, t)
    sigma = obj.path.sigma(t[:, None])[0]
    score = -x0 / sigma  # conditional score: equals the marginal one for a point mass
    assert torch.allclose(obj.path.velocity_from_score(score, xt, t), ut, atol=1e-8)
    assert torch.allclose(obj.path.score_from_velocity(ut, xt, t), score, atol=1e-8)
    assert torch.allclose(obj.path.score_from_noise(x0, xt, t), score, atol=1e-8)


def test_velocity_loss_is_mse_to_x1_minus_x0():
    obj = FlowObjective("linear", "velocity")
    x1, x0, t = torch.randn(5, 2, 4), torch.randn(5, 2, 4), torch.rand(5)
    pred = torch.randn(5, 2, 4)
    expected = ((pred - (x1 - x0)) ** 2).mean(dim=(1, 2))
    assert torch.allclose(obj.loss(pred, x1, x0, t), expected)


def test_noise_and_score_losses_vanish_at_the_truth():
    x1, x0, t = torch.randn(5, 6), torch.randn(5, 6), torch.rand(5) * 0.9 + 0.05
    for weight in ("none", "velocity", "likelihood"):
        noise = FlowObjective("gvp", "noise", weight)
        assert noise.loss(x0, x1, x0, t).abs().max() < 1e-10
        score = FlowObjective("gvp", "score", weight)
        sigma = score.path.sigma(t[:, None])[0]
        assert score.loss(-x0 / sigma, x1, x0, t).abs().max() < 1e-10


def test_likelihood_weight_formula():
    obj = FlowObjective("linear", "noise", "likelihood")
    x1, x0, t = torch.zeros(1, 1), torch.zeros(1, 1), torch.tensor([0.5])
    pred = torch.ones(1, 1)
    # linear path at t=1/2: var = (1/t) s^2 - s s' = 0.5 + 0.5 = 1; weight = var / s^2 = 4.
    assert obj.loss(pred, x1, x0, t).item() == pytest.approx(4.0)


def test_sit_default_intervals():
    assert FlowObjective("linear", "velocity").interval() == (0.0, 1.0)
    assert FlowObjective("vp", "velocity").interval() == (0.0, 1 - 1e-5)
    assert FlowObjective("linear", "noise").interval() == (1e-3, 1 - 1e-3)
    t = FlowObjective("vp").sample_t(1000, torch.Generator().manual_seed(0), "cpu")
    assert t.min() >= 0 and t.max() <= 1 - 1e-5


def test_bad_names_raise():
    with pytest.raises(ValueError, match="prediction"):
        FlowObjective(prediction="epsilon")
    with pytest.raises(ValueError, match="path"):
        FlowObjective(path="cosine")
    assert math.isfinite(FlowObjective().interval()[1])
