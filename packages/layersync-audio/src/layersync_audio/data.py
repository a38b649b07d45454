"""Audio data: class folders, a plain folder tree, MTG-Jamendo, the shipped spoken digits.

Items are ``(waveform float32 (channels, samples), label)``: a clip of fixed
length at one sample rate, cut from each file at a random or the centre offset.
Only the clip's window of the file is decoded.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import Dataset
from torchaudio.transforms import Resample

from layersync.data import SkipsBadItems, inside
from layersync.errors import ConfigError, DataError
from layersync_audio.audio_io import AUDIO_EXTENSIONS, AudioInfo, audio_info, read_audio

log = logging.getLogger("layersync")

SPOKEN_DIGITS = Path(__file__).parent / "spoken_digits"
JAMENDO_COLUMNS = ["TRACK_ID", "ARTIST_ID", "ALBUM_ID", "PATH", "DURATION"]  # then one TAGS column per tag


def audio_files(folder: Path) -> list[Path]:
    """The audio files under ``folder``, recursively, sorted; DataError when there are none."""
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS and f.is_file())
    if not files:
        raise DataError(f"{folder} holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    return files


def class_items(root: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """``root/<class>/<files>``: labels follow the sorted class folder names."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"data path {root} has no class folders (expected root/<class>/<audio files>; "
                        "layout: folder reads a tree without classes)")
    return [(f, label) for label, name in enumerate(classes) for f in audio_files(root / name)], classes


def jamendo_items(root: Path, metadata: Path, category: str | None) -> tuple[list[tuple[Path, int]], list[str] | None]:
    """The tracks of an MTG-Jamendo .tsv, found at ``root/PATH`` or as the low-quality ``.low.mp3``.

    With a tag ``category``, the classes are that category's tags sorted by name and a
    track's label is its first tag of the category (in the file's order); tracks
    without one are left out.
    """
    try:
        with open(metadata, newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the Jamendo metadata {metadata}: {exc}") from None
    if not rows or rows[0][:5] != JAMENDO_COLUMNS:
        raise DataError(f"{metadata} is not an MTG-Jamendo .tsv: expected the tab-separated header "
                        f"{' '.join(JAMENDO_COLUMNS)} TAGS")
    if len(rows) < 2:
        raise DataError(f"{metadata} lists no tracks")
    tracks, prefix = [], f"{category}---"
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) < 5:
            raise DataError(f"{metadata} line {line}: expected at least the columns {' '.join(JAMENDO_COLUMNS)}")
        path = inside(root, row[3], f"{metadata} line {line}")
        if not path.exists() and path.with_suffix(".low.mp3").exists():
            path = path.with_suffix(".low.mp3")
        tracks.append((path, [t[len(prefix) :] for t in row[5:] if category and t.startswith(prefix)]))
    if category is None:
        return [(path, 0) for path, _ in tracks], None
    classes = sorted({tag for _, tags in tracks for tag in tags})
    if not classes:
        raise DataError(f"no track of {metadata} has a {category} tag (expected tags such as {category}---name)")
    index = {name: label for label, name in enumerate(classes)}
    items = [(path, index[tags[0]]) for path, tags in tracks if tags]
    if len(items) < len(tracks):
        log.info("%d of %d tracks of %s have no %s tag: left out", len(tracks) - len(items), len(tracks), metadata,
                 category)
    return items, classes


def _positive(name: str, value, kind=int):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or kind(value) != value:
        raise ConfigError(f"data.{name} must be a positive {kind.__name__}, got {value!r}")
    return kind(value)


