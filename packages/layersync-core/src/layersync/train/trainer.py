"""The training loop: data, the step function, logging, checkpoints, samples."""

from __future__ import annotations

import itertools
import json
import logging
import math
import signal
import time
from pathlib import Path

import torch
from tqdm import tqdm

from layersync import build, trees
from layersync.config import DEFAULTS, dump, flatten
from layersync.errors import ConfigError, DataError, Interrupted, NonFiniteError
from layersync.files import atomic, discard_unfinished
from layersync.interfaces import sample_info
from layersync.plugins import Registry, registry as default_registry
from layersync.sampling import derive_seed, seeded_samples
from layersync import checkpoint, distributed
from layersync.train import loggers
from layersync.train.data import make_loader
from layersync.train.ema import EMA
from layersync.train.modes import CAPTURED, MODE_MEANINGS, make_step, resolve_mode
from layersync.train.optim import LRSchedule, build_optimizer, load_optimizer_state, set_lr
from layersync.train.step import FIRST, NONFINITE_TERMS, SEEN, SKIPPED, TrainStep

log = logging.getLogger("layersync")

# Keys that may change when a run is resumed; anything else must match.
RESUMABLE_KEYS = {
    "train.steps", "train.log_every", "train.ckpt_every", "train.sample_every", "train.first_sample",
    "train.num_workers", "train.device", "train.step_mode", "train.grad_accum", "train.on_nonfinite", "train.keep",
    "train.keep_every", "train.loggers",
}
# What a checkpoint must hold to be resumed from (``restore``); one without is set aside as corrupt.
RESTORE_KEYS = ("step", "config", "model", "ema", "optimizer", "step_generator", "torch_rng")
# The first line of config.yaml, written with each checkpoint: marks a folder whose run really started
# (an older version wrote config.yaml before the first step, so one without it blocks nothing).
STARTED = "# the config of the run in this folder, rewritten with each checkpoint\n"
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "samples", "config.yaml", "curves.png", "tensorboard", "wandb")
ON_NONFINITE = ("stop", "skip")
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


def preview_conditions(dataset, num_classes: int, n: int, device):
    """(cond, mask or None) of n preview samples on ``device``: the data set's own choice (``preview(n)``),
    else labels cycling through the classes."""
    if hasattr(dataset, "preview"):
        cond, mask = dataset.preview(n)
        return trees.to_device(cond, device), None if mask is None else mask.to(device)
    return torch.arange(n, device=device) % max(num_classes, 1), None


