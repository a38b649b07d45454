"""Digits quality metric: FID and class-consistency of 16x16 digit samples.

python -m benchmarks.digits_metric NPZ [--out FILE.md] scores every NAME/samples (uint8 NHWC,
with NAME/cond its class labels) in NPZ and prints a Markdown table.

This is NOT Inception FID. As with the motion field's evaluator, the features come from a
network trained on the same data set: a small CNN classifier fitted (seeded, on CPU, in
seconds) to 80% of scikit-learn's 1,797 digits upsampled to 16x16 as
``layersync_image.data.DigitsDataset`` does; the other 20% give its held-out accuracy.
FID is the Frechet distance between the classifier's penultimate (64-d) features of the
samples and of all 1,797 real digits; class accuracy is how often the classifier gives a
sample its conditioning label. Real and generated images go through the same path:
uint8 -> [-1, 1]. Numbers are only comparable with the same seed, and FID depends on the
number of samples (the split-half floor compares two halves of ~900 real digits).
"""

from __future__ import annotations

import argparse
import functools
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from layersync.metrics.frechet import GaussianStats, frechet_distance
from layersync_image.data import DigitsDataset
from layersync_image.output import to_uint8_nhwc

EPOCHS, BATCH, LR, HOLDOUT = 15, 64, 2e-3, 0.2


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x))


def to_input(images_uint8_nhwc) -> torch.Tensor:
    """uint8 (N, 16, 16, 1) -> float (N, 1, 16, 16) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images_uint8_nhwc), dtype=torch.float32).permute(0, 3, 1, 2)
    return x / 127.5 - 1


def real_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits at 16x16 as uint8 NHWC (rounded as the samples are) and their labels."""
    data = DigitsDataset(16)
    return to_uint8_nhwc(data.images), data.labels.numpy()


@functools.lru_cache(maxsize=None)
def evaluator(seed: int = 0) -> dict:
    """Train the classifier on 80% of the real digits; its held-out accuracy and the real feature stats."""
    images, labels = real_digits()
    x, y = to_input(images), torch.as_tensor(labels)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=gen)
    n_test = round(HOLDOUT * len(x))
    test, train = order[:n_test], order[n_test:]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = Classifier()
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    net.train()
    for _ in range(EPOCHS):
        for batch in train[torch.randperm(len(train), generator=gen)].split(BATCH):
            opt.zero_grad()
            F.cross_entropy(net(x[batch]), y[batch]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        heldout = (net(x[test]).argmax(1) == y[test]).float().mean().item()
        real = net.features(x).double()
    return {"net": net, "heldout_accuracy": heldout, "real_features": real, "real_stats": GaussianStats.of(real)}


def fid(a: GaussianStats, b: GaussianStats) -> float:
    return max(frechet_distance(a.mean, a.cov, b.mean, b.cov), 0.0)  # rounding can leave -1e-12


def score(samples_uint8_nhwc, labels, seed: int = 0) -> dict:
    """FID against all real digits, class accuracy w.r.t. ``labels``, and simple stats of the samples."""
    ev = evaluator(seed)
    x, y = to_input(samples_uint8_nhwc), torch.as_tensor(np.asarray(labels), dtype=torch.long)
    with torch.no_grad():
        feats = ev["net"].features(x)
        probs = ev["net"].fc2(feats).softmax(1)
    pred = probs.argmax(1)
    share = torch.bincount(pred, minlength=10).double() / len(pred)
    return {
        "n": len(x),
        "fid": fid(GaussianStats.of(feats.double()), ev["real_stats"]),
        "class_accuracy": (pred == y).float().mean().item(),
        "confidence": probs.max(1).values.mean().item(),  # mean top softmax probability
        "pred_entropy": -(share[share > 0] * share[share > 0].log()).sum().item(),  # ln 10 = 2.303 when balanced
        "mean_pixel": x.mean().item(),  # in [-1, 1]
    }


def split_half_fid(seed: int = 0) -> float:
    """FID between two random halves of the real digits' features: the floor a perfect generator nears."""
    real = evaluator(seed)["real_features"]
    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed + 1))
    half = len(real) // 2
    return fid(GaussianStats.of(real[order[:half]]), GaussianStats.of(real[order[half:]]))


def table(npz_path: str, seed: int = 0) -> str:
    with np.load(npz_path) as f:
        runs = {k[: -len("/samples")]: (f[k], f[k[: -len("/samples")] + "/cond"]) for k in f.files
                if k.endswith("/samples")}
    images, labels = real_digits()
    rows = {"real digits (all 1797)": score(images, labels, seed)}
    rows.update({name: score(s, c, seed) for name, (s, c) in runs.items()})
    lines = ["| run | FID | class accuracy | confidence | pred. entropy | mean pixel | n |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {name} | {r['fid']:.3f} | {r['class_accuracy']:.4f} | {r['confidence']:.4f} | "
              f"{r['pred_entropy']:.3f} | {r['mean_pixel']:+.3f} | {r['n']} |" for name, r in rows.items()]
    ev = evaluator(seed)
    lines += ["", f"Classifier held-out accuracy (20% of the digits, seed {seed}): {ev['heldout_accuracy']:.4f}",
              f"Real split-half FID (two random halves of the 1797 digits, ~900 each): {split_half_fid(seed):.3f}",
              f"Prediction entropy of a uniform class mix: ln 10 = {math.log(10):.3f}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.digits_metric", description=__doc__.split("\n")[0])
    parser.add_argument("npz", help="npz with NAME/samples (uint8 NHWC) and NAME/cond (labels)")
    parser.add_argument("--out", help="also write the Markdown table to this file")
    parser.add_argument("--seed", type=int, default=0, help="classifier seed (default 0)")
    args = parser.parse_args(argv)
    text = table(args.npz, args.seed)
    print(text, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
