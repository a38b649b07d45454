"""Process group set-up for torchrun (gloo on CPU, nccl on CUDA), DDP and FSDP2 wrapping."""

from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from layersync.errors import ConfigError
from layersync.files import folder_lock

TIMEOUT_ENV = "LAYERSYNC_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def pick_device(preference: str) -> torch.device:
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def fast_defaults(device: torch.device) -> None:
    """TF32 matmuls and cuDNN autotuning on CUDA (no effect on CPU)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def timeout_s() -> float:
    """How long a collective waits for the other processes (``LAYERSYNC_DIST_TIMEOUT`` seconds, default 600)
    before it fails: a dead or stuck process then stops the run instead of hanging it."""
    value = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"{TIMEOUT_ENV}={value!r}: expected a number of seconds > 0")
    return seconds


def setup(preference: str = "auto") -> Dist:
    """Join the torchrun process group if there is one."""
    device = pick_device(preference)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(0, 1, 0, device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s()))
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, device)


def wrap(model: torch.nn.Module, env: Dist, capture: bool) -> torch.nn.Module:
    """DDP as PyTorch's recipe for capturing a backward under DDP asks (``capture``: the step
    becomes a CUDA graph): built on a side stream, static graph. Buffers (the frozen position
    embedding) are the same on every rank, so they are not broadcast at every step; gradients
    live in DDP's buckets, saving a copy."""
    ids = [env.device.index] if env.device.type == "cuda" else None

    def build():
        return DistributedDataParallel(model, device_ids=ids, static_graph=True, broadcast_buffers=False,
                                       gradient_as_bucket_view=True)

    if not capture:
        return build()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        ddp = build()
    torch.cuda.current_stream().wait_stream(side)
    return ddp


def shard(model: torch.nn.Module) -> None:
    """FSDP2, in place: each block (``model.blocks``, where there is one) is a unit of its own, the rest
    goes with the root. Parameters become DTensors sharded over all processes; gradients are
    averaged over them like DDP's."""
    from torch.distributed.fsdp import fully_shard

    for block in getattr(model, "blocks", ()):
        fully_shard(block)
    fully_shard(model)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor; a plain tensor as it is (DTensors are told by ``to_local``: importing
    their module costs every command half a second)."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def full_state_dict(model: torch.nn.Module) -> dict:
    """A sharded model's whole state dict on process 0's CPU (empty elsewhere): a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def mean_across(values: dict[str, torch.Tensor], env: Dist) -> dict[str, float]:
    """Average scalar tensors over ranks and read them to the host (logging only)."""
    stacked = torch.stack([v.float() for v in values.values()])
    if env.world > 1:
        dist.all_reduce(stacked)
        stacked /= env.world
    return dict(zip(values, stacked.tolist()))


def max_across(values: torch.Tensor, env: Dist) -> list[float]:
    """The element-wise maximum of a small tensor over ranks, read to the host (a sync: only at
    log and checkpoint steps)."""
    values = values.detach().float().clone()
    if env.world > 1:
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values.tolist()


_control_groups: dict = {}


def _control_group():
    """A gloo group on the CPU for control flags, so agreeing on them never waits for the GPU
    (``None``: the default group, already gloo)."""
    if dist.get_backend() == "gloo":
        return None
    key = id(dist.group.WORLD)
    if key not in _control_groups:  # every rank gets here at the same step: new_group is collective
        _control_groups[key] = dist.new_group(backend="gloo")
    return _control_groups[key]


def agree_stop(signum: int, env: Dist) -> int:
    """The largest signal number caught on any rank (0: none), known to every rank.

    A signal reaches the ranks at different times (or only one of them): each rank calls
    this at the same log steps, outside the captured step, so all of them stop,
    save and exit together. A CPU all-reduce of one number, on its own gloo group under
    NCCL: it costs a round trip between hosts, not a sync with the GPU."""
    if env.world == 1:
        return signum
    flag = torch.tensor([signum], dtype=torch.int64)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_control_group())
    return int(flag.item())


@contextmanager
def writer_lock(folder: Path, what: str, env: Dist) -> Iterator[None]:
    """``files.folder_lock`` on process 0 for the block (the other processes write under it); a
    collective: process 0's refusal is raised on every rank, so none waits for a rank that stopped."""
    with ExitStack() as held:
        refused = None
        if env.main:
            try:
                held.enter_context(folder_lock(folder, what))
            except ConfigError as exc:
                refused = exc
        if env.world > 1:
            message = [None if refused is None else str(refused)]
            dist.broadcast_object_list(message, src=0, group=_control_group())
            if message[0] is not None and refused is None:
                refused = ConfigError(message[0])
        if refused is not None:
            raise refused
        yield


def barrier(env: Dist) -> None:
    if env.world > 1:
        dist.barrier()


def teardown(env: Dist) -> None:
    if env.world > 1 and dist.is_initialized():
        _control_groups.clear()
        dist.destroy_process_group()
