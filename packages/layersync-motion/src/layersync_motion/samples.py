"""Motion sample sets on disk, in the HumanML3D layout, and the conditions they are drawn from.

``layersync-sample`` writes each sample as ``DIR/new_joint_vecs/000123.npy`` (raw features,
its own length) and, when it was drawn from a caption, ``DIR/texts/000123.txt`` (the caption
with its ``word/POS`` tokens). ``layersync-eval --plugin motion`` reads such a folder, a
HumanML3D-layout data set (``<split>.txt`` chooses the ids if present: ``test`` by default)
or a preview's ``.npz`` (``layersync-sample --out STEM``: normalised ``samples`` with the run's
``mean``/``std``, ``lengths`` and ``captions``) as motion batches for the text-to-motion evaluator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from layersync.data import inside
from layersync.errors import ConfigError, DataError
from layersync.files import atomic
from layersync.interfaces import npz_samples_key
from layersync_motion.evaluate import MotionBatch
from layersync_motion.output import raw_features
from layersync_motion.t2m import MAX_MOTION_LENGTH, caption_tokens

SPLIT = "test"


def save_items(array: np.ndarray, start: int, folder: Path, info: dict) -> None:
    """One sample set entry per sample, in the HumanML3D layout (see the module docstring)."""
    if "mean" not in info:
        raise ConfigError("writing motion needs the data set's normalisation (sample_info has no mean/std)")
    features = raw_features(array, info).numpy()
    lengths = info.get("lengths") or [features.shape[1]] * len(features)
    captions = info.get("captions") or [None] * len(features)
    for i, (motion, length, caption) in enumerate(zip(features, lengths, captions, strict=True), start=start):
        with atomic(Path(folder) / "new_joint_vecs" / f"{i:06d}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, motion[: int(length)])
        if caption is not None:
            with atomic(Path(folder) / "texts" / f"{i:06d}.txt") as tmp:
                tmp.write_text(f"{caption}#0.0#0.0\n")


class MotionFolder:
    """Motions (and captions) of a HumanML3D-layout folder: clips longer than 196 frames keep their
    first 196, as the evaluator pads to that; the first caption of each file is its text."""

    def __init__(self, path: Path, split: str = SPLIT):
        self.path = Path(path)
        folder = self.path / "new_joint_vecs"
        if not folder.is_dir():
            raise DataError(f"{self.path} is not a HumanML3D-layout folder: {folder} is missing")
        split_file = self.path / f"{split}.txt"
        if split_file.is_file():
            ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
            self.files = [inside(folder, f"{i}.npy", f"the split file {split_file}") for i in ids]
        else:
            self.files = sorted(folder.glob("*.npy"))
        if not self.files:
            raise DataError(f"{folder} holds no motions (.npy)")

    def __len__(self):
        return len(self.files)

    def _motion(self, file: Path) -> np.ndarray:
        try:
            motion = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read motion file {file}: {exc}") from None
        if motion.ndim != 2 or motion.shape[1] != 263 or not np.isfinite(motion).all():
            raise DataError(f"motion file {file}: expected finite (frames, 263) features, got {motion.dtype} "
                            f"{motion.shape}{'' if np.isfinite(motion).all() else ' with NaN or inf'}")
        return motion[:MAX_MOTION_LENGTH].astype(np.float32)

    def _caption(self, file: Path):
        text = self.path / "texts" / f"{file.stem}.txt"
        if not text.is_file():
            return None
        lines = [line for line in text.read_text().splitlines() if line.strip()]
        return caption_tokens(lines[0]) if lines else None

    def batches(self, size: int):
        for start in range(0, len(self.files), size):
            files = self.files[start : start + size]
            motions = [self._motion(f) for f in files]
            captions = [self._caption(f) for f in files]
            padded = np.zeros((len(files), max(len(m) for m in motions), 263), np.float32)
            for row, motion in zip(padded, motions):
                row[: len(motion)] = motion
            yield MotionBatch(padded, [len(m) for m in motions], None if None in captions else captions)

    def statistics(self) -> dict:
        return {}


class StatisticsFile:
    """Stored reference statistics (``mu_t2m``/``sigma_t2m``, as ``--save-ref-stats`` writes them)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            with np.load(self.path, allow_pickle=False) as archive:
                self.stats = {key: archive[key] for key in archive.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.path} is not a readable .npz of statistics ({exc})") from None

    def __len__(self):
        return 0

    def batches(self, size: int):
        return iter(())

    def statistics(self) -> dict:
        return self.stats


class PreviewMotions:
    """The samples of a preview's .npz, de-normalised, each cut to its length (and 196 frames)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with np.load(self.path, allow_pickle=False) as archive:
            info = {key: archive[key] for key in archive.files}
        try:
            self.features = raw_features(info["samples"], info).numpy()[:, :MAX_MOTION_LENGTH]
        except ConfigError as exc:
            raise DataError(f"{self.path}: {exc}") from None
        lengths = info.get("lengths", np.full(len(self.features), self.features.shape[1]))
        self.lengths = np.minimum(lengths, self.features.shape[1]).tolist()
        self.captions = [caption_tokens(str(line)) for line in info["captions"]] if "captions" in info else None

    def __len__(self):
        return len(self.features)

    def batches(self, size: int):
        for start in range(0, len(self), size):
            rows = slice(start, start + size)
            captions = None if self.captions is None else self.captions[rows]
            yield MotionBatch(self.features[rows], self.lengths[rows], captions)

    def statistics(self) -> dict:
        return {}


def read_samples(path: Path):
    """The ``read_samples`` of the motion modality."""
    if Path(path).is_dir():
        return MotionFolder(path)
    return PreviewMotions(path) if npz_samples_key(path) == "samples" else StatisticsFile(path)


def conditions(values: list[str], config: dict, num_classes: int):
    """What ``layersync-sample`` draws from (``Modality.conditions``): ``(cond, mask, facts)``.

    A text model: ``--cond`` texts (full length, no POS tokens: no R-precision for them), else
    every item of the data set's test split with its first caption and length (MDM's protocol;
    ``facts`` carries the captions with their tokens). An action model: ``--cond`` action names
    (default: every class), each with the length of one of its test items. Unconditional: the
    test items' lengths.
    """
    from layersync_motion.data import UNIT, MotionDataset

    options = {k: v for k, v in config["data"].items() if k != "name"}
    condition, frames = options.get("condition", "text"), options.get("max_frames", 196)
    if condition == "text" and values:
        from layersync_motion.text import TextEncoder

        embeddings = TextEncoder(options.get("text_encoder")).encode(list(values)).float()
        return {"text": embeddings}, torch.ones(len(values), frames, dtype=torch.bool), {}
    if condition != "action" and values:
        raise ConfigError("--cond given, but the checkpoint's model is unconditional")
    data = MotionDataset(**{**options, "split": SPLIT})
    items = data.items
    if condition == "action":
        wanted = list(values) or data.classes
        unknown = [v for v in wanted if v not in data.classes]
        if unknown:
            raise ConfigError(f"--cond {unknown[0]} is not an action of this model (known: {', '.join(data.classes)})")
        items = [next(it for it in data.items if it.label == data.classes.index(name)) for name in wanted]
    lengths = torch.tensor([min((it.stop - it.start) // UNIT * UNIT, frames) for it in items])
    mask = torch.arange(frames) < lengths[:, None]
    if condition == "text":
        first = [it.captions[0] for it in items]
        lines = [f"{data.captions[c]}#{' '.join(data.tokens[c])}" for c in first]
        return {"text": data.embeddings[first]}, mask, {"captions": lines}
    return torch.tensor([it.label for it in items]), mask, {}
