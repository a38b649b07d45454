"""Config merging: recipes, files and --set overrides."""

import pytest

from layersync import config
from layersync.errors import ConfigError


def test_changing_an_open_section_factory_drops_the_old_options():
    base = config.merge(config.defaults(), {"data": {"name": "imagefolder", "image_size": 16, "channels": 1}})
    same = config.merge(base, {"data": {"image_size": 32}})
    assert same["data"] == {"name": "imagefolder", "image_size": 32, "channels": 1}
    other = config.merge(base, {"data": {"name": "latent-cache", "path": "/c"}})
    assert other["data"] == {"name": "latent-cache", "path": "/c"}


def test_set_parses_yaml_values_and_refuses_unknown_keys():
    cfg = config.set_key(config.defaults(), "sample.guidance_interval=[0, 0.7]")
    assert cfg["sample"]["guidance_interval"] == [0, 0.7]
    assert config.set_key(cfg, "optim.lr=3e-4")["optim"]["lr"] == 3e-4
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        config.set_key(cfg, "optim.learning_rate=1")
    with pytest.raises(ConfigError, match="key=value"):
        config.set_key(cfg, "optim.lr")


def test_exponent_floats_in_files(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 3e-4, eps: 1E-8}\ntrain: {steps: 10}\n")
    cfg = config.load(None, path)
    assert cfg["optim"]["lr"] == 3e-4 and cfg["optim"]["eps"] == 1e-8 and cfg["train"]["steps"] == 10


def test_a_checkpoint_from_before_a_key_existed_still_samples(tiny_run, tmp_path):
    """Keys added to a section since a checkpoint was written take their defaults when it is read."""
    import torch

    from layersync import Pipeline, checkpoint

    state = torch.load(checkpoint.latest(tiny_run / "checkpoints"), weights_only=True)
    saved = state["config"]
    del saved["train"]["first_sample"], saved["train"]["grad_accum"], saved["sample"]["num"]
    torch.save(state, tmp_path / "step_0000003.pt")
    pipe = Pipeline.from_checkpoint(tmp_path / "step_0000003.pt")
    defaults = config.defaults()
    assert pipe.config["train"]["first_sample"] == defaults["train"]["first_sample"]
    assert pipe.config["sample"]["num"] == defaults["sample"]["num"]
    cond = pipe.conditions(pipe.labels(2))
    items, _ = pipe.decode(pipe.sample(cond), cond)
    assert items.shape[0] == 2 and torch.isfinite(items).all()
