"""What each key of the fixed config sections may hold: a type, a range or a set of choices.

``validate(config)`` checks every key of ``SCHEMA`` that the config holds and raises a
ConfigError naming the key, the value and what was expected, e.g.
``train.batch_size=abc: expected an integer >= 1``. The open sections (data, tokenizer,
model) are left to the factories that take their options. Checks that need built objects
(the batch against the data set's length, an image size against the patch, a CUDA device
that is not there) are made where those objects are built.

The choices repeat the constants of the code that reads each key (train/trainer.py
PRECISIONS, train/modes.py STEP_MODES, train/optim.py SCHEDULES, objective.py, paths.py,
sampling.py, train/loggers.py); tests/test_schema.py checks that they agree.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from numbers import Integral, Real

import yaml

from layersync.errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """One key's rule. ``kind``: int | float | str | bool | pair (two numbers) | pairs (LayerSync block pairs) |
    names (a list of ``choices``).

    ``low``/``high`` bound numbers (``open_low``/``open_high``: the bound itself is excluded);
    ``choices`` lists the allowed strings; ``pattern`` a regular expression a string must match;
    ``null``: None is allowed too.
    """

    kind: str
    meaning: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[str, ...] = ()
    pattern: str | None = None
    null: bool = False
    finite: bool = True  # False: inf and nan pass the type check (checked elsewhere)
    text: str | None = None  # what is expected, in words, where the rule cannot say it itself

    def expected(self) -> str:
        """What the rule asks for, in words: 'an integer >= 1', 'one of auto, fp32, bf16', ..."""
        if self.kind == "pairs":
            text = "a list of [student, teacher] block pairs with 1 <= student < teacher (or [] for off)"
        elif self.kind == "names":
            text = f"a list of names from {', '.join(self.choices)}"
        elif self.kind == "pair":
            text = f"a list of two numbers{self._range(' each')}"
            if self.meaning.startswith("[lo, hi]"):
                text += " with lo <= hi"
        elif self.choices:
            text = f"one of {', '.join(self.choices)}"
        elif self.text:
            text = self.text
        else:
            text = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}[self.kind]
            text += self._range("")
        return text + (" or null" if self.null else "")

    def _range(self, each: str) -> str:
        parts = []
        if self.low is not None and self.high is not None:
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            return f"{each} in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            parts.append(f"{'>' if self.open_low else '>='} {_num(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.open_high else '<='} {_num(self.high)}")
        return (each + " " + " and ".join(parts)) if parts else ""

    def ok(self, value) -> bool:
        if value is None:
            return self.null
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "int":
            return _is_int(value) and self._in_range(value)
        if self.kind == "float":
            if not self.finite and _is_number(value, finite=False) and not math.isfinite(value):
                return True
            return _is_number(value) and self._in_range(value)
        if self.kind == "str":
            if not isinstance(value, str):
                return False
            if self.choices:
                return value in self.choices
            return self.pattern is None or re.fullmatch(self.pattern, value) is not None
        if self.kind == "pair":
            return (isinstance(value, (list, tuple)) and len(value) == 2
                    and all(_is_number(v) and self._in_range(v) for v in value)
                    and (not self.meaning.startswith("[lo, hi]") or value[0] <= value[1]))
        if self.kind == "names":
            return isinstance(value, (list, tuple)) and all(isinstance(v, str) and v in self.choices for v in value)
        if self.kind == "pairs":
            return isinstance(value, (list, tuple)) and all(
                isinstance(p, (list, tuple)) and len(p) == 2 and all(_is_int(k) for k in p) and 1 <= p[0] < p[1]
                for p in value)
        raise ValueError(f"unknown rule kind {self.kind!r}")

    def _in_range(self, value) -> bool:
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.open_high else value > self.high):
            return False
        return True


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_number(value, finite: bool = True) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and (not finite or math.isfinite(value))


def _num(x) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


SHOWN = 80  # the most characters of a value that a message shows


def show(value) -> str:
    """A value as it would be typed after ``--set key=``, cut to SHOWN characters; a string that would be read
    as another type is quoted and called a string: ``'3' (a string)``."""
    text = _typed(value)
    if len(text) > SHOWN:
        text = text[: SHOWN - 3] + "..."
    return text + " (a string)" if isinstance(value, str) and not _reads_back(value) else text


def _typed(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_typed(v) for v in value) + "]"
    if isinstance(value, str) and not _reads_back(value):
        return repr(value)
    return str(value)


def _reads_back(text: str) -> bool:
    """Whether ``--set key=TEXT`` gives the string TEXT (not a number, a list, true, ...)."""
    from layersync.config import parse_yaml  # config imports this module

    try:
        return parse_yaml(text) == text
    except yaml.YAMLError:
        return False


def Int(meaning, low=None, high=None, **kw):
    return Rule("int", meaning, low, high, **kw)


def Float(meaning, low=None, high=None, **kw):
    return Rule("float", meaning, low, high, **kw)


def Choice(meaning, *choices, **kw):
    return Rule("str", meaning, choices=choices, **kw)


SEED_MAX = 2**63 - 1  # torch's generators take 64 bits; the run derives seed + 1 from it
PRECISIONS = ("auto", "fp32", "bf16")
STEP_MODES = ("auto", "eager", "compile", "graph", "graph-eager")
LR_SCHEDULES = ("constant", "cosine")
TRANSPORT_PATHS = ("linear", "gvp", "vp")
PREDICTIONS = ("velocity", "noise", "score")
LOSS_WEIGHTS = ("none", "velocity", "likelihood")
SAMPLE_METHODS = ("ode", "sde")
ODE_SOLVERS = ("euler", "heun", "dopri5")
SDE_SOLVERS = ("euler", "heun")
DIFFUSION_FORMS = ("constant", "sbdm", "sigma", "linear", "decreasing", "increasing-decreasing")
LAST_STEPS = ("mean", "euler", "tweedie", "none")
ON_NONFINITE = ("stop", "skip")
PARALLEL = ("ddp", "fsdp")
LOGGERS = ("jsonl", "tensorboard", "wandb")

SCHEMA: dict[str, Rule] = {
    "modality": Rule("str", "the modality plugin the run belongs to", null=True),
    "seed": Int("the run's seed: initial weights, data order, noise", 0, SEED_MAX),
    # transport: objective.py FlowObjective, paths.py
    "transport.path": Choice("the interpolant path", *TRANSPORT_PATHS),
    "transport.prediction": Choice("what the model predicts", *PREDICTIONS),
    "transport.loss_weight": Choice("loss weighting (noise and score predictions)", *LOSS_WEIGHTS),
    "transport.train_eps": Float("t kept this far from the path's ends in training; null: SiT's default", 0, 1,
                                 open_high=True, null=True),
    "transport.sample_eps": Float("the same in sampling; null: SiT's default", 0, 1, open_high=True, null=True),
    # layersync: objective.py LayerSync (weight: its finiteness is checked with the term)
    "layersync.pairs": Rule("pairs", "[[student, teacher], ...] 1-based block outputs; [] turns LayerSync off"),
    "layersync.weight": Float("the weight of the LayerSync term (its finiteness: checked with the term)",
                              finite=False),
    "layersync.detach_teacher": Rule("bool", "stop the term's gradient at the teacher (the paper); false "
                                             "reproduces the reference's Wan fine-tuning"),
    # optim: train/optim.py build_optimizer (AdamW)
    "optim.lr": Float("AdamW's (peak) learning rate", 0),
    "optim.weight_decay": Float("AdamW's decoupled weight decay", 0),
    "optim.betas": Rule("pair", "AdamW's (beta1, beta2)", 0, 1, open_high=True),
    "optim.eps": Float("AdamW's epsilon", 0),
    "optim.grad_clip": Float("clip the gradient norm to this; 0: no clipping", 0),
    # train: train/trainer.py, train/optim.py LRSchedule, train/modes.py, train/data.py
    "train.steps": Int("total training steps", 1),
    "train.batch_size": Int("the global batch (all processes together)", 1),
    "train.lr_schedule": Choice("the learning-rate schedule after warm-up", *LR_SCHEDULES),
    "train.warmup_steps": Int("linear learning-rate warm-up steps", 0),
    "train.ema_decay": Float("EMA decay per step", 0, 1),
    "train.precision": Choice("autocast dtype; auto: bf16 on CUDA, fp32 elsewhere", *PRECISIONS),
    "train.step_mode": Choice("how the step runs: eager, compile, graph (compiled and captured as a CUDA graph) or "
                              "graph-eager (captured, not compiled); auto: graph on one GPU, compile on several, "
                              "eager on CPU", *STEP_MODES),
    "train.grad_accum": Int("micro-batches per step (the batch split to save memory; same losses and gradients)", 1),
    "train.cfg_dropout": Float("probability of dropping the condition (for CFG)", 0, 1),
    "train.log_every": Int("log metrics every N steps", 1),
    "train.ckpt_every": Int("write a checkpoint every N steps", 1),
    "train.keep": Int("keep the last N checkpoints; 0: all of them", 0),
    "train.keep_every": Int("with keep > 0, also keep the checkpoints of every Mth step; 0: none", 0),
    "train.sample_every": Int("write preview samples every N steps", 1),
    "train.first_sample": Int("also write preview samples at this early step; 0: none", 0),
    "train.num_workers": Int("data loader processes; 0: load in the main process", 0),
    "train.device": Rule("str", "the device to train on; auto: cuda if there is one, else cpu",
                         pattern=r"auto|cpu|mps|cuda(:\d+)?", text="auto, cpu, cuda, cuda:N or mps"),
    "train.on_nonfinite": Choice("NaN/inf in a loss or the gradients: stop the run or skip the step",
                                 *ON_NONFINITE),
    "train.parallel": Choice("under torchrun: ddp replicates the weights, fsdp shards them (FSDP2) and writes "
                             "sharded checkpoints; fixed for a run", *PARALLEL),
    "train.loggers": Rule("names", "where the metrics go: metrics.jsonl (and curves.png), TensorBoard, wandb",
                          choices=LOGGERS),
    # sample: sampling.py SamplerConfig, Sampler, ode_solve, sde_solve
    "sample.method": Choice("probability-flow ODE or reverse SDE", *SAMPLE_METHODS),
    "sample.solver": Choice("ode: euler, heun or dopri5; sde: euler or heun", *ODE_SOLVERS),
    "sample.steps": Int("solver steps (an SDE: time grid points, at least 2)", 1),
    "sample.atol": Float("dopri5's absolute tolerance", 0, open_low=True),
    "sample.rtol": Float("dopri5's relative tolerance", 0, open_low=True),
    "sample.cfg_scale": Float("classifier-free guidance scale; 1: no guidance"),
    "sample.guidance_interval": Rule("pair", "[lo, hi] of t where guidance applies", 0, 1),
    "sample.cfg_channels": Int("guide the first N channels only; null: all", 1, null=True),
    "sample.diffusion_form": Choice("the SDE's diffusion coefficient", *DIFFUSION_FORMS),
    "sample.diffusion_norm": Float("the scale of the SDE's diffusion", 0),
    "sample.last_step": Choice("the SDE's last, noise-free step", *LAST_STEPS),
    "sample.last_step_size": Float("the length in t of the SDE's last step", 0, 1, open_high=True),
    "sample.num": Int("preview samples", 1),
}


def check_value(key: str, value) -> None:
    """Check one key's value; keys without a rule (open sections) pass."""
    rule = SCHEMA.get(key)
    if rule is not None and not rule.ok(value):
        raise ConfigError(f"{key}={show(value)}: expected {rule.expected()}")


