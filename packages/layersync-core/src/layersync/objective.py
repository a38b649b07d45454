"""The training objective: SiT-style flow loss plus the LayerSync term."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence, get_args

import torch

from layersync.config import setting
from layersync.errors import ConfigError
from layersync.paths import Path, PathName, expand_like, make_path

Prediction = Literal["velocity", "noise", "score"]
LossWeight = Literal["none", "velocity", "likelihood"]
PREDICTIONS, LOSS_WEIGHTS = get_args(Prediction), get_args(LossWeight)


@dataclass
class TransportConfig:
    """The ``transport`` section: FlowObjective's arguments."""

    path: PathName = setting("linear", "the interpolant path")
    prediction: Prediction = setting("velocity", "what the model predicts")
    loss_weight: LossWeight = setting("none", "loss weighting (noise and score predictions)")
    train_eps: float | None = setting(None, "t kept this far from the path's ends in training; null: SiT's default",
                                      low=0, high=1, open_high=True)
    sample_eps: float | None = setting(None, "the same in sampling; null: SiT's default", low=0, high=1,
                                       open_high=True)


@dataclass
class LayerSyncConfig:
    """The ``layersync`` section: the LayerSync term's pairs and weight."""

    pairs: list[tuple[int, int]] = setting(
        [[8, 16]], "[[student, teacher], ...] 1-based block outputs; [] turns LayerSync off",
        rule=lambda pairs: all(1 <= k < kt for k, kt in pairs),
        text="a list of [student, teacher] block pairs with 1 <= student < teacher (or [] for off)")
    weight: float = setting(0.2, "the weight of the LayerSync term", finite=False)  # inf, nan: check()'s message
    detach_teacher: bool = setting(True, "stop the term's gradient at the teacher (the paper); false reproduces "
                                         "the reference's Wan fine-tuning")

    def check(self) -> None:
        if not (math.isfinite(self.weight) and self.weight >= 0):  # NaN trains on NaN, inf or < 0 diverges
            raise ConfigError(f"layersync.weight must be a finite number >= 0, got {self.weight!r}")


class FlowObjective:
    """Interpolant transport: what the model predicts and how it is weighted.

    prediction: velocity | noise | score. loss_weight: none | velocity |
    likelihood (only for noise and score predictions, as in SiT).
    train_eps / sample_eps keep t away from the ends where a path or a
    prediction is singular; None takes SiT's defaults.
    """

    def __init__(self, path="linear", prediction="velocity", loss_weight="none", train_eps=None, sample_eps=None):
        self.path: Path = make_path(path) if isinstance(path, str) else path
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction '{prediction}' (expected one of: {', '.join(PREDICTIONS)})")
        if loss_weight not in LOSS_WEIGHTS:
            raise ValueError(f"unknown loss_weight '{loss_weight}' (expected one of: {', '.join(LOSS_WEIGHTS)})")
        self.prediction, self.loss_weight = prediction, loss_weight
        if self.path.name == "vp":
            default_train, default_sample = 1e-5, 1e-3
        elif prediction != "velocity":
            default_train, default_sample = 1e-3, 1e-3
        else:
            default_train, default_sample = 0.0, 0.0
        self.train_eps = default_train if train_eps is None else train_eps
        self.sample_eps = default_sample if sample_eps is None else sample_eps

    def interval(self, *, sde: bool = False, sampling: bool = False, last_step_size: float = 0.0):
        """The time interval [t0, t1] that training or sampling may visit."""
        eps = self.sample_eps if sampling else self.train_eps
        t0, t1 = 0.0, 1.0
        end = 1 - last_step_size if (sde and last_step_size > 0) else 1 - eps
        if self.path.name == "vp":
            t1 = end
        elif self.prediction != "velocity" or sde:
            t0 = eps if self.prediction != "velocity" else 0.0
            t1 = end
        return t0, t1

    def sample_t(self, n: int, generator: torch.Generator | None, device) -> torch.Tensor:
        t0, t1 = self.interval()
        return torch.rand(n, generator=generator, device=device) * (t1 - t0) + t0

    def loss(self, pred, x1, x0, t, mask=None):
        """Per-sample loss (B,) of a model output for data x1, noise x0 at time t.

        ``mask`` (B, *positions), true on valid positions of x's trailing axes (e.g. the
        frames of (B, C, T) motion), averages over those only.
        """
        xt, ut = self.path.interpolate(x1, x0, t)
        if self.prediction == "velocity":
            err = (pred - ut) ** 2
        else:
            _, var = self.path.drift_terms(xt, t)
            s = self.path.sigma(expand_like(t, x1))[0]
            weight = {"none": 1.0, "velocity": (var / s) ** 2, "likelihood": var / s**2}[self.loss_weight]
            err = weight * ((pred - x0) ** 2 if self.prediction == "noise" else (pred * s + x0) ** 2)
        if mask is None:
            return err.flatten(1).mean(1)
        valid = mask.unsqueeze(1).expand_as(err).to(err.dtype)
        return (err * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1)

    def velocity(self, pred, x, t):
        """The velocity of the probability-flow ODE given a model output."""
        if self.prediction == "velocity":
            return pred
        return self.path.velocity_from_score(self.score(pred, x, t), x, t)

    def score(self, pred, x, t):
        if self.prediction == "score":
            return pred
        if self.prediction == "noise":
            return self.path.score_from_noise(pred, x, t)
        return self.path.score_from_velocity(pred, x, t)


