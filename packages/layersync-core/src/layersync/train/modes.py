"""How the step function runs: eager, compiled, or captured as one CUDA graph (compiled or not)."""

from __future__ import annotations

import logging
from typing import Literal, get_args

import torch

from layersync import trees
from layersync.errors import ConfigError
from layersync.train.step import TrainStep

log = logging.getLogger("layersync")
StepMode = Literal["auto", "eager", "compile", "graph", "graph-eager"]
STEP_MODES = get_args(StepMode)
CAPTURED = ("graph", "graph-eager")  # modes that capture the step as a CUDA graph
MODE_MEANINGS = {
    "eager": "plain PyTorch",
    "compile": "torch.compile of forward, loss and backward",
    "graph": "compiled, then the whole step (optimizer and EMA included) captured as one CUDA graph",
    "graph-eager": "the whole step captured as one CUDA graph, without compiling",
}


def resolve_mode(mode: StepMode, device: torch.device, world: int = 1, sharded: bool = False) -> tuple[str, str]:
    """(the mode a run uses, why): ``auto`` is the fastest mode verified for the situation.

    One CUDA device: graph (compiled and captured). Several (DDP, FSDP): compile, as capture under
    DDP is not measured on several GPUs yet (asking for graph gets it) and FSDP cannot be captured.
    CPU and other devices: eager. The captured modes need CUDA.
    """
    if mode != "auto":
        if mode in CAPTURED and device.type != "cuda":
            raise ConfigError(f"train.step_mode={mode} needs a CUDA device, this run uses {device.type}")
        return mode, "asked for"
    if device.type != "cuda":
        return "eager", f"auto on {device.type}: compiling a step pays off on CUDA"
    if sharded:
        return "compile", "auto under FSDP: a sharded step cannot be captured"
    if world > 1:
        return "compile", (f"auto under DDP ({world} processes): capture with DDP is not yet measured on several "
                           "GPUs; --step-mode graph asks for it")
    return "graph", "auto on one CUDA device: the fastest measured mode"


class CapturedStep:
    """Run a TrainStep as one CUDA graph.

    The first ``warmup`` calls run uncaptured on a side stream (they are real
    training steps: the optimizer and autograd allocate their state there, and
    a compiled step compiles its kernels).
    The next call copies its batch into static buffers, captures the whole
    step (RNG through the registered generator, so every replay draws fresh
    noise) and replays it; later calls only copy and replay. The returned
    losses are static tensors, overwritten by each replay: read them before
    the next call.
    """

    def __init__(self, step: TrainStep, warmup: int = 3):
        self.step, self.warmup = step, warmup
        self.calls, self.graph, self.static_in, self.static_out = 0, None, None, None

    def __call__(self, x1, cond, mask=None):
        inputs = {"x1": x1, "cond": cond} if mask is None else {"x1": x1, "cond": cond, "mask": mask}
        if self.graph is not None:
            if x1.shape != self.static_in["x1"].shape or inputs.keys() != self.static_in.keys():
                raise ValueError(f"captured step expects batches of shape {tuple(self.static_in['x1'].shape)} "
                                 f"with {', '.join(self.static_in)}, got {tuple(x1.shape)} with {', '.join(inputs)}")
            trees.copy_(self.static_in, inputs)  # conditions may be trees of tensors
            self.graph.replay()
            return self.static_out
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        if self.calls < self.warmup:
            self.calls += 1
            with torch.cuda.stream(side):
                out = self.step(**inputs)
            torch.cuda.current_stream().wait_stream(side)
            return out
        self.static_in = trees.clone(inputs)
        # the warm-up's freed activations stay cached outside the graph's private pool:
        # hand them back so the captured step does not need twice the memory
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        self.graph = torch.cuda.CUDAGraph()
        if self.step.generator is not None and self.step.generator.device.type == "cuda":
            self.graph.register_generator_state(self.step.generator)
        # thread_local: the data loader's pin-memory thread may touch CUDA meanwhile
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.static_out = self.step(**self.static_in)
        self.graph.replay()
        return self.static_out


def make_step(step: TrainStep, mode: str, warmup: int = 3):
    """Wrap a TrainStep for the resolved mode. ``graph`` compiles first: the warm-up steps before
    capture compile it, so the graph records the compiled kernels."""
    if mode in ("compile", "graph"):
        # static shapes: never a symbolic-batch graph (batches have a fixed shape); the noise is drawn
        # outside, from the registered generator
        step.forward_losses = torch.compile(step.forward_losses, dynamic=False)
    if mode in CAPTURED:
        return CapturedStep(step, warmup)
    if mode in ("eager", "compile"):
        return step
    raise ValueError(f"unknown step mode {mode!r}")
