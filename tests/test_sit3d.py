"""The spatio-temporal SiT: shapes, patch layout, position embedding, full and factorised attention."""

import pytest
import torch

from layersync import LayerSync, taps
from layersync.nn import build_sit3d, sincos_pos_embed

SHAPE = (2, 4, 8, 8)  # channels, frames, height, width


def model(attention="full", size="T/4", temporal_patch=2, classes=3):
    torch.manual_seed(0)
    net = build_sit3d(SHAPE, classes, size, temporal_patch=temporal_patch, attention=attention)
    for p in net.parameters():  # adaLN-Zero starts as the identity: make every block matter
        torch.nn.init.normal_(p, std=0.05)
    return net.eval()


@pytest.mark.parametrize("attention", ["full", "factorised"])
def test_shapes_and_capture(attention):
    net = model(attention)
    x, t, y = torch.randn(3, *SHAPE), torch.rand(3), torch.tensor([0, 1, 2])
    out, hidden = net(x, t, y, capture=(2, 4))
    tokens = (4 // 2) * (8 // 4) * (8 // 4)
    assert out.shape == x.shape and sorted(hidden) == [2, 4]
    assert all(h.shape == (3, tokens, net.hidden) for h in hidden.values())
    with taps(net.blocks, [2, 4]) as seen:
        net(x, t, y)
    if attention == "full":  # factorised blocks see frames or positions, reshaped back for capture
        torch.testing.assert_close(seen[2], hidden[2])


def test_unpatchify_inverts_the_patch_layout():
    net = model()
    pt, ph, pw = net.patch
    x = torch.randn(2, *SHAPE)
    c, frames, height, width = SHAPE
    patches = x.reshape(2, c, frames // pt, pt, height // ph, ph, width // pw, pw)
    tokens = patches.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(2, -1, pt * ph * pw * c)  # (t h w) x (pt ph pw c)
    torch.testing.assert_close(net.unpatchify(tokens), x)


def test_position_embedding_is_separable_over_t_h_w():
    net = model(size="T/4", temporal_patch=2)
    grid = net.grid
    emb = net.pos_embed[0].reshape(*grid, -1)
    torch.testing.assert_close(emb, sincos_pos_embed(net.hidden, grid).reshape(*grid, -1))
    third = net.hidden // 3 // 2 * 2
    # the last third of the channels depends on the frame only, the first on the column only
    assert torch.equal(emb[0, 0, :, 2 * third:3 * third], emb[0, 1, :, 2 * third:3 * third])
    assert not torch.equal(emb[0, 0, 0, 2 * third:3 * third], emb[1, 0, 0, 2 * third:3 * third])
    assert torch.equal(emb[0, :, 1, :third], emb[1, :, 1, :third])


def test_factorised_attention_keeps_frames_apart_in_spatial_blocks():
    """Block 1 of the factorised model attends within a frame: changing frame 1 leaves frame 0's tokens alone."""
    full, fact = model("full"), model("factorised")
    x, t, y = torch.randn(1, *SHAPE), torch.rand(1), torch.tensor([1])
    changed = x.clone()
    changed[:, :, 2:] += 1  # the second temporal patch (frames 2-3)
    per_frame = 4  # tokens of one temporal patch: (8/4) * (8/4)
    h = fact(x, t, y, capture=(1,))[1][1]
    h2 = fact(changed, t, y, capture=(1,))[1][1]
    torch.testing.assert_close(h[:, :per_frame], h2[:, :per_frame])
    g = full(x, t, y, capture=(1,))[1][1]
    g2 = full(changed, t, y, capture=(1,))[1][1]
    assert not torch.allclose(g[:, :per_frame], g2[:, :per_frame])


def test_layersync_and_errors():
    net = model("factorised").train()
    x = torch.randn(2, *SHAPE)
    _, hidden = net(x, torch.rand(2), torch.tensor([0, 1]), capture=(1, 3))
    term = LayerSync([(1, 3)], 0.2)(hidden)
    assert torch.isfinite(term) and -0.2 <= term.item() < 0.2
    with pytest.raises(ValueError, match="takes 2x4x8x8"):
        net(torch.randn(1, 2, 6, 8, 8), torch.rand(1), torch.tensor([0]))
    with pytest.raises(ValueError, match="attention must be"):
        build_sit3d(SHAPE, 0, "T/4", attention="sparse")
    with pytest.raises(ValueError, match="do not divide"):
        build_sit3d(SHAPE, 0, "T/3")
