"""The diffusers backbone (layersync-diffusers): tiny random configs of real diffusers classes."""

import json

import pytest
import torch
from helpers import error_line, read_metrics

from layersync.cli.main import main as layersync_main
from layersync.cli.sample import main as sample_main
from layersync.cli.train import main as train_main
from layersync.config import defaults, load
from layersync.errors import ConfigError
from layersync.objective import FlowObjective, LayerSync
from layersync.paths import LinearPath
from layersync import checkpoint
from layersync_diffusers.adapter import build_diffusers

diffusers = pytest.importorskip("diffusers")
LORA = {"rank": 4, "alpha": 4, "target_modules": ["to_q", "to_v"]}


def sd3(layers=4):
    return diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=1, out_channels=1, num_layers=layers, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8,
        pos_embed_max_size=8)


def wan():
    return diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=16, num_layers=3, rope_max_seq_len=32)


def flux():
    return diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, pooled_projection_dim=8, axes_dims_rope=(2, 2, 4))


# name: (make, data shape without batch, condition for a batch of 2)
MODELS = {
    "sd3": (sd3, (1, 8, 8), lambda: {"text": torch.randn(2, 3, 16), "pooled": torch.randn(2, 8)}),
    "wan": (wan, (4, 2, 8, 8), lambda: {"text": torch.randn(2, 3, 16)}),
    "flux": (flux, (4, 8, 8), lambda: {"text": torch.randn(2, 3, 16), "pooled": torch.randn(2, 8)}),
}


def saved(tmp_path, name):
    torch.manual_seed(0)
    folder = tmp_path / name
    MODELS[name][0]().save_pretrained(folder)
    return folder


def backbone(tmp_path, name, **options):
    torch.manual_seed(1)
    return build_diffusers(MODELS[name][1], 0, str(saved(tmp_path, name)), **options)


def inputs(name):
    torch.manual_seed(2)
    return torch.randn(2, *MODELS[name][1]), torch.tensor([0.3, 0.8]), MODELS[name][2]()


def test_flux_blocks_are_the_double_then_the_single_ones(tmp_path):
    model = backbone(tmp_path, "flux")
    t = model.transformer
    assert model.depth == 4
    assert model.blocks == [*t.transformer_blocks, *t.single_transformer_blocks]


@pytest.mark.parametrize("name", ["sd3", "wan", "flux"])
def test_captured_blocks_equal_a_manual_forward_hook(tmp_path, name):
    model = backbone(tmp_path, name, lora=LORA)
    x, t, cond = inputs(name)
    manual = {}
    handles = [block.register_forward_hook(
        lambda m, a, out, k=k: manual.__setitem__(k, out[1] if isinstance(out, tuple) else out))
        for k, block in enumerate(model.blocks, 1)]
    with torch.no_grad():
        out, hidden = model(x, t, cond, capture=tuple(range(1, model.depth + 1)))
    for h in handles:
        h.remove()
    assert out.shape == x.shape and sorted(hidden) == list(range(1, model.depth + 1))
    for k in hidden:
        assert hidden[k].dim() == 3 and torch.equal(hidden[k], manual[k])
    assert len({tuple(h.shape) for h in hidden.values()}) == 1  # the image/video tokens only, every block


def test_time_and_sign_follow_the_diffusers_flow_scheduler(tmp_path):
    """Our linear path at t is diffusers' flow-matching sample at sigma = 1 - t, and one Euler step of
    our velocity is one step of FlowMatchEulerDiscreteScheduler with the raw model."""
    model = backbone(tmp_path, "sd3")
    x, _, cond = inputs("sd3")
    noise = torch.randn_like(x)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0)
    scheduler.set_timesteps(4)
    s, s_next, timestep = scheduler.sigmas[1], scheduler.sigmas[2], scheduler.timesteps[1]
    t = torch.full((2,), 1 - float(s))
    xt, target = LinearPath().interpolate(x, noise, t)
    torch.testing.assert_close(xt, scheduler.scale_noise(x, timestep[None], noise))
    torch.testing.assert_close(target, -(noise - x))  # diffusers' training target is noise - x
    with torch.no_grad():
        raw = model.transformer(hidden_states=xt, timestep=timestep.expand(2), encoder_hidden_states=cond["text"],
                                pooled_projections=cond["pooled"], return_dict=False)[0]
        velocity = model(xt, t, cond)[0]
    scheduler._step_index = 1
    expected = scheduler.step(raw, timestep, xt).prev_sample
    torch.testing.assert_close(xt + (float(s) - float(s_next)) * velocity, expected, rtol=1e-5, atol=1e-5)


