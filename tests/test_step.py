"""The step function against the plain computation, and its execution modes."""

import copy

import pytest
import torch

from layersync import FlowObjective, LayerSync
from layersync.errors import ConfigError
from layersync.train.ema import EMA
from layersync.train.modes import CapturedStep, make_step, resolve_mode
from layersync.train.step import TrainStep
from layersync_image.sit import build_sit

# Adam eps 1e-6: the key bias has an exactly-zero true gradient, and with a tiny eps Adam
# would blow its rounding noise up to steps of size lr in both computations.
LR, WD, BETAS, EPS, DECAY, WEIGHT, DROP = 1e-3, 0.05, (0.9, 0.99), 1e-6, 0.9, 0.3, 0.25


def make_model(device="cpu"):
    torch.manual_seed(0)
    model = build_sit((1, 8, 8), 10, "T/2").to(device)
    for p in model.parameters():  # leave adaLN-Zero's zeros so every path carries gradient
        torch.nn.init.normal_(p, std=0.05)
    return model


def batches(n, device="cpu"):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 1, 8, 8, generator=g).to(device), torch.randint(0, 10, (8,), generator=g).to(device))
            for _ in range(n)]


def reference(model, data, clip):
    """Forward, loss, backward, AdamW and EMA written out the plain way."""
    g = torch.Generator().manual_seed(7)
    params = dict(model.named_parameters())
    m = {k: torch.zeros_like(p) for k, p in params.items()}
    v = {k: torch.zeros_like(p) for k, p in params.items()}
    ema = {k: p.detach().clone() for k, p in params.items()}
    losses = []
    for step, (x1, y) in enumerate(data, start=1):
        x0 = torch.randn(x1.shape, generator=g)
        t = torch.rand(x1.shape[0], generator=g)
        drop = torch.rand(x1.shape[0], generator=g) < DROP
        y = torch.where(drop, 10, y)
        tt = t.view(-1, 1, 1, 1)
        out, hidden = model(tt * x1 + (1 - tt) * x0, t, y, capture=(2, 4))
        flow = ((out - (x1 - x0)) ** 2).mean()
        sync = WEIGHT * -torch.nn.functional.cosine_similarity(hidden[2], hidden[4].detach(), dim=-1).mean()
        model.zero_grad()
        (flow + sync).backward()
        with torch.no_grad():
            grads = {k: p.grad.clone() for k, p in params.items()}
            if clip:
                norm = torch.sqrt(sum((gr**2).sum() for gr in grads.values()))
                grads = {k: gr * min(1.0, clip / (norm.item() + 1e-6)) for k, gr in grads.items()}
            for k, p in params.items():
                p.mul_(1 - LR * WD)
                m[k] = BETAS[0] * m[k] + (1 - BETAS[0]) * grads[k]
                v[k] = BETAS[1] * v[k] + (1 - BETAS[1]) * grads[k] ** 2
                mhat, vhat = m[k] / (1 - BETAS[0] ** step), v[k] / (1 - BETAS[1] ** step)
                p.sub_(LR * mhat / (vhat.sqrt() + EPS))
                ema[k] = DECAY * ema[k] + (1 - DECAY) * p
        losses.append((flow + sync).item())
    return losses, {k: p.detach() for k, p in params.items()}, ema


def ours(model, data, clip, mode="eager", device="cpu"):
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD,
                            capturable=mode == "graph", fused=device == "cuda")
    ema = EMA(model, DECAY)
    step = TrainStep(model, FlowObjective(), LayerSync([(2, 4)], WEIGHT), opt, ema, grad_clip=clip,
                     cfg_dropout=DROP, generator=torch.Generator(device).manual_seed(7))
    run = make_step(step, mode)
    losses = [run(x, y)["loss"].item() for x, y in data]
    return losses, dict(model.named_parameters()), dict(ema.model.named_parameters())


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_eager_step_equals_plain_reference(clip):
    data = batches(3)
    ref_losses, ref_params, ref_ema = reference(make_model(), data, clip)
    our_losses, our_params, our_ema = ours(make_model(), data, clip)
    assert our_losses == pytest.approx(ref_losses, rel=1e-5)
    assert len(set(our_losses)) == 3
    for name in ref_params:
        assert torch.allclose(our_params[name], ref_params[name], atol=1e-6), name
        assert torch.allclose(our_ema[name], ref_ema[name], atol=1e-6), name


def test_compiled_step_matches_eager():
    data = batches(2)
    eager_losses, eager_params, _ = ours(make_model(), data, 0.0)
    compiled_losses, compiled_params, _ = ours(make_model(), data, 0.0, mode="compile")
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    for name in eager_params:
        assert torch.allclose(compiled_params[name], eager_params[name], atol=1e-5), name


def test_mode_resolution():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_mode("auto", cpu) == "eager" and resolve_mode("auto", cuda) == "graph"
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        resolve_mode("graph", cpu)
    with pytest.raises(ConfigError, match="step_mode"):
        resolve_mode("jit", cpu)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (benchmarks/gpu_check.sh runs this)")
def test_graph_replay_matches_eager_on_cuda():
    data = batches(8, "cuda")
    eager_losses, eager_params, _ = ours(make_model("cuda"), data, 0.5, device="cuda")
    graph_losses, graph_params, _ = ours(make_model("cuda"), data, 0.5, mode="graph", device="cuda")
    assert graph_losses == pytest.approx(eager_losses, rel=1e-4)
    for name in eager_params:
        assert torch.allclose(graph_params[name], eager_params[name], atol=1e-4), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (benchmarks/gpu_check.sh runs this)")
def test_graph_replays_draw_fresh_noise():
    model = make_model("cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=0.0, capturable=True)
    step = TrainStep(model, FlowObjective(), None, opt, generator=torch.Generator("cuda").manual_seed(0))
    captured = CapturedStep(step, warmup=1)
    x, y = batches(1, "cuda")[0]
    seen = {captured(x, y)["loss"].item() for _ in range(5)}  # lr 0: only the noise changes the loss
    assert len(seen) == 5
