"""Conformance checks of one plugin (``layersync check-plugin NAME``), for plugin authors' CI.

The plugin must declare ``LAYERSYNC_PLUGIN_API``; its load warnings are WARN rows. For each modality of the plugin
its recipe is built through the registry and every piece runs once on a batch of 2: the data set's batch, the
tokenizer's encoding, the backbone's forward with capture, one training step with LayerSync, a graph-safety check
of the forward (no host syncs), the data set's ``preview`` and the modality's ``conditions`` (required when the
items' conditions are not labels), each with a short guided sampling run into ``save_samples``, ``cache_views``,
the pieces of ``cache_recipe``, and the evaluators on two tiny sample sets. A modality's ``check_fixture`` (a tiny
random model, a few items) stands in for the user's data and weights its recipe needs. A plugin without a modality
has its backbones built at a tiny size. Every check gives one ``CheckResult``: PASS, WARN (it passed but found a
cost the plugin should not pay, e.g. a transposed token stream), FAIL (the check raised or found a breach of the
contract) or SKIP (published weights are missing, or a check it needs did not pass).
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from layersync import build, interfaces, sample_set, trees
from layersync import config as configuration
from layersync.errors import ConfigError, DataError, PluginError
from layersync.metrics.weights import MissingWeightsError, resolve_weights
from layersync.objective import LayerSync
from layersync.pipeline import Conditions, Pipeline, preview_conditions
from layersync.plugins import NO_API, PLUGIN_API, Registry, registry as default_registry
from layersync.train.data import make_loader
from layersync.train.optim import build_optimizer
from layersync.train.step import TrainStep

BATCH = 2  # items per forward and training step
EVAL_ITEMS = 10  # items per evaluator set (the Inception Score takes at least 10)
CFG_SCALE = 2.0  # the guidance of every sample the checks draw
NOT_EXERCISED = "not exercised (no recipe of this plugin uses it)"
# A backbone without a recipe: the smallest size of core's naming, and inputs of rank 2, 3, 4 (sequence,
# image, video), the first one its factory accepts.
TINY_SIZE = "T/2"
TINY_SHAPES = ((4, 16), (4, 8, 8), (4, 4, 8, 8))
TINY_CLASSES = 10
PIECES = ("datasets", "tokenizers", "backbones", "evaluators")
SINGULAR = {"modalities": "modality", "datasets": "dataset", "tokenizers": "tokenizer", "backbones": "backbone",
            "evaluators": "evaluator", "weights": "weights"}


@dataclass
class CheckResult:
    status: str  # PASS, WARN, FAIL or SKIP
    item: str  # category/name, e.g. backbone/sit
    check: str
    detail: str = ""


class Failed(Exception):
    """A breach of the plugin contract found by a check (the message says which)."""


class Skipped(Exception):
    """The check cannot run here (the message says why)."""


class Warned(Exception):
    """The check passed but found a cost the plugin should not pay (the message says which)."""


NOT_RUN = object()  # the value of a check that did not pass


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, (Failed, Skipped, Warned)) else f"{type(exc).__name__}: {text}"


class Report:
    """Runs checks one after the other; a check that raises is recorded and the others go on."""

    def __init__(self):
        self.results: list[CheckResult] = []

    def add(self, status: str, item: str, check: str, detail: str = "") -> None:
        self.results.append(CheckResult(status, item, check, detail))

    def run(self, item: str, check: str, fn, needs=()):
        """``fn() -> (value, detail)``; returns the value, None after a warning, or ``NOT_RUN`` when it
        did not pass."""
        if any(value is NOT_RUN for value in needs):
            self.add("SKIP", item, check, "not run: a check it needs did not pass")
            return NOT_RUN
        try:
            value, detail = fn()
        except MissingWeightsError as exc:
            self.add("SKIP", item, check, "published weights missing: " + " ".join(str(exc).split(";")[0].split()))
            return NOT_RUN
        except Warned as exc:
            self.add("WARN", item, check, one_line(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - every failure is a row of the report
            self.add("SKIP" if isinstance(exc, Skipped) else "FAIL", item, check, one_line(exc))
            return NOT_RUN
        self.add("PASS", item, check, detail)
        return value


# ---------------------------------------------------------------- helpers


def item_name(category: str, name: str) -> str:
    return f"{SINGULAR[category]}/{name}"


def layout(cond):
    """How a batch of conditions is laid out: per-row shape and float or not of each leaf (``((), False)`` for
    class labels)."""
    if isinstance(cond, dict):
        return {key: layout(value) for key, value in cond.items()}
    return (tuple(cond.shape[1:]), cond.is_floating_point()) if isinstance(cond, torch.Tensor) else type(cond).__name__


def is_labels(cond) -> bool:
    return layout(cond) == ((), False)


def describe(value) -> str:
    """A short account of a tensor tree or any other value."""
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


def user_frame(exc: BaseException) -> str:
    """' (at file:line in fn)' of the innermost frame outside torch and this module: the plugin's code."""
    torch_dir = str(Path(torch.__file__).parent)
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith(torch_dir) and f.filename != __file__]
    return f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""


