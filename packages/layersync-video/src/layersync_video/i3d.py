"""Inception-v1 I3D (Carreira & Zisserman, CVPR 2017) on Kinetics-400, the network of FVD.

The architecture is written here from piergiaj/pytorch-i3d's ``InceptionI3d`` and takes its
module names, so its state dict reads ``Conv3d_1a_7x7.conv3d.weight``, ``Conv3d_1a_7x7.bn.*``,
``Mixed_3b.b1b.conv3d.weight``, ..., ``logits.conv3d.{weight,bias}``. Every convolution and
pool pads TF "SAME" (computed from the input size, so odd sizes pad more at the end), batch
norms have eps 1e-3, and after ``Mixed_5c`` a (2, 7, 7) average pool gives the 1024-d pooled
features and a biased 1x1x1 convolution the 400 Kinetics logits (averaged over what is left of
time: one step for a 16-frame 224x224 clip).

FVD reads the 400-d logits before the softmax: StyleGAN-V's ``fvd2048_16f`` calls its
``i3d_torchscript.pt`` with ``return_features=True``, documented there as the raw features
before the softmax layer, which is what Google's TF FVD reads from the tf.hub module.

Weights: StyleGAN-V's TorchScript file (``I3D_FVD.url``; a port of the tf.hub weights, which
differ from DeepMind's released I3D). We never run it: ``convert_torchscript`` reads its
tensors from the zip's data records with an unpickler that builds only tensors, dicts and
placeholder objects (no code from the archive is imported or executed), and renames the
hassony2-style names its class (``src.i3dpt_jit.I3D``) points to (``conv3d_1a_7x7.batch3d``,
``mixed_3b.branch_1.1``, ``conv3d_0c_1x1``) to ours. The renaming is inferred, not checked
against the file: ``load_i3d`` loads strictly, so a file with other names fails loudly.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from layersync.errors import DataError
from layersync.metrics import MissingWeightsError, WeightFile, resolve_weights

CLIP_FRAMES, SIZE, NUM_CLASSES, POOLED_DIM = 16, 224, 400, 1024

I3D_FVD = WeightFile(
    name="i3d-fvd",
    filename="i3d_kinetics400_fvd.pt",  # the converted state dict; the TorchScript file itself is read too
    url="https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1",
    size=None,  # not published
    sha256=None,  # not published
    licence="Apache-2.0 (Kinetics I3D weights, tf.hub)",
)

# (name, in, out, kernel, stride) of the stem; (name, in, [b0, b1a, b1b, b2a, b2b, b3b]) of the mixed blocks
STEM = (("Conv3d_1a_7x7", 3, 64, 7, 2), ("Conv3d_2b_1x1", 64, 64, 1, 1), ("Conv3d_2c_3x3", 64, 192, 3, 1))
MIXED = (
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)


def same_padding(size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]) -> tuple[int, ...]:
    """F.pad amounts (last dim first) of TF "SAME": out = ceil(in / stride), the extra pixel at the end."""
    pads = []
    for n, k, s in zip(size, kernel, stride):
        total = max(k - (s if n % s == 0 else n % s), 0)
        pads.append((total // 2, total - total // 2))
    return tuple(p for pair in reversed(pads) for p in pair)


class Unit3D(nn.Module):
    """Conv3d (TF "SAME") -> BatchNorm3d (eps 1e-3) -> ReLU; the logits unit has a bias and neither."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, logits: bool = False):
        super().__init__()
        self.kernel, self.stride, self.logits = (kernel,) * 3, (stride,) * 3, logits
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride, bias=logits)
        if not logits:
            self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(F.pad(x, same_padding(x.shape[2:], self.kernel, self.stride)))
        return x if self.logits else F.relu(self.bn(x))


