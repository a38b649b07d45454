"""The trunk hands out exactly the output of block k, with no hooks."""

import pytest
import torch

from layersync_image.sit import build_sit, parse_size


def test_capture_is_exactly_block_output():
    torch.manual_seed(0)
    model = build_sit((3, 16, 16), 10, "T/4")
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, t, y = torch.randn(2, 3, 16, 16), torch.rand(2), torch.tensor([1, 2])
    out, hidden = model(x, t, y, capture=(1, 3, 6))
    assert sorted(hidden) == [1, 3, 6]
    tokens = model.x_embedder(x) + model.pos_embed
    c = model.t_embedder(t) + model.y_embedder(y)
    h = tokens
    for k, block in enumerate(model.blocks, start=1):
        h = block(h, c)
        if k in hidden:
            assert torch.equal(hidden[k], h)
    plain, none = model(x, t, y)
    assert none == {} and torch.equal(plain, out)
    assert out.shape == x.shape


def test_capture_out_of_range_raises():
    model = build_sit((1, 8, 8), 0, "T/2")
    with pytest.raises(ValueError, match="blocks 1..6"):
        model(torch.randn(1, 1, 8, 8), torch.rand(1), None, capture=(7,))


@pytest.mark.parametrize("size,expected", [("XL/2", (28, 1152, 16, 2)), ("L/4", (24, 1024, 16, 4)),
                                           ("B/8", (12, 768, 12, 8)), ("S/2", (12, 384, 6, 2))])
def test_paper_sizes(size, expected):
    assert parse_size(size) == expected


def test_sit_b2_parameter_count_matches_paper():
    # SiT-B/2 on 32x32x4 latents has about 130M parameters (DiT/SiT papers: 130M).
    model = build_sit((4, 32, 32), 1000, "B/2", learn_sigma=True)
    n = sum(p.numel() for p in model.parameters())
    assert 129e6 < n < 131e6


def test_label_dropout_uses_null_class():
    model = build_sit((1, 8, 8), 10, "T/2")
    y = torch.tensor([3, 4, 5])
    assert model.drop_cond(y, torch.tensor([True, False, True])).tolist() == [10, 4, 10]


def test_qk_norm_normalises_queries_and_keys():
    """qk_norm (REPA's SiT option): a LayerNorm over each head's queries and keys, under
    REPA's state-dict names, in a model that trains."""
    model = build_sit((4, 8, 8), 10, "T/2", qk_norm=True)
    attn = model.blocks[0].attn
    assert isinstance(attn.q_norm, torch.nn.LayerNorm) and attn.q_norm.normalized_shape == (128 // 4,)
    assert {"blocks.0.attn.q_norm.weight", "blocks.0.attn.k_norm.bias"} <= set(model.state_dict())
    out, hidden = model(torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([1, 2]), capture=(2,))
    (out.square().mean() + hidden[2].mean()).backward()
    assert attn.q_norm.weight.grad is not None