@dataclass
class Batch:
    """One batch in model space: what the training step takes."""

    z: torch.Tensor
    cond: object
    mask: torch.Tensor | None = None


def pick_layersync(config: dict, depth: int) -> LayerSync | None:
    """The recipe's pairs, else (1, depth); None for a single block."""
    sync = build.layersync(config, depth)
    if sync is None and depth >= 2:
        sync = LayerSync([(1, depth)], config["layersync"]["weight"], depth=depth)
    return sync


# ---------------------------------------------------------------- backbone checks


def check_forward(model, batch: Batch, capture: tuple[int, ...]):
    t = torch.rand(len(batch.z), device=batch.z.device, dtype=batch.z.dtype)
    with torch.no_grad():
        out, hidden = interfaces.check_forward(
            model, run_forward(model, (batch.z, t, batch.cond, batch.mask, None), capture), batch.z, capture)
    shapes = ", ".join(f"h_{k} {tuple(hidden[k].shape)}" for k in capture)
    return (out, hidden), f"out {tuple(out.shape)}, {shapes}"


def check_layout(hidden: dict, capture: tuple[int, ...]):
    """A WARN row, not a FAIL, for hidden states whose layout makes every block pay a copy."""
    problem = interfaces.layout_problem(hidden, capture)
    if problem:
        raise Warned(problem)
    return None, "captured hidden states contiguous"


def check_step(model, batch: Batch, config: dict, sync: LayerSync | None, cfg_dropout: float):
    device = batch.z.device
    optimizer = build_optimizer(model.parameters(), config["optim"], device, capturable=False)
    generator = torch.Generator(device).manual_seed(config["seed"] + 1)
    step = TrainStep(model, build.objective(config), sync, optimizer, cfg_dropout=cfg_dropout, generator=generator)
    before = [p.detach().clone() for p in step.params]
    losses = {key: float(value) for key, value in step(batch.z, batch.cond, batch.mask).items()}
    bad = [key for key, value in losses.items() if not math.isfinite(value)]
    if bad:
        raise Failed(f"non-finite {', '.join(bad)}: {losses}")
    changed = sum(not torch.equal(old, p.detach()) for old, p in zip(before, step.params))
    if not changed:
        raise Failed(f"no parameter changed (losses {losses})")
    pairs = ", ".join(f"{k}:{k2}" for k, k2 in sync.pairs) if sync else "off (a single block)"
    return None, (f"loss {losses['loss']:.4f} (flow {losses['flow_loss']:.4f}, "
                  f"layersync {losses['layersync_loss']:.4f}, pairs {pairs}); "
                  f"{changed} of {len(before)} parameter tensors changed")


def forward_inputs(model, batch: Batch, cfg_dropout: float, convert=lambda t: t):
    """What the captured step hands the backbone: (x, t, cond after label dropout, mask), through ``convert``."""
    n = len(batch.z)
    t = convert(torch.rand(n, device=batch.z.device, dtype=batch.z.dtype))
    cond = trees.tree_map(convert, batch.cond)
    mask = None if batch.mask is None else convert(batch.mask)
    drop = convert(torch.rand(n, device=batch.z.device) < cfg_dropout) if cfg_dropout > 0 else None
    return convert(batch.z), t, cond, mask, drop


def run_forward(model, inputs, capture):
    z, t, cond, mask, drop = inputs
    if drop is not None:
        cond = model.drop_cond(cond, drop)
    return model(z, t, cond, capture=capture, **({} if mask is None else {"mask": mask}))


