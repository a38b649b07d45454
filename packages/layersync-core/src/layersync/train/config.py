"""The ``train`` section: the run's length, batch, schedule, step mode, checkpoints and loggers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from layersync.config import setting
from layersync.errors import ConfigError
from layersync.train.loggers import LoggerName, default_loggers
from layersync.train.modes import CAPTURED, StepMode
from layersync.train.optim import Schedule

Precision = Literal["auto", "fp32", "bf16"]  # auto: bf16 on CUDA, fp32 elsewhere
OnNonfinite = Literal["stop", "skip"]
Parallel = Literal["ddp", "fsdp"]


@dataclass
class TrainConfig:
    steps: int = setting(400_000, "total training steps", low=1)
    batch_size: int = setting(256, "the global batch (all processes together)", low=1)
    lr_schedule: Schedule = setting("constant", "the learning-rate schedule after warm-up")
    warmup_steps: int = setting(0, "linear learning-rate warm-up steps", low=0)
    ema_decay: float = setting(0.9999, "EMA decay per step", low=0, high=1)
    precision: Precision = setting("auto", "autocast dtype; auto: bf16 on CUDA, fp32 elsewhere")
    step_mode: StepMode = setting("auto", "how the step runs: eager, compile, graph (compiled and captured as a "
                                          "CUDA graph) or graph-eager (captured, not compiled); auto: graph on one "
                                          "GPU, compile on several, eager on CPU")
    grad_accum: int = setting(1, "micro-batches per step: the batch's gradients summed over this many passes "
                                 "(same losses and gradients, less memory)", low=1)
    cfg_dropout: float = setting(0.1, "probability of dropping the condition (for CFG)", low=0, high=1)
    log_every: int = setting(100, "log metrics every N steps", low=1)
    ckpt_every: int = setting(10_000, "write a checkpoint every N steps", low=1)
    keep: int = setting(0, "keep the last N checkpoints; 0: all of them (nothing is deleted unasked)", low=0)
    keep_every: int = setting(0, "with keep > 0, also keep the checkpoints of every Mth step; 0: none", low=0)
    sample_every: int = setting(10_000, "write preview samples every N steps", low=1)
    first_sample: int = setting(50, "also write previews at this early step, to look at before sample_every; "
                                    "0: none", low=0)
    num_workers: int = setting(4, "data loader processes; 0: load in the main process", low=0)
    device: str = setting("auto", "the device to train on; auto: cuda if there is one, else cpu",
                          rule=lambda name: re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name) is not None,
                          text="auto, cpu, cuda, cuda:N or mps")
    on_nonfinite: OnNonfinite = setting("stop", "NaN/inf in a loss or the gradients: stop (exit 3) or skip the step")
    parallel: Parallel = setting("ddp", "under torchrun: ddp replicates the weights, fsdp shards them (FSDP2) and "
                                        "writes sharded (DCP) checkpoints; fixed for a run")
    loggers: list[LoggerName] = setting(default_loggers, "where the metrics go: metrics.jsonl (and curves.png), "
                                                         "TensorBoard (where it is installed), wandb")

    def check(self) -> None:
        if self.parallel == "fsdp" and self.step_mode in CAPTURED:
            raise ConfigError(f"train.step_mode={self.step_mode}: not with train.parallel=fsdp "
                              "(use auto, eager or compile)")
        if self.parallel == "fsdp" and self.on_nonfinite == "skip":
            raise ConfigError("train.on_nonfinite=skip: not with train.parallel=fsdp (use stop)")
