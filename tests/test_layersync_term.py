"""The LayerSync term: formula, gradient flow, several pairs, invalid pairs, taps."""

import pytest
import torch
import torch.nn as nn

from layersync import LayerSync, taps


def direct(hidden, pairs, weight):
    """The paper's formula written out token by token."""
    total = 0.0
    for k, kt in pairs:
        s, t = hidden[k], hidden[kt]
        B, T, _ = s.shape
        acc = 0.0
        for b in range(B):
            for i in range(T):
                acc += -(s[b, i] @ t[b, i]) / (s[b, i].norm() * t[b, i].norm())
        total += acc / (B * T)
    return weight * total


def test_term_equals_direct_formula():
    hidden = {k: torch.randn(3, 5, 8, dtype=torch.float64) for k in (2, 4, 6)}
    term = LayerSync([(2, 4)], weight=0.3)(hidden)
    assert torch.allclose(term.double(), torch.as_tensor(direct(hidden, [(2, 4)], 0.3)), atol=1e-6)


def test_identical_states_give_minus_weight():
    h = torch.randn(2, 7, 16)
    assert LayerSync([(1, 2)], weight=0.2)({1: h, 2: 3 * h}).item() == pytest.approx(-0.2, abs=1e-6)


def test_several_pairs_add_up():
    hidden = {k: torch.randn(2, 4, 8) for k in (1, 2, 3, 5)}
    both = LayerSync([(1, 3), (2, 5)], weight=0.5)(hidden)
    first = LayerSync([(1, 3)], weight=0.5)(hidden)
    second = LayerSync([(2, 5)], weight=0.5)(hidden)
    assert torch.allclose(both, first + second)
    assert not torch.allclose(both, second)  # the reference code's bug: only the last pair counted


def test_gradient_reaches_shallow_side_only():
    shallow = torch.randn(2, 4, 8, requires_grad=True)
    deep = torch.randn(2, 4, 8, requires_grad=True)
    LayerSync([(1, 2)])({1: shallow, 2: deep}).backward()
    assert shallow.grad is not None and shallow.grad.abs().sum() > 0
    assert deep.grad is None


def test_gradient_in_a_model_reaches_student_block_not_teacher_blocks():
    from layersync_image.sit import build_sit

    model = build_sit((1, 8, 8), 0, "T/2")
    for p in model.parameters():  # break adaLN-Zero's zero init so blocks act
        nn.init.normal_(p, std=0.05)
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    _, hidden = model(x, t, None, capture=(2, 4))
    LayerSync([(2, 4)])(hidden).backward()
    grads = [sum(p.grad.abs().sum().item() for p in b.parameters() if p.grad is not None) for b in model.blocks]
    assert grads[0] > 0 and grads[1] > 0  # blocks 1-2 feed the student
    assert grads[2] == 0 and grads[3] == 0  # blocks 3-4 only feed the detached teacher


@pytest.mark.parametrize("pair,depth", [((4, 4), 8), ((5, 3), 8), ((0, 4), 8), ((4, 9), 8)])
def test_invalid_pairs_raise_naming_pair_and_depth(pair, depth):
    with pytest.raises(ValueError) as info:
        LayerSync([pair], depth=depth)
    assert f"({pair[0]}, {pair[1]})" in str(info.value) and str(depth) in str(info.value)


def test_parse():
    assert LayerSync.parse("8:16,4:20").pairs == [(8, 16), (4, 20)]
    assert LayerSync.parse("off") is None
    with pytest.raises(ValueError):
        LayerSync.parse("8-16")


def test_taps_collect_block_outputs_of_a_plain_model():
    blocks = nn.Sequential(*[nn.Linear(8, 8) for _ in range(4)])
    x = torch.randn(2, 3, 8)
    with taps(blocks, [1, 3]) as hidden:
        blocks(x)
    assert torch.allclose(hidden[1], blocks[0](x))
    assert torch.allclose(hidden[3], blocks[2](blocks[1](blocks[0](x))))
    hidden.clear()
    blocks(x)
    assert hidden == {}  # hooks removed on exit
    with pytest.raises(ValueError, match="blocks 1..4"):
        taps(blocks, [5])