def check_fake(model, batch: Batch, capture, cfg_dropout: float):
    """The forward (and label dropout) on fake tensors: a data-dependent host sync raises."""
    from torch._subclasses import fake_tensor

    mode = fake_tensor.FakeTensorMode(allow_non_fake_inputs=True)
    inputs = forward_inputs(model, batch, cfg_dropout, mode.from_tensor)
    try:
        with mode:
            run_forward(model, inputs, capture)
    except fake_tensor.DataDependentOutputException as exc:
        raise Failed(f"host sync in forward: {exc} needs a tensor's value on the host (.item(), bool(tensor), "
                     f".tolist(), a Python if on a tensor){user_frame(exc)}") from None
    except fake_tensor.DynamicOutputShapeException as exc:
        raise Failed(f"host sync in forward: {exc} has a data-dependent output shape (nonzero, masked_select, "
                     f"boolean indexing, unique){user_frame(exc)}") from None
    except fake_tensor.UnsupportedOperatorException as exc:
        raise Skipped(f"FakeTensorMode cannot run {exc}: not checked") from None
    return None, "FakeTensorMode: no data-dependent host sync in forward" + (" and drop_cond" if cfg_dropout else "")


def check_cuda_syncs(model, batch: Batch, capture, cfg_dropout: float):
    """A CUDA forward under ``torch.cuda.set_sync_debug_mode("error")``: any host sync raises."""
    on_cuda = next(model.parameters()).device.type == "cuda"
    net = model if on_cuda else copy.deepcopy(model).to("cuda")
    inputs = forward_inputs(net, batch, cfg_dropout, lambda t: t.to("cuda"))
    run_forward(net, inputs, capture)  # lazy initialisation (kernels, handles) may sync once
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run_forward(net, inputs, capture)
    except RuntimeError as exc:
        raise Failed(f"host sync in forward: {' '.join(str(exc).split())}{user_frame(exc)}") from None
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    torch.cuda.synchronize()
    return None, 'torch.cuda.set_sync_debug_mode("error") around a CUDA forward: no host sync'


def check_backbone(rep: Report, item: str, model, batch: Batch, config: dict):
    """Forward with capture, a training step, graph safety; returns the forward's output or ``NOT_RUN``."""
    rule = interfaces.violation("backbone", model)
    if rule:
        rep.add("FAIL", item, "forward", f"the backbone is {describe(model)}; it must be {rule}")
        return NOT_RUN
    depth, cfg_dropout = model.depth, config["train"]["cfg_dropout"]
    sync = rep.run(item, "layersync", lambda: (pick_layersync(config, depth), f"depth {depth}"))
    capture = (depth,) if sync in (None, NOT_RUN) else sync.capture
    forward = rep.run(item, "forward", lambda: check_forward(model, batch, capture))
    out = NOT_RUN if forward is NOT_RUN else forward[0]
    rep.run(item, "layout", lambda: check_layout(forward[1], capture), needs=(forward,))
    rep.run(item, "graph-safety[fake]", lambda: check_fake(model, batch, capture, cfg_dropout), needs=(out,))
    if torch.cuda.is_available():
        rep.run(item, "graph-safety[cuda]", lambda: check_cuda_syncs(model, batch, capture, cfg_dropout), needs=(out,))
    rep.run(item, "train-step", lambda: check_step(model, batch, config, sync, cfg_dropout), needs=(out, sync))
    return out


# ---------------------------------------------------------------- sample sets and evaluators


def write_set(modality, folder: Path, x: torch.Tensor, info: dict):
    """``x`` written as ``layersync-sample`` writes a sample set (``layersync.sample_set``), read back with
    ``read_samples`` as ``layersync-eval`` does: ``samples.npz``, else the modality's own items."""
    (folder / "parts").mkdir(parents=True)
    labels = np.zeros(len(x), dtype=np.int64)
    sample_set.write_batch(modality, folder, 0, labels, x, info)
    sample_set.assemble(folder, labels, modality, info, info, labelled=False)
    why = "it reads no items from samples.npz"
    try:
        items = modality.read_samples(folder / "samples.npz")
        if len(items):
            return items
    except DataError as exc:
        why = one_line(exc)
    if modality.save_items is None:
        raise Failed(f"read_samples cannot read a sample set ({why}) and the modality has no save_items")
    return modality.read_samples(folder)