def test_flux_is_called_as_its_pipeline_calls_it(tmp_path):
    """Packed 2x2 latents with their ids, timestep sigma in [0, 1], and the velocity is minus the output."""
    from diffusers import FluxPipeline

    model = backbone(tmp_path, "flux")
    x, t, cond = inputs("flux")
    b, c, h, w = x.shape
    with torch.no_grad():
        raw = model.transformer(
            hidden_states=FluxPipeline._pack_latents(x, b, c, h, w), timestep=1 - t,
            encoder_hidden_states=cond["text"], pooled_projections=cond["pooled"], txt_ids=torch.zeros(3, 3),
            img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype),
            return_dict=False)[0]
        velocity = model(x, t, cond)[0]
    torch.testing.assert_close(velocity, -FluxPipeline._unpack_latents(raw, h * 8, w * 8, 8))


def test_drop_cond_gives_the_null_condition_of_zeros(tmp_path):
    model = backbone(tmp_path, "wan")
    x, t, cond = inputs("wan")
    dropped = model.drop_cond(cond, torch.tensor([True, False]))
    assert torch.equal(dropped["text"][0], torch.zeros(3, 16)) and torch.equal(dropped["text"][1], cond["text"][1])
    with torch.no_grad():  # labels are no condition: the null one (one zero token), as is text of zeros
        torch.testing.assert_close(model(x, t, torch.tensor([3, 4]))[0], model(x, t, {"text": torch.zeros(2, 1, 16)})[0])
    assert model.drop_cond(torch.tensor([3, 4]), torch.tensor([True, True])).tolist() == [3, 4]


def loss(model, layersync, name):
    x, t, cond = inputs(name)
    noise = torch.randn_like(x)
    xt, _ = LinearPath().interpolate(x, noise, t)
    out, hidden = model(xt, t, cond, capture=layersync.capture)
    return FlowObjective().loss(out, x, noise, t).mean() + layersync(hidden)


@pytest.mark.parametrize("name", ["sd3", "wan"])
def test_a_lora_step_changes_only_the_lora_weights(tmp_path, name):
    model = backbone(tmp_path, name, lora=LORA)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss(model, LayerSync([(1, 2)], 0.5), name).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    assert any(".lora_B." in n for n in changed)


def test_a_bf16_base_trains_fp32_adapters(tmp_path):
    model = backbone(tmp_path, "wan", dtype="bf16", lora=LORA)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert {dtypes[n] for n in model.saved} == {torch.float32}
    assert {d for n, d in dtypes.items() if ".base_layer." in n} == {torch.bfloat16}  # (Wan keeps its norms fp32)
    total = loss(model, LayerSync([(1, 2)], 0.5), "wan")
    total.backward()
    assert total.dtype == torch.float32 and torch.isfinite(total)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match="only a frozen base"):
        backbone(tmp_path, "wan", dtype="bf16")


def block_grads(model):
    return [any(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters()) for block in model.blocks]


@pytest.mark.parametrize("detach", [True, False])
def test_layersync_gradient_reaches_the_teacher_only_when_not_detached(tmp_path, detach):
    model = backbone(tmp_path, "sd3")
    x, t, cond = inputs("sd3")
    _, hidden = model(x, t, cond, capture=(1, 3))
    LayerSync([(1, 3)], 1.0, detach_teacher=detach)(hidden).backward()
    assert block_grads(model) == ([True, False, False, False] if detach else [True, True, True, False])


def test_detach_teacher_is_a_config_switch():
    assert defaults()["layersync"]["detach_teacher"] is True
    config = load(None, assignments=["layersync.detach_teacher=false"])
    assert config["layersync"]["detach_teacher"] is False
    with pytest.raises(ConfigError, match="layersync.detach_teacher=maybe: expected true or false"):
        load(None, assignments=["layersync.detach_teacher=maybe"])


