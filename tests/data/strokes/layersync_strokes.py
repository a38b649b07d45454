"""A third-party plugin written from docs/writing-a-plugin.md alone (the acceptance fixture of issue 24).

Pen strokes of 20-64 points, channels first (x, y) and padded to 64 with a mask; the condition is
``{"shape": one-hot of 3, "scale": (sx, sy)}``; core's ``sit1d`` with ``cond_dims``; a Fréchet
distance on features of the valid points of each stroke.
"""

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from layersync import ConfigError, DataError, Modality, atomic, hookimpl
from layersync.interfaces import Preview
from layersync.metrics import GaussianStats, frechet_distance

LAYERSYNC_PLUGIN_API = 1

SHAPES = ("circle", "line", "zigzag")
FRAMES, SHORTEST = 64, 20
PREVIEW_STEPS = (20, 42, 64)


def stroke(shape: int, scale: torch.Tensor, steps: int) -> torch.Tensor:
    """(2, FRAMES): the stroke's x and y over its first ``steps`` points, zeros after them."""
    s = torch.linspace(0, 1, steps)
    if SHAPES[shape] == "circle":
        xy = torch.stack([torch.cos(2 * torch.pi * s), torch.sin(2 * torch.pi * s)])
    elif SHAPES[shape] == "line":
        xy = torch.stack([2 * s - 1, 1 - 2 * s])
    else:
        xy = torch.stack([2 * s - 1, 2 * (3 * s % 1 - 0.5).abs() * 2 - 1])
    out = torch.zeros(2, FRAMES)
    out[:, :steps] = 0.8 * scale[:, None] * xy
    return out


def condition(shape: int, scale) -> dict:
    return {"shape": torch.nn.functional.one_hot(torch.tensor(shape), len(SHAPES)).float(),
            "scale": torch.as_tensor(scale, dtype=torch.float32)}


def stack(conds: list[dict]) -> dict:
    return {key: torch.stack([c[key] for c in conds]) for key in conds[0]}


def masks(lengths) -> torch.Tensor:
    return torch.arange(FRAMES) < torch.as_tensor(lengths)[:, None]


class Strokes(Dataset):
    """Item i: shape i % 3, a scale in [0.5, 1.5)^2 (never zero) and a length, from a generator seeded with i."""

    sample_shape = (2, FRAMES)
    num_classes = 0  # conditions are dicts, not class labels

    def __init__(self, size: int = 512):
        self.size = size

    def __len__(self):
        return self.size

    def item(self, i: int):
        g = torch.Generator().manual_seed(i)
        scale = 0.5 + torch.rand(2, generator=g)
        steps = int(torch.randint(SHORTEST, FRAMES + 1, (), generator=g))
        x = stroke(i % len(SHAPES), scale, steps)
        x[:, :steps] += 0.02 * torch.randn(2, steps, generator=g)
        return x, condition(i % len(SHAPES), scale), steps

    def __getitem__(self, i):
        x, cond, steps = self.item(i)
        return x, cond, torch.arange(FRAMES) < steps

    def preview(self, n: int):
        """Each shape at scale (1, 1), the lengths of PREVIEW_STEPS in turn."""
        conds = [condition(k % len(SHAPES), (1.0, 1.0)) for k in range(n)]
        return stack(conds), masks([PREVIEW_STEPS[k % len(PREVIEW_STEPS)] for k in range(n)])