def eval_sets(p, folder: Path):
    """Two tiny sets for the evaluators of recipe ``p``: decoded samples and data items."""
    x, cond, mask = p.draw(min(EVAL_ITEMS, len(p.dataset)))
    fake, info = p.draw_samples(Conditions(cond, mask))
    with torch.no_grad():
        real = (p.tokenizer.decode(x) if p.encoded else x).float().cpu()
    if p.modality.read_samples is None:
        return sample_set.as_array(p.modality, fake), sample_set.as_array(p.modality, real)
    samples = write_set(p.modality, folder / "samples", fake, info)
    reference = write_set(p.modality, folder / "reference", real, info)
    if hasattr(samples, "check_reference"):
        samples.check_reference(reference)
    return samples, reference


def check_evaluator(reg: Registry, name: str, sets, device):
    """``sets()``: the ``eval_sets``, made once for all evaluators."""
    evaluator = build.make(reg, "evaluators", name, weights=None, batch=EVAL_ITEMS, device=device)
    samples, reference = sets()
    for real, items in ((True, reference), (False, samples)):
        for chunk in items.batches(EVAL_ITEMS) if hasattr(items, "batches") else [items]:
            evaluator.update(chunk, real=real)
    result = evaluator.compute()
    if not isinstance(result, dict) or not result:
        raise Failed(f"compute() returned {describe(result)}, expected a dict of numbers by name")
    return None, f"{len(samples)} samples vs {len(reference)} data items: {', '.join(sorted(result))}"


# ---------------------------------------------------------------- a modality's recipe


