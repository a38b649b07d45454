"""Published weights that evaluators and tokenizers need, found locally and verified.

Nothing is downloaded at run time: a file is looked up in
``$LAYERSYNC_WEIGHTS_DIR`` (default ``~/.cache/layersync/weights``), its size
and SHA-256 are checked, and a missing or wrong file is an error that says
what to fetch, from where, and where to put it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from layersync.errors import DataError


class MissingWeightsError(DataError):
    """A weight file is absent or not the expected one."""


@dataclass(frozen=True)
class WeightFile:
    name: str  # registry key
    filename: str
    url: str
    size: int | None  # bytes; None where not published
    sha256: str | None  # hex digest, or its published prefix (torch.hub style); None if unknown
    licence: str = ""


def weights_dir() -> Path:
    """``$LAYERSYNC_WEIGHTS_DIR``, else ``~/.cache/layersync/weights``; a MissingWeightsError where that is a file."""
    variable = os.environ.get("LAYERSYNC_WEIGHTS_DIR")
    folder = Path(variable) if variable else Path.home() / ".cache" / "layersync" / "weights"
    if folder.exists() and not folder.is_dir():
        named = f"LAYERSYNC_WEIGHTS_DIR={folder} names" if variable else f"the default weights folder {folder} is"
        raise MissingWeightsError(f"{named} a file, not a folder: point LAYERSYNC_WEIGHTS_DIR at the folder that "
                                  "holds (or will hold) the weights")
    return folder


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fetch_hint(weight: WeightFile, target: Path) -> str:
    return (f"fetch it with `layersync fetch {weight.name}`, or: "
            f"mkdir -p {target.parent} && curl -L -o {target} {weight.url}")


def resolve_weights(weight: WeightFile, path: str | Path | None = None) -> Path:
    """The verified local file for ``weight`` (an explicit ``path`` wins over the weights folder)."""
    target = Path(path) if path is not None else weights_dir() / weight.filename
    if not target.is_file():
        raise MissingWeightsError(
            f"weights '{weight.name}' not found at {target} (expected {weight.filename}"
            + (f", {weight.size} bytes" if weight.size else "")
            + (f", SHA-256 {weight.sha256}" if weight.sha256 else "")
            + f"); {fetch_hint(weight, target)}"
        )
    size = target.stat().st_size
    if weight.size is not None and size != weight.size:
        raise MissingWeightsError(
            f"weights file {target} has {size} bytes, expected {weight.size} for '{weight.name}'; {fetch_hint(weight, target)}"
        )
    if weight.sha256 is not None:
        actual = sha256_of(target)
        if not actual.startswith(weight.sha256):
            raise MissingWeightsError(
                f"weights file {target} has SHA-256 {actual}, expected {weight.sha256}"
                f"{'' if len(weight.sha256) == 64 else '...'} for '{weight.name}'; "
                f"{fetch_hint(weight, target)}"
            )
    return target