class LayerSync:
    """The LayerSync regulariser: shallow blocks follow deeper ones.

    ``LayerSync(pairs=[(8, 16)], weight=0.2)(hidden)`` with ``hidden`` a dict
    ``{block_index: (B, ..., D)}`` returns ``weight * sum over pairs (k, k')``
    of ``mean(-cos(h_k, stopgrad(h_k')))``, the cosine taken per token over
    the last (channel) dimension; with ``mask`` (B, tokens) the mean runs over
    the valid tokens only. Block indices are 1-based block outputs.
    ``detach_teacher=False`` lets the term's gradient reach the teacher side too,
    as the reference's Wan fine-tuning does (the paper's method detaches it).
    """

    def __init__(self, pairs: Iterable[Sequence[int]] = ((8, 16),), weight: float = 0.2, depth: int | None = None,
                 detach_teacher: bool = True):
        self.pairs = [tuple(int(i) for i in p) for p in pairs]
        self.weight = float(weight)
        self.detach_teacher = bool(detach_teacher)
        for pair in self.pairs:
            if len(pair) != 2:
                raise ValueError(f"LayerSync pair {pair} must be (student, teacher)")
        self.validate(depth)

    def validate(self, depth: int | None) -> "LayerSync":
        """Raise ``ValueError`` naming the pair (and the depth, if known) if a pair does not fit."""
        for k, kt in self.pairs:
            if k < 1 or kt <= k or (depth is not None and kt > depth):
                where, bound = (f" of a {depth}-block model", f" <= {depth}") if depth is not None else ("", "")
                raise ValueError(f"invalid LayerSync pair ({k}, {kt}){where}: need 1 <= student < teacher{bound}")
        return self

    @property
    def capture(self) -> tuple[int, ...]:
        """The block indices whose outputs the term needs."""
        return tuple(sorted({i for pair in self.pairs for i in pair}))

    @classmethod
    def parse(cls, spec: str, weight: float = 0.2) -> "LayerSync | None":
        """``"8:16"`` or ``"8:16,4:20"`` -> LayerSync; ``"off"`` -> None."""
        if spec.strip().lower() in ("off", "none", ""):
            return None
        try:
            pairs = [tuple(int(v) for v in item.split(":")) for item in spec.split(",")]
        except ValueError:
            raise ValueError(f"bad LayerSync pairs '{spec}': expected k:k'[,k:k'...] or 'off'") from None
        return cls(pairs, weight)

    def terms(self, hidden: dict[int, torch.Tensor], mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The unweighted term of each pair, in order; ``mask`` (B, tokens) keeps only valid tokens."""
        out = []
        for k, kt in self.pairs:
            teacher = hidden[kt] if not self.detach_teacher else hidden[kt].detach()
            cos = TokenCosine.apply(hidden[k], teacher)
            if mask is None:
                out.append(-cos.mean())
            else:
                valid = mask.to(cos.dtype)
                out.append(-(cos * valid).sum() / valid.sum().clamp_min(1))
        return out

    def __call__(self, hidden: dict[int, torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.weight * torch.stack(self.terms(hidden, mask)).sum()

    def __repr__(self) -> str:
        detach = "" if self.detach_teacher else ", detach_teacher=False"
        return f"LayerSync(pairs={self.pairs}, weight={self.weight}{detach})"


NORM_EPS = 1e-8  # the smallest norm a hidden state is divided by (as torch.nn.functional.normalize's eps)


class TokenCosine(torch.autograd.Function):
    """Per-token cosine of a student and a teacher hidden state over the last dimension, in fp32.

    The same numbers as ``vecdot(s, normalize(t)) / |s|``, with a hand-written backward that keeps
    only the two hidden states as they are (bf16 stays bf16) and three per-token scalars, instead
    of autograd's fp32 copies of whole (B, tokens, D) tensors; the fp32 work is redone in the
    backward pass, which torch.compile fuses with the rest into one read of each state.
    """

    @staticmethod
    def forward(ctx, student, teacher):
        s, t = student.float(), teacher.float()
        s_norm = torch.linalg.vector_norm(s, dim=-1)
        t_norm = torch.linalg.vector_norm(t, dim=-1)
        cos = torch.linalg.vecdot(s, t / t_norm.clamp_min(NORM_EPS).unsqueeze(-1)) / s_norm.clamp_min(NORM_EPS)
        ctx.save_for_backward(student, teacher, s_norm, t_norm, cos)
        return cos

    @staticmethod
    def backward(ctx, grad):
        student, teacher, s_norm, t_norm, cos = ctx.saved_tensors
        s, t = student.float(), teacher.float()
        s_div, t_div = s_norm.clamp_min(NORM_EPS), t_norm.clamp_min(NORM_EPS)
        # a norm below eps is a constant divisor: its own gradient drops out, as clamp_min's does
        s_scale = torch.where(s_norm >= NORM_EPS, cos / s_div**2, 0.0)
        t_scale = torch.where(t_norm >= NORM_EPS, cos / t_div**2, 0.0)
        grad_student = grad_teacher = None
        if ctx.needs_input_grad[0]:
            grad_student = (grad / s_div).unsqueeze(-1) * (t / t_div.unsqueeze(-1)) - (grad * s_scale).unsqueeze(-1) * s
            grad_student = grad_student.to(student.dtype)
        if ctx.needs_input_grad[1]:
            grad_teacher = (grad / t_div).unsqueeze(-1) * (s / s_div.unsqueeze(-1)) - (grad * t_scale).unsqueeze(-1) * t
            grad_teacher = grad_teacher.to(teacher.dtype)
        return grad_student, grad_teacher


class taps(dict):
    """Collect block outputs of a model that cannot return them itself.

    ``with taps(model.blocks, [8, 16]) as hidden: model(x)`` fills
    ``hidden[8]`` and ``hidden[16]`` (1-based) through forward hooks. A block
    returning a tuple contributes its first element, or what ``select(output)`` picks.
    """

    def __init__(self, blocks: Sequence[torch.nn.Module], indices: Iterable[int], select=None):
        super().__init__()
        blocks = list(blocks)
        self._select = select or (lambda output: output[0] if isinstance(output, tuple) else output)
        self._handles = []
        for k in indices:
            if not 1 <= k <= len(blocks):
                raise ValueError(f"block {k} does not exist: the model has blocks 1..{len(blocks)}")
            self._handles.append(blocks[k - 1].register_forward_hook(self._store(k)))

    def _store(self, k):
        def hook(module, args, output):
            self[k] = self._select(output)

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