class Trainer:
    def __init__(self, config: dict, out_dir: Path, registry: Registry | None = None, restart: bool = False):
        self.config, self.out, self.restart = config, Path(out_dir), restart
        self.registry = registry or default_registry()
        train = config["train"]
        if str(train["device"]).startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"train.device={train['device']}: this machine has no CUDA device (use auto or cpu)")
        loggers.check(train["loggers"])  # on every rank, before any of them starts
        self.env = distributed.setup(train["device"])
        self.autocast_dtype = resolve_precision(train["precision"], self.env.device)
        self.parallel = train["parallel"]
        # fsdp: asking for a captured mode is refused by the schema, auto picks compile
        self.step_mode, self.step_mode_reason = resolve_mode(train["step_mode"], self.env.device, self.env.world,
                                                             sharded=self.parallel == "fsdp")
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
        batch, items = train["batch_size"], len(self.dataset)
        if batch > items:
            raise ConfigError(f"train.batch_size={batch}: expected at most the data set's {items} items")
        if batch % self.env.world:
            raise ConfigError(f"train.batch_size={batch}: expected a multiple of the {self.env.world} processes")
        if (batch // self.env.world) % train["grad_accum"]:
            raise ConfigError(f"train.grad_accum={train['grad_accum']}: expected a divisor of the batch of "
                              f"{batch // self.env.world} each process trains on (train.batch_size={batch})")

        torch.manual_seed(config["seed"])  # same initial weights on every rank
        self.model = build.backbone(self.registry, config, self.input_shape, self.num_classes).to(self.env.device)
        self.layersync = build.layersync(config, self.model.depth)
        self.objective = build.objective(config)
        self.sampler = build.sampler(config, self.objective)
        self.ema = EMA(self.model, train["ema_decay"])
        # fsdp: the model and its EMA copy sharded alike (the EMA update stays local), before the optimizer
        # takes the sharded parameters
        self.sharded = self.parallel == "fsdp" and self.env.world > 1
        if self.sharded:
            distributed.shard(self.model)
            distributed.shard(self.ema.model)
            self.ema.track(self.model)
        self.optimizer = build_optimizer(self.model.parameters(), config["optim"], self.env.device,
                                         capturable=self.step_mode in CAPTURED)
        self.schedule = LRSchedule(config["optim"]["lr"], train["lr_schedule"], train["warmup_steps"], train["steps"])
        self.generator = torch.Generator(self.env.device).manual_seed(config["seed"] + 1)
        self.step = 0
        self.net = self.model
        if self.env.world > 1 and not self.sharded:
            self.net = distributed.wrap(self.model, self.env, capture=self.step_mode in CAPTURED)

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

    def sharded_tensors(self) -> dict:
        """What a DCP checkpoint holds as shards: this process's part of the weights, EMA weights and AdamW state
        (keyed by parameter index, as ``optimizer.state_dict()`` numbers them)."""
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": {str(i): s for i, s in self.optimizer.state_dict()["state"].items()}}

    def load_sharded(self, path: Path) -> dict:
        """Read a DCP checkpoint's shards into this run's layout (any number of processes): AdamW's state is
        allocated as the checkpoint's metadata says, sharded like its parameter."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        optimizer = {}
        for key, (size, dtype) in checkpoint.layout(path, "optimizer").items():
            index, name = key.split(".")
            param = params[int(index)]
            like = torch.zeros_like(param) if name != "step" and size == param.shape else torch.zeros(size, dtype=dtype)
            optimizer.setdefault(index, {})[name] = like
        return checkpoint.load_sharded(path, {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                                              "optimizer": optimizer})

    def restore(self, state: dict, path: Path | None = None) -> None:
        """Resume from a checkpoint's ``state``; a DCP folder's (at ``path``) holds no tensors in it: they are
        read here."""
        if checkpoint.SHARDED in state:
            tensors = self.load_sharded(path)
            self.model.load_state_dict(tensors["model"])
            self.ema.load_state_dict(tensors["ema"])
            optimizer = {int(i): s for i, s in tensors["optimizer"].items()}
            load_optimizer_state(self.optimizer, {"state": optimizer, "param_groups": state["optimizer_groups"]})
        else:
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
        """Check that the run folder (held by ``fit``) holds this same run (the config in its newest readable
        checkpoint) and resume it. Outputs without a checkpoint: refused, unless ``restart``."""
        if self.restart:
            if self.env.main:
                self._move_outputs_aside()
            distributed.barrier(self.env)
        def resume(path, state):
            check_resumable(state["config"], self.config, self.out)
            self.restore(state, path)

        found = checkpoint.load_latest(self.out / "checkpoints", RESTORE_KEYS, self.env.device, self.env.main,
                                       then=resume, whole=False)
        if found is not None:
            path, state = found
            if self.env.main:
                log.info("resuming %s from step %d (%s)", self.out, self.step, path.name)
        elif leftovers := self._leftovers():
            raise ConfigError(f"{self.out} holds the outputs of a run ({', '.join(leftovers)}) but no checkpoint to "
                              "resume from: choose a new --out, or start over with --restart")
        if self.env.main:
            discard_unfinished(self.out / "checkpoints")
            self._truncate_metrics()
        distributed.barrier(self.env)

    def _leftovers(self) -> list[str]:
        """What a started run left in the folder, besides readable checkpoints."""
        metrics, samples, config = (self.out / name for name in ("metrics.jsonl", "samples", "config.yaml"))
        found = {
            "metrics.jsonl": metrics.exists() and metrics.read_text(errors="replace").strip(),
            "samples/": samples.is_dir() and any(samples.iterdir()),
            "config.yaml": config.exists() and config.read_text(errors="replace").startswith(STARTED),
            "checkpoints/*.corrupt": any((self.out / "checkpoints").glob("*.corrupt")),
        }
        return [name for name, there in found.items() if there]

    def _move_outputs_aside(self) -> None:
        """``restart``: move the run's outputs into the first free ``previous_N/``."""
        outputs = [self.out / name for name in RUN_OUTPUTS if (self.out / name).exists()]
        if outputs:
            aside = next(p for n in itertools.count(1) if not (p := self.out / f"previous_{n}").exists())
            aside.mkdir()
            for path in outputs:
                path.rename(aside / path.name)
            log.info("--restart: moved %s into %s", ", ".join(p.name for p in outputs), aside)

    def _truncate_metrics(self) -> None:
        """Drop log lines written after the checkpoint we resume from, and a last line cut short (a full
        disk); a bad line elsewhere is a DataError."""
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        lines = [(n, line) for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if line.strip()]
        kept = []
        for n, line in lines:
            try:
                step = json.loads(line)["step"]
            except (ValueError, TypeError, KeyError):
                if n != lines[-1][0]:
                    raise DataError(f"{path} line {n} is not a metrics record ({line[:40]!r}): fix or delete "
                                    "the line") from None
                log.warning("%s: dropped line %d, a record cut short (%r)", path, n, line[:40])
                break
            if step <= self.step:
                kept.append(line)
        with atomic(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))

    # ---- outputs -----------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """``step_N.pt`` from process 0; with ``train.parallel=fsdp`` (a collective) ``step_N/``, DCP shards from
        every process and the rest in ``meta.pt``."""
        train = self.config["train"]
        if self.parallel == "fsdp":
            tensors = self.sharded_tensors()
            meta = {key: value for key, value in self.state().items() if key not in ("model", "ema", "optimizer")}
            meta["optimizer_groups"] = self.optimizer.state_dict()["param_groups"]
            checkpoint.save_sharded(tensors, meta, self.out / "checkpoints", self.step, train["keep"], train["keep_every"])
        elif self.env.main:
            checkpoint.save(self.state(), self.out / "checkpoints", self.step, train["keep"], train["keep_every"])
        if self.env.main:
            with atomic(self.out / "config.yaml") as tmp:  # only now: a run that never saved leaves none
                tmp.write_text(STARTED + dump(self.config))

    @torch.no_grad()
    def save_samples(self) -> Path | None:
        ema = self.ema.model
        if self.sharded:  # a collective: gather the EMA weights into a whole model on process 0
            weights = distributed.full_state_dict(ema)
            if self.env.main:
                ema = build.backbone(self.registry, self.config, self.input_shape, self.num_classes)
                ema.load_state_dict(weights)
                ema = ema.to(self.env.device).eval()
        if not self.env.main:
            return None
        cond, mask = preview_conditions(self.dataset, self.num_classes, self.config["sample"]["num"], self.env.device)
        # the same samples at every step (per-sample CPU generators, on any device), the ones that
        # `layersync-sample --ckpt RUN --seed SEED` draws from the EMA weights
        with tqdm(total=self.sampler.evaluations(), desc=f"preview at step {self.step}", unit="eval", leave=False,
                  dynamic_ncols=True) as bar:  # one tick per model evaluation (dopri5: no total)
            z = seeded_samples(self.sampler, ema, self.input_shape, cond, self.config["seed"], mask=mask,
                               progress=bar.update)
        x = self.tokenizer.decode(z).float().cpu()
        info = {**self.sample_info, **({} if mask is None else {"lengths": mask.sum(-1).tolist()})}
        return self.modality.save_samples(x, self.out / "samples" / f"step_{self.step:07d}", info)

    # ---- non-finite values ------------------------------------------------------------
    def check_health(self, step: TrainStep, since: int) -> tuple[int, list[str]]:
        """Read the flags the step kept on the device since step ``since`` (a sync, and a collective:
        every rank calls it at the same steps) and zero them. ``train.on_nonfinite=stop``: raise
        NonFiniteError naming the first bad step and the terms. Else (skip, nothing to stop for):
        (the number of skipped steps, the non-finite terms)."""
        h = step.read_health()
        h[FIRST] = torch.where(h[FIRST] > 0, h[SEEN] + 1 - h[FIRST], 0)  # so that MAX over ranks picks the earliest
        h = distributed.max_across(h, self.env)
        terms = [name for name, flag in zip(NONFINITE_TERMS, h[:SKIPPED]) if flag]
        if terms and self.on_nonfinite == "stop":
            first = since + int(h[SEEN] + 1 - h[FIRST])
            span = f" (flags read over steps {since + 1}-{self.step})" if self.step > since + 1 else ""
            raise NonFiniteError(
                f"non-finite {', '.join(terms)} at step {first}{span}: training stopped, no checkpoint written "
                "since, the last good checkpoint stays the resume point (lower optim.lr, check the data, or resume "
                "with --set train.on_nonfinite=skip)"
            )
        return int(h[SKIPPED]), terms

    def check_weights(self, what: str) -> None:
        """Before ``what`` (a checkpoint, samples): the weights and EMA weights must be finite (NaN can come
        without a non-finite gradient, e.g. Adam with eps=0). A sync, only at checkpoint and sample steps."""
        tensors = [distributed.local(t) for t in (*self.model.parameters(), *self.ema.model.parameters())
                   if t.is_floating_point()]
        bad = (~torch.isfinite(torch.stack(torch._foreach_norm(tensors))).all()).float().reshape(1)
        if distributed.max_across(bad, self.env)[0]:
            raise NonFiniteError(f"the weights are non-finite (NaN or inf) at step {self.step}: no {what} written, "
                                 "the last good checkpoint stays the resume point")

    # ---- loop --------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to ``train.steps``, holding the run folder for the whole run: a second command writing to
        it is refused."""
        with distributed.writer_lock(self.out, "run folder", self.env):
            return self._train()

    def _train(self) -> dict:
        cfg = self.config["train"]
        self.on_nonfinite = cfg.get("on_nonfinite", "stop")
        if self.on_nonfinite not in ON_NONFINITE:
            raise ConfigError(f"train.on_nonfinite must be stop or skip, got {self.on_nonfinite!r}")
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
            skip_nonfinite=self.on_nonfinite == "skip",
            grad_accum=cfg["grad_accum"],
        )
        # DDP needs more eager iterations before capture (its buckets settle on the first ones).
        step_fn = make_step(step, self.step_mode, warmup=11 if self.env.world > 1 else 3)
        if self.env.main:
            log.info("step mode: %s (%s; %s), precision: %s", self.step_mode, MODE_MEANINGS[self.step_mode],
                     self.step_mode_reason, self.autocast_dtype or "fp32")
        total = cfg["steps"]
        bar = tqdm(total=total, initial=self.step, disable=not self.env.main, unit="step", dynamic_ncols=True)
        writers = loggers.Loggers(cfg["loggers"], self.out, self.config, self.step) if self.env.main else None
        last = {}
        tick, tick_step, started = time.perf_counter(), self.step, time.perf_counter()
        batches = iter(loader)
        interrupted = []
        checked = self.step  # the step of the last health read
        skipped, nonfinite = 0, []  # since the last log line (skip mode): steps skipped, the terms that went non-finite
        handlers = {sig: signal.signal(sig, lambda s, f: interrupted.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.step < total:
                # stop between steps, never inside one, and on every rank at the same step (the signal may
                # reach only one): under DDP the ranks agree at log steps, one all-reduce per log interval
                # rather than per step; SIGTERM wins over SIGINT, so a pre-emption exits 143 everywhere
                agree = self.env.world == 1 or self.step % cfg["log_every"] == 0
                signum = distributed.agree_stop(max(interrupted, default=0), self.env) if agree else 0
                if signum:
                    self.check_health(step, checked)  # a non-finite state is never saved
                    self.check_weights("checkpoint")
                    self.save_checkpoint()
                    distributed.barrier(self.env)  # no rank exits before the checkpoint is written
                    raise Interrupted(f"stopped at step {self.step} by {signal.Signals(signum).name}; checkpoint "
                                      "saved, run again to resume", signum)
                x, cond, *mask = (trees.to_device(part, self.env.device, non_blocking=True) for part in next(batches))
                if not self.encoded:
                    x = self.tokenizer.encode(x)
                lr = self.schedule(self.step)
                set_lr(self.optimizer, lr)
                out = step_fn(x, cond, *mask)  # a data set may yield (x, cond, mask)
                self.step += 1
                bar.update(1)
                log_now = self.step % cfg["log_every"] == 0 or self.step == total
                ckpt_now = self.step % cfg["ckpt_every"] == 0 or self.step == total
                samples_now = self.step % cfg["sample_every"] == 0 or self.step in (cfg["first_sample"], total)
                if log_now or ckpt_now or samples_now:  # the only host reads of the non-finite flags
                    newly_skipped, terms = self.check_health(step, checked)
                    checked, skipped = self.step, skipped + newly_skipped
                    nonfinite += [term for term in terms if term not in nonfinite]
                if log_now:
                    last = distributed.mean_across(out, self.env)
                    now = time.perf_counter()
                    rate = (self.step - tick_step) * cfg["batch_size"] / (now - tick)
                    tick, tick_step = now, self.step
                    # JSON has no NaN: a non-finite value is written as null, and "nonfinite" names the terms
                    record = {"step": self.step, **{k: v if math.isfinite(v) else None for k, v in last.items()},
                              "lr": lr, "samples_per_s": rate, "elapsed_s": now - started}
                    if self.on_nonfinite == "skip":
                        record["skipped_steps"] = skipped  # since the previous line
                    if nonfinite:
                        record["nonfinite"] = nonfinite
                    skipped, nonfinite = 0, []
                    if writers:
                        writers.log(record)
                    bar.set_postfix({"loss": f"{last['loss']:.4f}", "sync": f"{last['layersync_loss']:.3f}",
                                     "samples/s": f"{rate:.1f}"})
                if ckpt_now:
                    self.check_weights("checkpoint")
                    self.save_checkpoint()
                if samples_now:
                    self.check_weights("samples")
                    preview = self.save_samples()
                    if writers:
                        writers.samples(self.step, preview)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            bar.close()
            if writers:
                writers.close()
        distributed.barrier(self.env)
        return {"step": self.step, **last}
