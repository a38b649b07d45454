"""The contracts a modality plugin fills in."""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, runtime_checkable

import torch

from layersync.errors import PluginError

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
    save_samples: ``save_samples(x, path_stem, info) -> Path`` writes decoded samples in
        the form people look at (PNG grid, WAV, ...); ``info`` is the tokenizer's
        ``sample_info`` (e.g. ``{"sample_rate": 16000}``), ``{}`` if it has none.
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
        to ``save_samples``/``save_items`` with the samples; None: ``--cond`` takes class labels.
    check_fixture: ``check_fixture(folder) -> ["data.path=...", ...]`` writes into an empty
        folder what the recipe needs to run without user data or published weights (tiny
        random model, a few items) and returns ``--set`` assignments (e.g. ``data.path=...``,
        ``model.path=...``) that ``layersync check-plugin`` applies over the recipe; None: the
        recipe runs as it is.
    """

    name: str
    description: str
    recipe: Path
    save_samples: Callable[[torch.Tensor, Path, dict], Path]
    to_array: Callable[[torch.Tensor], np.ndarray] | None = None
    save_items: Callable[[np.ndarray, int, Path, dict], None] | None = None
    read_samples: Callable[[Path], SampleSet] | None = None
    evaluators: tuple[str, ...] = ()
    cache_recipe: Path | None = None
    cache_views: Callable[[torch.Tensor], list[torch.Tensor]] | None = None
    conditions: Callable[[list[str], dict, int], tuple] | None = None
    check_fixture: Callable[[Path], list[str]] | None = None


def sample_info(tokenizer, dataset=None) -> dict:
    """What writing a decoded sample needs to know (the tokenizer's sample rate, the data set's
    normalisation, ...): ``sample_info`` of the data set, then of the tokenizer. Checkpoints keep it."""
    return {**(getattr(dataset, "sample_info", None) or {}), **(getattr(tokenizer, "sample_info", None) or {})}
