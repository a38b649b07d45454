"""model.checkpoint_blocks: the first N blocks (or all) recompute their activations in the backward pass,
with the same losses and gradients as a step that keeps them."""


import pytest
import torch
from helpers import error_line, tiny_args

from layersync import FlowObjective, LayerSync, build
from layersync import config as configuration
from layersync.cli import sample, train
from layersync.errors import ConfigError
from layersync.nn import build_sit1d, build_sit3d
from layersync.plugins import registry
from layersync.train.modes import make_step
from layersync.train.step import TrainStep
from layersync_image.sit import SiT, build_sit

# name: (factory, input shape without batch); "T/2": 6 blocks
MODELS = {
    "sit": (lambda shape: build_sit(shape, 10, "T/2"), (4, 8, 8)),
    "sit1d": (lambda shape: build_sit1d(shape, 10, "T/2"), (4, 16)),
    "sit3d-factorised": (lambda shape: build_sit3d(shape, 10, "T/2", attention="factorised"), (4, 2, 8, 8)),
}
# two blocks: less for torch.compile to trace and generate code for
SIT_2 = (lambda shape: SiT(shape[1], 2, shape[0], hidden=32, depth=2, heads=2, num_classes=10), (4, 8, 8))


def model_for(factory, shape, checkpoint_blocks: int):
    torch.manual_seed(0)
    model = factory(shape)
    for p in model.parameters():  # off adaLN-Zero's zeros: every weight gets a gradient
        torch.nn.init.normal_(p, std=0.05)
    model.checkpoint_blocks = checkpoint_blocks
    return model


