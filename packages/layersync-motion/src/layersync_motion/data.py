"""Motion data in the HumanML3D layout (HumanML3D, KIT-ML) or packed in one ``.npz`` (the shipped mocap set).

Items are ``(x, cond, mask)``: ``x`` float32 (features, max_frames), the features
normalised by the data set's Mean/Std, channels first, zero after the motion; ``mask``
bool (max_frames,), true on the motion's frames; ``cond`` an action label (0 when
unconditional) or ``{"text": (D,) float32}``, a CLIP embedding of one of the captions.

Which motions count follows MDM's ``Text2MotionDatasetV2`` (GuyTevet/motion-diffusion-model,
``data_loaders/humanml/data/dataset.py``): a motion file of ``L`` frames is used when
``min_frames <= L`` and ``L`` rounded down to a multiple of 4 fits ``max_frames`` (for 196:
``L < 200``); captions with a time span (``#start#end`` in seconds, not both 0) are items
of their own on ``motion[int(start*fps):int(end*fps)]``, under the same bounds; the other
captions are the whole file's. Per item the length is cut to a multiple of 4 frames (a
third of the time one unit shorter), at a random offset.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from layersync.data import inside
from layersync.errors import ConfigError, DataError

log = logging.getLogger("layersync")

MOCAP = Path(__file__).parent / "data" / "mocap.npz"
UNIT = 4  # MDM's unit_length: item lengths are multiples of it


@dataclass(frozen=True)
class Layout:
    width: int  # features per frame
    fps: float
    min_frames: int  # MDM's min_motion_len


LAYOUTS = {"humanml3d": Layout(263, 20.0, 40), "kit": Layout(251, 12.5, 24)}


@dataclass
class Item:
    motion: int  # index into MotionDataset.motions
    start: int
    stop: int
    captions: list[int]  # indices into MotionDataset.captions
    label: int = 0


class FolderSource:
    """``root/new_joint_vecs/<id>.npy``, ``root/texts/<id>.txt``, ``root/Mean.npy``, ``root/Std.npy``,
    ``root/<split>.txt``; for action labels ``root/actions.txt`` (lines ``<id> <action>``)."""

    def __init__(self, root: Path):
        self.root = root

    def ids(self, split: str) -> tuple[list[str], Path]:
        path = self.root / f"{split}.txt"
        try:
            ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read the split file {path}: {exc}") from None
        for id_ in ids:  # each names root/new_joint_vecs/<id>.npy and root/texts/<id>.txt
            inside(self.root / "new_joint_vecs", id_, f"the split file {path}")
        return ids, path

    def array(self, name: str) -> tuple[np.ndarray, Path]:
        path = self.root / f"{name}.npy"
        try:
            return np.load(path, allow_pickle=False), path
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path}: {exc}") from None

    def motion(self, id_: str):
        return self.array(f"new_joint_vecs/{id_}")

    def captions(self, id_: str) -> tuple[list[str], Path]:
        path = self.root / "texts" / f"{id_}.txt"
        try:
            return path.read_text(encoding="utf-8").splitlines(), path
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read the caption file {path}: {exc}") from None

    def actions(self) -> tuple[dict[str, str], Path]:
        path = self.root / "actions.txt"
        if not path.is_file():
            raise DataError(f"condition: action needs {path} (lines `<id> <action>`); HumanML3D and KIT-ML "
                            "have no action labels: use condition: text or none")
        pairs = [line.split(None, 1) for line in path.read_text().splitlines() if line.strip()]
        if any(len(p) != 2 for p in pairs):
            raise DataError(f"{path}: expected lines `<id> <action>`")
        return {id_: action.strip() for id_, action in pairs}, path


class PackedSource(FolderSource):
    """The same content in one ``.npz`` (no pickle): ``Mean``, ``Std``, ``split/<split>`` (ids),
    ``new_joint_vecs/<id>``, ``texts/<id>`` (caption lines), optionally ``actions`` (``<id> <action>``
    lines). Files are named ``archive.npz:key`` in errors."""

    def __init__(self, path: Path):
        super().__init__(path)
        try:
            with np.load(path, allow_pickle=False) as f:
                self.arrays = {key: f[key] for key in f.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read the packed motion data {path}: {exc}") from None

    def _get(self, key: str):
        name = Path(f"{self.root}:{key}")
        if key not in self.arrays:
            raise DataError(f"{name} is missing")
        return self.arrays[key], name

    def ids(self, split):
        ids, name = self._get(f"split/{split}")
        return [str(i) for i in ids], name

    def array(self, name):
        return self._get(name)

    def captions(self, id_):
        lines, name = self._get(f"texts/{id_}")
        return [str(line) for line in lines], name

    def actions(self):
        lines, name = self._get("actions")
        return dict(str(line).split(None, 1) for line in lines), name


def parse_caption(line: str, where: str) -> tuple[str, list[str], float, float]:
    """``caption#word/POS ...#start#end`` -> (caption, tokens, start, end); NaN times read as 0 (as MDM)."""
    parts = line.strip().split("#")
    try:
        start, end = (0.0 if math.isnan(t) else t for t in map(float, parts[2:4]))
    except ValueError:
        start = end = None
    if len(parts) < 4 or start is None or not parts[0].strip():
        raise DataError(f"{where}: expected `caption#word/POS ...#start#end`, got {line.strip()[:80]!r}")
    return parts[0].strip(), parts[1].split(), start, end


