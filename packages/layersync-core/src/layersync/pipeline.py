"""``layersync.Pipeline``: a model's pieces (modality, tokenizer, backbone, sampler) and sampling from them.

The Python API for sampling from a trained run; ``layersync-sample``, ``layersync probe``, ``check-plugin``
and the trainer's previews use it too::

    pipe = Pipeline.from_checkpoint("runs/xl2")      # the run's latest checkpoint, EMA weights
    cond = pipe.conditions(pipe.labels(8))           # 8 labels cycling through the classes
    items, info = pipe.decode(pipe.sample(cond, seed=0), cond)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import numpy as np
import torch

from layersync import build, checkpoint, distributed, trees
from layersync import config as configuration
from layersync.errors import ConfigError, NonFiniteError
from layersync.interfaces import Modality, condition_pool, sample_info
from layersync.plugins import Registry, registry as default_registry
from layersync.sampling import CompiledModel, Sampler, seeded_samples

log = logging.getLogger("layersync")


class Conditions(NamedTuple):
    """What a batch of samples is drawn for: ``cond`` (class labels or a tensor tree, on the device), its
    ``mask`` (or None) and facts per sample that writing them needs (e.g. captions)."""

    cond: object
    mask: torch.Tensor | None = None
    facts: dict = {}


def preview_conditions(dataset, num_classes: int, n: int, device) -> Conditions:
    """The conditions of n training previews, on ``device``: the data set's own choice (``preview(n)``), else
    labels cycling through the classes."""
    if hasattr(dataset, "preview"):
        cond, mask = dataset.preview(n)
        return Conditions(trees.to_device(cond, device), None if mask is None else mask.to(device))
    return Conditions(torch.arange(n, device=device) % max(num_classes, 1))


def find_checkpoint(path: Path) -> Path:
    """A checkpoint file, or a run folder's latest checkpoint."""
    if path.is_dir():
        found = checkpoint.latest(path / "checkpoints") or checkpoint.latest(path)
        if found is None:
            raise ConfigError(f"no checkpoint (step_*.pt) in {path} or {path / 'checkpoints'}")
        return found
    if not path.exists():
        raise ConfigError(f"checkpoint {path} does not exist")
    return path


def with_sample_keys(config: dict, assignments: Iterable[str]) -> dict:
    """``config`` with these ``sample.*`` assignments (KEY=VALUE, as ``--set`` takes them)."""
    for assignment in assignments:
        if not assignment.startswith("sample."):
            raise ConfigError(f"--set may only change sample.* keys here, got '{assignment}'")
        config = configuration.set_key(config, assignment)
    return config


def compiled_for(sampler: Sampler, backbone: torch.nn.Module, wanted: bool | None, device: torch.device):
    """The backbone as ``sampler`` evaluates it: compiled if ``wanted`` (None: on CUDA) and the solver
    takes fixed steps, else as it is."""
    if wanted is False or (wanted is None and device.type != "cuda"):
        log.info("sampler: eager%s", "" if wanted is False else " (--compile compiles the model on a CPU too)")
        return backbone
    if sampler.evaluations() is None:
        log.info("sampler: eager, dopri5 adapts its steps (the fixed-step solvers run compiled)")
        return backbone
    log.info("sampler: compiled%s; the first batch of each shape waits for the compilation",
             " as CUDA graphs" if device.type == "cuda" else "")
    return CompiledModel(backbone)


