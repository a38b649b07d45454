"""The quality benchmark's metric: a Frechet distance on features of a classifier trained here.

This is NOT Inception FID, FAD, FVD or the T2M evaluator's FID: no published network can be fetched
here. As the motion field builds its evaluator, the features come from a network trained on the same
data set. A small CNN (conv layers of the data's rank: 1-D for spectrograms and motion, 2-D for images,
3-D for clips, masked mean pooling over valid positions) is fitted to the class labels of 80% of the
data set's items, in model space (what the backbone generates: images in [-1, 1], normalised log-mel,
normalised motion features); the other 20% of the items give its held-out accuracy. The score of a
sample set is

- ``fid``: the Frechet distance between the classifier's 64-d penultimate features of the samples
  and of the real items (all of them; where the data set crops at random, seeded crops, several of
  each item when it has fewer than 500);
- ``class_accuracy``: how often the classifier gives a sample the label it was conditioned on.

Samples are drawn for the labels (and masks: motion lengths) of the real items in turn, so both sets
have the same class mix. Numbers are comparable only with the same classifier seed and sample count.

    python -m benchmarks.quality_metric NPZ [NPZ...] [--out FILE.md]

scores the image sample sets in the NPZ files (NAME/samples: uint8 NHWC digits, NAME/cond: labels), e.g. the
ones ``benchmarks/gpu_quality.py`` draws on a GPU, with the image default's metric.
"""

from __future__ import annotations

import argparse
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from layersync import build
from layersync import config as configuration
from layersync.metrics.frechet import GaussianStats, frechet_distance
from layersync.plugins import registry

FEATURES, HOLDOUT, BATCH, LR = 64, 0.2, 64, 2e-3


