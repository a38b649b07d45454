"""Golden numbers of the reference implementation (vita-epfl/LayerSync, a SiT fork).

data/sit_reference.npz holds what the reference's own models.py and transport/ computed on CPU in
float32 for a small random SiT (``meta``: its configuration): the initialisation, weights ``sd/*``
(perturbed so that no path is zero), block and model outputs, one training-loss evaluation with every
gradient ``grad/*``, a guided forward and ODE samples. Block indices are 1-based block outputs.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from layersync import FlowObjective, LayerSync, Sampler, SamplerConfig, build
from layersync import config as configuration
from layersync.cli import sample as sample_cli
from layersync.nn import TimestepEmbedder, sincos_pos_embed
from layersync.sampling import ode_solve
from layersync.train.step import TrainStep
from layersync_image.sit import SiT

with np.load(Path(__file__).parent / "data" / "sit_reference.npz") as golden:
    REF = {name: golden[name] for name in golden.files}
META = json.loads(str(REF["meta"]))
SD_KEYS = {name.removeprefix("sd/") for name in REF if name.startswith("sd/")}


def ref(name) -> torch.Tensor:
    return torch.from_numpy(REF[name])


def reference_sit() -> SiT:
    """Our SiT at the reference's size, with the reference's weights, in eval mode."""
    model = SiT(**META["model"])
    model.load_state_dict({key: ref(f"sd/{key}") for key in SD_KEYS})
    return model.eval()


def null_labels(y):
    return torch.full_like(y, META["model"]["num_classes"])


def test_state_dict_has_the_reference_keys_and_shapes():
    ours = SiT(**META["model"]).state_dict()
    assert set(ours) == SD_KEYS
    assert all(ours[key].shape == REF[f"sd/{key}"].shape for key in SD_KEYS)


def test_initialisation():
    torch.manual_seed(0)  # as the reference did before building its model
    ours = SiT(**META["model"]).state_dict()
    assert {key for key, value in ours.items() if not value.any()} == set(REF["init_zero_keys"])
    assert torch.equal(ours["pos_embed"], ref("sd/pos_embed"))  # fixed, never trained nor perturbed
    # The reference draws its random tensors in another order, so ours are other draws from the same
    # distributions. The std of n draws scatters by 0.71/sqrt(n) relative for a normal (0.45/sqrt(n)
    # for xavier's uniform) and the difference of two such estimates by sqrt(2) times that, so
    # rel = 3/sqrt(n) is 3 standard deviations of it. A zero std must be zero.
    for key, std in zip(REF["init_std_keys"], REF["init_std"]):
        value = ours[key].double()
        assert value.std().item() == pytest.approx(std, rel=3 / math.sqrt(value.numel()), abs=0), key


def test_position_embedding_of_sit_xl2_at_256px():
    torch.testing.assert_close(sincos_pos_embed(1152, (16, 16)), ref("pos_embed_1152_16"))


def test_timestep_frequencies():
    torch.testing.assert_close(TimestepEmbedder.frequencies(ref("t_freq_input"), 256), ref("t_freq_256"))


def test_forward_and_every_block_output():
    depth = META["model"]["depth"]
    with torch.no_grad():
        out, hidden = reference_sit()(ref("x"), ref("t"), ref("y"), capture=tuple(range(1, depth + 1)))
    torch.testing.assert_close(out, ref("forward_out"))
    for k in range(1, depth + 1):
        torch.testing.assert_close(hidden[k], ref(f"block_out_{k}"), msg=f"block {k}")


def test_training_losses_and_every_gradient():
    model = reference_sit().train()
    objective = FlowObjective(META["path"], META["prediction"])
    layersync = LayerSync(META["layersync"]["pairs"], META["layersync"]["weight"], depth=model.depth)
    x1, x0, t, y = ref("train_x1"), ref("train_x0"), ref("train_t"), ref("y")

    xt, ut = objective.path.interpolate(x1, x0, t)
    torch.testing.assert_close(xt, ref("train_xt"))
    torch.testing.assert_close(ut, ref("train_ut"))
    with torch.no_grad():
        pred, hidden = model(xt, t, y, capture=layersync.capture)
        torch.testing.assert_close(objective.loss(pred, x1, x0, t), ref("train_flow_per_sample"))
        assert layersync.terms(hidden)[0].item() == pytest.approx(float(REF["train_layersync_unweighted"]), rel=1e-6)

    # the trainer's own forward; no label dropout, as the reference was given y as is
    step = TrainStep(model, objective, layersync, optimizer=None, cfg_dropout=0.0)
    total, flow, sync = step.forward_losses(x1, x0, t, torch.zeros(len(y), dtype=torch.bool), y)
    assert flow.item() == pytest.approx(REF["train_flow_per_sample"].mean(), rel=1e-6)
    assert sync.item() == pytest.approx(layersync.weight * float(REF["train_layersync_unweighted"]), rel=1e-6)
    assert total.item() == pytest.approx(float(REF["train_total"]), rel=1e-6)
    total.backward()
    params = dict(model.named_parameters())
    assert set(params) == {name.removeprefix("grad/") for name in REF if name.startswith("grad/")}
    for name, param in params.items():
        torch.testing.assert_close(param.grad, ref(f"grad/{name}"), msg=name)


def test_guided_prediction_guides_the_first_three_channels_as_the_reference():
    model, z, y = reference_sit(), ref("cfg_z"), ref("cfg_y")
    t = torch.full((len(z),), float(REF["cfg_t"]))
    scale, want = META["cfg_scale"], ref("cfg_out")  # cat([guided with cond ch 3, guided with uncond ch 3])
    with torch.no_grad():
        cond, uncond = model(z, t, y)[0], model(z, t, null_labels(y))[0]
        three = Sampler(FlowObjective(), SamplerConfig(cfg_scale=scale, cfg_channels=3)).predict(model, z, t, y)
        every = Sampler(FlowObjective(), SamplerConfig(cfg_scale=scale)).predict(model, z, t, y)
    torch.testing.assert_close(three, want[: len(z)])
    torch.testing.assert_close(want[: len(z), 3:], cond[:, 3:])  # channel 3: each half's unguided output
    torch.testing.assert_close(want[len(z):, 3:], uncond[:, 3:])
    torch.testing.assert_close(want[len(z):, :3], want[: len(z), :3])
    torch.testing.assert_close(every[:, :3], want[: len(z), :3])  # the default guides channel 3 too
    torch.testing.assert_close(every[:, 3:], uncond[:, 3:] + scale * (cond[:, 3:] - uncond[:, 3:]))


def ode_config(solver, guided):
    settings = META["ode"][solver]
    if solver == "euler10":  # the reference's fixed-step grid of N time points is N - 1 of our steps
        solver_settings = {"solver": "euler", "steps": settings["grid_points"] - 1}
    else:
        solver_settings = {"solver": "dopri5", "atol": settings["atol"], "rtol": settings["rtol"]}
    guidance = {"cfg_scale": META["cfg_scale"], "cfg_channels": 3} if guided else {}
    return SamplerConfig(method="ode", **solver_settings, **guidance)


@pytest.mark.parametrize("name", ["ode_euler10_nocfg", "ode_euler10_cfg", "ode_dopri5_nocfg"])
def test_ode_samples(name):
    _, solver, guidance = name.split("_")
    sampler = Sampler(FlowObjective(), ode_config(solver, guidance == "cfg"))
    torch.testing.assert_close(sampler(reference_sit(), ref("cfg_z"), ref("cfg_y")), ref(name))


def test_guided_dopri5_sample():
    """The reference integrates the guided ODE on the doubled batch cat([z, z]) with labels
    cat([y, null]), whose second half differs from the first in channel 3 (unconditional); integrated
    that way our guided field gives the reference's sample. Our sampler integrates z alone, which
    changes dopri5's error norm and so its steps (0.0640 vs 0.0641 first).

    dopri5 picks its steps from an error estimate, so last-bit differences (another machine's BLAS
    kernels; here z nudged by one ulp) move its steps and the sample by up to 2e-4 (6e-5 seen on an
    AMD EPYC), far above float precision. Both samples are compared within the solver's rtol (1e-3,
    dopri5's own error here: both are 1e-3 from a 1e-9-tolerance solution); a guidance scale 1 % off
    moves them by 2e-3, and the fixed-step guided sample (test_ode_samples) is compared exactly.

    dopri5's last step overshoots t = 1 (to about 2.8) and interpolates back; the reference guides
    there too, so guidance past t = 1 must stay on (else the sample is 0.03 off)."""
    model, z, y = reference_sit(), ref("cfg_z"), ref("cfg_y")
    settings = META["ode"]["dopri5"]
    sampler = Sampler(FlowObjective(), ode_config("dopri5", guided=True))
    within_rtol = {"atol": settings["rtol"], "rtol": 0}

    def doubled(x, t):
        half, t = x[: len(z)], t[: len(z)]
        guided = sampler.predict(model, half, t, y)
        uncond = model(half, t, null_labels(y))[0]
        return torch.cat([guided, torch.cat([guided[:, :3], uncond[:, 3:]], dim=1)])

    nudged = torch.nextafter(z, torch.full_like(z, math.inf))
    with torch.no_grad():
        for start in (z, nudged):
            as_reference = ode_solve(doubled, torch.cat([start, start]), 0.0, 1.0, "dopri5", **settings)
            torch.testing.assert_close(as_reference[: len(z)], ref("ode_dopri5_cfg"), **within_rtol)
        torch.testing.assert_close(sampler(model, z, y), ref("ode_dopri5_cfg"), **within_rtol)


@pytest.mark.parametrize("channels", [0, -1, 2.5, True, "3"])
def test_cfg_channels_must_be_a_positive_integer_or_null(channels):
    with pytest.raises(ValueError, match="cfg_channels must be a positive integer or null"):
        SamplerConfig(cfg_channels=channels)


@pytest.mark.parametrize("cfg, name", [([], "ode_euler10_nocfg"), (["--cfg-scale", "4"], "ode_euler10_cfg")])
def test_reference_sampling_flags_reproduce_the_reference_euler_samples(cfg, name):
    """The reference's `sample.py ODE --sampling-method euler --num-sampling-steps 10` through our CLI's config."""
    flags = ["ODE", "--sampling-method", "euler", "--num-sampling-steps", "10", *cfg]
    args = sample_cli.parser().parse_args(["--ckpt", "run", "--out", "grid", *flags])
    config = sample_cli.sample_config(configuration.defaults(), args)
    assert (config["sample"]["solver"], config["sample"]["steps"]) == ("euler", 9)
    sampler = build.sampler(config, build.objective(config))
    torch.testing.assert_close(sampler(reference_sit(), ref("cfg_z"), ref("cfg_y")), ref(name))