class MaxPoolSame(nn.Module):
    """Max pool with TF "SAME" padding; zero padding equals TF's here, the inputs being ReLU outputs."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(F.pad(x, same_padding(x.shape[2:], self.kernel, self.stride)), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches concatenated: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 | max pool 3x3 -> 1x1."""

    def __init__(self, cin: int, widths: tuple[int, ...]):
        super().__init__()
        self.b0 = Unit3D(cin, widths[0])
        self.b1a, self.b1b = Unit3D(cin, widths[1]), Unit3D(widths[1], widths[2], 3)
        self.b2a, self.b2b = Unit3D(cin, widths[3]), Unit3D(widths[3], widths[4], 3)
        self.b3a, self.b3b = MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, widths[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


class InceptionI3d(nn.Module):
    """``forward(x (N, 3, T, 224, 224) in [-1, 1]) -> (N, 400)`` logits; ``with_pooled=True`` adds (N, 1024)."""

    feature_dim = NUM_CLASSES  # what FVD reads

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        pools = {"Conv3d_1a_7x7": ("MaxPool3d_2a_3x3", (1, 3, 3), (1, 2, 2)),
                 "Conv3d_2c_3x3": ("MaxPool3d_3a_3x3", (1, 3, 3), (1, 2, 2)),
                 "Mixed_3c": ("MaxPool3d_4a_3x3", (3, 3, 3), (2, 2, 2)),
                 "Mixed_4f": ("MaxPool3d_5a_2x2", (2, 2, 2), (2, 2, 2))}
        for name, cin, cout, kernel, stride in STEM:
            self.add_module(name, Unit3D(cin, cout, kernel, stride))
            if name in pools:
                self.add_module(pools[name][0], MaxPoolSame(*pools[name][1:]))
        for name, cin, widths in MIXED:
            self.add_module(name, InceptionModule(cin, widths))
            if name in pools:
                self.add_module(pools[name][0], MaxPoolSame(*pools[name][1:]))
        self.avg_pool = nn.AvgPool3d((2, 7, 7), stride=1)
        self.logits = Unit3D(POOLED_DIM, num_classes, logits=True)

    def forward(self, x: torch.Tensor, with_pooled: bool = False):
        for name, module in self.named_children():
            if name in ("avg_pool", "logits"):
                break
            x = module(x)
        pooled = self.avg_pool(x)  # (N, 1024, T', 1, 1) at 224x224
        logits = self.logits(pooled).flatten(3).mean((2, 3))  # dropout is the identity in eval
        return (logits, pooled.mean((2, 3, 4))) if with_pooled else logits


def preprocess(clips: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, 16, H, W) -> float32 (N, 3, 16, 224, 224) in [-1, 1].

    x / 255 * 2 - 1 (the TorchScript's ``rescale``), then each frame resized to 224x224 by
    bilinear interpolation, ``align_corners=False``, no antialiasing (trilinear at an unchanged
    frame count is the same thing). TF FVD's TF1 ``resize_bilinear`` samples another grid (no
    half-pixel centres): StyleGAN-V matches it "up to the upsampling operation".
    """
    if clips.shape[2] != CLIP_FRAMES:
        raise DataError(f"FVD clips must have exactly {CLIP_FRAMES} frames, got {clips.shape[2]}")
    n, c, t, h, w = clips.shape
    x = clips.float() / 255 * 2 - 1
    if (h, w) != (SIZE, SIZE):
        frames = x.transpose(1, 2).reshape(n * t, c, h, w)
        frames = F.interpolate(frames, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=False)
        x = frames.reshape(n, t, c, SIZE, SIZE).transpose(1, 2)
    return x.contiguous()


# --- reading the TorchScript archive without running it ---------------------------------

_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
           "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
           "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
           "BoolStorage": torch.bool}


class _ScriptObject:
    """Stands in for a TorchScript class: keeps the attributes it is built with, nothing else."""

    def __setstate__(self, state):
        self.state = state


def _rebuild_tensor(storage, offset, size, stride, *_):
    return torch.as_strided(storage, size, stride, offset).clone()


class _ArchiveUnpickler(pickle.Unpickler):
    """Builds tensors from ``data/`` records; any global other than a few known ones is refused."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix, self.storages = archive, prefix, {}

    def find_class(self, module: str, name: str):
        if module.startswith("__torch__"):
            return type(name, (_ScriptObject,), {})
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor_v3"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, requires_grad, hooks, *_: data
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            return dict
        if module == "torch.jit._pickle" and name.startswith("build_"):
            return lambda value: value
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return lambda value, type_tag: value
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a TorchScript archive")

    def persistent_load(self, pid):
        kind, dtype, key, *_ = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"unexpected record {pid!r}")
        if key not in self.storages:
            raw = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
            self.storages[key] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return self.storages[key]


def _tensors(obj, prefix: str, out: dict) -> dict:
    state = obj.state if isinstance(obj, _ScriptObject) else obj
    if isinstance(state, dict):
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                out[prefix + key] = value
            elif isinstance(value, (_ScriptObject, dict)):
                _tensors(value, f"{prefix}{key}.", out)
    return out


_RENAMES = ((r"^conv3d_(\w+?)(?=\.)", lambda m: "Conv3d_" + m.group(1)), (r"^Conv3d_0c_1x1\.", "logits."),
            (r"^mixed_", "Mixed_"), (r"\.batch3d\.", ".bn."), (r"\.branch_0\.", ".b0."),
            (r"\.branch_1\.0\.", ".b1a."), (r"\.branch_1\.1\.", ".b1b."), (r"\.branch_2\.0\.", ".b2a."),
            (r"\.branch_2\.1\.", ".b2b."), (r"\.branch_3\.1\.", ".b3b."))


def rename_to_ours(name: str) -> str:
    """hassony2-style I3D names (``mixed_4b.branch_1.1.batch3d.weight``) to ours (``Mixed_4b.b1b.bn.weight``)."""
    for pattern, replacement in _RENAMES:
        name = re.sub(pattern, replacement, name)
    return name


def is_torchscript(path: str | Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.split("/", 1)[-1] == "constants.pkl" for n in archive.namelist())


def convert_torchscript(path: str | Path, out: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.jit.save`` archive by attribute path, renamed to ours; saved to ``out`` if given."""
    with zipfile.ZipFile(path) as archive:
        data = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(data) != 1:
            raise DataError(f"{path} is not a TorchScript archive (no single <name>/data.pkl)")
        prefix = data[0][: -len("data.pkl")]
        with archive.open(data[0]) as f:
            root = _ArchiveUnpickler(f, archive, prefix).load()
    state = {rename_to_ours(k): v for k, v in _tensors(root, "", {}).items()}
    if out is not None:
        torch.save(state, out)
    return state


def load_i3d(weights: str | Path | None = None) -> InceptionI3d:
    """The verified network (an explicit ``weights`` path wins over the weights folder): the converted
    state dict, or StyleGAN-V's TorchScript file itself (read as ``convert_torchscript`` does)."""
    path = resolve_weights(I3D_FVD, weights)
    state = convert_torchscript(path) if is_torchscript(path) else torch.load(path, map_location="cpu",
                                                                               weights_only=True)
    network = InceptionI3d()
    result = network.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise MissingWeightsError(f"weights file {path} is not an I3D state dict: missing {missing[:4]}, "
                                  f"unexpected {result.unexpected_keys[:4]}")
    network.weights_path = path
    return network.eval()
