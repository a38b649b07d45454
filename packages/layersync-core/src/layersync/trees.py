"""Conditions as trees: a tensor, or a dict of tensors (possibly nested), handled alike everywhere.

Labels are one tensor; text conditions are e.g. ``{"text": (B, D) embeddings}``. The data
loader, the captured step's static buffers, CFG in the sampler and label dropout all go
through these helpers, so a backbone may take either.
"""

from __future__ import annotations

from typing import Callable

import torch

Tree = torch.Tensor | dict


def tree_map(fn: Callable, tree, *others):
    """``fn`` applied leaf by leaf to ``tree`` (and the matching leaves of ``others``)."""
    if isinstance(tree, dict):
        return {key: tree_map(fn, value, *(o[key] for o in others)) for key, value in tree.items()}
    return fn(tree, *others)


def leaves(tree) -> list:
    if isinstance(tree, dict):
        return [leaf for value in tree.values() for leaf in leaves(value)]
    return [tree]


def to_device(tree, device, non_blocking: bool = False):
    return tree_map(lambda t: t.to(device, non_blocking=non_blocking), tree)


def clone(tree):
    return tree_map(torch.Tensor.clone, tree)


def copy_(destination, source) -> None:
    """Copy ``source`` into the same-shaped buffers of ``destination`` (a captured graph's inputs)."""
    for dst, src in zip(leaves(destination), leaves(source), strict=True):
        if dst.shape != src.shape:
            raise ValueError(f"a condition of shape {tuple(src.shape)} does not fit the buffer {tuple(dst.shape)}")
        dst.copy_(src, non_blocking=True)


def cat(trees: list):
    """Concatenate along the batch axis, leaf by leaf."""
    return tree_map(lambda *parts: torch.cat(parts), *trees)


def rows(tree, index):
    """The rows ``index`` (a slice or an index tensor) of every leaf."""
    return tree_map(lambda t: t[index], tree)


def batch_size(tree) -> int:
    return len(leaves(tree)[0])
