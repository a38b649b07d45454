"""How ``layersync-eval --plugin {{name}}`` reads signals: float arrays in an ``.npz``.

``layersync-sample --out DIR/`` writes ``DIR/samples.npz`` (``arr_0``), a preview's ``.npz``
holds ``samples``, and ``write_reference`` stores real signals of the data set the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from layersync.errors import DataError
from layersync.files import atomic
from layersync.interfaces import SAMPLE_KEYS, samples_key

from .data import SineWaves


class SignalSet:
    """The signals of one ``.npz`` (or of ``samples.npz`` in a folder), as a ``SampleSet``."""

    def __init__(self, path: Path):
        self.path = Path(path) / "samples.npz" if Path(path).is_dir() else Path(path)
        try:
            archive = np.load(self.path)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {self.path} as an .npz: {exc}") from None
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataError(f"{self.path} is not an .npz")
        with archive:
            key = samples_key(archive.files)
            if key is None:
                raise DataError(f"{self.path} holds none of {', '.join(SAMPLE_KEYS)} "
                                f"(it holds {', '.join(archive.files) or 'nothing'})")
            signals = archive[key]
        if signals.dtype.kind != "f" or signals.ndim not in (2, 3):
            raise DataError(f"{self.path}: {key} is {signals.dtype} of shape {signals.shape}; "
                            "expected float signals (N, channels, length) or (N, length)")
        self.signals = signals[:, None] if signals.ndim == 2 else signals

    def __len__(self):
        return len(self.signals)

    def batches(self, size: int):
        for start in range(0, len(self), size):
            yield torch.from_numpy(np.ascontiguousarray(self.signals[start : start + size], np.float32))

    def statistics(self) -> dict:
        return {}


def read_samples(path: Path) -> SignalSet:
    """The Modality's ``read_samples``."""
    return SignalSet(path)


def write_reference(path, num: int = 1024, **options) -> Path:
    """Write ``num`` real signals of ``SineWaves(**options)`` to ``path`` (an .npz), the
    reference for ``layersync-eval --plugin {{name}} --ref PATH``."""
    data = SineWaves(**options)
    signals = torch.stack([data[i][0] for i in range(min(num, len(data)))])
    with atomic(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, arr_0=signals.numpy())
    return Path(path)
