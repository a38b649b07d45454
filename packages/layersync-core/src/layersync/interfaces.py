"""The contracts a modality plugin fills in."""

from __future__ import annotations

import logging
import re
import weakref
import zipfile
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, runtime_checkable

import torch

from layersync import trees
from layersync.errors import PluginError
from layersync.metrics.weights import WeightFile

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("layersync")
# the backbones whose hidden states' layout check_forward has looked at: it warns once, not every step
_layout_checked: weakref.WeakSet = weakref.WeakSet()


@runtime_checkable
class Backbone(Protocol):
    """A transformer that can hand out the hidden states of its own blocks.

    ``forward(x, t, cond, capture=(k, ...))`` returns ``(out, {k: h_k})``
    where ``h_k`` is the output of block ``k`` (1-based), shape (B, T, D).
    ``drop_cond(cond, drop)`` replaces the condition of the rows where the
    boolean mask ``drop`` is true by the null condition (label dropout, CFG);
    an unconditional backbone returns ``cond`` as it is.
    ``cond`` is a tensor (labels) or a dict of tensors (``layersync.trees``).
    A backbone for data sets that yield ``(x, cond, mask)`` also takes
    ``forward(..., mask=mask)`` and maps data positions to tokens with
    ``token_mask(mask)``.
    """

    depth: int

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, cond, capture: tuple[int, ...] = ()
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]: ...

    def drop_cond(self, cond, drop: torch.Tensor): ...


@runtime_checkable
class Dataset(Protocol):
    """A map-style data set: ``dataset[i]`` is ``(x, cond)``, or ``(x, cond, mask)`` for items of
    varying length (``mask`` marks the real positions of ``x``).

    ``sample_shape`` is the shape of one ``x`` (positive ints), ``num_classes`` the number of class
    labels (0: unconditional or not labels). A data set of cached tokenizer outputs (latents) sets
    ``encoded = True``; ``preview(n) -> (cond, mask or None)`` picks the conditions of n preview
    samples (default: labels cycling through the classes).
    """

    sample_shape: tuple[int, ...]
    num_classes: int

    def __getitem__(self, index: int): ...

    def __len__(self) -> int: ...


def layout_problem(hidden: dict, capture: tuple[int, ...]) -> str | None:
    """What is wrong with the memory layout of the captured hidden states, or None.

    Each sample's (T, D) tokens should lie row-major, channels innermost (the batch stride may be
    anything: a slice of a longer sequence is fine). A transposed token stream, as a patch
    embedding's ``flatten(2).transpose(1, 2)`` leaves it, makes every block copy its input for
    LayerNorm and the matmuls and read one side of each residual add strided, forward and backward.
    """
    for k in capture:
        h = hidden[k]
        tokens, dim = h.shape[-2:]
        if (dim > 1 and h.stride(-1) != 1) or (tokens > 1 and h.stride(-2) != dim):
            return (f"block {k}'s hidden state is not contiguous (shape {tuple(h.shape)}, strides {h.stride()}): "
                    "every block pays a copy; make the token stream contiguous (.contiguous() after patchify)")
    return None


def check_forward(backbone, result, x: torch.Tensor, capture: tuple[int, ...]):
    """``(out, hidden)`` of a backbone's forward, or a PluginError naming the backbone and the broken
    rule. Shapes and types only: nothing is read back from the device. The first call with a capture
    also logs a warning if the hidden states' layout makes every block pay a copy (``layout_problem``)."""
    origin = getattr(backbone, "layersync_origin", f"backbone {type(backbone).__name__}")

    def broken(rule: str):
        return PluginError(f"{origin}: forward(x, t, cond, capture) {rule}")

    if not isinstance(result, tuple) or len(result) != 2:
        raise broken(f"returned {type(result).__name__}; it must return (out, {{block: hidden}})")
    out, hidden = result
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise broken(f"returned out of shape {got}; it must match x, {tuple(x.shape)}")
    if not isinstance(hidden, dict) or any(k not in hidden for k in capture):
        got = sorted(hidden) if isinstance(hidden, dict) else type(hidden).__name__
        raise broken(f"captured {got}; it must return a dict holding blocks {list(capture)}")
    for k in capture:
        h = hidden[k]
        if not isinstance(h, torch.Tensor) or h.dim() != 3 or h.shape[0] != x.shape[0]:
            got = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
            raise broken(f"captured block {k} of shape {got}; it must be (B, T, D) with B = {x.shape[0]}")
    # not while torch.compile traces the step: the logging would break its graph
    if capture and not torch.compiler.is_compiling() and backbone not in _layout_checked:
        _layout_checked.add(backbone)
        problem = layout_problem(hidden, capture)
        if problem:
            log.warning("%s: %s", origin, problem)
    return out, hidden


@runtime_checkable
class Tokenizer(Protocol):
    """Maps data to the space the backbone models and back."""

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...

    def latent_shape(self, sample_shape: tuple[int, ...]) -> tuple[int, ...]: ...


