"""Motion samples in the forms people use: an animated stick-figure GIF to look at, joints and features as .npy."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from layersync.errors import ConfigError
from layersync.files import atomic
from layersync.interfaces import Preview
from layersync_motion.kinematics import FPS, KIT_KINEMATIC_CHAIN, T2M_KINEMATIC_CHAIN, recover_joints

MAX_FIGURES = 16  # shown in the GIF; the .npy files keep every sample
MAX_GIF_FRAMES = 100  # longer motions are shown at every k-th frame
CELL = 2.6  # metres of scene per grid cell; each cell follows its body's root
CELL_PX = 128
AZIMUTH, ELEVATION = math.radians(-35), math.radians(20)
SKELETONS = {263: (22, T2M_KINEMATIC_CHAIN), 251: (21, KIT_KINEMATIC_CHAIN)}
CHAIN_COLOURS = ("#d62728", "#1f77b4", "#333333", "#d62728", "#1f77b4")  # right leg, left leg, spine, arms
GROUND_COLOUR = "#bbbbbb"


def raw_features(x, info: dict) -> torch.Tensor:
    """(N, T, F) features: ``x`` itself, or with ``mean``/``std`` in ``info`` ``x`` (N, F, T) de-normalised."""
    x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).detach().float().cpu()
    if x.ndim != 3:
        raise ConfigError(f"motion samples must be (N, T, features) or normalised (N, features, T), got "
                          f"{tuple(x.shape)}")
    if "mean" in info and "std" in info:
        mean, std = (torch.as_tensor(np.asarray(info[k], dtype=np.float32)) for k in ("mean", "std"))
        if x.shape[1] != len(mean) or std.shape != mean.shape:
            raise ConfigError(f"normalised motion samples (N, features, T) {tuple(x.shape)} do not match "
                              f"the {len(mean)} features of info's mean/std")
        x = x.transpose(1, 2) * std + mean
    if x.shape[-1] not in SKELETONS:
        raise ConfigError(f"motion samples have {x.shape[-1]} features per frame; expected 263 (HumanML3D) "
                          "or 251 (KIT-ML)")
    return x


def _project(points: np.ndarray) -> np.ndarray:
    """(..., 3) metres -> (..., 2) oblique orthographic view (camera front-right, slightly above)."""
    x, y, z = np.moveaxis(points, -1, 0)
    xr = x * math.cos(AZIMUTH) + z * math.sin(AZIMUTH)
    zr = -x * math.sin(AZIMUTH) + z * math.cos(AZIMUTH)
    return np.stack([xr, y * math.cos(ELEVATION) - zr * math.sin(ELEVATION)], -1)


def _ground(centre: np.ndarray, step: float = 0.5, reach: float = 1.0) -> np.ndarray:
    """Floor grid lines (L, 2, 3) within ``reach`` of the root (XZ ``centre``), fixed to the world."""
    lines = []
    for axis in (0, 2):
        other = 2 - axis
        for c in np.arange(math.ceil((centre[axis] - reach) / step), math.floor((centre[axis] + reach) / step) + 1):
            a, b = np.zeros(3), np.zeros(3)
            a[axis] = b[axis] = c * step
            a[other], b[other] = centre[other] - reach, centre[other] + reach
            lines.append((a, b))
    return np.array(lines).reshape(-1, 2, 3)


def render_gif(joints: np.ndarray, lengths: np.ndarray, chain, fps: float) -> tuple[list[Image.Image], int]:
    """Stick figures of (N, T, J, 3) joints in a grid -> (GIF frames, milliseconds per frame).

    One frame per ``ceil(T / MAX_GIF_FRAMES)`` motion frames; a motion past its length holds its
    last frame.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    n, t = joints.shape[:2]
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(cols * CELL_PX / 100, rows * CELL_PX / 100), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, cols * CELL)
    ax.set_ylim(-rows * CELL, 0)
    ax.set_axis_off()
    bones = [(p, j, colour) for c, colour in zip(chain, CHAIN_COLOURS) for p, j in zip(c, c[1:])]
    ground = LineCollection([], colors=GROUND_COLOUR, linewidths=0.6)
    body = LineCollection([], colors=[colour for *_, colour in bones] * n, linewidths=1.6)
    ax.add_collection(ground)
    ax.add_collection(body)
    offsets = np.array([[(i % cols + 0.5) * CELL, -(i // cols + 0.78) * CELL] for i in range(n)])
    step = max(1, math.ceil(t / MAX_GIF_FRAMES))
    frames = []
    for f in range(0, t, step):
        now = np.minimum(f, lengths - 1)
        pose = joints[np.arange(n), now]  # (N, J, 3)
        centre = pose[:, 0] * np.array([1, 0, 1])
        seg = np.stack([pose[:, [p for p, _, _ in bones]], pose[:, [j for _, j, _ in bones]]], 2)  # (N, B, 2, 3)
        body.set_segments((_project(seg - centre[:, None, None]) + offsets[:, None, None]).reshape(-1, 2, 2))
        floor = [_project(_ground(c) - c) + o for c, o in zip(centre, offsets)]
        ground.set_segments(np.concatenate(floor))
        canvas.draw()
        frames.append(Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3]).convert(
            "P", palette=Image.Palette.ADAPTIVE, colors=32))
    return frames, max(10, round(1000 * step / fps))


def save_motion(x, stem: Path, info: dict | None = None) -> Preview:
    """Motion samples -> ``stem.gif`` (stick figures, up to 16 in a grid), ``stem_features.npy``
    (N, T, F) raw features and ``stem_joints.npy`` (N, T, J, 3) joints, metres, y up. Returns the GIF's preview.

    ``x``: raw HumanML3D (or KIT-ML) features (N, T, F); or, when ``info`` has the data set's
    ``mean`` and ``std``, samples in its normalised space, channels first (N, F, T), as the
    model makes them. ``info`` may also give ``lengths`` (N,) (frames past a sample's
    length are NaN in the .npy files and not shown) and ``fps`` (default 20).
    """
    info = dict(info or {})
    features = raw_features(x, info)
    n, t, width = features.shape
    joints_num, chain = SKELETONS[width]
    lengths = np.asarray(info.get("lengths", [t] * n)).reshape(-1)
    if len(lengths) != n:
        raise ConfigError(f"info['lengths'] has {len(lengths)} values for {n} samples")
    lengths = np.clip(lengths.astype(int), 1, t)
    joints = recover_joints(features, joints_num).numpy()
    features = features.numpy().copy()
    past = np.arange(t)[None] >= lengths[:, None]
    features[past], joints[past] = np.nan, np.nan
    stem = Path(stem)
    for suffix, array in (("_features.npy", features), ("_joints.npy", joints)):
        with atomic(stem.with_name(stem.name + suffix)) as tmp, open(tmp, "wb") as f:
            np.save(f, array)
    fps = float(info.get("fps", FPS))
    frames, ms = render_gif(joints[:MAX_FIGURES], lengths[:MAX_FIGURES], chain, fps)
    path = stem.with_name(stem.name + ".gif")
    with atomic(path) as tmp:
        frames[0].save(tmp, format="gif", save_all=True, append_images=frames[1:], duration=ms, loop=0)
    return Preview("video", path, 1000 / ms)