class Recipe:
    """The pieces of one modality's recipe, built the way the trainer builds them, one check each."""

    def __init__(self, reg: Registry, name: str, device: torch.device, folder: Path):
        self.reg, self.name, self.device, self.folder = reg, name, device, folder
        self.modality = reg.get("modalities", name)

    def load(self):
        assignments, detail = [], Path(self.modality.recipe).name
        if self.modality.check_fixture is not None:  # tiny model and items in place of the user's
            fixture = self.folder / "fixture"
            fixture.mkdir(parents=True)
            assignments, detail = list(self.modality.check_fixture(fixture)), f"{detail} + check fixture"
        config = configuration.load(self.modality.recipe, None, [f"modality={self.name}", *assignments])
        # a short deterministic sampler: the checks draw samples, they do not judge them; guided, as
        # `layersync-sample --cfg-scale` draws them, so that drop_cond's null condition goes through the backbone
        self.config = configuration.merge(config, {"sample": {"method": "ode", "solver": "euler", "steps": 2,
                                                              "cfg_scale": CFG_SCALE}})
        return self.config, detail

    def build_dataset(self):
        self.dataset = build.dataset(self.reg, self.config)
        self.encoded = bool(getattr(self.dataset, "encoded", False))
        self.num_classes = int(getattr(self.dataset, "num_classes", 0))
        self.sample_shape = tuple(self.dataset.sample_shape)
        return self.dataset, (f"{len(self.dataset)} items of {self.sample_shape}, {self.num_classes} classes"
                              + (", encoded" if self.encoded else ""))

    def draw(self, n: int):
        """(x, cond, mask or None) of n items, through the trainer's loader, on the device."""
        loader, _ = make_loader(self.dataset, n, 0, 1, self.config["seed"], 0, 0)
        x, cond, *mask = (trees.to_device(part, self.device) for part in next(iter(loader)))
        return x, cond, mask[0] if mask else None

    def first_batch(self):
        x, cond, mask = self.draw(BATCH)
        if tuple(x.shape[1:]) != self.sample_shape:
            raise Failed(f"items of shape {tuple(x.shape[1:])}, the data set says sample_shape {self.sample_shape}")
        if trees.batch_size(cond) != BATCH:
            raise Failed(f"cond {describe(cond)} does not hold {BATCH} rows")
        self.x = x
        self.batch = Batch(x, cond, mask)
        masked = "" if mask is None else f", mask {describe(mask)}"
        return self.batch, f"x {describe(x)}, cond {describe(cond)}{masked}"

    def build_tokenizer(self):
        self.tokenizer = build.tokenizer(self.reg, self.config)
        build.check_compatible(self.dataset, self.tokenizer)
        self.info = interfaces.sample_info(self.tokenizer, self.dataset)
        self.input_shape = build.model_input(self.dataset, self.tokenizer)[0]
        detail = "the data set holds encoded items" if self.encoded else f"latent shape {self.input_shape}"
        return self.tokenizer, detail

    def encode(self):
        if not self.encoded:
            with torch.no_grad():
                z = self.tokenizer.encode(self.x)
            if tuple(z.shape) != (BATCH, *self.input_shape):
                raise Failed(f"encode gave {describe(z)}, latent_shape says {(BATCH, *self.input_shape)}")
            self.batch = Batch(z, self.batch.cond, self.batch.mask)
        return self.batch, f"z {describe(self.batch.z)}"

    def build_backbone(self):
        torch.manual_seed(self.config["seed"])
        model = build.backbone(self.reg, self.config, self.input_shape, self.num_classes).to(self.device)
        self.pipe = Pipeline(self.config, self.modality, model, self.tokenizer,
                             build.sampler(self.config, build.objective(self.config)), self.input_shape,
                             self.num_classes, self.info, self.device, values=[])
        count = sum(p.numel() for p in model.parameters())
        return model, f"input {self.input_shape}, {self.num_classes} classes, {count:,} parameters"

    def like_data(self, what: str, cond, mask) -> None:
        """Conditions and masks made for sampling must be laid out as the data set's items are."""
        if layout(cond) != layout(self.batch.cond):
            raise Failed(f"{what} gave cond {describe(cond)}, the data set's items {describe(self.batch.cond)}")
        data = self.batch.mask
        if mask is not None and (data is None or mask.dtype != torch.bool or mask.shape[1:] != data.shape[1:]):
            raise Failed(f"{what} gave a mask {describe(mask)}, the data set's items "
                         f"{'none' if data is None else describe(data)}")

    def preview(self):
        """The conditions of training's sample steps (``train/trainer.py``)."""
        if not hasattr(self.dataset, "preview") and not is_labels(self.batch.cond):
            raise Failed(f"the items' conditions are {describe(self.batch.cond)}, not class labels, and the data set "
                         "has no preview(n) -> (cond, mask or None): training's sample steps would give the backbone "
                         "labels")
        preview = preview_conditions(self.dataset, self.num_classes, BATCH, self.device)
        cond, mask, _ = preview
        if trees.batch_size(cond) != BATCH:
            raise Failed(f"preview({BATCH}) gave {trees.batch_size(cond)} conditions")
        self.like_data(f"preview({BATCH})", cond, mask)
        shown = "preview(n)" if hasattr(self.dataset, "preview") else "labels (no preview(n))"
        return preview, f"{shown}: cond {describe(cond)}" + ("" if mask is None else f", mask {describe(mask)}")

    def draw_samples(self, cond: Conditions):
        """(items, info) of samples of these conditions, drawn as the trainer and ``layersync-sample`` draw them
        (guided)."""
        return self.pipe.decode(self.pipe.sample(cond, seed=self.config["seed"]), cond)

    def save(self, cond: Conditions, stem: Path):
        """Samples of these conditions written by ``save_samples`` as the trainer and ``layersync-sample`` call
        it: ``stem`` in a folder that does not exist yet."""
        x, info = self.draw_samples(cond)
        path = interfaces.save_samples(self.modality, x, stem, info).path
        return path, f"{len(x)} samples at cfg_scale {CFG_SCALE}: {path.name}, {path.stat().st_size:,} bytes"

    def conditions(self, folder: Path):
        """``Modality.conditions`` as ``layersync-sample`` calls it without ``--cond``; a few samples of them."""
        if self.modality.conditions is None:
            raise Failed(f"the items' conditions are {describe(self.batch.cond)}, not class labels, and the modality "
                         "has no conditions(values, config, num_classes): layersync-sample has only labels to give "
                         "the backbone")
        cond, mask, facts = self.pipe.pool
        self.like_data("conditions([])", cond, mask)
        n = min(BATCH, trees.batch_size(cond))
        path, _ = self.save(self.pipe.conditions(np.arange(n)), folder / "conditions" / "samples")
        named = f", facts {', '.join(facts)}" if facts else ""
        return None, f"{trees.batch_size(cond)} conditions {describe(cond)}{named}; {n} samples: {path.name}"

    def cache_views(self):
        """``Modality.cache_views`` of a batch, as ``layersync-cache`` stacks them: tensors shaped like it."""
        views = self.modality.cache_views(self.x)
        if not isinstance(views, (list, tuple)) or not views or any(
                not isinstance(v, torch.Tensor) or v.shape != self.x.shape for v in views):
            raise Failed(f"cache_views(x) of x {describe(self.x)} gave {describe(views)}; it must return a list of "
                         "tensors shaped like x")
        return None, f"{len(views)} views of {describe(self.x)}"