def _cross_checks(flat: dict) -> None:
    """Rules between keys."""
    if flat.get("train.parallel") == "fsdp":
        if flat.get("train.step_mode") in ("graph", "graph-eager"):
            raise ConfigError(f"train.step_mode={flat['train.step_mode']}: not with train.parallel=fsdp "
                              "(use auto, eager or compile)")
        if flat.get("train.on_nonfinite") == "skip":
            raise ConfigError("train.on_nonfinite=skip: not with train.parallel=fsdp (use stop)")
    if flat.get("sample.method") == "sde":
        if flat.get("sample.solver") not in SDE_SOLVERS:
            raise ConfigError(f"sample.solver={show(flat.get('sample.solver'))}: expected one of "
                              f"{', '.join(SDE_SOLVERS)} with sample.method=sde")
        if isinstance(flat.get("sample.steps"), int) and flat["sample.steps"] < 2:
            raise ConfigError(f"sample.steps={flat['sample.steps']}: expected an integer >= 2 with sample.method=sde "
                              "(time grid points)")


def validate(config: dict) -> dict:
    """Check every value of the fixed sections against ``SCHEMA``; returns ``config``."""
    flat = {}
    for section, value in config.items():
        if isinstance(value, dict):
            for key, item in value.items():
                flat[f"{section}.{key}"] = item
        else:
            flat[section] = value
    for key, value in flat.items():
        check_value(key, value)
    _cross_checks(flat)
    return config


def describe() -> str:
    """The schema as text, one key a line (for docs and --help texts)."""
    return "\n".join(f"{key}: {rule.expected()} -- {rule.meaning}" for key, rule in SCHEMA.items())
