"""The training loop: data, the step function, logging, checkpoints, samples."""

from __future__ import annotations

import logging
import math
import signal
import time
from pathlib import Path

import torch
from tqdm import tqdm

from layersync import build, trees
from layersync.errors import ConfigError, Interrupted, NonFiniteError
from layersync.interfaces import Preview, sample_info, save_samples
from layersync.pipeline import Pipeline, preview_conditions
from layersync.plugins import Registry, registry as default_registry
from layersync import checkpoint, distributed
from layersync.train import loggers, run_folder
from layersync.train.data import make_loader
from layersync.train.ema import EMA
from layersync.train.modes import CAPTURED, MODE_MEANINGS, make_step, resolve_mode
from layersync.train.optim import LRSchedule, build_optimizer, set_lr
from layersync.train.step import FIRST, NONFINITE_TERMS, SEEN, SKIPPED, TrainStep

log = logging.getLogger("layersync")


class Trainer:
    def __init__(self, config: dict, out_dir: Path, registry: Registry | None = None, restart: bool = False):
        self.config, self.out, self.restart = config, Path(out_dir), restart
        self.registry = registry or default_registry()
        train = config["train"]
        if str(train["device"]).startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"train.device={train['device']}: this machine has no CUDA device (use auto or cpu)")
        loggers.check(train["loggers"])  # on every rank, before any of them starts
        self.env = distributed.setup(train["device"])
        bf16 = train["precision"] == "bf16" or train["precision"] == "auto" and self.env.device.type == "cuda"
        self.autocast_dtype = torch.bfloat16 if bf16 else None  # auto: bf16 autocast on CUDA, fp32 elsewhere
        self.parallel, self.on_nonfinite = train["parallel"], train["on_nonfinite"]
        # fsdp: asking for a captured mode is refused by the config check, auto picks compile
        self.step_mode, self.step_mode_reason = resolve_mode(train["step_mode"], self.env.device, self.env.world,
                                                             sharded=self.parallel == "fsdp")
        distributed.fast_defaults(self.env.device)
        self.modality = build.modality(self.registry, config)
        self.dataset = build.dataset(self.registry, config)
        self.tokenizer = build.tokenizer(self.registry, config)
        build.check_compatible(self.dataset, self.tokenizer)
        self.sample_info = sample_info(self.tokenizer, self.dataset)
        self.encoded = bool(getattr(self.dataset, "encoded", False))  # cached latents: not encoded again
        self.input_shape, self.num_classes = build.model_input(self.dataset, self.tokenizer)
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
        self.step, self.net = 0, self.model
        if self.env.world > 1 and not self.sharded:
            self.net = distributed.wrap(self.model, self.env, capture=self.step_mode in CAPTURED)

    # ---- outputs -----------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """``step_N.pt`` from process 0; with ``train.parallel=fsdp`` (a collective) ``step_N/``, DCP shards from
        every process and the rest in ``meta.pt``."""
        train, fsdp = self.config["train"], self.parallel == "fsdp"
        if fsdp or self.env.main:
            meta = {"step": self.step, "config": self.config, "input_shape": list(self.input_shape),
                    "num_classes": self.num_classes, "sample_info": self.sample_info}
            state = checkpoint.training_state(meta, self.model, self.ema, self.optimizer, self.generator)
            checkpoint.save_training(state, self.out / "checkpoints", fsdp, train["keep"], train["keep_every"])
        if self.env.main:
            run_folder.mark_started(self.out, self.config)

    @torch.no_grad()
    def save_samples(self) -> Preview | None:
        ema = self.ema.model
        if self.sharded:  # a collective: gather the EMA weights into a whole model on process 0
            weights = distributed.full_state_dict(ema)
            if self.env.main:
                ema = build.backbone(self.registry, self.config, self.input_shape, self.num_classes)
                ema.load_state_dict(weights)
                ema = ema.to(self.env.device).eval()
        if not self.env.main:
            return None
        pipe = Pipeline(self.config, self.modality, ema, self.tokenizer, self.sampler, self.input_shape,
                        self.num_classes, self.sample_info, self.env.device)
        cond = preview_conditions(self.dataset, self.num_classes, self.config["sample"]["num"], self.env.device)
        # the same samples at every step (per-sample CPU generators, on any device), the ones that
        # `layersync-sample --ckpt RUN --seed SEED` draws from the EMA weights
        with tqdm(total=self.sampler.evaluations(), desc=f"preview at step {self.step}", unit="eval", leave=False,
                  dynamic_ncols=True) as bar:  # one tick per model evaluation (dopri5: no total)
            z = pipe.sample(cond, seed=self.config["seed"], progress=bar.update)
        # decoded as the sample command does, but a non-finite preview is written, not fatal: the weights were
        # checked just before, and the run goes on
        x = self.tokenizer.decode(z).float().cpu()
        return save_samples(self.modality, x, self.out / "samples" / f"step_{self.step:07d}", pipe.sample_info(cond))

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
        self.step = run_folder.resume(self.out, self.config, self.env, lambda state, path: checkpoint.restore_training(
            state, path, self.model, self.ema, self.optimizer, self.generator, self.config["seed"]), self.restart)
        loader, _ = make_loader(self.dataset, cfg["batch_size"], self.env.rank, self.env.world, self.config["seed"],
                                self.step, cfg["num_workers"], pin_memory=self.env.device.type == "cuda")
        step = TrainStep(self.net, self.objective, self.layersync, self.optimizer, self.ema,
                         grad_clip=self.config["optim"]["grad_clip"], autocast_dtype=self.autocast_dtype,
                         # labels or vector conditions (text); unconditional: drop_cond is a no-op
                         cfg_dropout=cfg["cfg_dropout"], generator=self.generator, rank=self.env.rank,
                         world=self.env.world, skip_nonfinite=self.on_nonfinite == "skip",
                         grad_accum=cfg["grad_accum"])
        # DDP needs more eager iterations before capture (its buckets settle on the first ones).
        step_fn = make_step(step, self.step_mode, warmup=11 if self.env.world > 1 else 3)
        if self.env.main:
            log.info("step mode: %s (%s; %s), precision: %s", self.step_mode, MODE_MEANINGS[self.step_mode],
                     self.step_mode_reason, self.autocast_dtype or "fp32")
        total = cfg["steps"]
        bar = self.bar = tqdm(total=total, initial=self.step, disable=not self.env.main, unit="step",
                              dynamic_ncols=True)
        self.writers = loggers.Loggers(cfg["loggers"], self.out, self.config, self.step) if self.env.main else None
        self.last, self.checked = {}, self.step  # the last logged values, the step of the last health read
        self.skipped, self.nonfinite = 0, []  # since the last log line (skip mode): steps skipped, non-finite terms
        self.tick, self.tick_step, self.started = time.perf_counter(), self.step, time.perf_counter()
        batches = iter(loader)
        interrupted = []
        handlers = {sig: signal.signal(sig, lambda s, f: interrupted.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.step < total:
                # stop between steps, never inside one, and on every rank at the same step (the signal may
                # reach only one): under DDP the ranks agree at log steps, one all-reduce per log interval
                # rather than per step; SIGTERM wins over SIGINT, so a pre-emption exits 143 everywhere
                agree = self.env.world == 1 or self.step % cfg["log_every"] == 0
                signum = distributed.agree_stop(max(interrupted, default=0), self.env) if agree else 0
                if signum:
                    self._stop(step, signum)
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
                if log_now or ckpt_now or samples_now:
                    self._after_step(step, out, lr, log_now, ckpt_now, samples_now)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            bar.close()
            if self.writers:
                self.writers.close()
        distributed.barrier(self.env)
        return {"step": self.step, **self.last}

    def _stop(self, step: TrainStep, signum: int) -> None:
        """A stop asked by a signal (on every rank at the same step): save a checkpoint, raise Interrupted."""
        self.check_health(step, self.checked)  # a non-finite state is never saved
        self.check_weights("checkpoint")
        self.save_checkpoint()
        distributed.barrier(self.env)  # no rank exits before the checkpoint is written
        raise Interrupted(f"stopped at step {self.step} by {signal.Signals(signum).name}; checkpoint "
                          "saved, run again to resume", signum)

    def _after_step(self, step: TrainStep, out: dict, lr: float, log_now: bool, ckpt_now: bool, samples_now: bool):
        """A step that logs, checkpoints or previews: the only host reads of the non-finite flags, then each."""
        newly_skipped, terms = self.check_health(step, self.checked)
        self.checked, self.skipped = self.step, self.skipped + newly_skipped
        self.nonfinite += [term for term in terms if term not in self.nonfinite]
        if log_now:
            self._log(out, lr)
        if ckpt_now:
            self.check_weights("checkpoint")
            self.save_checkpoint()
        if samples_now:
            self.check_weights("samples")
            preview = self.save_samples()
            if self.writers:
                self.writers.samples(self.step, preview)

    def _log(self, out: dict, lr: float) -> None:
        """A metrics record: the step's values averaged across ranks (a sync), to the loggers and the bar."""
        self.last = distributed.mean_across(out, self.env)
        now = time.perf_counter()
        rate = (self.step - self.tick_step) * self.config["train"]["batch_size"] / (now - self.tick)
        self.tick, self.tick_step = now, self.step
        # JSON has no NaN: a non-finite value is written as null, and "nonfinite" names the terms
        record = {"step": self.step, **{k: v if math.isfinite(v) else None for k, v in self.last.items()},
                  "lr": lr, "samples_per_s": rate, "elapsed_s": now - self.started}
        if self.on_nonfinite == "skip":
            record["skipped_steps"] = self.skipped  # since the previous line
        if self.nonfinite:
            record["nonfinite"] = self.nonfinite
        self.skipped, self.nonfinite = 0, []
        if self.writers:
            self.writers.log(record)
        self.bar.set_postfix({"loss": f"{self.last['loss']:.4f}", "sync": f"{self.last['layersync_loss']:.3f}",
                              "samples/s": f"{rate:.1f}"})