class MotionDataset(Dataset):
    """HumanML3D-layout motions, normalised and padded to ``max_frames``; see the module docstring.

    ``path``: a HumanML3D-layout folder or a packed ``.npz`` (None: the shipped mocap set,
    ``data/README.txt``). ``layout``: ``humanml3d`` (263 features, 20 fps) or ``kit`` (251,
    12.5 fps). ``min_frames``: None takes MDM's (40; KIT 24). ``condition``: ``text`` (every
    caption encoded once here by ``text.TextEncoder(text_encoder)``, a local CLIP folder or an
    object with ``encode`` and ``dim``; a random caption per item), ``action`` (labels from
    ``actions.txt``, classes sorted) or ``none``.

    Bad input (an unreadable or missing file, a feature width other than the layout's, NaN
    frames, a missing caption file or bad caption line, a length or time span out of bounds)
    is a DataError naming the file; ``on_error: skip`` leaves such motions or captions out
    with a logged count (``self.skipped``). Motions are held in memory.
    """

    def __init__(self, path: str | Path | None = None, layout: Literal["humanml3d", "kit"] = "humanml3d",
                 split: str = "train", max_frames: int = 196, min_frames: int | None = None,
                 condition: Literal["text", "action", "none"] = "text", text_encoder=None,
                 on_error: Literal["fail", "skip"] = "fail"):
        self.layout = LAYOUTS[layout]
        self.fps, self.condition, self.on_error = self.layout.fps, condition, on_error
        self.min_frames = self.layout.min_frames if min_frames is None else min_frames
        self.max_frames = max_frames
        for name, value in (("max_frames", max_frames), ("min_frames", self.min_frames)):
            if isinstance(value, bool) or not isinstance(value, int) or value < UNIT:
                raise ConfigError(f"data.{name} must be an integer >= {UNIT}, got {value!r}")
        if self.min_frames > max_frames:
            raise ConfigError(f"data.min_frames ({self.min_frames}) exceeds data.max_frames ({max_frames})")
        self.root = MOCAP if path is None else Path(path)
        if self.root.is_file() and self.root.suffix == ".npz":
            self.source = PackedSource(self.root)
        elif self.root.is_dir():
            self.source = FolderSource(self.root)
        else:
            raise DataError(f"data path {self.root} is neither a HumanML3D-layout folder nor a packed .npz")
        self.ids, split_file = self.source.ids(split)
        self.mean, mean_file = self._stats("Mean")
        self.std, std_file = self._stats("Std")
        self._files = [split_file, mean_file, std_file]
        self.motion_ids: list[str] = []  # per entry of self.motions
        self.sample_shape = (self.layout.width, max_frames)
        self.motions: list[np.ndarray] = []
        self.captions: list[str] = []  # distinct, in order of appearance
        self.tokens: list[list[str]] = []  # each caption's word/POS tokens (as first seen)
        self.items = self._read()
        self.classes, self.num_classes = [], 0
        if condition == "action":
            self._label()
        if condition == "text":
            from layersync_motion.text import TextEncoder

            plain = text_encoder is None or isinstance(text_encoder, (str, Path))  # a folder (str has .encode too)
            encoder = TextEncoder(text_encoder) if plain else text_encoder
            self.cond_dim = int(encoder.dim)
            self.embeddings = encoder.encode(self.captions).float()

    @property
    def sample_info(self) -> dict:
        """What writing samples needs: fps and the normalisation (lists, so checkpoints can keep it)."""
        return {"fps": self.fps, "mean": self.mean.tolist(), "std": self.std.tolist()}

    def _stats(self, name: str) -> tuple[np.ndarray, Path]:
        array, where = self.source.array(name)
        if array.shape != (self.layout.width,) or not np.isfinite(array).all():
            raise DataError(f"{where}: expected {self.layout.width} finite values, got {array.dtype} {array.shape}")
        if name == "Std" and (array <= 0).any():
            raise DataError(f"{where}: standard deviations must be > 0 (feature {int(np.argmin(array))})")
        return array.astype(np.float32), where

    def _fits(self, n: int) -> bool:
        return n >= self.min_frames and n // UNIT * UNIT <= self.max_frames

    def _bounds(self) -> str:
        return (f"{self.min_frames} <= frames and frames rounded down to a multiple of {UNIT} <= "
                f"{self.max_frames} (data.min_frames, data.max_frames)")

    def _read(self) -> list[Item]:
        """Reads and checks every motion and caption file; applies on_error."""
        items, bad, captions, tokens_of = [], [], {}, {}
        for id_ in self.ids:
            try:
                motion, where = self.source.motion(id_)
                width = self.layout.width
                if motion.ndim != 2 or motion.shape[1] != width or not np.issubdtype(motion.dtype, np.floating):
                    raise DataError(f"motion file {where}: expected float (frames, {width}) features, got "
                                    f"{motion.dtype} {motion.shape}")
                nan = ~np.isfinite(motion).all(1)
                if nan.any():
                    raise DataError(f"motion file {where}: {int(nan.sum())} frame(s) hold NaN or inf "
                                    f"(first: frame {int(nan.argmax())})")
                if not self._fits(len(motion)):
                    raise DataError(f"motion file {where} has {len(motion)} frames; usable: {self._bounds()}")
                lines, text_where = self.source.captions(id_)
                if not any(line.strip() for line in lines):
                    raise DataError(f"caption file {text_where} holds no captions")
            except DataError as exc:
                bad.append(str(exc))
                continue
            whole, spans = [], []
            for n, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    caption, tokens, start, end = parse_caption(line, f"caption file {text_where} line {n}")
                    tokens_of.setdefault(caption, tokens)
                    if start == 0.0 and end == 0.0:
                        whole.append(caption)
                        continue
                    a, b = int(start * self.fps), int(end * self.fps)
                    if not self._fits(min(b, len(motion)) - a):
                        raise DataError(f"caption file {text_where} line {n}: the span {start}-{end} s is "
                                        f"frames {a}-{b} of {len(motion)} in {where}; usable: {self._bounds()}")
                    spans.append((caption, a, b))
                except DataError as exc:
                    bad.append(str(exc))
            if not whole and not spans:
                continue
            self.motions.append(motion.astype(np.float32, copy=False))
            self.motion_ids.append(id_)
            self._files += [where, text_where]
            k = len(self.motions) - 1
            if whole:
                items.append(Item(k, 0, len(motion), [captions.setdefault(c, len(captions)) for c in whole]))
            items += [Item(k, a, min(b, len(motion)), [captions.setdefault(c, len(captions))]) for c, a, b in spans]
        self.captions = list(captions)
        self.tokens = [tokens_of[c] for c in self.captions]
        self.skipped = len(bad)
        if bad and self.on_error == "fail":
            more = f"; {len(bad) - 1} more problem(s)" if len(bad) > 1 else ""
            raise DataError(f"{bad[0]}{more} (data.on_error=skip leaves bad motions and captions out, as MDM "
                            "does with lengths out of bounds)")
        if bad:
            log.warning("skipping %d bad motion(s) or caption(s) in %s (on_error=skip): %s%s", len(bad), self.root,
                        "; ".join(bad[:3]), "; ..." if len(bad) > 3 else "")
        if not items:
            raise DataError(f"no usable motion among the {len(self.ids)} ids of {self._files[0]}")
        return items

    def _label(self) -> None:
        actions, where = self.source.actions()
        self._files.append(where)
        kept = [self.motion_ids[item.motion] for item in self.items]
        missing = sorted({i for i in kept if i not in actions})
        if missing:
            raise DataError(f"{where} gives no action for {len(missing)} id(s), e.g. {missing[0]}")
        self.classes = sorted({actions[i] for i in kept})
        self.num_classes = len(self.classes)
        index = {name: label for label, name in enumerate(self.classes)}
        for item, id_ in zip(self.items, kept):
            item.label = index[actions[id_]]

    def sources(self) -> tuple[Path, list[Path]]:
        """The folder and the files the items come from (a latent cache fingerprints them); a packed
        ``.npz``: its folder and itself."""
        if isinstance(self.source, PackedSource):
            return self.root.parent, [self.root]
        return self.root, list(dict.fromkeys(self._files))

    def lengths(self) -> np.ndarray:
        """Each item's frames before the per-item cut to a multiple of 4."""
        return np.array([item.stop - item.start for item in self.items])

    def __len__(self):
        return len(self.items)

    def _length(self, n: int) -> int:
        m = n // UNIT * UNIT
        return m - UNIT if m > UNIT and int(torch.randint(3, ())) == 2 else m  # MDM's "single, single, double"

    def __getitem__(self, i):
        item = self.items[i]
        n = item.stop - item.start
        m = self._length(n)
        start = item.start + int(torch.randint(n - m + 1, ()))
        x = torch.zeros(self.sample_shape)
        motion = self.motions[item.motion][start : start + m]
        x[:, :m] = torch.from_numpy(((motion - self.mean) / self.std).T)
        mask = torch.arange(self.max_frames) < m
        return x, self._cond(item), mask

    def _cond(self, item: Item, caption: int | None = None):
        if self.condition != "text":
            return item.label
        if caption is None:
            caption = item.captions[int(torch.randint(len(item.captions), ()))]
        return {"text": self.embeddings[caption]}

    def preview(self, n: int):
        """``(conditions, masks (n, max_frames))`` for ``n`` preview samples: the classes in turn, the
        first ``n`` distinct captions, or (unconditional) the first items; each mask is as long as an
        item of that class or caption (cut to a multiple of 4), the items of a class in turn."""
        if self.condition == "action":
            by_class = [[it for it in self.items if it.label == c] for c in range(self.num_classes)]
            turns = [(k % self.num_classes, k // self.num_classes) for k in range(n)]
            picks = [(by_class[c][r % len(by_class[c])], None) for c, r in turns]
        elif self.condition == "text":
            first = {}
            for item in self.items:
                for c in item.captions:
                    first.setdefault(c, item)
            order = list(first.items())
            picks = [(order[k % len(order)][1], order[k % len(order)][0]) for k in range(n)]
        else:
            picks = [(self.items[k % len(self.items)], None) for k in range(n)]
        lengths = torch.tensor([(it.stop - it.start) // UNIT * UNIT for it, _ in picks])
        masks = torch.arange(self.max_frames) < lengths[:, None]
        if self.condition == "text":
            return {"text": torch.stack([self._cond(it, c)["text"] for it, c in picks])}, masks
        return torch.tensor([self._cond(it) for it, _ in picks]), masks
