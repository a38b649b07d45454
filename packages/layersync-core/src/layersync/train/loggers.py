"""Where a run's numbers go: ``train.loggers`` names the writers.

``jsonl``: ``RUN/metrics.jsonl``, one JSON record per log step (what resume, ``curves.png`` and ``layersync report``
read), and ``RUN/curves.png`` redrawn at each sample step.
``tensorboard``: event files in ``RUN/tensorboard/`` (``torch.utils.tensorboard``): each record's numbers as scalars
``train/KEY`` plus ``train/step_s``, and the preview samples by their ``Preview.kind``: an image, a video's first
frame as an image (``add_video`` would need moviepy), audio at its rate.
``wandb``: a Weights & Biases run kept in ``RUN/wandb/`` (``WANDB_MODE=offline``: no network) with the same, the
config and the git commit of the code; ``pip install 'layersync-core[wandb]'``.

The trainer calls them on process 0 only, between steps: ``log`` at log steps, ``samples`` at sample steps.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import uuid
import wave
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from layersync.curves import write_curves
from layersync.errors import ConfigError
from layersync.files import atomic
from layersync.interfaces import Preview

LoggerName = Literal["jsonl", "tensorboard", "wandb"]  # the keys of WRITERS
# the package each optional logger imports, and how to install it
NEEDS = {"tensorboard": ("tensorboard", "pip install tensorboard"),
         "wandb": ("wandb", "pip install 'layersync-core[wandb]'")}


def default_loggers() -> list[str]:
    """``[jsonl]``, plus ``tensorboard`` where its package is installed."""
    return ["jsonl", "tensorboard"] if importlib.util.find_spec("tensorboard") else ["jsonl"]


def check(names) -> None:
    """Every named logger's package is installed (the config has checked the names)."""
    for name in names:
        package, install = NEEDS.get(name, (None, None))
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(f"train.loggers: {name} needs the {package} package ({install}), or leave it out")


def scalars(record: dict, batch_size: int) -> dict[str, float]:
    """A log record's finite numbers (not ``step``), and the seconds per step."""
    out = {k: float(v) for k, v in record.items()
           if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}
    if out.get("samples_per_s"):
        out["step_s"] = batch_size / out["samples_per_s"]
    return out


def git_commit() -> str | None:
    """The commit of the checkout this code runs from; None outside one or without git."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def read_wav(path: Path) -> np.ndarray | None:
    """A 16-bit PCM WAV (what the audio modality writes) as mono floats in [-1, 1]; else None."""
    with wave.open(str(path)) as f:
        if f.getsampwidth() != 2:
            return None
        channels, frames = f.getnchannels(), f.readframes(f.getnframes())
    return np.frombuffer(frames, "<i2").reshape(-1, channels).mean(1) / 32768.0


class Jsonl:
    def __init__(self, out: Path, config: dict, step: int):
        self.out = out
        self.file = open(out / "metrics.jsonl", "a")

    def log(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def samples(self, step: int, preview: Preview) -> None:
        write_curves(self.out)

    def close(self) -> None:
        self.file.close()


class TensorBoard:
    def __init__(self, out: Path, config: dict, step: int):
        from torch.utils.tensorboard import SummaryWriter

        # resumed: events after the checkpoint's step, left by the run that stopped, are dropped on reading
        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=step + 1 if step else None)
        self.batch_size = config["train"]["batch_size"]

    def log(self, record: dict) -> None:
        for key, value in scalars(record, self.batch_size).items():
            self.writer.add_scalar(f"train/{key}", value, record["step"])
        self.writer.flush()

    def samples(self, step: int, preview: Preview) -> None:
        if preview.kind in ("image", "video"):  # of a GIF, its first frame
            with Image.open(preview.path) as image:
                self.writer.add_image("samples", np.asarray(image.convert("RGB")), step, dataformats="HWC")
        elif preview.kind == "audio" and (audio := read_wav(preview.path)) is not None:
            self.writer.add_audio("samples/audio", audio[None], step, sample_rate=preview.rate)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Wandb:
    def __init__(self, out: Path, config: dict, step: int):
        import wandb

        self.wandb, self.batch_size = wandb, config["train"]["batch_size"]
        id_file = out / "wandb" / "layersync_run_id"  # a resumed run goes on in the same wandb run
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "layersync"), name=out.name, id=run_id,
                              resume="allow", dir=str(out), config={**config, "git_commit": git_commit()})
        if not id_file.exists():
            with atomic(id_file) as tmp:
                tmp.write_text(run_id + "\n")

    def log(self, record: dict) -> None:
        self.run.log({f"train/{k}": v for k, v in scalars(record, self.batch_size).items()}, step=record["step"])

    def samples(self, step: int, preview: Preview) -> None:
        path = str(preview.path)
        if preview.kind == "image":
            self.run.log({"samples": self.wandb.Image(path)}, step=step)
        elif preview.kind == "video":
            self.run.log({"samples": self.wandb.Video(path, format="gif")}, step=step)
        elif preview.kind == "audio":
            self.run.log({"samples/audio": self.wandb.Audio(path)}, step=step)

    def close(self) -> None:
        self.run.finish()


WRITERS = {"jsonl": Jsonl, "tensorboard": TensorBoard, "wandb": Wandb}


class Loggers:
    """The writers ``names`` asks for, opened for a run folder at ``step`` (0, or the step resumed from)."""

    def __init__(self, names, out: Path, config: dict, step: int):
        self.writers = []
        try:
            for name in dict.fromkeys(names):  # a name given twice logs once
                self.writers.append(WRITERS[name](out, config, step))
        except BaseException:
            self.close()
            raise

    def log(self, record: dict) -> None:
        for writer in self.writers:
            writer.log(record)

    def samples(self, step: int, preview: Preview) -> None:
        """The previews of ``step`` are written: ``preview`` is what ``interfaces.save_samples`` returned."""
        for writer in self.writers:
            writer.samples(step, preview)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
