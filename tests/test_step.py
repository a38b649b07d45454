"""The step function against the plain computation, and its execution modes."""


import pytest
import torch

from layersync import FlowObjective, LayerSync
from layersync import config as configuration
from layersync.errors import ConfigError
from layersync.train.ema import EMA
from layersync.train.modes import CAPTURED, CapturedStep, make_step, resolve_mode
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


def ours(model, data, clip, mode="eager", device="cpu", schedule=CONSTANT, grad_accum=1, fused=False):
    opt = build_optimizer(model.parameters(), OPTIM, device, capturable=mode in CAPTURED)
    if fused:  # fused AdamW, as on CUDA (it takes the clipping factor itself), here on the CPU
        opt = torch.optim.AdamW(model.parameters(), lr=torch.tensor(LR), betas=BETAS, eps=EPS, weight_decay=WD,
                                fused=True)
    ema = EMA(model, DECAY)
    step = TrainStep(model, FlowObjective(), LayerSync([(2, 4)], WEIGHT), opt, ema, grad_clip=clip,
                     cfg_dropout=DROP, generator=torch.Generator(device).manual_seed(7), grad_accum=grad_accum)
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


@pytest.mark.slow
def test_compiled_step_matches_eager():
    """With the schedule, which the compiled step must follow as the eager one does."""
    data = batches(3)
    eager_losses, eager_params, _ = ours(make_model(), data, 0.0, schedule=WARMUP_COSINE)
    compiled_losses, compiled_params, _ = ours(make_model(), data, 0.0, mode="compile", schedule=WARMUP_COSINE)
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    for name in eager_params:
        assert torch.allclose(compiled_params[name], eager_params[name], atol=1e-5), name


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_fused_adamw_clipping_in_the_optimizer_equals_the_plain_reference(clip):
    """The fused optimizer divides by 1 / clip factor itself (no scaling pass over the gradients)."""
    data = batches(3)
    ref_losses, ref_params, ref_ema = reference(make_model(), data, clip)
    our_losses, our_params, our_ema = ours(make_model(), data, clip, fused=True)
    assert our_losses == pytest.approx(ref_losses, rel=1e-5)
    for name in ref_params:
        assert torch.allclose(our_params[name], ref_params[name], atol=1e-6), name
        assert torch.allclose(our_ema[name], ref_ema[name], atol=1e-6), name


@pytest.mark.parametrize("mode", ["eager", pytest.param("compile", marks=pytest.mark.slow)])
def test_gradient_accumulation_equals_the_whole_batch(mode):
    """4 micro-batches of 2: the same losses and weights as one batch of 8, clipping included."""
    data = batches(3)
    whole_losses, whole_params, _ = ours(make_model(), data, 0.5, mode=mode)
    split_losses, split_params, _ = ours(make_model(), data, 0.5, mode=mode, grad_accum=4)
    assert split_losses == pytest.approx(whole_losses, rel=1e-5)
    for name in whole_params:
        assert torch.allclose(split_params[name], whole_params[name], atol=1e-5), name


def test_gradient_accumulation_weights_a_masked_layersync_term_by_valid_tokens():
    """With a mask the LayerSync mean runs over the batch's valid tokens: micro-batches with more of
    them weigh more, so the accumulated gradient is the whole batch's."""
    from layersync.nn.sit1d import build_sit1d

    def step_grads(grad_accum):
        torch.manual_seed(0)
        model = build_sit1d((3, 8), 0, "T/2")
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.05)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        step = TrainStep(model, FlowObjective(), LayerSync([(2, 4)], WEIGHT), opt,
                         generator=torch.Generator().manual_seed(7), grad_accum=grad_accum)
        g = torch.Generator().manual_seed(1)
        mask = torch.arange(8)[None] < torch.tensor([8, 2, 6, 4])[:, None]
        out = step(torch.randn(4, 3, 8, generator=g), None, mask)
        return out, [p.grad.clone() for p in model.parameters()]

    (whole, whole_grads), (split, split_grads) = step_grads(1), step_grads(2)
    for key in whole:
        assert torch.allclose(split[key], whole[key], rtol=1e-5, atol=1e-7), key
    for a, b in zip(whole_grads, split_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_mode_resolution():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_mode("auto", cpu)[0] == "eager" and resolve_mode("auto", cuda)[0] == "graph"
    assert resolve_mode("auto", cuda, world=8)[0] == "compile"  # graph under DDP: only when asked
    assert resolve_mode("auto", cuda, sharded=True)[0] == "compile"
    assert resolve_mode("graph", cuda, world=8) == ("graph", "asked for")
    assert "one CUDA device" in resolve_mode("auto", cuda)[1]
    for captured in CAPTURED:
        with pytest.raises(ConfigError, match="needs a CUDA device"):
            resolve_mode(captured, cpu)
    with pytest.raises(ConfigError, match="train.step_mode=jit: expected one of auto, eager, compile, graph"):
        configuration.set_key(configuration.defaults(), "train.step_mode=jit")  # the name: checked once, in the config


def test_graph_mode_compiles_the_step_it_captures():
    """graph = compile, then capture; graph-eager captures the eager step (built here without CUDA: the
    capture itself happens at the first calls)."""
    for mode, compiled in (("graph", True), ("graph-eager", False)):
        step = TrainStep(make_model(), FlowObjective(), None, torch.optim.SGD(make_model().parameters(), lr=0.1))
        wrapped = make_step(step, mode)
        assert isinstance(wrapped, CapturedStep) and wrapped.step is step
        assert ("forward_losses" in vars(step)) == compiled  # the compiled function set on the instance


@pytest.mark.gpu
def test_graph_replay_matches_eager_on_cuda():
    """With a schedule: an lr baked into the graph at capture would make the runs differ."""
    data = batches(8, "cuda")
    schedule = LRSchedule(LR, "cosine", warmup_steps=4, total_steps=8)
    eager_losses, eager_params, _ = ours(make_model("cuda"), data, 0.5, device="cuda", schedule=schedule)
    graph_losses, graph_params, _ = ours(make_model("cuda"), data, 0.5, mode="graph", device="cuda", schedule=schedule)
    assert graph_losses == pytest.approx(eager_losses, rel=1e-4)
    for name in eager_params:
        assert torch.allclose(graph_params[name], eager_params[name], atol=1e-4), name


@pytest.mark.gpu
def test_graph_replays_draw_fresh_noise():
    model = make_model("cuda")
    opt = build_optimizer(model.parameters(), {**OPTIM, "lr": 0.0}, "cuda", capturable=True)
    step = TrainStep(model, FlowObjective(), None, opt, generator=torch.Generator("cuda").manual_seed(0))
    captured = CapturedStep(step, warmup=1)
    x, y = batches(1, "cuda")[0]
    seen = {captured(x, y)["loss"].item() for _ in range(5)}  # lr 0: only the noise changes the loss
    assert len(seen) == 5