def one_step(factory, shape, checkpoint_blocks: int, mode: str = "eager", pair=(2, 4)):
    """The losses and gradients of one training step with LayerSync, and how often each block ran."""
    model = model_for(factory, shape, checkpoint_blocks)
    runs = [0] * model.depth
    for k, block in enumerate(model.blocks):
        block.register_forward_pre_hook(lambda *_, k=k: runs.__setitem__(k, runs[k] + 1))
    step = TrainStep(model, FlowObjective(), LayerSync([pair], 0.2), torch.optim.SGD(model.parameters(), lr=0.0),
                     cfg_dropout=0.5, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    losses = make_step(step, mode)(torch.randn(4, *shape, generator=g), torch.tensor([1, 2, 3, 4]))
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return {key: value.item() for key, value in losses.items()}, grads, runs


@pytest.mark.parametrize("blocks", [2, 6])
@pytest.mark.parametrize("name", MODELS)
def test_checkpointed_blocks_give_the_same_losses_and_gradients(name, blocks):
    kept_losses, kept_grads, kept_runs = one_step(*MODELS[name], 0)
    losses, grads, runs = one_step(*MODELS[name], blocks)
    assert kept_runs == [1] * 6
    assert runs == [2] * blocks + [1] * (6 - blocks)  # the backward pass ran the checkpointed blocks again
    assert losses == pytest.approx(kept_losses, rel=1e-6)
    assert losses["layersync_loss"] != 0
    for key, grad in kept_grads.items():
        assert grad.abs().sum() > 0, key
        torch.testing.assert_close(grads[key], grad, rtol=1e-6, atol=1e-8, msg=key)


@pytest.mark.slow
def test_checkpointed_blocks_under_torch_compile():
    kept_losses, kept_grads, _ = one_step(*SIT_2, 0, pair=(1, 2))
    losses, grads, _ = one_step(*SIT_2, 1, mode="compile", pair=(1, 2))
    assert losses == pytest.approx(kept_losses, rel=1e-5)
    for key, grad in kept_grads.items():
        torch.testing.assert_close(grads[key], grad, rtol=1e-4, atol=1e-6, msg=key)


def test_no_checkpoint_without_gradients():
    model = model_for(*MODELS["sit1d"], 6)
    runs = []
    model.blocks[0].register_forward_pre_hook(lambda *_: runs.append(1))
    with torch.no_grad():
        model(torch.randn(2, 4, 16), torch.rand(2), torch.tensor([1, 2]))
    assert runs == [1]


def built(*assignments) -> torch.nn.Module:
    recipe = registry().get("modalities", "image").recipe
    config = configuration.load(recipe, None, ["model.size=T/2", *assignments])
    return build.backbone(registry(), config, (4, 8, 8), 10)


def test_the_config_key_reaches_the_backbone():
    assert built().checkpoint_blocks == 0
    assert built("model.checkpoint_blocks=4").checkpoint_blocks == 4
    assert built("model.checkpoint_blocks=all").checkpoint_blocks == 6
    assert built("model.checkpoint_blocks=null").checkpoint_blocks == 0


@pytest.mark.parametrize("value", ["0", "7", "-1", "most", "2.5", "true", "[2]"])
def test_bad_values_are_a_config_error(value):
    with pytest.raises(ConfigError, match=r"^model\.checkpoint_blocks=.*: expected a number of blocks from 1 to 6 "
                                          r"\(the depth of backbone 'sit'\) or all$"):
        built(f"model.checkpoint_blocks={value}")


def test_a_backbone_without_checkpointing_is_a_config_error():
    class Plain(torch.nn.Module):
        depth = 2

    with pytest.raises(ConfigError, match=r"^model\.checkpoint_blocks=all: backbone 'plain' has no activation "
                                          r"checkpointing"):
        build.set_checkpoint_blocks(Plain(), "plain", "all")


@pytest.mark.slow
def test_train_and_sample_cli_take_the_key(tmp_path, capsys):
    run = tmp_path / "run"
    assert train.main(tiny_args(run, 1, "--set", "model.checkpoint_blocks=all")) == 0
    assert sample.main(["--ckpt", str(run), "--out", str(tmp_path / "samples"), "-n", "2", "--steps", "2"]) == 0
    capsys.readouterr()
    line = error_line(train.main, tiny_args(tmp_path / "bad", 1, "--set", "model.checkpoint_blocks=9"), capsys)
    assert "model.checkpoint_blocks=9: expected a number of blocks from 1 to 6" in line


def test_the_diffusers_backbone_checkpoints_all_its_blocks_or_none(tmp_path):
    import diffusers
    from layersync_diffusers.adapter import build_diffusers

    torch.manual_seed(0)
    diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=1, out_channels=1, num_layers=3, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8,
        pos_embed_max_size=8).save_pretrained(tmp_path)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 1, 8, 8, generator=g), torch.rand(2, generator=g)
    cond = {"text": torch.randn(2, 3, 16, generator=g), "pooled": torch.randn(2, 8, generator=g)}

    def gradients(checkpointed: bool):
        model = build_diffusers((1, 8, 8), 0, str(tmp_path))
        if checkpointed:
            build.set_checkpoint_blocks(model, "diffusers", "all")
            assert model.checkpoint_blocks == 3 and model.transformer.gradient_checkpointing
        torch.manual_seed(2)
        for p in model.parameters():  # off the zero-initialised output layer: every weight gets a gradient
            torch.nn.init.normal_(p, std=0.05)
        runs = []
        model.blocks[0].register_forward_pre_hook(lambda *_: runs.append(1))
        out, hidden = model(x, t, cond, capture=(1, 3))
        (out.square().mean() + LayerSync([(1, 3)], 0.2)(hidden)).backward()
        assert len(runs) == (2 if checkpointed else 1)
        return {n: p.grad for n, p in model.named_parameters()}

    kept, checkpointed = gradients(False), gradients(True)
    for key, grad in kept.items():
        torch.testing.assert_close(checkpointed[key], grad, rtol=1e-6, atol=1e-8, msg=key)
    with pytest.raises(ConfigError, match=r"^model\.checkpoint_blocks=2: diffusers checkpoints all 3 blocks of "
                                          r"SD3Transformer2DModel or none; set model.checkpoint_blocks=all$"):
        build.set_checkpoint_blocks(build_diffusers((1, 8, 8), 0, str(tmp_path)), "diffusers", 2)