def conditions(values: list[str], config: dict, num_classes: int):
    """``--cond SHAPE[:SX,SY[:STEPS]]`` (default: each shape at scale 1 at each preview length)."""
    wanted = values or [f"{shape}:1,1:{steps}" for shape in SHAPES for steps in PREVIEW_STEPS]
    conds, lengths, names = [], [], []
    for value in wanted:
        shape, _, rest = value.partition(":")
        scale, _, steps = rest.partition(":")
        if shape not in SHAPES:
            raise ConfigError(f"--cond {value}: unknown shape '{shape}' (known: {', '.join(SHAPES)})")
        try:
            sx, sy = (float(v) for v in (scale or "1,1").split(","))
            steps = int(steps or FRAMES)
        except ValueError:
            raise ConfigError(f"--cond {value}: expected SHAPE[:SX,SY[:STEPS]]") from None
        if sx == sy == 0 or not SHORTEST <= steps <= FRAMES:
            raise ConfigError(f"--cond {value}: a scale of zeros is the null condition; steps run {SHORTEST}..{FRAMES}")
        conds.append(condition(SHAPES.index(shape), (sx, sy)))
        lengths.append(steps)
        names.append(shape)
    return stack(conds), masks(lengths), {"shape": names}


def save_strokes(x: torch.Tensor, stem: Path, info: dict) -> Preview:
    """``stem.npy``: the strokes, zero past their lengths (``STEM.npz`` is layersync-sample's own file)."""
    lengths = np.asarray(info.get("lengths", [FRAMES] * len(x)))
    path = Path(stem).with_suffix(".npy")
    with atomic(path) as tmp, open(tmp, "wb") as f:
        np.save(f, x.numpy() * (np.arange(FRAMES) < lengths[:, None])[:, None])
    return Preview("file", path)


class StrokeSet:
    """A sample set's ``samples.npz`` (``arr_0``, ``lengths``), or a folder holding one."""

    def __init__(self, path: Path):
        self.path = Path(path) / "samples.npz" if Path(path).is_dir() else Path(path)
        try:
            with np.load(self.path) as archive:
                self.strokes, self.lengths = archive["arr_0"], archive["lengths"]
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{self.path} is not a stroke set (.npz with arr_0 and lengths): {exc}") from None

    def __len__(self):
        return len(self.strokes)

    def batches(self, size: int):
        for start in range(0, len(self), size):
            yield self.strokes[start : start + size], self.lengths[start : start + size]

    def statistics(self) -> dict:
        return {}


def write_reference(path, num: int = 512, size: int = 512) -> Path:
    """``num`` items of ``Strokes(size)`` in the sample-set layout: ``layersync-eval --ref PATH``."""
    items = [Strokes(size).item(i) for i in range(min(num, size))]
    with atomic(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, arr_0=torch.stack([x for x, _, _ in items]).numpy(), lengths=np.array([n for _, _, n in items]))
    return Path(path)


class StrokeFD:
    """Fréchet distance between features of the valid points: mean, spread, path length, length."""

    def __init__(self, weights=None, batch: int = 50, device="cpu"):
        self.stats = {True: GaussianStats(6), False: GaussianStats(6)}

    def update(self, samples, real: bool = False) -> None:
        strokes, lengths = (torch.as_tensor(np.asarray(a)) for a in samples)
        valid = masks(lengths).to(strokes.dtype)[:, None]
        count = valid.sum(-1)
        mean = (strokes * valid).sum(-1) / count
        spread = (((strokes - mean[..., None]) ** 2 * valid).sum(-1) / count).sqrt()
        steps = (strokes.diff(dim=-1).norm(dim=1) * valid[:, 0, 1:]).sum(-1, keepdim=True)
        self.stats[real].update(torch.cat([mean, spread, steps, count[:, :1] / FRAMES], 1))

    def compute(self) -> dict[str, float]:
        fake, ref = self.stats[False], self.stats[True]
        return {"fd_strokes": frechet_distance(fake.mean, fake.cov, ref.mean, ref.cov)}


@hookimpl
def layersync_modalities():
    recipe = Path(__file__).with_name("strokes.yaml")
    return {"strokes": Modality("strokes", "pen strokes with a shape and a scale", recipe, save_strokes,
                                read_samples=StrokeSet, evaluators=("strokes-fd",), conditions=conditions)}


@hookimpl
def layersync_datasets():
    return {"strokes": Strokes}


@hookimpl
def layersync_evaluators():
    return {"strokes-fd": StrokeFD}
