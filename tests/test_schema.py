"""Config values checked against their settings: the key, the value and what was expected, exit 2."""

from typing import Literal

import pytest
import torch

from helpers import error_line, tiny_args
from layersync import build, config
from layersync.cli import train
from layersync.errors import ConfigError


def run_error(argv, capsys):
    return error_line(train.main, argv, capsys)


def test_every_fixed_key_has_a_rule_and_the_defaults_pass():
    rules = {f"{name}.{key}" if name else key for name, section in config.sections().items()
             for key in config.expectations(section)}
    fixed = {key for key in config.flatten(config.defaults()) if key.split(".")[0] not in config.OPEN_SECTIONS}
    assert fixed == rules
    config.validate(config.defaults())


@pytest.mark.parametrize("assignment, expected", [
    ("train.batch_size=abc", "train.batch_size=abc: expected an integer >= 1"),
    ("train.batch_size=0", "train.batch_size=0: expected an integer >= 1"),
    ("train.batch_size=-4", "train.batch_size=-4: expected an integer >= 1"),
    ("train.batch_size=2.5", "train.batch_size=2.5: expected an integer >= 1"),
    ("train.ckpt_every=0", "train.ckpt_every=0: expected an integer >= 1"),
    ("train.steps=abc", "train.steps=abc: expected an integer >= 1"),
    ("train.num_workers=-1", "train.num_workers=-1: expected an integer >= 0"),
    ("train.ema_decay=1.5", "train.ema_decay=1.5: expected a number in [0, 1]"),
    ("train.cfg_dropout=-0.1", "train.cfg_dropout=-0.1: expected a number in [0, 1]"),
    ("train.precision=fp8", "train.precision=fp8: expected one of auto, fp32, bf16"),
    ("train.device=gpu", "train.device=gpu: expected auto, cpu, cuda, cuda:N or mps"),
    ("optim.lr=-1e-4", "optim.lr=-0.0001: expected a number >= 0"),
    ("optim.lr=.nan", "optim.lr=nan: expected a number >= 0"),
    ("optim.betas=[0.9, 1.0]", "optim.betas=[0.9, 1.0]: expected a list of two numbers each in [0, 1)"),
    ("optim.betas=[-0.1, 0.99]", "optim.betas=[-0.1, 0.99]: expected a list of two numbers each in [0, 1)"),
    ("optim.betas=0.9", "optim.betas=0.9: expected a list of two numbers each in [0, 1)"),
    ("optim.weight_decay=-1", "optim.weight_decay=-1: expected a number >= 0"),
    ("seed=abc", "seed=abc: expected an integer in [0, 9223372036854775807]"),
    ("seed=-1", "seed=-1: expected an integer in [0, 9223372036854775807]"),
    ("seed=9223372036854775808", "seed=9223372036854775808: expected an integer in [0, 9223372036854775807]"),
    ("train.steps='3'", "train.steps='3' (a string): expected an integer >= 1"),
    ("transport.path=straight", "transport.path=straight: expected one of linear, gvp, vp"),
    ("transport.train_eps=1", "transport.train_eps=1: expected a number in [0, 1) or null"),
    ("layersync.pairs=[[4, 2]]", "layersync.pairs=[[4, 2]]: expected a list of [student, teacher] block pairs"),
    ("layersync.pairs=8", "layersync.pairs=8: expected a list of [student, teacher]"),
    ("sample.steps=0", "sample.steps=0: expected an integer >= 1"),
    ("sample.cfg_channels=0", "sample.cfg_channels=0: expected an integer >= 1 or null"),
    ("sample.guidance_interval=[0.8, 0.2]", "sample.guidance_interval=[0.8, 0.2]: expected a list of two numbers "
                                            "each in [0, 1] with lo <= hi"),
    ("sample.atol=0", "sample.atol=0: expected a number > 0"),
    ("sample.solver=rk4", "sample.solver=rk4: expected one of euler, heun, dopri5"),
])
def test_bad_values_name_key_value_and_rule(tmp_path, capsys, assignment, expected):
    line = run_error(tiny_args(tmp_path / "out", 1, "--set", assignment), capsys)
    assert expected in line, line
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_values_from_a_config_file_and_from_flags_are_checked(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("train: {warmup_steps: few}\n")
    assert "train.warmup_steps=few: expected an integer >= 0" in run_error(
        tiny_args(tmp_path / "out", 1, "--config", str(path)), capsys)
    assert "optim.lr=-1.0: expected a number >= 0" in run_error(
        tiny_args(tmp_path / "out", 1, "--learning-rate", "-1"), capsys)
    assert "train.num_workers=-2" in run_error(tiny_args(tmp_path / "out", 1, "--num-workers", "-2"), capsys)
    assert not (tmp_path / "out").exists()


def test_rules_between_keys():
    cfg = config.load(None, None, ["sample.method=sde", "sample.solver=euler"])
    assert cfg["sample"]["method"] == "sde"
    with pytest.raises(ConfigError, match=r"sample.solver=dopri5: expected one of euler, heun with sample.method=sde"):
        config.load(None, None, ["sample.method=sde", "sample.solver=dopri5"])
    with pytest.raises(ConfigError, match=r"sample.steps=1: expected an integer >= 2 with sample.method=sde"):
        config.load(None, None, ["sample.method=sde", "sample.steps=1"])
    # an intermediate state may break a rule between keys: only the end result counts
    cfg = config.load(None, None, ["sample.solver=dopri5", "sample.solver=heun", "sample.method=sde"])
    assert cfg["sample"]["solver"] == "heun"


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_steps_flag_must_be_positive(tmp_path, capsys, steps):
    line = run_error(["--plugin", "image", "--out", str(tmp_path / "out"), "--steps", steps], capsys)
    assert "--steps" in line and "expected a whole number >= 1" in line and steps in line


def test_unparsable_set_value_is_an_error_and_a_word_stays_a_string():
    for raw in ("[1, 2", "'abc", "{a: 1", "@weights"):
        with pytest.raises(ConfigError, match=r"--set sample.guidance_interval=.*not valid YAML.*quote it"):
            config.set_key(config.defaults(), f"sample.guidance_interval={raw}")
    assert config.set_key(config.defaults(), "train.precision=bf16")["train"]["precision"] == "bf16"
    assert config.set_key(config.defaults(), "data.path=/some/folder")["data"]["path"] == "/some/folder"
    assert config.set_key(config.defaults(), "data.path='@weights'")["data"]["path"] == "@weights"
    with pytest.raises(ConfigError, match="train.steps=ten: expected an integer >= 1"):
        config.set_key(config.defaults(), "train.steps=ten")


def test_batch_larger_than_the_data_set(tmp_path, capsys):
    # the bundled digits: 1,797 images
    line = run_error(tiny_args(tmp_path / "out", 1, "--set", "train.batch_size=5000"), capsys)
    assert "train.batch_size=5000: expected at most the data set's 1797 items" in line
    assert not (tmp_path / "out").exists()


def test_image_size_not_divisible_by_the_patch(tmp_path, capsys):
    line = run_error(tiny_args(tmp_path / "out", 1, "--set", "data.image_size=10"), capsys)
    assert "model: backbone 'sit'" in line and "image size 10 is not divisible by patch size 4" in line
    assert not (tmp_path / "out").exists()


def test_cuda_device_without_cuda(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = run_error(tiny_args(tmp_path / "out", 1, "--set", "train.device=cuda"), capsys)
    assert "train.device=cuda: this machine has no CUDA device" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_largest_seed_trains(tmp_path):
    assert train.main(tiny_args(tmp_path / "out", 1, "--seed", str(config.SEED_MAX))) == 0


def test_plugin_options_are_checked_against_the_factory_annotations():
    def factory(rate: int = 16000, layout: Literal["a", "b"] = "a", path: str = None, other=None):
        return rate, layout

    built = build.call("dataset", "d", factory, section="data", rate=8000, layout="b", path=None, other=[1])
    assert built == (8000, "b")
    with pytest.raises(ConfigError, match=r"^data.rate='8000' \(a string\): expected an integer$"):
        build.call("dataset", "d", factory, section="data", rate="8000")
    with pytest.raises(ConfigError, match=r"^data.layout=c: expected one of a, b$"):
        build.call("dataset", "d", factory, section="data", layout="c")
    with pytest.raises(ConfigError, match="does not accept these options"):
        build.call("dataset", "d", factory, section="data", colour=1)


def test_messages_show_values_short_and_strings_that_read_as_other_types_quoted():
    assert config.show("3") == "'3' (a string)" and config.show("true") == "'true' (a string)"
    assert config.show("abc") == "abc" and config.show(["0.9", 1]) == "['0.9', 1]"
    long = config.show(list(range(10**5)))
    assert long.startswith("[0, 1, 2, 3") and long.endswith("...") and len(long) == config.SHOWN


def test_cache_and_sample_validate_too(tmp_path, capsys):
    from layersync.cli import cache, sample

    line = error_line(cache.main, ["--plugin", "image", "--data", str(tmp_path), "--out", str(tmp_path / "c"),
                                   "--set", "seed=abc"], capsys)
    assert "seed=abc: expected an integer in [0, 9223372036854775807]" in line
    args = sample.parser().parse_args(["--ckpt", "x", "--out", "y", "--set", "sample.last_step=jump"])
    with pytest.raises(ConfigError, match="sample.last_step=jump: expected one of mean, euler, tweedie, none"):
        sample.sample_config(config.defaults(), args)
    args = sample.parser().parse_args(["--ckpt", "x", "--out", "y", "--atol", "-1"])
    with pytest.raises(ConfigError, match="sample.atol=-1.0: expected a number > 0"):
        sample.sample_config(config.defaults(), args)