def check_modality(rep: Report, reg: Registry, name: str, device, folder: Path, used: set) -> None:
    recipe = Recipe(reg, name, device, folder / name)
    item = item_name("modalities", name)
    config = rep.run(item, "recipe", recipe.load)
    if config is NOT_RUN:
        return
    pieces = {c: configuration.options(config[key])[0] for c, key in
              (("datasets", "data"), ("tokenizers", "tokenizer"), ("backbones", "model"))}
    used.update(pieces.items())
    data, tok, net = (item_name(c, pieces[c]) for c in ("datasets", "tokenizers", "backbones"))
    dataset = rep.run(data, "build", recipe.build_dataset)
    items = batch = rep.run(data, "batch", recipe.first_batch, needs=(dataset,))
    tokenizer = rep.run(tok, "build", recipe.build_tokenizer, needs=(dataset,))
    if not getattr(recipe, "encoded", False):
        batch = rep.run(tok, "encode", recipe.encode, needs=(batch, tokenizer))
    model = rep.run(net, "build", recipe.build_backbone, needs=(tokenizer,))
    if model is NOT_RUN or batch is NOT_RUN:
        rep.add("SKIP", net, "forward", "not run: a check it needs did not pass")
        out = NOT_RUN
    else:
        out = check_backbone(rep, net, model, batch, config)
    preview = rep.run(data, "preview", recipe.preview, needs=(items,))
    rep.run(item, "save_samples", lambda: recipe.save(preview, folder / name / "samples" / "step_0000000"),
            needs=(out, preview))
    if recipe.modality.conditions is not None or items is not NOT_RUN and not is_labels(items.cond):
        rep.run(item, "conditions", lambda: recipe.conditions(folder / name), needs=(out,))
    if recipe.modality.cache_views is not None:
        rep.run(item, "cache_views", recipe.cache_views, needs=(items,))
    if recipe.modality.cache_recipe is not None:
        check_cache_recipe(rep, reg, recipe.modality, used)
    sets = functools.cache(lambda: eval_sets(recipe, folder / name / "eval"))
    for evaluator in recipe.modality.evaluators:
        used.add(("evaluators", evaluator))
        rep.run(item_name("evaluators", evaluator), "evaluate",
                lambda e=evaluator: check_evaluator(reg, e, sets, device),
                needs=(model, batch))


def build_for_cache(reg: Registry, recipe: Path, category: str, name: str, options: dict):
    if category == "datasets" and options.get("path") is None:
        raise Skipped(f"its data are the user's (layersync-cache --data): the cache recipe {recipe.name} names none")
    build.make(reg, category, name, **options)
    return None, f"from the cache recipe {recipe.name}"


def check_cache_recipe(rep: Report, reg: Registry, modality, used: set) -> None:
    """Build the data set and tokenizer ``layersync-cache`` encodes with (``Modality.cache_recipe``)."""
    recipe = Path(modality.cache_recipe)
    config = configuration.load(recipe)
    for category, key in (("datasets", "data"), ("tokenizers", "tokenizer")):
        name, options = configuration.options(config[key])
        if (category, name) not in used:
            used.add((category, name))
            rep.run(item_name(category, name), "build", lambda: build_for_cache(reg, recipe, category, name, options))


# ---------------------------------------------------------------- pieces without a recipe