def test_state_dict_holds_the_trainable_weights_only(tmp_path):
    model = backbone(tmp_path, "sd3", lora=LORA)
    state = model.state_dict()
    assert set(state) == {n for n, p in model.named_parameters() if p.requires_grad}
    other = backbone(tmp_path, "sd3", lora=LORA)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    other.load_state_dict(model.state_dict())
    x, t, cond = inputs("sd3")
    with torch.no_grad():
        torch.testing.assert_close(other(x, t, cond)[0], model(x, t, cond)[0])
    with pytest.raises(RuntimeError, match="trainable weights do not match"):
        other.load_state_dict({})


def cli_args(out, folder, steps, *extra):
    return ["--plugin", "image", "--out", str(out), "--steps", str(steps), "--set", "data.image_size=8",
            "--set", "train.batch_size=8", "--set", "train.log_every=1", "--set", "train.ckpt_every=2",
            "--set", "train.sample_every=1000", "--set", "sample.num=4", "--set", "sample.steps=2",
            "--set", "model.name=diffusers", "--set", f"model.path={folder}",
            "--set", "model.lora={rank: 4, target_modules: [to_q, to_v]}", "--layersync", "1:3", *extra]


@pytest.mark.slow
def test_train_resume_and_suggest_pairs_on_a_tiny_sd3(tmp_path, capsys):
    folder = saved(tmp_path, "sd3")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_main(cli_args(straight, folder, 4)) == 0
    losses = read_metrics(straight)
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(m["loss"])) for m in losses)
    state = checkpoint.load(checkpoint.latest(straight / "checkpoints"))
    lora = {k for k in state["model"] if ".lora_A." in k or ".lora_B." in k}
    assert set(state["model"]) == set(state["ema"]) == lora and len(lora) == 4 * 2 * 2
    assert train_main(cli_args(resumed, folder, 2)) == 0
    assert train_main(cli_args(resumed, folder, 4)) == 0
    assert [m["loss"] for m in read_metrics(resumed)] == [m["loss"] for m in losses]
    again = checkpoint.load(checkpoint.latest(resumed / "checkpoints"))
    for key in ("model", "ema"):
        assert all(torch.equal(again[key][k], state[key][k]) for k in state[key])
    capsys.readouterr()
    assert layersync_main(["suggest-pairs", "--ckpt", str(straight), "--n", "32"]) == 0
    assert "--layersync " in capsys.readouterr().out
    assert sample_main(["--ckpt", str(straight), "--out", str(tmp_path / "preview"), "-n", "4", "--steps", "2"]) == 0
    assert (tmp_path / "preview.png").is_file()


def test_bad_model_folders_are_named(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    with pytest.raises(ConfigError, match=r"not a diffusers model folder: expected a config.json .* found readme.txt"):
        build_diffusers((1, 8, 8), 0, str(tmp_path / "notes"))
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"_class_name": "NoSuchModel"}))
    with pytest.raises(ConfigError, match="_class_name 'NoSuchModel', which is not a model class"):
        build_diffusers((1, 8, 8), 0, str(tmp_path / "odd"))
    with pytest.raises(ConfigError, match="no such folder"):
        build_diffusers((1, 8, 8), 0, str(tmp_path / "missing"))


def test_a_model_without_blocks_is_named(tmp_path):
    from helpers import tiny_vae

    tiny_vae(8).save_pretrained(tmp_path / "vae")
    with pytest.raises(ConfigError, match=r"AutoencoderKL has no recognisable block list .* it has encoder, decoder"):
        build_diffusers((1, 8, 8), 0, str(tmp_path / "vae"))


def test_lora_targets_that_match_nothing_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"target_modules=\['to_qkv'\] match no layer of SD3Transformer2DModel; "
                                          r"its linear layers are named .*to_q"):
        backbone(tmp_path, "sd3", lora={"rank": 4, "target_modules": ["to_qkv"]})


def test_cli_bad_input_exits_2(tmp_path, capsys):
    folder = saved(tmp_path, "sd3")
    line = error_line(train_main, cli_args(tmp_path / "a", folder, 2, "--layersync", "2:9"), capsys)
    assert "(2, 9) of a 4-block model" in line
    line = error_line(train_main, cli_args(tmp_path / "b", tmp_path, 2), capsys)
    assert "not a diffusers model folder" in line and "found sd3" in line
    line = error_line(train_main, cli_args(tmp_path / "c", folder, 2, "--set", "model.lora.target_modules=[nope]"),
                      capsys)
    assert "match no layer" in line