class IdentityTokenizer:
    """For data already in model space (pixels of small images, features)."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def latent_shape(self, sample_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(sample_shape)


@runtime_checkable
class Evaluator(Protocol):
    """Streaming metric: feed batches, then read the numbers.

    Factories take ``weights`` (a local file or folder of the feature network, None: the
    weights folder), ``batch`` and ``device``. An evaluator may also take precomputed
    reference statistics (``use_reference_statistics(stats)``, arrays by name, e.g. ADM's
    ``mu``/``sigma``), which then replace the real side, and hand out those of its real
    side (``reference_statistics() -> dict``) so that they can be stored as an ``.npz``.
    """

    def update(self, samples, real: bool = False) -> None: ...

    def compute(self) -> dict[str, float]: ...


# What a registered or built object must be, by kind: (test, the rule in words). A factory may be
# registered as a "module:attribute" string, imported on first use.
_RULES = {
    "modality": (lambda obj: isinstance(obj, Modality), "a layersync.Modality"),
    "weight": (lambda obj: isinstance(obj, WeightFile), "a layersync.metrics.WeightFile"),
    "factory": (lambda obj: callable(obj) or isinstance(obj, str) and re.fullmatch(r"[\w.]+:[\w.]+", obj),
                "a factory (a callable) or 'module:attribute' naming one"),
    "dataset": (lambda obj: isinstance(obj, Dataset) and isinstance(obj.sample_shape, (tuple, list, torch.Size))
                and all(isinstance(n, Integral) and n > 0 for n in obj.sample_shape)
                and isinstance(obj.num_classes, Integral),
                "a map-style Dataset (__getitem__, __len__) with sample_shape (positive ints) and an int num_classes"),
    "tokenizer": (lambda obj: isinstance(obj, Tokenizer), "a Tokenizer (encode, decode, latent_shape)"),
    "backbone": (lambda obj: isinstance(obj, torch.nn.Module) and isinstance(getattr(obj, "depth", None), Integral)
                 and obj.depth >= 1 and callable(getattr(obj, "drop_cond", None)),
                 "a torch.nn.Module with an int depth >= 1 and drop_cond(cond, drop)"),
    "evaluator": (lambda obj: isinstance(obj, Evaluator), "an Evaluator (update(samples, real), compute())"),
}


def violation(kind: str, obj) -> str | None:
    """The contract ``obj`` breaks as a ``kind`` (modality, weight, factory, dataset, tokenizer, backbone,
    evaluator), as the rule it must keep ("a Tokenizer (encode, ...)"); None if it keeps it. None breaks
    every rule: ``violation(kind, None)`` is the rule itself."""
    test, rule = _RULES[kind]
    return None if test(obj) else rule


# Where an .npz holds samples: arr_0 in a sample set's samples.npz (the modality's array format), samples in
# the .npz of a preview (layersync-sample --out STEM: float, as decoded). Readers take the first present.
SAMPLE_KEYS = ("arr_0", "samples")


def samples_key(names) -> str | None:
    """Which of ``SAMPLE_KEYS`` is among an .npz's array ``names`` first; None if none."""
    return next((key for key in SAMPLE_KEYS if key in names), None)


