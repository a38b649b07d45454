"""The step function against the plain computation, and its execution modes."""


import pytest
import torch

from layersync import FlowObjective, LayerSync
from layersync.errors import ConfigError
from layersync.train.ema import EMA
from layersync.train.modes import CapturedStep, make_step, resolve_mode
from layersync.train.optim import LRSchedule, build_optimizer, set_lr
from layersync.train.step import TrainStep
from layersync_image.sit import build_sit

# Adam eps 1e-6: the key bias has an exactly-zero true gradient, and with a tiny eps Adam
# would blow its rounding noise up to steps of size lr in both computations.
LR, WD, BETAS, EPS, DECAY, WEIGHT, DROP = 1e-3, 0.05, (0.9, 0.99), 1e-6, 0.9, 0.3, 0.25
OPTIM = {"lr": LR, "betas": BETAS, "eps": EPS, "weight_decay": WD}
CONSTANT = LRSchedule(LR)
WARMUP_COSINE = LRSchedule(LR, "cosine", warmup_steps=2, total_steps=5)


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


def reference(model, data, clip, schedule=CONSTANT):
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
            lr = schedule(step - 1)
            for k, p in params.items():
                p.mul_(1 - lr * WD)
                m[k] = BETAS[0] * m[k] + (1 - BETAS[0]) * grads[k]
                v[k] = BETAS[1] * v[k] + (1 - BETAS[1]) * grads[k] ** 2
                mhat, vhat = m[k] / (1 - BETAS[0] ** step), v[k] / (1 - BETAS[1] ** step)
                p.sub_(lr * mhat / (vhat.sqrt() + EPS))
                ema[k] = DECAY * ema[k] + (1 - DECAY) * p
        losses.append((flow + sync).item())
    return losses, {k: p.detach() for k, p in params.items()}, ema


def ours(model, data, clip, mode="eager", device="cpu", schedule=CONSTANT):
    opt = build_optimizer(model.parameters(), OPTIM, device, capturable=mode == "graph")
    ema = EMA(model, DECAY)
    step = TrainStep(model, FlowObjective(), LayerSync([(2, 4)], WEIGHT), opt, ema, grad_clip=clip,
                     cfg_dropout=DROP, generator=torch.Generator(device).manual_seed(7))
    run = make_step(step, mode)
    losses = []
    for i, (x, y) in enumerate(data):
        set_lr(opt, schedule(i))
        losses.append(run(x, y)["loss"].item())
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


def test_schedule_drives_the_tensor_lr():
    """Warm-up then cosine, written into the optimizer's lr tensor before each step."""
    data = batches(5)
    ref_losses, ref_params, _ = reference(make_model(), data, 0.0, WARMUP_COSINE)
    our_losses, our_params, _ = ours(make_model(), data, 0.0, schedule=WARMUP_COSINE)
    assert our_losses == pytest.approx(ref_losses, rel=1e-4)
    for name in ref_params:
        assert torch.allclose(our_params[name], ref_params[name], atol=1e-5), name
    _, constant_params, _ = ours(make_model(), data, 0.0)  # the schedule did change the run
    assert any(not torch.allclose(constant_params[n], ref_params[n], atol=1e-5) for n in ref_params)


def test_compiled_step_matches_eager():
    """With the schedule, which the compiled step must follow as the eager one does."""
    data = batches(3)
    eager_losses, eager_params, _ = ours(make_model(), data, 0.0, schedule=WARMUP_COSINE)
    compiled_losses, compiled_params, _ = ours(make_model(), data, 0.0, mode="compile", schedule=WARMUP_COSINE)
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    for name in eager_params:
        assert torch.allclose(compiled_params[name], eager_params[name], atol=1e-5), name


def test_mode_resolution():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_mode("auto", cpu) == "eager" and resolve_mode("auto", cuda) == "graph"
    assert resolve_mode("auto", cuda, world=8) == "compile"  # graph under DDP: only when asked
    assert resolve_mode("graph", cuda, world=8) == "graph"
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        resolve_mode("graph", cpu)
    with pytest.raises(ConfigError, match="step_mode"):
        resolve_mode("jit", cpu)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (benchmarks/gpu_check.sh runs this)")
def test_graph_replay_matches_eager_on_cuda():
    """With a schedule: an lr baked into the graph at capture would make the runs differ."""
    data = batches(8, "cuda")
    schedule = LRSchedule(LR, "cosine", warmup_steps=4, total_steps=8)
    eager_losses, eager_params, _ = ours(make_model("cuda"), data, 0.5, device="cuda", schedule=schedule)
    graph_losses, graph_params, _ = ours(make_model("cuda"), data, 0.5, mode="graph", device="cuda", schedule=schedule)
    assert graph_losses == pytest.approx(eager_losses, rel=1e-4)
    for name in eager_params:
        assert torch.allclose(graph_params[name], eager_params[name], atol=1e-4), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (benchmarks/gpu_check.sh runs this)")
def test_graph_replays_draw_fresh_noise():
    model = make_model("cuda")
    opt = build_optimizer(model.parameters(), {**OPTIM, "lr": 0.0}, "cuda", capturable=True)
    step = TrainStep(model, FlowObjective(), None, opt, generator=torch.Generator("cuda").manual_seed(0))
    captured = CapturedStep(step, warmup=1)
    x, y = batches(1, "cuda")[0]
    seen = {captured(x, y)["loss"].item() for _ in range(5)}  # lr 0: only the noise changes the loss
    assert len(seen) == 5