def tiny_backbone(reg: Registry, name: str, device):
    """Backbone ``name`` (``plugin:item``) at ``TINY_SIZE`` on the first of ``TINY_SHAPES`` it accepts, built
    through the registry as a recipe's is (its errors name the plugin and the item): ((model, input shape), detail)."""
    if "size" not in inspect.signature(reg.get("backbones", name)).parameters:
        raise Skipped(f"{NOT_EXERCISED}; its factory takes no size to build it small with")
    errors = []
    for shape in TINY_SHAPES:
        try:
            torch.manual_seed(0)
            model = build.make(reg, "backbones", name, shape, TINY_CLASSES, size=TINY_SIZE)
        except PluginError:  # a breach of the contract, not an input the backbone does not suit
            raise
        except Exception as exc:  # noqa: BLE001 - this input rank does not suit the backbone; try the next
            errors.append(f"{shape}: {one_line(exc)}")
            continue
        return (model.to(device), shape), f"size {TINY_SIZE}, input {shape}, {TINY_CLASSES} classes (no recipe)"
    raise Skipped(f"{NOT_EXERCISED}; size {TINY_SIZE} on none of the inputs {'; '.join(errors)}")


def check_tiny_backbone(rep: Report, reg: Registry, plugin: str, name: str, device) -> None:
    item = item_name("backbones", name)
    built = rep.run(item, "build", lambda: tiny_backbone(reg, f"{plugin}:{name}", device))
    if built is NOT_RUN:
        return
    model, shape = built
    batch = Batch(torch.randn(BATCH, *shape, device=device), torch.randint(TINY_CLASSES, (BATCH,), device=device))
    config = configuration.load(None, None, ["layersync.pairs=[]"])  # LayerSync on blocks (1, depth)
    check_backbone(rep, item, model, batch, config)


def check_weights(weight) -> tuple:
    rule = interfaces.violation("weight", weight)
    if rule:
        raise Failed(f"registered {describe(weight)}, expected {rule}")
    return None, f"{weight.filename} present at {resolve_weights(weight)}"


# ---------------------------------------------------------------- the plugin


def check_plugin(name: str, registry: Registry | None = None, device="cpu") -> list[CheckResult]:
    """Every check of plugin ``name``; ConfigError if no plugin has that name."""
    reg = registry or default_registry()
    info = next((p for p in reg.plugins if p.name == name), None)
    if info is None:
        known = ", ".join(sorted(p.name for p in reg.plugins)) or "none installed"
        raise ConfigError(f"unknown plugin '{name}' (known: {known})")
    rep = Report()
    plugin = f"plugin/{name}"
    if info.error:
        rep.add("FAIL", plugin, "load", info.error)
        return rep.results
    provided = ", ".join(f"{len(v)} {k}" for k, v in info.provides.items()) or "nothing"
    rep.add("PASS", plugin, "load", f"version {info.version}: {provided}")
    if info.api is None:
        rep.add("FAIL", plugin, "api", f"{info.module} declares no LAYERSYNC_PLUGIN_API: set LAYERSYNC_PLUGIN_API = "
                                       f"{PLUGIN_API}, the plugin API it is written for")
    else:
        rep.add("PASS", plugin, "api", f"plugin API {info.api}")
    for warning in info.warnings:
        if warning != NO_API:
            rep.add("WARN", plugin, "load", warning)
    device = torch.device(device)
    used: set[tuple[str, str]] = set()
    with tempfile.TemporaryDirectory(prefix="layersync-check-") as folder:
        for modality in info.provides.get("modalities", []):
            check_modality(rep, reg, modality, device, Path(folder), used)
    for category in PIECES:
        for piece in info.provides.get(category, []):
            if (category, piece) in used:
                continue
            if category == "backbones" and not info.provides.get("modalities"):
                check_tiny_backbone(rep, reg, name, piece, device)
            else:
                rep.add("SKIP", item_name(category, piece), "-", NOT_EXERCISED)
    for weight in info.provides.get("weights", []):
        rep.run(item_name("weights", weight), "present", lambda w=weight: check_weights(reg.get("weights", w)))
    return rep.results


def exit_code(results: list[CheckResult]) -> int:
    return 1 if any(r.status == "FAIL" for r in results) else 0


def table(results: list[CheckResult]) -> str:
    item = max((len(r.item) for r in results), default=0)
    check = max((len(r.check) for r in results), default=0)
    return "\n".join(f"{r.status:<4}  {r.item:<{item}}  {r.check:<{check}}  {r.detail}".rstrip() for r in results)