class Classifier(nn.Module):
    """Three convolutions of the input's rank, masked mean pooling, a 64-d feature layer.

    The convolutions have stride 2, except the first one on clips: a moving digit read through a
    stride-2 first layer aliases with its position, and the classifier memorises instead of reading
    it (held-out accuracy 0.50 on the video default, 0.89 with stride 1)."""

    def __init__(self, shape: tuple[int, ...], num_classes: int, width: int = 32):
        super().__init__()
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[len(shape) - 2]
        channels = [shape[0], width // 2, width, 2 * width]
        strides = [1 if conv is nn.Conv3d else 2, 2, 2]
        self.convs = nn.ModuleList(conv(a, b, 3, stride=s, padding=1)
                                   for a, b, s in zip(channels, channels[1:], strides))
        self.fc1 = nn.Linear(2 * width, FEATURES)
        self.fc2 = nn.Linear(FEATURES, num_classes)

    def features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.convs:
            x = F.gelu(layer(x))
        if mask is None:
            pooled = x.flatten(2).mean(-1)
        else:  # (B, L) valid positions of a 1-D input, taken down to the output's length
            keep = F.adaptive_max_pool1d(mask[:, None].float(), x.shape[-1])
            pooled = (x * keep).sum(-1) / keep.sum(-1).clamp_min(1)
        return F.gelu(self.fc1(pooled))

    def forward(self, x, mask=None):
        return self.fc2(self.features(x, mask))


@dataclass
class RealSet:
    """Model-space rows of a data set, their labels and masks (None: no masks), the item each came from."""

    x: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None
    items: torch.Tensor
    num_classes: int

    def rows(self, index):
        return self.x[index], None if self.masks is None else self.masks[index]


def real_set(config: dict, seed: int = 0, rows: int | None = None) -> RealSet:
    """The config's data set encoded by its tokenizer, random crops seeded: every item (several times
    over if there are fewer than 500), or the first ``rows`` rows cycling through the items."""
    reg = registry()
    dataset, tokenizer = build.dataset(reg, config), build.tokenizer(reg, config)
    rows = rows or len(dataset) * math.ceil(500 / len(dataset))
    index = torch.arange(rows) % len(dataset)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        items = [dataset[int(i)] for i in index]
    x = torch.stack([torch.as_tensor(item[0], dtype=torch.float32) for item in items])
    labels = torch.as_tensor([int(item[1]) for item in items])
    masks = torch.stack([torch.as_tensor(item[2]) for item in items]).bool() if len(items[0]) > 2 else None
    if not getattr(dataset, "encoded", False):
        with torch.no_grad():
            x = torch.cat([tokenizer.encode(part) for part in x.split(256)]).float()
    if masks is not None:
        x = x * masks[:, None]
    return RealSet(x, labels, masks, index, int(labels.max()) + 1)


def fit(real: RealSet, steps: int, seed: int = 0) -> tuple[Classifier, float]:
    """The classifier fitted on the rows of 80% of the items, and its accuracy on the rest."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(int(real.items.max()) + 1, generator=gen)
    held = torch.isin(real.items, order[: max(1, round(HOLDOUT * len(order)))])
    test, train = held.nonzero()[:, 0], (~held).nonzero()[:, 0]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = Classifier(tuple(real.x.shape[1:]), real.num_classes)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=1e-4)
    net.train()
    for _ in range(steps):
        batch = train[torch.randint(len(train), (BATCH,), generator=gen)]
        opt.zero_grad()
        F.cross_entropy(net(*real.rows(batch)), real.labels[batch]).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        heldout = (net(*real.rows(test)).argmax(1) == real.labels[test]).float().mean().item()
    return net, heldout


class Metric:
    """Scores model-space sample sets of one data set against its real items."""

    def __init__(self, config: dict, classifier_steps: int = 3000, seed: int = 0, rows: int | None = None):
        self.real = real_set(config, seed, rows)
        self.net, self.heldout_accuracy = fit(self.real, classifier_steps, seed)
        self.real_stats = GaussianStats.of(self.features(self.real.x, self.real.masks))

    @torch.no_grad()
    def features(self, x, masks=None) -> torch.Tensor:
        parts = [self.net.features(x[i:i + 512], None if masks is None else masks[i:i + 512])
                 for i in range(0, len(x), 512)]
        return torch.cat(parts).double()

    def conditions(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Labels and masks (None: no masks) of n samples: those of the real items in turn."""
        index = torch.arange(n) % len(self.real.labels)
        return self.real.labels[index], None if self.real.masks is None else self.real.masks[index]

    @torch.no_grad()
    def score(self, samples: torch.Tensor, labels: torch.Tensor, masks=None) -> dict:
        samples = samples.float() if masks is None else samples.float() * masks[:, None]
        feats = self.features(samples, masks)
        pred = self.net.fc2(feats.float()).argmax(1)
        return {"n": len(samples), "fid": fid(GaussianStats.of(feats), self.real_stats),
                "class_accuracy": (pred == labels).float().mean().item()}


def fid(a: GaussianStats, b: GaussianStats) -> float:
    return max(frechet_distance(a.mean, a.cov, b.mean, b.cov), 0.0)  # rounding can leave -1e-12


@functools.lru_cache(maxsize=None)
def image_metric(seed: int = 0) -> Metric:
    from layersync_image.plugin import RECIPES

    return Metric(configuration.load(RECIPES / "digits.yaml"), seed=seed)


def score_images_npz(paths: list[str], seed: int = 0) -> str:
    """A Markdown table of every NAME/samples (uint8 NHWC digits) in the npz files, scored with the image
    default's metric, and per arm (NAME = ARM_sSEED) the mean +- std over seeds."""
    metric = image_metric(seed)
    rows = {"real digits (all 1797)": metric.score(metric.real.x, metric.real.labels)}
    for path in paths:
        with np.load(path) as f:
            for key in sorted(k for k in f.files if k.endswith("/samples")):
                name = key[: -len("/samples")]
                x = torch.as_tensor(f[key], dtype=torch.float32).permute(0, 3, 1, 2) / 127.5 - 1  # as the data set reads them
                rows[name] = metric.score(x, torch.as_tensor(f[name + "/cond"], dtype=torch.long))
    lines = ["| run | FID (classifier features) | class accuracy | n |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {r['fid']:.3f} | {r['class_accuracy']:.4f} | {r['n']} |" for name, r in rows.items()]
    arms: dict[str, list[dict]] = {}
    for name, r in rows.items():
        if "_s" in name:
            arms.setdefault(name.rsplit("_s", 1)[0], []).append(r)
    if arms:
        lines += ["", "| arm | seeds | FID (mean ± std) | class accuracy (mean ± std) |", "|---|---:|---:|---:|"]
        for arm, runs in arms.items():
            fid_values, accuracies = [r["fid"] for r in runs], [r["class_accuracy"] for r in runs]
            lines.append(f"| {arm} | {len(runs)} | {np.mean(fid_values):.3f} ± {np.std(fid_values, ddof=min(1, len(runs) - 1)):.3f} | "
                         f"{np.mean(accuracies):.4f} ± {np.std(accuracies, ddof=min(1, len(runs) - 1)):.4f} |")
    lines += ["", f"Classifier held-out accuracy (20% of the digits, seed {seed}): {metric.heldout_accuracy:.4f}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality_metric", description=__doc__.split("\n")[0])
    parser.add_argument("npz", nargs="+", help="npz files with NAME/samples (uint8 NHWC digits) and NAME/cond (labels)")
    parser.add_argument("--out", help="also write the Markdown table to this file")
    parser.add_argument("--seed", type=int, default=0, help="classifier seed (default 0)")
    args = parser.parse_args(argv)
    text = score_images_npz(args.npz, args.seed)
    print(text, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
