"""Image data: an ImageFolder tree (the ImageNet layout) and the bundled digits."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

from layersync.errors import DataError

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


class DigitsDataset(Dataset):
    """scikit-learn's 1,797 bundled 8x8 digits, upsampled; needs no download."""

    def __init__(self, image_size: int = 16):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
        self.images = (images.clamp(0, 1) * 2 - 1).contiguous()
        self.labels = torch.tensor(digits.target, dtype=torch.long)
        self.sample_shape = tuple(self.images.shape[1:])
        self.num_classes = 10

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>``; labels follow the sorted class folder names.

    Images are centre-cropped (ADM), randomly flipped and scaled to [-1, 1].
    An empty tree or class folder is refused up front; an unreadable image
    raises a DataError naming its path when it is loaded.
    """

    def __init__(self, root: str, image_size: int = 256, channels: int = 3, hflip: bool = True):
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
        if channels not in (1, 3):
            raise DataError(f"data.channels must be 1 or 3, got {channels}")
        self.classes, self.num_classes = classes, len(classes)
        self.mode = "L" if channels == 1 else "RGB"
        self.image_size = image_size
        self.sample_shape = (channels, image_size, image_size)
        steps = [transforms.RandomHorizontalFlip()] if hflip else []
        self.transform = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(0.5, 0.5)])

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        try:
            with Image.open(path) as image:
                image = image.convert(self.mode)
        except Exception as exc:
            raise DataError(f"cannot read image {path}: {exc}") from None
        return self.transform(center_crop(image, self.image_size)), label


def build_images(path: str | None = None, image_size: int = 16, channels: int = 1, hflip: bool = True):
    """Dataset factory: an ImageFolder at ``path``, or the bundled digits when None."""
    if path is None:
        log.info("no --data given: using the bundled 8x8 digits upsampled to %dx%d", image_size, image_size)
        return DigitsDataset(image_size)
    return ImageFolderDataset(path, image_size, channels, hflip)
