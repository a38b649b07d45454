"""The compiled sampler draws the eager sampler's samples; layersync-sample's --compile and progress."""


import numpy as np
import pytest
import torch

from helpers import tiny_args
from layersync import FlowObjective, Sampler, SamplerConfig
from layersync.cli import sample, train
from layersync.nn import build_sit1d
from layersync.sampling import CompiledModel, seeded_samples
from layersync import checkpoint, sample_set
from layersync_image.sit import build_sit

SHAPE, CLASSES = (1, 8, 8), 10


def perturb_(weights) -> None:
    """Noise on every float weight: SiT's zero-initialised output layer would make every sampler agree."""
    g = torch.Generator().manual_seed(0)
    for w in weights:
        if w.is_floating_point():
            w.add_(0.05 * torch.randn(w.shape, generator=g))


class Spy(torch.nn.Module):
    """A backbone that counts the calls that run its Python code (compiled code does not)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.python_calls = model, 0

    def forward(self, *args, **kwargs):
        if not torch.compiler.is_compiling():
            self.python_calls += 1
        return self.model(*args, **kwargs)

    def drop_cond(self, cond, drop):
        return self.model.drop_cond(cond, drop)


@pytest.fixture(scope="module")
def model():
    model = build_sit(SHAPE, CLASSES, "T/4").eval()
    with torch.no_grad():
        perturb_(model.parameters())
        x, t = torch.randn(2, *SHAPE), torch.full((2,), 0.5)
        out = model(x, t, torch.tensor([0, 1]))[0]
    assert out.abs().mean() > 0.01 and not torch.allclose(out, model(x, t, torch.tensor([2, 3]))[0])
    return Spy(model)


@pytest.fixture(scope="module")
def compiled(model):
    return CompiledModel(model)  # one for all solvers: the same shapes compile once


@pytest.mark.parametrize("method, solver, interval", [
    ("ode", "euler", (0.0, 1.0)),
    ("ode", "heun", (0.0, 1.0)),
    ("sde", "euler", (0.0, 1.0)),
    ("sde", "heun", (0.0, 0.5)),  # unguided steps too: a second input shape
])
@pytest.mark.slow
def test_compiled_sampler_draws_the_eager_samples(model, compiled, method, solver, interval):
    config = SamplerConfig(method=method, solver=solver, steps=3, cfg_scale=4.0, guidance_interval=interval)
    sampler, cond = Sampler(FlowObjective(), config), torch.tensor([3, 1, 4])
    model.python_calls = 0
    fast = seeded_samples(sampler, compiled, SHAPE, cond, seed=7)
    assert model.python_calls == 0  # every evaluation ran compiled code
    eager = seeded_samples(sampler, model, SHAPE, cond, seed=7)
    assert model.python_calls == sampler.evaluations()
    torch.testing.assert_close(fast, eager, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_compiled_sampler_takes_dict_conditions_and_masks():
    """Text-like conditions (a dict of tensors) and a mask of valid frames, as the motion models have."""
    torch.manual_seed(0)
    model = build_sit1d((16, 8), 0, "T/2", cond_dims={"text": 12}).eval()
    with torch.no_grad():
        perturb_(model.parameters())
    cond, mask = {"text": torch.randn(3, 12)}, torch.arange(8) < torch.tensor([[8], [5], [2]])
    sampler = Sampler(FlowObjective(), SamplerConfig(method="sde", solver="euler", steps=3, cfg_scale=4.0))
    compiled = seeded_samples(sampler, CompiledModel(model), (16, 8), cond, seed=7, mask=mask)
    eager = seeded_samples(sampler, model, (16, 8), cond, seed=7, mask=mask)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)


class Counting(torch.nn.Module):
    """A backbone that counts its calls."""

    depth = 1

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, t, cond=None, capture=()):
        self.calls += 1
        return -0.5 * x, {}

    def drop_cond(self, cond, drop):
        return cond


@pytest.mark.parametrize("config", [
    {"method": "ode", "solver": "euler"},
    {"method": "ode", "solver": "heun"},
    {"method": "sde", "solver": "euler"},
    {"method": "sde", "solver": "heun"},
    {"method": "sde", "solver": "heun", "last_step": "none"},
    {"method": "sde", "solver": "euler", "last_step": "tweedie"},
])
def test_progress_follows_every_model_evaluation(config):
    sampler = Sampler(FlowObjective(), SamplerConfig(steps=5, cfg_scale=2.0, **config))
    model, calls = Counting(), []
    sampler(model, torch.randn(2, 3), torch.zeros(2), progress=lambda: calls.append(model.calls))
    assert calls == list(range(1, sampler.evaluations() + 1))  # after each call, one doubled-batch call each


def test_dopri5_has_no_fixed_number_of_evaluations():
    assert Sampler(FlowObjective(), SamplerConfig(solver="dopri5")).evaluations() is None


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled_sampler") / "run"
    train.main(tiny_args(out, 1))
    path = checkpoint.latest(out / "checkpoints")
    state = checkpoint.load(path)
    perturb_(state["ema"].values())
    torch.save(state, path)
    return out


@pytest.fixture
def updates(monkeypatch):
    """The amounts every progress bar of the sample CLI moves by."""
    moves = []

    class Recording(sample_set.tqdm):
        def update(self, n=1):
            moves.append(n)
            return super().update(n)

    monkeypatch.setattr(sample_set, "tqdm", Recording)
    return moves


def preview(run, out, *extra) -> np.ndarray:
    sample.main(["--ckpt", str(run), "--out", str(out), "--num", "3", "--cfg-scale", "4", *extra])
    with np.load(out.with_suffix(".npz")) as data:
        return data["samples"]


@pytest.mark.slow
def test_sample_cli_compiles_on_request_and_shows_progress_per_evaluation(run, tmp_path, caplog, updates):
    sde = ["--mode", "sde", "--sampling-method", "euler", "--steps", "5"]  # 5 evaluations
    with caplog.at_level("INFO", logger="layersync"):
        eager = preview(run, tmp_path / "eager", *sde)
    assert "sampler: eager (--compile" in caplog.text  # the default on a CPU
    assert updates == [0, 1, 0, 1, 1]  # the 3 samples, in whole samples per evaluation
    caplog.clear()
    with caplog.at_level("INFO", logger="layersync"):
        compiled = preview(run, tmp_path / "compiled", *sde, "--compile")
    assert "sampler: compiled" in caplog.text
    assert 0.1 < np.abs(eager).mean() and np.allclose(compiled, eager, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_sample_cli_runs_dopri5_eagerly_in_one_move_per_batch(run, tmp_path, caplog, updates):
    with caplog.at_level("INFO", logger="layersync"):
        preview(run, tmp_path / "dopri5", "--compile", "--set", "sample.solver=dopri5", "--batch", "2")
    assert "sampler: eager, dopri5 adapts its steps" in caplog.text
    assert updates == [2, 1]