@dataclass
class Pipeline:
    """Everything that turns conditions into decoded samples. ``values``: what ``labels`` draws from (class
    labels, or what ``Modality.conditions`` makes conditions of); None: class labels only."""

    config: dict
    modality: Modality
    backbone: torch.nn.Module | CompiledModel
    tokenizer: object
    sampler: Sampler
    input_shape: tuple[int, ...]
    num_classes: int
    info: dict  # what writing a sample needs (``interfaces.sample_info``)
    device: torch.device
    values: list[str] | None = None
    checkpoint: Path | None = None
    step: int | None = None

    @classmethod
    def from_checkpoint(cls, path, ema: bool = True, *, device="auto", compile: bool | None = None,
                        cond: list[str] | None = None, registry: Registry | None = None,
                        assignments: Iterable[str] | Callable[[dict], dict] = ()) -> Pipeline:
        """A checkpoint's model (its EMA weights, or the raw ones), on ``device``, compiled as ``compiled_for``
        says. ``path``: a checkpoint, or a run folder (its latest); ``cond``: the ``values``; ``assignments``:
        ``sample.*`` overrides, or a function of the checkpoint's config that returns the one to sample with."""
        path = find_checkpoint(Path(path))
        try:
            state = checkpoint.load(path, keys=("step", "config", "input_shape", "num_classes", "model", "ema"))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        state["config"] = configuration.merge(configuration.defaults(), state["config"])  # keys added since: defaults
        if callable(assignments):
            config = assignments(state["config"])
        else:
            config = with_sample_keys(state["config"], assignments)
            configuration.validate({"sample": config["sample"]})
        reg = registry or default_registry()
        modality = build.modality(reg, config)
        dims = config["model"].get("cond_dims")
        if dims and modality.conditions is None:  # class labels would reach a model that takes vectors
            raise ConfigError(f"{path}: the model takes vector conditions (model.cond_dims: {', '.join(dims)}), but "
                              f"modality '{modality.name}' defines no conditions(values, config, num_classes) to make "
                              "them: layersync-sample has only class labels to give it")
        backbone = build.backbone(reg, config, state["input_shape"], state["num_classes"])
        backbone.load_state_dict(state["ema" if ema else "model"])
        tokenizer = build.tokenizer(reg, config)
        device = device if isinstance(device, torch.device) else distributed.pick_device(device)
        distributed.fast_defaults(device)
        sampler = build.sampler(config, build.objective(config))
        return cls(config, modality, compiled_for(sampler, backbone.to(device).eval(), compile, device), tokenizer,
                   sampler, tuple(state["input_shape"]), int(state["num_classes"]), device=device,
                   info={**state.get("sample_info", {}), **sample_info(tokenizer)}, values=list(cond or []),
                   checkpoint=path, step=int(state["step"]))

    @classmethod
    def from_config(cls, config: dict, *, registry: Registry | None = None, device="cpu", input_shape=None,
                    num_classes: int | None = None) -> Pipeline:
        """A resolved config's pieces with fresh weights (seeded with ``seed``); the input shape and the number
        of classes are the data set's unless given."""
        reg, dataset = registry or default_registry(), None
        tokenizer = build.tokenizer(reg, config)
        if input_shape is None or num_classes is None:
            dataset = build.dataset(reg, config)
            build.check_compatible(dataset, tokenizer)
            shape, classes = build.model_input(dataset, tokenizer)
            input_shape, num_classes = input_shape or shape, classes if num_classes is None else num_classes
        torch.manual_seed(config["seed"])
        backbone = build.backbone(reg, config, tuple(input_shape), num_classes).to(device).eval()
        sampler = build.sampler(config, build.objective(config))
        return cls(config, build.modality(reg, config), backbone, tokenizer, sampler, tuple(input_shape), num_classes,
                   sample_info(tokenizer, dataset), torch.device(device))

    @cached_property
    def pool(self) -> tuple | None:
        """(cond, mask or None, facts) of ``values``, which labels index, for a modality that makes conditions."""
        if self.values is None or self.modality.conditions is None:
            return None
        return condition_pool(self.modality, self.values, self.config, self.num_classes)

    def labels(self, n: int | None = None) -> np.ndarray:
        """The labels to sample: indices into the pool, else class labels (``values``, default all classes);
        with ``n``, n of them cycling through those."""
        if self.pool is not None:
            pool = np.arange(trees.batch_size(self.pool[0]))
        elif not self.values:
            pool = np.arange(max(self.num_classes, 1))
        elif self.num_classes == 0:
            raise ConfigError("--cond given, but the checkpoint's model is unconditional")
        else:
            try:
                pool = np.array([int(c) for c in self.values])
            except ValueError:
                raise ConfigError(f"--cond takes class labels for this model, got {' '.join(self.values)}") from None
            bad = [c for c in pool if not 0 <= c < self.num_classes]
            if bad:
                raise ConfigError(f"--cond {bad[0]} is not a class of this model (expected 0..{self.num_classes - 1})")
        return pool if n is None else pool[np.arange(n) % len(pool)]

    def conditions(self, labels) -> Conditions:
        """The conditions of these labels (see ``labels``), on the device."""
        if self.pool is None:
            return Conditions(torch.as_tensor(labels, dtype=torch.long, device=self.device))
        index = torch.as_tensor(labels, dtype=torch.long)
        cond, mask, facts = self.pool
        return Conditions(trees.to_device(trees.rows(cond, index), self.device),
                          None if mask is None else mask[index].to(self.device),
                          {key: [values[i] for i in labels] for key, values in facts.items()})

    def sample_info(self, cond: Conditions) -> dict:
        """What writing these samples needs: the run's info, their lengths where masks give them, their facts."""
        return {**self.info, **({} if cond.mask is None else {"lengths": cond.mask.sum(-1).tolist()}), **cond.facts}

    @torch.no_grad()
    def sample(self, cond: Conditions, *, seed: int = 0, start: int = 0, progress=None) -> torch.Tensor:
        """Samples start .. start+B-1 of the set ``seed`` in model space (``sampling.seeded_samples``: sample i
        depends only on (seed, i)); ``progress`` is called after each model evaluation."""
        return seeded_samples(self.sampler, self.backbone, self.input_shape, cond.cond, seed, start, mask=cond.mask,
                              progress=progress)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, cond: Conditions, start: int = 0) -> tuple[torch.Tensor, dict]:
        """(items decoded as float on the CPU, their ``sample_info``) of ``z``; NonFiniteError for NaN or inf."""
        x = self.tokenizer.decode(z).float().cpu()
        if not torch.isfinite(x).all():  # never write NaN samples and exit 0
            raise NonFiniteError(f"samples {start}..{start + len(x) - 1} hold NaN or inf: the checkpoint's weights "
                                 "or these sampler settings give non-finite output; nothing was written for them")
        return x, self.sample_info(cond)
