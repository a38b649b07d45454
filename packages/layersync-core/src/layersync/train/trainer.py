"""The training loop: data, the step function, logging, checkpoints, samples."""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path

import torch
from tqdm import tqdm

from layersync import build, trees
from layersync.config import DEFAULTS, dump, flatten, read_yaml
from layersync.errors import ConfigError
from layersync.interfaces import sample_info
from layersync.plugins import Registry, registry as default_registry
from layersync.sampling import derive_seed, seeded_samples
from layersync.train import checkpoint, distributed
from layersync.train.data import make_loader
from layersync.train.ema import EMA
from layersync.train.modes import make_step, resolve_mode
from layersync.train.optim import LRSchedule, build_optimizer, load_optimizer_state, set_lr
from layersync.train.step import TrainStep

log = logging.getLogger("layersync")

# Keys that may change when a run is resumed; anything else must match.
RESUMABLE_KEYS = {
    "train.steps", "train.log_every", "train.ckpt_every", "train.sample_every", "train.num_workers", "train.device",
    "train.step_mode",
}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def resolve_precision(name: str, device: torch.device):
    """``auto`` is bf16 autocast on CUDA and fp32 elsewhere."""
    if name == "auto":
        name = "bf16" if device.type == "cuda" else "fp32"
    if name not in PRECISIONS:
        raise ConfigError(f"train.precision must be auto, fp32 or bf16, got {name!r}")
    return PRECISIONS[name]


