"""Reference-implementation compatibility: its SiT checkpoints, its training and its sampling flags."""

import argparse
import copy
import inspect
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from helpers import error_line
from layersync import config as configuration
from layersync.cli import sample, train
from layersync.errors import ConfigError, DataError
from layersync.objective import LayerSync
from layersync.plugins import registry
from layersync.cache import latent_cache
from layersync_image.plugin import RECIPES
from layersync_image.reference import load_reference_checkpoint
from layersync_image.sit import SiT, build_sit, parse_size
from layersync_image.vae import sd_vae

C, P, D, DEPTH, HEADS, CLASSES, SIZE = 4, 2, 32, 3, 4, 10, 8


def reference_layout(learn_sigma=True):
    """Random tensors under the names and shapes of vita-epfl/LayerSync's models.py (tiny SiT)."""
    out = P * P * C * (2 if learn_sigma else 1)
    shapes = {
        "pos_embed": (1, (SIZE // P) ** 2, D),  # an nn.Parameter there
        "x_embedder.proj.weight": (D, C, P, P), "x_embedder.proj.bias": (D,),
        "t_embedder.mlp.0.weight": (D, 256), "t_embedder.mlp.0.bias": (D,),
        "t_embedder.mlp.2.weight": (D, D), "t_embedder.mlp.2.bias": (D,),
        "y_embedder.embedding_table.weight": (CLASSES + 1, D),  # + the null class (label dropout > 0)
        "final_layer.adaLN_modulation.1.weight": (2 * D, D), "final_layer.adaLN_modulation.1.bias": (2 * D,),
        "final_layer.linear.weight": (out, D), "final_layer.linear.bias": (out,),
    }
    for i in range(DEPTH):
        for name, rows, cols in [("attn.qkv", 3 * D, D), ("attn.proj", D, D), ("mlp.fc1", 4 * D, D),
                                 ("mlp.fc2", D, 4 * D), ("adaLN_modulation.1", 6 * D, D)]:
            shapes[f"blocks.{i}.{name}.weight"], shapes[f"blocks.{i}.{name}.bias"] = (rows, cols), (rows,)
    return {k: torch.randn(s) * 0.2 for k, s in shapes.items()}


def reference_forward(sd, x, t, y):
    """SiT's forward written out from the reference code, on a state dict: (output, block outputs)."""
    lin = lambda h, name: F.linear(h, sd[f"{name}.weight"], sd[f"{name}.bias"])  # noqa: E731
    norm = lambda h: F.layer_norm(h, (D,), eps=1e-6)  # noqa: E731
    h = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=P).flatten(2).transpose(1, 2)
    h = h + sd["pos_embed"]
    freqs = torch.exp(-math.log(10000) * torch.arange(128) / 128)
    t_freq = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=-1)
    c = lin(F.silu(lin(t_freq, "t_embedder.mlp.0")), "t_embedder.mlp.2") + sd["y_embedder.embedding_table.weight"][y]
    hidden = []
    for i in range(DEPTH):
        b = f"blocks.{i}"
        sh1, sc1, g1, sh2, sc2, g2 = (m[:, None] for m in lin(F.silu(c), f"{b}.adaLN_modulation.1").chunk(6, dim=1))
        qkv = lin(norm(h) * (1 + sc1) + sh1, f"{b}.attn.qkv").reshape(len(x), -1, 3, HEADS, D // HEADS)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // HEADS), dim=-1) @ v
        h = h + g1 * lin(attn.transpose(1, 2).reshape(len(x), -1, D), f"{b}.attn.proj")
        mlp = lin(F.gelu(lin(norm(h) * (1 + sc2) + sh2, f"{b}.mlp.fc1"), approximate="tanh"), f"{b}.mlp.fc2")
        h = h + g2 * mlp
        hidden.append(h)
    shift, scale = lin(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, dim=1)
    out = lin(norm(h) * (1 + scale[:, None]) + shift[:, None], "final_layer.linear")
    g, ch = SIZE // P, out.shape[-1] // (P * P)
    image = out.reshape(len(x), g, g, P, P, ch).permute(0, 5, 1, 3, 2, 4).reshape(len(x), ch, SIZE, SIZE)
    return image[:, :C], hidden  # learn_sigma: the first C channels


def tiny_sit(learn_sigma=True, depth=DEPTH):
    return SiT(SIZE, P, C, D, depth, HEADS, num_classes=CLASSES, learn_sigma=learn_sigma).eval()


def save_checkpoint(path, ema):
    projectors = {"projectors.0.0.weight": torch.randn(16, D), "projectors.0.0.bias": torch.randn(16)}  # REPA
    raw = {k: torch.randn_like(v) for k, v in ema.items()}
    torch.save({"model": raw, "ema": {**ema, **projectors}, "opt": {"state": {}, "param_groups": []},
                "args": argparse.Namespace(model="SiT-XL/2", encoder_depth=8), "steps": 7}, path)
    return path


def test_checkpoint_lands_key_for_key_and_matches_the_reference_forward(tmp_path):
    sd = reference_layout()
    model = tiny_sit()
    loaded = load_reference_checkpoint(save_checkpoint(tmp_path / "0400000.pt", sd), model)
    assert loaded.entry == "ema" and loaded.dropped == ["projectors.0.0.bias", "projectors.0.0.weight"]
    ours = model.state_dict()
    assert set(ours) == set(sd) and all(torch.equal(ours[k], v) for k, v in sd.items())
    x, t, y = torch.randn(2, C, SIZE, SIZE), torch.rand(2), torch.tensor([3, CLASSES])
    with torch.no_grad():
        out, hidden = model(x, t, y, capture=tuple(range(1, DEPTH + 1)))
        want, want_hidden = reference_forward(sd, x, t, y)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-4)
    for k in range(1, DEPTH + 1):  # our 1-based block k is the reference's (i + 1) == encoder_depth
        torch.testing.assert_close(hidden[k], want_hidden[k - 1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("block", range(DEPTH))
def test_every_block_matters(tmp_path, block):
    sd, model = reference_layout(), tiny_sit()
    x, t, y = torch.randn(2, C, SIZE, SIZE), torch.rand(2), torch.tensor([1, 2])
    load_reference_checkpoint(save_checkpoint(tmp_path / "a.pt", sd), model)
    before = model(x, t, y)[0]
    sd[f"blocks.{block}.mlp.fc2.weight"] += 0.1
    load_reference_checkpoint(save_checkpoint(tmp_path / "b.pt", sd), model)
    assert not torch.allclose(model(x, t, y)[0], before)


def test_bare_state_dict_is_accepted(tmp_path):
    sd = reference_layout()
    torch.save(sd, tmp_path / "SiT-XL-2-256.pt")
    assert load_reference_checkpoint(tmp_path / "SiT-XL-2-256.pt", tiny_sit()).entry == "state dict"


@pytest.mark.parametrize("edit, model_kw, words", [
    (lambda sd: sd.pop("blocks.1.attn.qkv.weight"), {}, ["missing", "blocks.1.attn.qkv.weight"]),
    (lambda sd: sd.update({"blocks.1.extra": torch.zeros(1)}), {}, ["unexpected", "blocks.1.extra"]),
    (lambda sd: None, {"depth": DEPTH - 1}, ["unexpected", "blocks.2."]),
    (lambda sd: None, {"learn_sigma": False}, ["final_layer.linear.weight", "(32, 32) vs (16, 32)", "learn_sigma"]),
])
def test_checkpoint_that_does_not_fit(tmp_path, edit, model_kw, words):
    sd = reference_layout()
    edit(sd)
    with pytest.raises(DataError) as info:
        load_reference_checkpoint(save_checkpoint(tmp_path / "c.pt", sd), tiny_sit(**model_kw))
    assert all(w in str(info.value) for w in [str(tmp_path / "c.pt"), *words]), str(info.value)


def test_unreadable_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    for path in (tmp_path / "junk.pt", tmp_path / "absent.pt"):
        with pytest.raises(DataError, match=path.name):
            load_reference_checkpoint(path, tiny_sit())


def resolved(*flags):
    return train.resolve(train.parser().parse_args(["--plugin", "image", "--out", "x", *flags]), registry())


@pytest.mark.parametrize("flags, key, value", [
    ("--model SiT-XL/2", "model.size", "XL/2"),
    ("--model SiT-B/4", "model.size", "B/4"),
    ("--encoder-depth 8 --gt-encoder-depth 16", "layersync.pairs", [[8, 16]]),
    ("--loss-type layer_sync --encoder-depth 4 --gt-encoder-depth 8", "layersync.pairs", [[4, 8]]),
    ("--loss-type vanilla", "layersync.pairs", []),
    ("--loss-type multiple_sync --multi-blocks-match [(2,4),(3,5)]", "layersync.pairs", [[2, 4], [3, 5]]),
    ("--reg-weight 0.7", "layersync.weight", 0.7),
    ("--global-batch-size 32", "train.batch_size", 32),
    ("--batch-size 48", "train.batch_size", 48),
    ("--learning-rate 2e-4", "optim.lr", 2e-4),
    ("--max-train-steps 9", "train.steps", 9),
    ("--global-seed 5", "seed", 5),
    ("--resolution 256", "data.image_size", 256),
    ("--image-size 512", "data.image_size", 512),
    ("--cfg-prob 0.2", "train.cfg_dropout", 0.2),
    ("--path-type cosine", "transport.path", "gvp"),
    ("--path-type Linear", "transport.path", "linear"),
    ("--path-type VP", "transport.path", "vp"),
    ("--prediction v", "transport.prediction", "velocity"),
    ("--prediction noise", "transport.prediction", "noise"),
    ("--loss-weight likelihood", "transport.loss_weight", "likelihood"),
    ("--train-eps 1e-5", "transport.train_eps", 1e-5),
    ("--ckpt-every 50", "train.ckpt_every", 50),
    ("--checkpointing-steps 60", "train.ckpt_every", 60),
    ("--sampling-steps 70", "train.sample_every", 70),
    ("--cfg-scale 4.0", "sample.cfg_scale", 4.0),
    ("--max-grad-norm 1.0", "optim.grad_clip", 1.0),
    ("--mixed-precision no", "train.precision", "fp32"),
])
def test_reference_flag_sets_config(flags, key, value):
    config = resolved(*flags.split())
    for part in key.split("."):
        config = config[part]
    assert config == value


def test_readme_command_translates():
    config = resolved(*"--model SiT-XL/2 --loss-type layer_sync --reg-weight 0.2 --encoder-depth 8 "
                      "--gt-encoder-depth 16".split())
    assert config["model"]["size"] == "XL/2" and config["layersync"] == {"pairs": [[8, 16]], "weight": 0.2, "detach_teacher": True}


@pytest.mark.parametrize("flags, words", [
    ("--layersync 2:4 --encoder-depth 2 --gt-encoder-depth 4", ["--layersync", "--encoder-depth"]),
    ("--layersync off --loss-type vanilla", ["--layersync", "--loss-type"]),
    ("--steps 3 --max-train-steps 4", ["--steps", "--max-train-steps"]),
    ("--seed 1 --global-seed 2", ["--seed", "--global-seed"]),
    ("--layersync-weight 0.1 --reg-weight 0.2", ["--layersync-weight", "--reg-weight"]),
    ("--global-batch-size 8 --batch-size 8", ["--global-batch-size", "--batch-size"]),
    ("--loss-type vanilla --encoder-depth 8", ["vanilla", "--encoder-depth"]),
    ("--encoder-depth 8", ["--gt-encoder-depth"]),
    ("--loss-type layer_sync", ["--encoder-depth"]),
    ("--encoder-depth 8 --gt-encoder-depth 8", ["(8, 8)"]),
    ("--multi-blocks-match [(1,2)]", ["multiple_sync"]),
    ("--model XL/2", ["--model", "SiT-XL/2"]),
    ("--path-type edm", ["--path-type", "cosine"]),
    ("--mixed-precision fp16", ["--mixed-precision", "bf16"]),
])
def test_conflicting_or_unknown_flags_exit_2(tmp_path, capsys, flags, words):
    line = error_line(train.main, ["--plugin", "image", "--out", str(tmp_path), *flags.split()], capsys)
    assert all(w in line for w in words), line


PAPER = {"sit_xl2": ("XL/2", [[8, 16]]), "sit_l2": ("L/2", [[8, 18]]), "sit_b2": ("B/2", [[4, 8]])}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_recipes_and_their_vanilla_twins(name):
    base = registry().get("modalities", "image").recipe
    size, pairs = PAPER[name]
    loaded = {}
    for suffix in ("", "_vanilla"):
        file = RECIPES / f"{name}{suffix}.yaml"
        config = loaded[suffix] = configuration.load(base, file)  # an unknown key raises ConfigError
        assert config["model"]["size"] == size and config["model"]["learn_sigma"] is True
        LayerSync(config["layersync"]["pairs"] or [(1, 2)], depth=parse_size(size)[0])  # raises if invalid
        assert (config["train"]["steps"], config["train"]["batch_size"], config["optim"]["lr"]) == (400_000, 256, 1e-4)
        assert (config["train"]["ema_decay"], config["train"]["cfg_dropout"]) == (0.9999, 0.1)
        sample = config["sample"]
        assert (sample["method"], sample["solver"], sample["steps"], sample["cfg_channels"]) == ("sde", "euler", 250, 3)
        own = yaml.safe_load(file.read_text())  # the options the recipe gives fit the factories
        inspect.signature(latent_cache).bind(**{k: v for k, v in own["data"].items() if k != "name"})
        inspect.signature(sd_vae).bind(**{k: v for k, v in own["tokenizer"].items() if k != "name"})
        inspect.signature(build_sit).bind((4, 32, 32), 1000, **{k: v for k, v in own["model"].items() if k != "name"})
        assert (own["data"]["name"], own["tokenizer"]["name"]) == ("latent-cache", "sd-vae")
    assert loaded[""]["layersync"] == {"pairs": pairs, "weight": 0.2, "detach_teacher": True} and loaded["_vanilla"]["layersync"]["pairs"] == []
    loaded["_vanilla"]["layersync"]["pairs"] = pairs
    assert loaded[""] == loaded["_vanilla"]  # the twins differ in the pairs only


def sampling(*flags, config=None):
    """(sample section, args) after the sampling CLI's flags, over the defaults or ``config``."""
    args = sample.parser().parse_args(["--ckpt", "run", "--out", "grid", *flags])
    config = sample.sample_config(copy.deepcopy(config or configuration.defaults()), args)
    return config["sample"], args


@pytest.mark.parametrize("flags, want", [
    # --num-sampling-steps counts time grid points: N - 1 steps of our ODE, N points of our SDE
    ("--num-sampling-steps 10", {"method": "ode", "steps": 9}),
    ("--mode sde --num-sampling-steps 10", {"method": "sde", "steps": 10}),
    ("--set sample.method=sde --num-sampling-steps 7", {"steps": 7}),
    ("SDE --num-sampling-steps 10", {"method": "sde", "steps": 10}),
    ("ODE --sampling-method euler --num-sampling-steps 10", {"method": "ode", "solver": "euler", "steps": 9}),
    # the mode argument brings the reference's defaults for it; --set and flags override them
    ("ODE", {"method": "ode", "solver": "dopri5", "steps": 249, "atol": 1e-6, "rtol": 1e-3, "cfg_channels": 3}),
    ("sde", {"method": "sde", "solver": "euler", "steps": 250, "diffusion_form": "sigma", "last_step": "mean",
             "last_step_size": 0.04, "cfg_channels": 3}),
    ("ODE --set sample.solver=heun", {"solver": "heun"}),
    ("ODE --steps 20", {"steps": 20}),
    ("--sampling-method heun2", {"solver": "heun"}),
    ("--sampling-method Heun", {"solver": "heun"}),
    ("--atol 1e-5 --rtol 1e-2", {"atol": 1e-5, "rtol": 1e-2}),
    ("--diffusion-form SBDM --diffusion-norm 2", {"diffusion_form": "sbdm", "diffusion_norm": 2.0}),
    ("--last-step None", {"last_step": "none"}),
    ("--last-step Tweedie --last-step-size 0.01", {"last_step": "tweedie", "last_step_size": 0.01}),
    ("--num-fid-samples 50000", {"num": 50000}),
    ("--cfg-scale 1.5", {"cfg_scale": 1.5}),
])
def test_reference_sampling_flags_set_the_sample_config(flags, want):
    section, _ = sampling(*flags.split())
    assert {key: section[key] for key in want} == want


def test_reference_sampling_flags_for_the_run_not_the_config():
    _, args = sampling("--global-seed", "3", "--per-proc-batch-size", "8")
    assert (args.seed, args.batch) == (3, 8)
    config = {**configuration.defaults(), "model": {"name": "sit", "size": "XL/2"}}
    assert sampling("--model", "SiT-XL/2", config=config)[0] == configuration.defaults()["sample"]
    with pytest.raises(ConfigError, match="SiT-B/2.*XL/2"):
        sampling("--model", "SiT-B/2", config=config)


@pytest.mark.parametrize("flags, words", [
    ("--steps 5 --num-sampling-steps 6", ["--num-sampling-steps", "--steps"]),
    ("--num 4 --num-fid-samples 4", ["--num-fid-samples", "--num"]),
    ("--seed 1 --global-seed 2", ["--global-seed", "--seed"]),
    ("--batch 8 --per-proc-batch-size 16", ["--per-proc-batch-size", "--batch"]),
    ("--mode ode SDE", ["ODE|SDE", "--mode"]),
    ("--num-sampling-steps 1", ["--num-sampling-steps", "at least 2"]),
    ("--sampling-method rk4", ["--sampling-method", "dopri5"]),
    ("--last-step Last", ["--last-step", "tweedie"]),
    ("XDE", ["ODE|SDE", "sde"]),
])
def test_conflicting_or_unknown_sampling_flags_exit_2(capsys, flags, words):
    line = error_line(sample.main, ["--ckpt", "run", "--out", "grid", *flags.split()], capsys)
    assert all(w in line for w in words), line
