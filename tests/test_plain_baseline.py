"""The plain single-file SiT/step (the speed baseline) computes exactly what ours does."""

import pytest
import torch

from benchmarks.plain_sit import PlainSiT, PlainStep
from layersync import FlowObjective, LayerSync
from layersync.train.ema import EMA
from layersync.train.step import TrainStep
from layersync_image.sit import build_sit, parse_size

# Adam eps 1e-6: the key bias has an exactly-zero true gradient, and with a tiny eps Adam
# would blow its rounding noise up to steps of size lr in both computations (see test_step.py).
LR, WD, BETAS, EPS, DECAY, WEIGHT, DROP = 1e-3, 0.05, (0.9, 0.99), 1e-6, 0.9, 0.3, 0.25
PAIRS = [(2, 4), (1, 5)]
SHAPE, CLASSES, SIZE = (1, 16, 16), 10, "T/4"


def make_pair():
    """Our SiT with non-trivial weights (no adaLN-Zero zeros) and a PlainSiT loaded from it."""
    ours = build_sit(SHAPE, CLASSES, SIZE)
    for p in ours.parameters():
        torch.nn.init.normal_(p, std=0.05)
    depth, hidden, heads, patch = parse_size(SIZE)
    plain = PlainSiT(SHAPE[1], patch, SHAPE[0], hidden, depth, heads, CLASSES)
    plain.load_state_dict(ours.state_dict(), strict=True)
    return ours, plain


def test_plain_pos_embed_matches_ours():
    ours, _ = make_pair()
    depth, hidden, heads, patch = parse_size(SIZE)
    fresh = PlainSiT(SHAPE[1], patch, SHAPE[0], hidden, depth, heads, CLASSES)  # its own buffer, not loaded
    assert torch.allclose(fresh.pos_embed, ours.pos_embed, atol=1e-6)
    assert fresh.state_dict().keys() == ours.state_dict().keys()


def test_plain_forward_matches_ours():
    ours, plain = make_pair()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, *SHAPE, generator=g)
    t = torch.rand(5, generator=g)
    y = torch.randint(0, CLASSES + 1, (5,), generator=g)  # includes the null label
    capture = (1, 3, 6)
    out, hidden = ours(x, t, y, capture=capture)
    plain_out, plain_hidden = plain(x, t, y, capture=capture)
    assert out.abs().mean() > 1e-2  # the weights really reach the output
    assert torch.allclose(plain_out, out, atol=1e-5)
    assert plain_hidden.keys() == hidden.keys() == set(capture)
    for k in capture:
        assert torch.allclose(plain_hidden[k], hidden[k], atol=1e-5), k


# bf16 autocast (as both run on CUDA): the gradients differ by roundings, which AdamW turns into steps
# of up to lr where a gradient is as small as eps; the losses still agree to fp32 precision
@pytest.mark.parametrize("precision, param_atol", [(None, 1e-6), (torch.bfloat16, LR / 2)])
def test_plain_step_matches_train_step(precision, param_atol):
    ours, plain = make_pair()
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, *SHAPE, generator=g), torch.randint(0, CLASSES, (8,), generator=g)) for _ in range(3)]

    opt = torch.optim.AdamW(ours.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    ema = EMA(ours, DECAY)
    step = TrainStep(ours, FlowObjective(), LayerSync(PAIRS, WEIGHT), opt, ema,
                     cfg_dropout=DROP, generator=torch.Generator().manual_seed(7), autocast_dtype=precision)
    plain_step = PlainStep(plain, LR, WD, PAIRS, WEIGHT, DROP, DECAY, torch.Generator().manual_seed(7),
                           betas=BETAS, eps=EPS, autocast_dtype=precision)

    our_losses = [step(x, y)["loss"].item() for x, y in data]
    plain_losses = [plain_step(x, y).item() for x, y in data]
    assert plain_losses == pytest.approx(our_losses, rel=1e-5)
    assert len(set(our_losses)) == 3
    plain_params, plain_ema = dict(plain.named_parameters()), dict(plain_step.ema.named_parameters())
    for name, p in ours.named_parameters():
        assert torch.allclose(plain_params[name], p, atol=param_atol), name
    for name, p in ema.model.named_parameters():
        assert torch.allclose(plain_ema[name], p, atol=param_atol), name
