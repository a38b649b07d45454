"""Hugging Face Parquet images and the corrupt-image policy (on_error fail|skip) of both image readers."""

import io
import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import normalize, to_tensor

from layersync.errors import DataError
from layersync_image.data import ImageFolderDataset, ParquetImageDataset, build_images, center_crop

RNG = np.random.default_rng(0)
IMAGES = [RNG.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(12, 20), (16, 16), (30, 10), (9, 9), (20, 14)]]
LABELS = [2, 0, 1, 2, 1]
CORRUPT = 1  # row 1 of the first file holds bytes that are no image


def png(array) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def write_shard(path, rows, names=None):
    image = pa.array([{"bytes": b, "path": p} for b, p, _ in rows],
                     pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    table = pa.table({"image": image, "label": pa.array([y for _, _, y in rows], pa.int64())})
    if names:  # the schema metadata Hugging Face datasets write for a ClassLabel
        info = {"info": {"features": {"label": {"names": names, "_type": "ClassLabel"}}}}
        table = table.replace_schema_metadata({"huggingface": json.dumps(info)})
    pq.write_table(table, path, row_group_size=2)


def make_parquet(folder, names=None):
    """Two shards, row groups of 2: [img0, corrupt | img1, img2] and [img3, img4]."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(png(a), f"n{i}.png", y) for i, (a, y) in enumerate(zip(IMAGES, LABELS))]
    rows.insert(CORRUPT, (b"not a png", "broken.JPEG", 0))
    write_shard(folder / "train-00000-of-00002.parquet", rows[:4], names)
    write_shard(folder / "train-00001-of-00002.parquet", rows[4:], names)
    return folder


def expected(array, size=8):
    return normalize(to_tensor(center_crop(Image.fromarray(array), size)), 0.5, 0.5)


def test_rows_across_files_and_row_groups(tmp_path):
    data = ParquetImageDataset(str(make_parquet(tmp_path / "d")), image_size=8, channels=3, hflip=False)
    assert len(data) == 6 and data.num_classes == 3 and data.sample_shape == (3, 8, 8)
    good = [i for i in range(6) if i != CORRUPT]
    for i, array, label in zip(good[::-1], IMAGES[::-1], LABELS[::-1]):  # backwards: new row groups each time
        x, y = data[i]
        assert y == label and x.shape == (3, 8, 8)
        torch.testing.assert_close(x, expected(array))


def test_class_count_from_hugging_face_metadata(tmp_path):
    data = ParquetImageDataset(str(make_parquet(tmp_path / "d", names=[f"c{i}" for i in range(7)])), image_size=8)
    assert data.num_classes == 7 and data.classes[6] == "c6"


def test_corrupt_row_fails_naming_file_and_row(tmp_path):
    data = ParquetImageDataset(str(make_parquet(tmp_path / "d")), image_size=8)
    with pytest.raises(DataError, match=r"train-00000-of-00002\.parquet row 1 \(broken\.JPEG\)"):
        data[CORRUPT]


def test_skip_drops_corrupt_rows_and_says_so(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="layersync"):
        data = ParquetImageDataset(str(make_parquet(tmp_path / "d")), image_size=8, hflip=False, on_error="skip")
    assert len(data) == 5 and [data[i][1] for i in range(5)] == LABELS
    torch.testing.assert_close(data[1][0], expected(IMAGES[1]))
    assert "skipping 1 unreadable image(s) of 6" in caplog.text and "train-00000-of-00002.parquet row 1" in caplog.text


def test_build_images_picks_parquet(tmp_path):
    folder = make_parquet(tmp_path / "d")
    for path in (folder, folder / "train-00001-of-00002.parquet", folder / "train-*.parquet"):
        data = build_images(str(path), image_size=8, channels=3)
        assert isinstance(data, ParquetImageDataset) and len(data) == (2 if "00001" in str(path) else 6)


def test_mixed_splits_wrong_columns_and_unlabelled_rows_are_refused(tmp_path):
    folder = make_parquet(tmp_path / "d")
    write_shard(folder / "validation-00000-of-00001.parquet", [(png(IMAGES[0]), "v.png", 0)])
    with pytest.raises(DataError, match="mixes the splits train, validation"):
        ParquetImageDataset(str(folder))
    pq.write_table(pa.table({"img": [b"x"], "label": [0]}), tmp_path / "other.parquet")
    with pytest.raises(DataError, match=r"other\.parquet has columns img .*expected image"):
        ParquetImageDataset(str(tmp_path / "other.parquet"))
    write_shard(tmp_path / "test.parquet", [(png(IMAGES[0]), "t.png", -1)])
    with pytest.raises(DataError, match=r"test\.parquet row 0 has label -1"):
        ParquetImageDataset(str(tmp_path / "test.parquet"))


def make_tree(root):
    for c, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(IMAGES[2 * c + i]).save(root / name / f"{i}.png")
    (root / "dog" / "notes.txt").write_text("ignored: not an image extension")
    (root / "dog" / "broken.png").write_bytes(b"not a png")  # an image extension, not an image: corrupt
    return root


def test_image_folder_fail_and_skip(tmp_path, caplog):
    root = make_tree(tmp_path / "d")
    data = ImageFolderDataset(str(root), image_size=8)
    assert len(data) == 5
    with pytest.raises(DataError, match="broken.png"):
        data[[p.name for p, _ in data.items].index("broken.png")]
    with caplog.at_level(logging.WARNING, logger="layersync"):
        data = build_images(str(root), image_size=8, channels=3, hflip=False, on_error="skip")
    assert isinstance(data, ImageFolderDataset) and len(data) == 4
    assert [y for _, y in data.items] == [0, 0, 1, 1] and "broken.png" in caplog.text
    torch.testing.assert_close(data[3][0], expected(IMAGES[3]))
    with pytest.raises(DataError, match="on_error"):
        ImageFolderDataset(str(root), on_error="ignore")
