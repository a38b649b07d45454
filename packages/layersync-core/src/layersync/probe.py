"""Representation probes (``profile``): how well each block's features encode the class, and how alike blocks are."""

from __future__ import annotations

from typing import Iterable

import torch

from layersync.paths import Path, make_path


def cka_matrix(features) -> torch.Tensor:
    """Centred linear CKA between every pair of (N, D_k) feature matrices, as a float64 matrix.
    Uses the items' Gram matrices, so each pair costs O(N^2) whatever the widths."""
    grams = []
    for X in features:
        X = torch.as_tensor(X, dtype=torch.float64)
        X = X - X.mean(0)
        K = (X @ X.T).flatten()
        norm = K.norm()
        grams.append(K / norm if norm > 0 else K)
    G = torch.stack(grams)
    return G @ G.T


def linear_cka(X, Y) -> float:
    """Centred linear CKA between (N, D1) and (N, D2) features: 1 for representations equal up to
    an orthogonal transform and a scale, near 0 for independent ones."""
    if len(X) != len(Y):
        raise ValueError(f"linear_cka: {len(X)} and {len(Y)} items")
    return float(cka_matrix([X, Y])[0, 1])


def probe_accuracy(features, labels, seed: int = 0, ridge: float = 1.0) -> float:
    """Held-out accuracy of a linear probe: a seeded 50/50 split, features standardised with the
    training half's statistics, ridge regression to one-hot targets solved in closed form."""
    X = torch.as_tensor(features, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    train, test = order[: len(y) // 2], order[len(y) // 2:]
    mean, std = X[train].mean(0), X[train].std(0).clamp_min(1e-8)
    X = torch.cat([(X - mean) / std, torch.ones(len(X), 1, dtype=X.dtype)], dim=1)
    targets = torch.nn.functional.one_hot(y[train], int(y.max()) + 1).to(X.dtype)
    A = X[train]
    W = torch.linalg.solve(A.T @ A + ridge * torch.eye(A.shape[1], dtype=X.dtype), A.T @ targets)
    return float(((X[test] @ W).argmax(1) == y[test]).double().mean())


@torch.no_grad()
def profile(model, batches: Iterable, t: float = 0.5, path: Path | None = None, seed: int = 0) -> dict:
    """Per-block probe accuracy and the block-by-block CKA matrix of a backbone.

    ``batches`` yields (x, labels) in model space; each x is noised to x_t = path.interpolate(x, noise, t)
    (linear path: t * x + (1 - t) * noise) with noise from a generator seeded with ``seed``, and run
    with the null condition, so labels reach the features only through the data. Features are the
    block outputs averaged over tokens."""
    path = path or make_path("linear")
    blocks = tuple(range(1, model.depth + 1))
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    feats, labels = {k: [] for k in blocks}, []
    for x, y in batches:
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x, y = x.to(device), y.to(device)
        tt = torch.full((len(x),), float(t), device=device, dtype=x.dtype)
        xt, _ = path.interpolate(x, noise.to(device), tt)
        _, hidden = model(xt, tt, model.drop_cond(y, torch.ones(len(y), dtype=torch.bool, device=device)),
                          capture=blocks)
        for k in blocks:
            feats[k].append(hidden[k].float().mean(1).cpu())
        labels.append(y.cpu())
    feats = {k: torch.cat(v) for k, v in feats.items()}
    labels = torch.cat(labels)
    return {
        "depth": len(blocks),
        "accuracy": [probe_accuracy(feats[k], labels, seed) for k in blocks],
        "cka": cka_matrix([feats[k] for k in blocks]).tolist(),
    }


def paper_pair(depth: int) -> tuple[int, int]:
    """The reference's SiT-XL/2 pair (8, 16 of 28 blocks) scaled to ``depth`` blocks."""
    if depth < 2:
        raise ValueError(f"a LayerSync pair needs at least 2 blocks, the model has {depth}")
    student = max(1, round(depth * 8 / 28))
    return student, min(depth, max(student + 1, round(depth * 16 / 28)))


def suggest_pair(accuracy: list[float], cka: list[list[float]], tail: float = 0.2) -> tuple[int, int, list[str]]:
    """A (student, teacher) pair (1-based) from a probe profile, and the reasons, one line each.

    The teacher is the block with the best probe accuracy outside the last ``tail`` of the blocks
    (the last blocks turn back towards the output and the paper avoids them) and past block 1; ties
    go to the deeper block. The student sits at about half the teacher's depth, where the pull has
    room to add what the teacher knows (the CKA between the two says how much they already share)."""
    depth = len(accuracy)
    if depth < 2:
        raise ValueError(f"a LayerSync pair needs at least 2 blocks, the profile has {depth}")
    last = max(2, int(depth * (1 - tail)))
    teacher = max(range(2, last + 1), key=lambda k: (accuracy[k - 1], k))
    student = max(1, round(teacher / 2))
    shared = cka[student - 1][teacher - 1]
    reasons = [
        f"teacher {teacher}: the best probe accuracy ({accuracy[teacher - 1]:.3f}) among blocks 2..{last}, "
        f"leaving out the last {depth - last} of {depth} blocks",
        f"student {student}: about half the teacher's depth; its probe accuracy is {accuracy[student - 1]:.3f}",
        f"CKA(student, teacher) = {shared:.3f}: "
        + ("they already share most of their structure, so expect a small effect" if shared > 0.9
           else "room for the student to move towards the teacher"),
    ]
    return student, teacher, reasons
