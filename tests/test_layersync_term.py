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


def unfused_terms(hidden, pairs, detach_teacher=True):
    """The term as it was written before the fused one: autograd through fp32 copies."""
    out = []
    for k, kt in pairs:
        s = hidden[k].float()
        with torch.set_grad_enabled(not detach_teacher):
            t = nn.functional.normalize(hidden[kt].float(), dim=-1, eps=1e-8)
        cos = torch.linalg.vecdot(s, t) / torch.linalg.vector_norm(s, dim=-1).clamp_min(1e-8)
        out.append(-cos.mean())
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("detach_teacher", [True, False])
def test_fused_term_equals_the_unfused_formula_with_gradients(dtype, detach_teacher):
    """Values and gradients of both sides, a zero token included (its norm is clamped to eps)."""
    g = torch.Generator().manual_seed(0)
    base = {k: torch.randn(3, 6, 16, generator=g) for k in (2, 5)}
    base[2][0, 1] = 0.0
    base[5][1, 2] = 0.0

    def run(fn):
        hidden = {k: v.to(dtype).requires_grad_() for k, v in base.items()}
        loss = torch.stack(fn(hidden)).sum()
        loss.backward()
        return loss, {k: v.grad for k, v in hidden.items()}

    sync = LayerSync([(2, 5)], detach_teacher=detach_teacher)
    fused, fused_grads = run(sync.terms)
    plain, plain_grads = run(lambda h: unfused_terms(h, [(2, 5)], detach_teacher))
    assert fused.dtype == torch.float32 and torch.equal(fused, plain)
    for k in base:
        if plain_grads[k] is None:
            assert fused_grads[k] is None
            continue
        assert fused_grads[k].dtype == dtype
        tol = 1e-6 if dtype == torch.float32 else 1e-2
        assert torch.allclose(fused_grads[k].float(), plain_grads[k].float(), atol=tol, rtol=tol), k
    assert (fused_grads[2] != 0).any()


def test_fused_term_keeps_no_fp32_copy_of_a_bf16_state():
    """What autograd saves for the backward: the bf16 states themselves and per-token scalars only."""
    student = torch.randn(2, 8, 32, dtype=torch.bfloat16, requires_grad=True)
    teacher = torch.randn(2, 8, 32, dtype=torch.bfloat16)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        LayerSync([(1, 2)])({1: student, 2: teacher})
    big = [t for t in saved if t.numel() == student.numel()]
    assert big and all(t.dtype == torch.bfloat16 for t in big)
    assert sum(t.numel() * t.element_size() for t in saved) <= 2 * student.numel() * 2 + 3 * 16 * 4 + 64
