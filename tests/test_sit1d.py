"""SiT-1D: shapes, block capture, patch layout, position embedding, conditioning, errors, LayerSync, training."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from layersync import FlowObjective, LayerSync, build, taps
from layersync.nn import SiT1D, build_sit1d, parse_size_1d
from layersync.plugins import Registry
from layersync.train.ema import EMA
from layersync.train.optim import build_optimizer
from layersync.train.step import TrainStep


def randomised(model, std=0.05):
    """Break adaLN-Zero's zero init so blocks, conditioning and the final layer act."""
    torch.manual_seed(1)
    for p in model.parameters():
        nn.init.normal_(p, std=std)
    return model


def patch_tokens(model, x):
    """The patch embedding written as a plain matrix product over (channel, frame-in-patch) patches."""
    b, c, frames = x.shape
    p = model.patch_size
    patches = x.reshape(b, c, frames // p, p).permute(0, 2, 1, 3).reshape(b, frames // p, c * p)
    w = model.x_embedder.weight.reshape(model.hidden, c * p)
    return patches @ w.T + model.x_embedder.bias


def sincos_1d(dim, n):
    """MAE/DiT's 1-D sin-cos embedding: [sin(pos * omega), cos(pos * omega)], omega_i = 1 / 10000^(2i / dim)."""
    emb = torch.empty(n, dim, dtype=torch.float64)
    for pos in range(n):
        for i in range(dim // 2):
            angle = pos / 10000 ** (2 * i / dim)
            emb[pos, i], emb[pos, dim // 2 + i] = math.sin(angle), math.cos(angle)
    return emb


def unpatchify_by_index(x, patch, channels):
    """out[b, c, t * patch + j] = x[b, t, j * channels + c], element by element."""
    b, tokens, _ = x.shape
    out = torch.empty(b, channels, tokens * patch, dtype=x.dtype)
    for t in range(tokens):
        for j in range(patch):
            for c in range(channels):
                out[:, c, t * patch + j] = x[:, t, j * channels + c]
    return out


@pytest.mark.parametrize("size,channels,frames", [("T/1", 3, 5), ("T/2", 16, 8), ("T/4", 2, 12), ("XS/8", 4, 16)])
def test_output_has_input_shape_and_capture_has_token_shape(size, channels, frames):
    depth, hidden, _, patch = parse_size_1d(size)
    model = randomised(build_sit1d((channels, frames), 5, size))
    assert isinstance(model, SiT1D) and model.depth == depth and len(model.blocks) == depth
    x = torch.randn(3, channels, frames)
    out, captured = model(x, torch.rand(3), torch.tensor([0, 2, 4]), capture=(1, depth))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert sorted(captured) == [1, depth]
    for h in captured.values():
        assert h.shape == (3, frames // patch, hidden)


@pytest.mark.parametrize("size,expected", [("T/2", (6, 128, 4, 2)), ("B/4", (12, 768, 12, 4)),
                                           ("XL/16", (28, 1152, 16, 16)), ("S/3", (12, 384, 6, 3))])
def test_sizes(size, expected):
    assert parse_size_1d(size) == expected


def test_capture_equals_block_outputs_and_forward_is_the_plain_computation():
    model = randomised(build_sit1d((6, 12), 4, "T/3"))
    x, t, y = torch.randn(2, 6, 12), torch.rand(2), torch.tensor([1, 3])
    with taps(model.blocks, [2, 5]) as hooked:
        out, captured = model(x, t, y, capture=(2, 5))
    assert sorted(captured) == [2, 5]
    for k in (2, 5):
        assert torch.equal(captured[k], hooked[k])
    h = patch_tokens(model, x) + sincos_1d(model.hidden, 4).float()
    c = model.t_embedder(t) + model.y_embedder(y)
    manual = {}
    for k, block in enumerate(model.blocks, start=1):
        h = block(h, c)
        manual[k] = h
    for k in (2, 5):
        torch.testing.assert_close(captured[k], manual[k], atol=1e-5, rtol=1e-5)
    expected = unpatchify_by_index(model.final_layer(h, c), 3, 6)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    plain, none = model(x, t, y)
    assert none == {} and torch.equal(plain, out)


@pytest.mark.parametrize("patch,channels,tokens", [(1, 3, 4), (2, 5, 3), (4, 2, 5)])
def test_unpatchify_inverts_the_patch_layout(patch, channels, tokens):
    model = build_sit1d((channels, tokens * patch), 0, f"T/{patch}")
    x = torch.randn(2, tokens, patch * channels)
    out = model.unpatchify(x)
    assert torch.equal(out, unpatchify_by_index(x, patch, channels))
    assert torch.equal(out.reshape(2, channels, tokens, patch).permute(0, 2, 3, 1).reshape(x.shape), x)


@pytest.mark.parametrize("size,frames", [("T/2", 16), ("XS/4", 36)])
def test_position_embedding_is_1d_sincos(size, frames):
    _, hidden, _, patch = parse_size_1d(size)
    model = build_sit1d((4, frames), 0, size)
    assert model.pos_embed.shape == (1, frames // patch, hidden) and not model.pos_embed.requires_grad
    torch.testing.assert_close(model.pos_embed[0].double(), sincos_1d(hidden, frames // patch), atol=1e-6, rtol=0)
    assert "pos_embed" not in dict(model.named_parameters())


def test_class_conditioning_and_null_label():
    model = randomised(build_sit1d((4, 8), 3, "T/2"))
    x, t = torch.randn(1, 4, 8).expand(3, 4, 8), torch.full((3,), 0.4)
    out, _ = model(x, t, torch.tensor([0, 1, 2]))
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])
    assert model.y_embedder.embedding_table.num_embeddings == 4  # 3 classes and the null label
    y = torch.tensor([2, 0, 1])
    dropped = model.drop_cond(y, torch.tensor([True, False, True]))
    assert dropped.tolist() == [3, 0, 3]
    null_out, _ = model(x, t, dropped)
    torch.testing.assert_close(null_out[0], null_out[2])
    assert not torch.allclose(null_out[0], out[2])
    other_t, _ = model(x, torch.tensor([0.1, 0.4, 0.9]), torch.tensor([1, 1, 1]))
    assert not torch.allclose(other_t[0], other_t[2])


def test_unconditional_model():
    model = randomised(build_sit1d((4, 8), 0, "T/2"))
    assert model.y_embedder is None
    assert not any("y_embedder" in name for name in model.state_dict())
    x, t = torch.randn(2, 4, 8), torch.rand(2)
    out, hidden = model(x, t, None, capture=(3,))
    assert out.shape == x.shape and hidden[3].shape == (2, 4, 128)
    assert model.drop_cond(None, torch.tensor([True, False])) is None
    again, _ = model(x, t, model.drop_cond(None, torch.tensor([True, True])))
    assert torch.equal(again, out)


@pytest.mark.parametrize("size", ["Q/2", "B", "B/", "B/0", "B/x", "B/-2", "/2"])
def test_bad_size_is_refused_by_name(size):
    with pytest.raises(ValueError, match=rf"unknown SiT-1D size '{size}' \(expected NAME/PATCH") as info:
        build_sit1d((4, 8), 0, size)
    assert "T, XS, S, B, L, XL" in str(info.value)


def test_bad_frames_and_shapes_are_refused():
    with pytest.raises(ValueError, match="9 frames are not divisible by the patch size 2"):
        build_sit1d((4, 9), 0, "T/2")
    with pytest.raises(ValueError, match=r"\(channels, frames\) inputs, got shape \(1, 8, 8\)"):
        build_sit1d((1, 8, 8), 0, "T/2")
    model = build_sit1d((4, 8), 0, "T/2")
    with pytest.raises(ValueError, match="blocks 1..6"):
        model(torch.randn(1, 4, 8), torch.rand(1), None, capture=(7,))


def test_a_condition_that_does_not_fit_cond_dims_is_named():
    model = build_sit1d((4, 8), 0, "T/2", cond_dims={"shape": 3, "scale": 2})
    x, t = torch.randn(2, 4, 8), torch.rand(2)
    with pytest.raises(TypeError, match=r"takes a dict condition \{shape: \(B, 3\), scale: \(B, 2\)\}, got a tensor "
                                        r"of shape \(2,\) \(class labels need a model without cond_dims\)"):
        model(x, t, torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match=r"takes a dict condition \{shape: \(B, 3\), scale: \(B, 2\)\}, got a tensor"):
        model.drop_cond(torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.bool))  # CFG's null condition
    with pytest.raises(ValueError, match=r"lacks scale \(it has shape; cond_dims expects \{shape: \(B, 3\), scale"):
        model(x, t, {"shape": torch.zeros(2, 3)})


@pytest.mark.parametrize("frames", [9, 10, 6])
def test_input_of_other_frames_is_refused_by_name(frames):
    """A model built for 8 frames must not take 9 (the conv drops the last frame and the output
    comes back 8 frames long) nor 10 or 6 (a bare broadcasting error); the image SiT names the size."""
    model = build_sit1d((4, 8), 0, "T/2")
    with pytest.raises(ValueError, match=rf"{frames} frames"):
        model(torch.randn(1, 4, frames), torch.rand(1), None)


def test_registry_builds_it_from_a_config():
    model = build.backbone(Registry(), {"model": {"name": "sit1d", "size": "T/4", "qk_norm": True}}, [16, 12], 7)
    assert isinstance(model, SiT1D) and model.pos_embed.shape == (1, 3, 128)
    assert model.y_embedder.num_classes == 7 and isinstance(model.blocks[0].attn.q_norm, nn.LayerNorm)


def test_layersync_term_is_negative_and_reaches_the_shallow_side_only():
    model = randomised(build_sit1d((8, 8), 3, "T/2"))
    x, t, y = torch.randn(2, 8, 8), torch.rand(2), torch.tensor([0, 2])
    _, hidden = model(x, t, y, capture=(2, 4))
    term = LayerSync([(2, 4)], weight=0.2)(hidden)
    cos = F.cosine_similarity(hidden[2], hidden[4], dim=-1)
    assert torch.isfinite(term) and term.item() < 0
    torch.testing.assert_close(term, -0.2 * cos.mean())
    term.backward()
    grads = [sum(p.grad.abs().sum().item() for p in b.parameters() if p.grad is not None) for b in model.blocks]
    assert grads[0] > 0 and grads[1] > 0  # blocks 1-2 feed the student
    assert grads == [grads[0], grads[1], 0, 0, 0, 0]  # blocks 3-4 only feed the detached teacher
    assert model.x_embedder.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.final_layer.parameters())


def test_a_few_training_steps_stay_finite():
    torch.manual_seed(0)
    model = build_sit1d((8, 8), 3, "T/2")
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    optim = {"lr": 1e-3, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.0}
    opt = build_optimizer(model.parameters(), optim, "cpu", capturable=False)
    ema = EMA(model, 0.9)
    step = TrainStep(model, FlowObjective(), LayerSync([(2, 4)], 0.2, depth=model.depth), opt, ema, grad_clip=1.0,
                     cfg_dropout=0.25, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(8, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)
    records = [step(x, y) for _ in range(4)]
    for r in records:
        assert all(torch.isfinite(v) for v in r.values())
        torch.testing.assert_close(r["loss"], r["flow_loss"] + r["layersync_loss"])
        assert r["flow_loss"] > 0 and -0.2 - 1e-6 <= r["layersync_loss"] <= 0.2
    # zero-init gates: every block is the identity at the first step, so all states agree
    assert records[0]["layersync_loss"].item() == pytest.approx(-0.2, abs=1e-6)
    assert len({r["loss"].item() for r in records}) == 4
    params = dict(model.named_parameters())
    assert all(torch.isfinite(p).all() for p in params.values())
    assert not torch.equal(params["blocks.0.adaLN_modulation.1.weight"], before["blocks.0.adaLN_modulation.1.weight"])
    assert not torch.equal(params["final_layer.linear.weight"], before["final_layer.linear.weight"])
    ema_params = dict(ema.model.named_parameters())
    assert not torch.equal(ema_params["final_layer.linear.weight"], before["final_layer.linear.weight"])