def npz_samples_key(path: Path) -> str | None:
    """Which of ``SAMPLE_KEYS`` the .npz at ``path`` holds first; None if none, or if it is no readable .npz
    (its reader then says what is wrong)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = {name.removesuffix(".npy") for name in archive.namelist()}
    except (OSError, zipfile.BadZipFile):
        return None
    return samples_key(names)


@runtime_checkable
class SampleSet(Protocol):
    """Samples read from a file or folder for evaluation (``Modality.read_samples``).

    ``batches(size)`` yields what the modality's evaluators' ``update`` takes;
    ``statistics()`` returns reference statistics stored with the set (``{}`` if none).
    A set may define ``check_reference(reference)``, raising ``DataError`` when the
    two cannot be compared (images of other resolutions, say).
    """

    path: Path

    def __len__(self) -> int: ...

    def batches(self, size: int): ...

    def statistics(self) -> dict: ...


@dataclass(frozen=True)
class Modality:
    """What a plugin offers under ``layersync-train --plugin NAME``.

    recipe: the default config file (YAML).
    save_samples: ``save_samples(x, path_stem, info) -> Preview`` writes decoded samples in
        the form people look at (PNG grid, WAV, ...), not ``STEM.npz`` (``layersync-sample``'s
        own arrays); ``info`` is the tokenizer's ``sample_info`` (e.g. ``{"sample_rate": 16000}``),
        ``{}`` if it has none.
    to_array: ``to_array(x) -> ndarray`` turns decoded samples into the array format the
        field's evaluation tools read (images: uint8 NHWC, as in ADM's sample files);
        None keeps the float samples as they are.
    save_items: ``save_items(array, start, folder, info)`` writes each sample of a sample
        set as a file of its own (audio: ``folder/000123.wav``); None writes none.
    read_samples: ``read_samples(path) -> SampleSet``, how ``layersync-eval`` reads a
        samples file or folder and the reference; None: the modality has no evaluation.
    evaluators: the evaluators ``layersync-eval`` runs unless told otherwise.
    cache_recipe: the config whose ``data`` and ``tokenizer`` sections ``layersync-cache``
        encodes with (None: ``recipe``).
    cache_views: ``cache_views(x) -> [x, ...]``, the versions of a batch a latent cache
        stores (images: the batch and its horizontal flip); None stores the batch.
    conditions: ``conditions(values, config, num_classes) -> (cond, mask or None[, facts])``,
        the conditions ``layersync-sample`` draws from, made of its ``--cond`` values (motion:
        texts through the text encoder, action names, or the test split's captions and
        lengths); ``facts`` maps names to one value per condition (e.g. captions), handed
        to ``save_samples``/``save_items`` with the samples; None: ``--cond`` takes class labels
        (a modality whose items' conditions are not labels needs it).
    check_fixture: ``check_fixture(folder) -> ["data.path=...", ...]`` writes into an empty
        folder what the recipe needs to run without user data or published weights (tiny
        random model, a few items) and returns ``--set`` assignments (e.g. ``data.path=...``,
        ``model.path=...``) that ``layersync check-plugin`` applies over the recipe; None: the
        recipe runs as it is.
    """

    name: str
    description: str
    recipe: Path
    save_samples: Callable[[torch.Tensor, Path, dict], Preview]
    to_array: Callable[[torch.Tensor], np.ndarray] | None = None
    save_items: Callable[[np.ndarray, int, Path, dict], None] | None = None
    read_samples: Callable[[Path], SampleSet] | None = None
    evaluators: tuple[str, ...] = ()
    cache_recipe: Path | None = None
    cache_views: Callable[[torch.Tensor], list[torch.Tensor]] | None = None
    conditions: Callable[[list[str], dict, int], tuple] | None = None
    check_fixture: Callable[[Path], list[str]] | None = None


def save_samples(modality: Modality, x: torch.Tensor, stem: Path, info: dict) -> Preview:
    """``modality.save_samples`` as ``layersync-sample`` calls it, its result checked: a Preview of a
    non-empty file, not ``STEM.npz`` (the command's own arrays would replace it). A plain path (plugins
    older than Preview) is a ``"file"`` preview."""
    result = modality.save_samples(x, stem, info)
    preview = result if isinstance(result, Preview) else Preview("file", result)
    path, where = preview.path, f"modality '{modality.name}': save_samples"
    if path is None or not Path(path).is_file() or Path(path).stat().st_size == 0:
        raise PluginError(f"{where} returned {path!r}, not a non-empty file it wrote")
    if Path(path) == Path(stem).with_suffix(".npz"):
        raise PluginError(f"{where} wrote {path}, where layersync-sample keeps its arrays: write another name "
                          "(STEM.png, STEM.npy, ...)")
    return Preview(preview.kind, Path(path), preview.rate)


def condition_pool(modality: Modality, values: list[str], config: dict, num_classes: int) -> tuple:
    """``modality.conditions`` as ``layersync-sample`` calls it, its result checked: ``(cond, mask or None,
    facts)``, N conditions (a tensor or a dict of tensors with N rows), N masks, N values per fact."""
    result = modality.conditions(list(values), config, num_classes)
    where = f"modality '{modality.name}': conditions(values, config, num_classes)"
    if not isinstance(result, tuple) or len(result) not in (2, 3):
        raise PluginError(f"{where} returned {type(result).__name__}; it must return (cond, mask or None[, facts])")
    cond, mask, facts = (*result, {}) if len(result) == 2 else result
    leaves = trees.leaves(cond) if isinstance(cond, (torch.Tensor, dict)) else [None]
    if not leaves or not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in leaves):
        raise PluginError(f"{where} returned cond {type(cond).__name__}; it must be a tensor or a dict of tensors, "
                          "one row per condition")
    n = len(leaves[0])
    if any(len(t) != n for t in leaves):
        raise PluginError(f"{where} returned cond tensors of {sorted({len(t) for t in leaves})} rows; they must agree")
    if mask is not None and not (isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and len(mask) == n):
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise PluginError(f"{where} returned a mask of {got}; it must be None or bool with {n} rows")
    if not isinstance(facts, dict) or any(not hasattr(v, "__len__") or len(v) != n for v in facts.values()):
        raise PluginError(f"{where} returned facts that are not a dict of {n} values per name")
    return cond, mask, facts


def sample_info(tokenizer, dataset=None) -> dict:
    """What writing a decoded sample needs to know (the tokenizer's sample rate, the data set's
    normalisation, ...): ``sample_info`` of the data set, then of the tokenizer. Checkpoints keep it."""
    return {**(getattr(dataset, "sample_info", None) or {}), **(getattr(tokenizer, "sample_info", None) or {})}


@dataclass(frozen=True)
class Preview:
    """What a modality's ``save_samples`` wrote for people to look at, and how loggers show it.

    kind: "image" (PNG, JPEG, ...), "video" (an animated GIF), "audio" (a 16-bit WAV) or "file"
        (anything else; loggers leave it out).
    rate: frames per second of a video, samples per second of audio; None elsewhere.
    """

    kind: str
    path: Path
    rate: float | None = None
