"""Image modes: 16-bit grey scaled like 8-bit, modes without a known range refused by file and mode."""

import numpy as np
import pytest
import torch
from PIL import Image

from layersync.errors import DataError
from layersync_image.data import ImageFolderDataset


def gradient16(height=24, width=32) -> np.ndarray:
    """A horizontal 16-bit gradient over the whole range, 0 .. 65535."""
    row = np.linspace(0, 65535, width).round().astype(np.uint16)
    return np.tile(row, (height, 1))


def load(root, channels):
    data = ImageFolderDataset(str(root), image_size=16, channels=channels, hflip=False)
    return {path.name: data[i][0] for i, (path, _) in enumerate(data.items)}


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_png_matches_its_8_bit_version(tmp_path, channels):
    wide = gradient16()
    (tmp_path / "d" / "a").mkdir(parents=True)
    Image.fromarray(wide).save(tmp_path / "d" / "a" / "g16.png")
    Image.fromarray(np.rint(wide / 257).astype(np.uint8)).save(tmp_path / "d" / "a" / "g8.png")
    assert Image.open(tmp_path / "d" / "a" / "g16.png").mode.startswith("I")  # really a 16-bit file
    x = load(tmp_path / "d", channels)
    x16, x8 = (x[name] * 0.5 + 0.5 for name in ("g16.png", "g8.png"))  # back to [0, 1]
    assert x16.shape == (channels, 16, 16)
    assert torch.allclose(x16, x8, atol=1 / 255 + 1e-6)
    assert x16.min() < 0.2 and x16.max() < 0.9 and 0.4 < x16.mean() < 0.6  # the centre of a gradient, not white


def test_16_bit_tiff_is_scaled_too(tmp_path):
    wide = gradient16()
    (tmp_path / "d" / "a").mkdir(parents=True)
    Image.fromarray(wide).save(tmp_path / "d" / "a" / "g16.tif")
    Image.fromarray(np.rint(wide / 257).astype(np.uint8)).save(tmp_path / "d" / "a" / "g8.png")
    x = load(tmp_path / "d", 1)
    assert torch.allclose(x["g16.tif"], x["g8.png"], atol=2 / 255 + 1e-6)  # in [-1, 1]: 1/255 of [0, 1]


@pytest.mark.parametrize("array, mode", [(np.ones((8, 8), np.float32), "F"), (np.ones((8, 8), np.int32), "I")])
def test_modes_without_a_known_range_are_refused(tmp_path, array, mode):
    (tmp_path / "d" / "a").mkdir(parents=True)
    path = tmp_path / "d" / "a" / "odd.tif"
    Image.fromarray(array).save(path)
    assert Image.open(path).mode == mode
    data = ImageFolderDataset(str(tmp_path / "d"), image_size=8, channels=1)
    with pytest.raises(DataError, match=rf"image {path} has mode {mode}, which is not supported"):
        data[0]


def test_8_bit_modes_still_load(tmp_path):
    (tmp_path / "d" / "a").mkdir(parents=True)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 255
    Image.fromarray(rgba).save(tmp_path / "d" / "a" / "rgba.png")
    Image.fromarray(rgba[..., :3]).convert("P").save(tmp_path / "d" / "a" / "p.png")
    x = load(tmp_path / "d", 3)
    assert torch.allclose(x["rgba.png"], x["p.png"]) and x["rgba.png"][0].min() == 1