def write_items(folder, n, shape, text=(3, 16), pooled=8):
    from safetensors.torch import save_file

    folder.mkdir()
    torch.manual_seed(3)
    for i in range(n):
        item = {"latent": torch.randn(shape), "text": torch.randn(text)}
        if pooled:
            item["pooled"] = torch.randn(pooled)
        save_file(item, str(folder / f"{i:04d}.safetensors"))
    return folder


@pytest.mark.slow
def test_the_diffusers_modality_trains_on_text_latents(tmp_path):
    from safetensors.torch import load_file

    from layersync_diffusers.plugin import RECIPES

    folder, data = saved(tmp_path, "sd3"), write_items(tmp_path / "items", 8, (1, 8, 8))
    out = tmp_path / "run"
    argv = ["--plugin", "diffusers", "--config", str(RECIPES / "sd3_lora.yaml"), "--data", str(data),
            "--out", str(out), "--steps", "2", "--layersync", "1:3", "--set", f"model.path={folder}",
            "--set", "model.dtype=fp32", "--set", "train.num_workers=0", "--set", "sample.steps=2"]
    assert train_main(argv) == 0
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in read_metrics(out))
    samples = load_file(str(out / "samples" / "step_0000002.safetensors"))["latent"]
    assert samples.shape == (4, 1, 8, 8) and torch.isfinite(samples).all()


def test_the_recipes_are_valid_configs_and_their_targets_exist(tmp_path):
    from layersync_diffusers.plugin import RECIPES

    for name, make in [("sd3_lora", "sd3"), ("wan_lora", "wan")]:
        config = load(RECIPES / "lora.yaml", RECIPES / f"{name}.yaml")
        assert config["model"]["name"] == "diffusers" and config["layersync"]["weight"] == 0.002
        lora = config["model"]["lora"]
        backbone(tmp_path / name, make, lora={**lora, "rank": 2})
    wan_config = load(RECIPES / "lora.yaml", RECIPES / "wan_lora.yaml")["layersync"]
    assert wan_config["pairs"] == [[9, 17]] and wan_config["detach_teacher"] is False


def test_bad_text_latents_are_named(tmp_path):
    from safetensors.torch import save_file

    from layersync.errors import DataError
    from layersync_diffusers.data import TextLatents

    data = write_items(tmp_path / "items", 3, (1, 8, 8))
    save_file({"latent": torch.randn(1, 8, 8), "text": torch.randn(5, 16)}, str(data / "0009.safetensors"))
    with pytest.raises(DataError, match=r"0009.safetensors holds .*'text': \(5, 16\).* unlike 0000.safetensors"):
        TextLatents(str(data))
    with pytest.raises(DataError, match="holds no .safetensors files"):
        TextLatents(str(tmp_path))


def test_the_ema_copy_shares_the_frozen_base_and_follows_the_adapters(tmp_path):
    from layersync.train.ema import EMA

    model = backbone(tmp_path, "sd3", lora=LORA)
    ema = EMA(model, decay=0.5)
    pairs = list(zip(model.parameters(), ema.model.parameters()))
    assert all((src is dst) != src.requires_grad for src, dst in pairs)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.fill_(2.0)
    ema.update()
    lora_b = [(n, p) for n, p in ema.model.named_parameters() if ".lora_B." in n]
    assert lora_b and all(torch.equal(p, torch.ones_like(p)) for _, p in lora_b)  # B starts at 0: halfway to 2


def test_check_plugin_runs_the_recipe_on_its_fixture():
    """check-plugin builds lora.yaml on the modality's fixture (tiny SD3, 4 items): no user data or model."""
    from layersync.check import check_plugin

    results = check_plugin("diffusers", device=torch.device("cpu"))
    found = {(r.item, r.check): (r.status, r.detail) for r in results}
    assert "FAIL" not in {r.status for r in results}, [r for r in results if r.status == "FAIL"]
    assert found["modality/diffusers", "recipe"] == ("PASS", "lora.yaml + check fixture")
    assert found["dataset/text-latents", "build"][0] == "PASS"
    for check in ("forward", "train-step", "graph-safety[fake]"):
        assert found["backbone/diffusers", check][0] == "PASS"
    assert found["modality/diffusers", "save_samples"][0] == "PASS"
    # layersync-sample draws from the items' text conditions, not from labels the adapter would read as none
    assert found["modality/diffusers", "conditions"] == (
        "PASS", "4 conditions {pooled: (4, 8) float32, text: (4, 3, 16) float32}; 2 samples: samples.safetensors")