class AudioDataset(SkipsBadItems, Dataset):
    """Clips of audio files; labels from class folders or Jamendo tags (0 when unconditional).

    ``path``: the data folder (None: the shipped spoken digits). ``layout``: ``classes``
    (``root/<class>/<files>``), ``folder`` (every audio file below ``path``, unconditional)
    or ``jamendo`` (``metadata``: an MTG-Jamendo .tsv whose PATH column is relative to
    ``path``; ``tags``: the tag category the labels come from, null: unconditional).
    ``sample_rate``: resample to it (None: the files' own, which must agree).
    ``seconds`` or ``samples``: the clip length (neither: the files' length, which must
    agree). ``channels``: 1 mixes down, 2 duplicates mono files. ``offset``: ``random``
    (torch's global RNG, so DataLoader worker seeding applies) or ``centre``.

    Every file's header is checked up front (readable, non-empty, long enough for the
    clip, channels); a file that fails to decode or holds NaN shows up when loaded.
    ``on_error``: ``fail`` raises a DataError naming the file; ``skip`` leaves bad files
    out up front (with a logged count) and replaces one that fails later by the next
    good item.
    """

    def __init__(self, path: str | None = None, layout: Literal["classes", "folder", "jamendo"] = "classes",
                 metadata: str | None = None, tags: Literal["genre", "instrument", "mood/theme"] | None = None,
                 sample_rate: int | None = None, seconds: float | None = None, samples: int | None = None,
                 channels: Literal[1, 2] = 1, offset: Literal["random", "centre"] = "random",
                 on_error: Literal["fail", "skip"] = "fail"):
        if layout != "jamendo" and (metadata is not None or tags is not None):
            raise ConfigError("data.metadata and data.tags are options of layout: jamendo")
        if seconds is not None and samples is not None:
            raise ConfigError("data.seconds and data.samples both set the clip length: give one")
        sample_rate, samples = _positive("sample_rate", sample_rate), _positive("samples", samples)
        seconds = _positive("seconds", seconds, float)
        self.channels, self.offset, self.on_error = channels, offset, on_error
        self.root = SPOKEN_DIGITS if path is None else Path(path)
        if not self.root.is_dir():
            raise DataError(f"data path {self.root} is not a folder")
        if layout == "classes":
            items, self.classes = class_items(self.root)
        elif layout == "folder":
            items, self.classes = [(f, 0) for f in audio_files(self.root)], None
        elif metadata is None or path is None:
            raise ConfigError("layout: jamendo needs data.path (the audio folder) and data.metadata (its .tsv)")
        else:
            items, self.classes = jamendo_items(self.root, Path(metadata), tags)
        self.num_classes = len(self.classes) if self.classes else 0
        self.items = self._checked(items, sample_rate, seconds, samples)
        self.sample_shape = (channels, self.samples)
        self._resamplers: dict[int, Resample] = {}

    def _checked(self, items, sample_rate, seconds, samples) -> list[tuple[Path, int, AudioInfo]]:
        """Reads every header; sets sample_rate and samples; applies on_error to the bad files."""
        good, bad = [], []
        for path, label in items:
            try:
                info = audio_info(path)
                if info.frames == 0:
                    raise DataError(f"audio file {path} holds no samples")
                if self.channels == 2 and info.channels > 2:
                    raise DataError(f"audio file {path} has {info.channels} channels; data.channels=2 takes "
                                    "mono or stereo files")
                good.append((path, label, info))
            except DataError as exc:
                bad.append(str(exc))
        rates = sorted({info.sample_rate for *_, info in good})
        if sample_rate is None and len(rates) > 1:
            raise ConfigError(f"the files in {self.root} have sample rates {', '.join(map(str, rates))} Hz: "
                              "set data.sample_rate")
        self.sample_rate = sample_rate or (rates[0] if rates else 0)
        lengths = [self._length(info) for *_, info in good]
        if seconds is not None:
            samples = round(seconds * self.sample_rate)
        elif samples is None and len(set(lengths)) > 1:
            raise ConfigError(f"the files in {self.root} last {min(lengths) / self.sample_rate:.3f} to "
                              f"{max(lengths) / self.sample_rate:.3f} s: set data.seconds or data.samples")
        self.samples = samples or (lengths[0] if lengths else 0)
        keep = []
        for (path, label, info), length in zip(good, lengths):
            if length >= self.samples:
                keep.append((path, label, info))
            else:
                need = -(-self.samples * info.sample_rate // self.sample_rate)
                bad.append(f"audio file {path} is too short: {info.frames} samples at {info.sample_rate} Hz "
                           f"({info.frames / info.sample_rate:.3f} s); the clip needs {need} "
                           f"({self.samples / self.sample_rate:.3f} s)")
        return self.usable(keep, bad, len(items), "audio")

    def _length(self, info: AudioInfo) -> int:
        """A file's length in samples at the data set's rate (as resampling gives it)."""
        return -(-info.frames * self.sample_rate // info.sample_rate)

    def load(self, i):
        return self._clip(i), self.items[i][1]

    def _clip(self, i: int) -> torch.Tensor:
        path, _, info = self.items[i]
        rate, target, n = info.sample_rate, self.sample_rate, self.samples
        room = self._length(info) - n
        start = int(torch.randint(room + 1, ())) if self.offset == "random" else room // 2
        if rate == target:
            x = torch.from_numpy(read_audio(path, start, n)[0])
            skip = 0
        else:  # decode the window with context for the kernel, from a sample that maps to a whole target sample
            step = rate // math.gcd(rate, target)
            reach = 7 * rate // min(rate, target) + 1  # > the kernel's 6 zero crossings at 0.99 of the lower rate
            lo = max(0, (start * rate // target - reach) // step * step)
            hi = min(info.frames, -(-(start + n) * rate // target) + reach)
            x = torch.from_numpy(read_audio(path, lo, hi - lo)[0])
            skip = start - lo * target // rate
        if self.channels == 1 and x.shape[0] > 1:
            x = x.mean(0, keepdim=True)
        if rate != target:
            if rate not in self._resamplers:
                self._resamplers[rate] = Resample(rate, target)  # keeps the kernel
            x = self._resamplers[rate](x)
        x = x[:, skip : skip + n]
        if x.shape[1] != n:
            raise DataError(f"audio file {path}: decoded {x.shape[1]} samples of a {n}-sample clip at "
                            f"{target} Hz (the header says {info.frames} samples at {rate} Hz)")
        return x.expand(self.channels, n).contiguous() if x.shape[0] < self.channels else x