def fast_defaults(device: torch.device) -> None:
    """TF32 matmuls and cuDNN autotuning on CUDA (no effect on CPU)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def check_resumable(saved: dict, config: dict, out_dir: Path) -> None:
    old, new = {**flatten(DEFAULTS), **flatten(saved)}, flatten(config)  # keys added since: their defaults
    for key in sorted(set(old) | set(new)):
        if key in RESUMABLE_KEYS or key.startswith("sample."):
            continue
        if old.get(key) != new.get(key):
            raise ConfigError(
                f"{out_dir} holds a run with {key}={old.get(key)!r}, this command asks for {new.get(key)!r}: "
                "resume with the same settings or choose a new --out"
            )


class Trainer:
    def __init__(self, config: dict, out_dir: Path, registry: Registry | None = None):
        self.config, self.out = config, Path(out_dir)
        self.registry = registry or default_registry()
        train = config["train"]
        self.env = distributed.setup(train["device"])
        self.autocast_dtype = resolve_precision(train["precision"], self.env.device)
        self.step_mode = resolve_mode(train["step_mode"], self.env.device, self.env.world)
        fast_defaults(self.env.device)
        self.modality = build.modality(self.registry, config)
        self.dataset = build.dataset(self.registry, config)
        self.tokenizer = build.tokenizer(self.registry, config)
        build.check_compatible(self.dataset, self.tokenizer)
        self.sample_info = sample_info(self.tokenizer, self.dataset)
        # A dataset of cached latents is already in model space and says so with `encoded = True`.
        self.encoded = bool(getattr(self.dataset, "encoded", False))
        shape = tuple(self.dataset.sample_shape)
        self.input_shape = shape if self.encoded else tuple(self.tokenizer.latent_shape(shape))
        self.num_classes = int(getattr(self.dataset, "num_classes", 0))

        torch.manual_seed(config["seed"])  # same initial weights on every rank
        self.model = build.backbone(self.registry, config, self.input_shape, self.num_classes).to(self.env.device)
        self.layersync = build.layersync(config, self.model.depth)
        self.objective = build.objective(config)
        self.sampler = build.sampler(config, self.objective)
        self.optimizer = build_optimizer(self.model.parameters(), config["optim"], self.env.device,
                                         capturable=self.step_mode == "graph")
        self.schedule = LRSchedule(config["optim"]["lr"], train["lr_schedule"], train["warmup_steps"], train["steps"])
        self.ema = EMA(self.model, train["ema_decay"])
        self.generator = torch.Generator(self.env.device).manual_seed(config["seed"] + 1)
        self.step = 0
        self.net = self.model
        if self.env.world > 1:
            self.net = distributed.wrap(self.model, self.env, capture=self.step_mode == "graph")

    # ---- state -------------------------------------------------------------------
    def state(self) -> dict:
        state = {
            "step": self.step,
            "config": self.config,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "sample_info": self.sample_info,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step_generator": self.generator.get_state(),
            "step_generator_device": self.generator.device.type,
            "torch_rng": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def restore(self, path: Path) -> None:
        state = checkpoint.load(path, map_location=self.env.device)
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.step = int(state["step"])
        saved_on = state.get("step_generator_device", "cpu")
        if saved_on == self.generator.device.type:
            self.generator.set_state(state["step_generator"].cpu())
        else:  # a CPU generator's state does not fit a CUDA one (nor the other way round)
            self.generator.manual_seed(derive_seed(self.config["seed"], self.step))
            log.info("the step generator was saved on %s and this run uses %s: reseeded from (seed, step %d); "
                     "noise from here on differs from the saved run's", saved_on, self.generator.device.type, self.step)
        torch.set_rng_state(state["torch_rng"].cpu())
        cuda_rng = state.get("cuda_rng", [])
        if torch.cuda.is_available() and len(cuda_rng) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_rng])

    def prepare_out_dir(self) -> None:
        """Create the run folder, or check that it holds this same run and resume it."""
        saved_config = self.out / "config.yaml"
        last = checkpoint.latest(self.out / "checkpoints")
        if saved_config.exists() and last is not None:  # without a checkpoint there is nothing to keep consistent
            check_resumable(read_yaml(saved_config), self.config, self.out)
        if last is not None:
            self.restore(last)
            if self.env.main:
                log.info("resuming %s from step %d", self.out, self.step)
        if self.env.main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(dump(self.config))
            self._truncate_metrics()
        distributed.barrier(self.env)

    def _truncate_metrics(self) -> None:
        """Drop log lines written after the checkpoint we resume from."""
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= self.step]
        path.write_text("".join(line + "\n" for line in kept))

    # ---- outputs -----------------------------------------------------------------
    def save_checkpoint(self) -> None:
        if self.env.main:
            checkpoint.save(self.state(), self.out / "checkpoints", self.step)

    def preview_conditions(self, n: int):
        """(cond, mask or None) of the preview samples: the data set's own choice (``preview(n)``),
        else labels cycling through the classes."""
        if hasattr(self.dataset, "preview"):
            cond, mask = self.dataset.preview(n)
            return trees.to_device(cond, self.env.device), None if mask is None else mask.to(self.env.device)
        return torch.arange(n, device=self.env.device) % max(self.num_classes, 1), None

    @torch.no_grad()
    def save_samples(self) -> Path | None:
        if not self.env.main:
            return None
        cond, mask = self.preview_conditions(self.config["sample"]["num"])
        # the same samples at every step (per-sample CPU generators, on any device), the ones that
        # `layersync-sample --ckpt RUN --seed SEED` draws from the EMA weights
        z = seeded_samples(self.sampler, self.ema.model, self.input_shape, cond, self.config["seed"], mask=mask)
        x = self.tokenizer.decode(z).float().cpu()
        info = {**self.sample_info, **({} if mask is None else {"lengths": mask.sum(-1).tolist()})}
        return self.modality.save_samples(x, self.out / "samples" / f"step_{self.step:07d}", info)

    # ---- loop --------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.config["train"]
        self.prepare_out_dir()
        loader, _ = make_loader(
            self.dataset,
            cfg["batch_size"],
            self.env.rank,
            self.env.world,
            self.config["seed"],
            self.step,
            cfg["num_workers"],
            pin_memory=self.env.device.type == "cuda",
        )
        step = TrainStep(
            self.net,
            self.objective,
            self.layersync,
            self.optimizer,
            self.ema,
            grad_clip=self.config["optim"]["grad_clip"],
            autocast_dtype=self.autocast_dtype,
            cfg_dropout=cfg["cfg_dropout"],  # labels or vector conditions (text); unconditional: drop_cond is a no-op
            generator=self.generator,
            rank=self.env.rank,
            world=self.env.world,
        )
        # DDP needs more eager iterations before capture (its buckets settle on the first ones).
        step_fn = make_step(step, self.step_mode, warmup=11 if self.env.world > 1 else 3)
        if self.env.main:
            log.info("step mode: %s, precision: %s", self.step_mode, self.autocast_dtype or "fp32")
        total = cfg["steps"]
        bar = tqdm(total=total, initial=self.step, disable=not self.env.main, unit="step", dynamic_ncols=True)
        metrics = open(self.out / "metrics.jsonl", "a") if self.env.main else None
        last = {}
        tick, tick_step, started = time.perf_counter(), self.step, time.perf_counter()
        batches = iter(loader)
        interrupted = []
        handlers = {sig: signal.signal(sig, lambda s, f: interrupted.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.step < total:
                if interrupted:  # stop between steps, never inside one
                    self.save_checkpoint()
                    raise KeyboardInterrupt(f"stopped at step {self.step}; checkpoint saved, run again to resume")
                x, cond, *mask = (trees.to_device(part, self.env.device, non_blocking=True) for part in next(batches))
                if not self.encoded:
                    x = self.tokenizer.encode(x)
                lr = self.schedule(self.step)
                set_lr(self.optimizer, lr)
                out = step_fn(x, cond, *mask)  # a data set may yield (x, cond, mask)
                self.step += 1
                bar.update(1)
                if self.step % cfg["log_every"] == 0 or self.step == total:
                    last = distributed.mean_across(out, self.env)
                    now = time.perf_counter()
                    rate = (self.step - tick_step) * cfg["batch_size"] / (now - tick)
                    tick, tick_step = now, self.step
                    record = {"step": self.step, **last, "lr": lr,
                              "samples_per_s": rate, "elapsed_s": now - started}
                    if metrics:
                        metrics.write(json.dumps(record) + "\n")
                        metrics.flush()
                    bar.set_postfix(loss=f"{last['loss']:.4f}", sync=f"{last['layersync_loss']:.3f}")
                if self.step % cfg["ckpt_every"] == 0 or self.step == total:
                    self.save_checkpoint()
                if self.step % cfg["sample_every"] == 0 or self.step == total:
                    self.save_samples()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            bar.close()
            if metrics:
                metrics.close()
        distributed.barrier(self.env)
        return {"step": self.step, **last}
