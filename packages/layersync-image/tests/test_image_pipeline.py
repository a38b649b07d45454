"""The paper's ImageNet pipeline at toy scale, through the real CLIs as a user chains them:
image folder -> layersync-cache -> layersync-train (sit_b2 recipe) -> layersync-sample -> layersync-eval."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import read_metrics, tiny_vae
from layersync.cli import cache, sample, train
from layersync.cli import eval as evaluate
from layersync import checkpoint
from test_image_eval import random_inception_file, weight_for

pytestmark = pytest.mark.slow

RECIPE = Path(__file__).resolve().parents[1] / "src/layersync_image/recipes/sit_b2.yaml"
SIZE = 32  # images; the tiny VAE halves them -> latents (4, 16, 16), 64 tokens of SiT-T/2
LATENT = [4, SIZE // 2, SIZE // 2]
PER_CLASS, NUM_SAMPLES, GRID = 8, 12, 4


def image_folder(root: Path) -> np.ndarray:
    """root/class{0,1}/*.png of smooth random colour ramps; returns them as uint8 NHWC."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, SIZE)
    images = []
    for c in range(2):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(PER_CLASS):
            across, down = rng.uniform(0, 255, (2, 3))
            pixels = (across * ramp[None, :, None] + down * ramp[:, None, None]) / 2 + rng.normal(0, 8, (SIZE, SIZE, 3))
            pixels = pixels.clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
            images.append(pixels)
    return np.stack(images)


def check_training_grid(path: Path) -> None:
    """GRID decoded 32x32 RGB images, enlarged x2 (nearest) to 64 px cells, padding 1: not raw latents."""
    with Image.open(path) as image:
        assert image.mode == "RGB" and image.size == (2 * 64 + 3, 2 * 64 + 3)
        cell = np.asarray(image)[1:65, 1:65].astype(int)
    np.testing.assert_array_equal(cell[0::2], cell[1::2])  # a 32-px image doubled ...
    np.testing.assert_array_equal(cell[:, 0::2], cell[:, 1::2])
    assert (cell[1::4] != cell[2::4]).any()  # ... not a 16-px latent enlarged x4


def test_imagenet_pipeline_at_toy_scale(tmp_path, monkeypatch, capsys):
    images = image_folder(tmp_path / "images")
    vae = tmp_path / "vae"
    tiny_vae(SIZE).save_pretrained(vae)
    latents, run, fid_dir = tmp_path / "latents", tmp_path / "run", tmp_path / "fid"

    # 1. layersync-cache: the folder's SD-VAE latents (image and flip), once
    cache.main(["--plugin", "image", "--data", str(tmp_path / "images"), "--out", str(latents),
                "--set", f"tokenizer.path={vae}", "--set", f"data.image_size={SIZE}", "--batch", "8",
                "--shard-size", "10", "--device", "cpu", "--workers", "0"])
    meta = json.loads((latents / "meta.json").read_text())
    assert meta["num_items"] == 2 * PER_CLASS and meta["num_shards"] == 2 and meta["latent_shape"] == LATENT
    assert meta["classes"] == ["class0", "class1"]
    assert sorted(p.name for p in latents.iterdir()) == ["meta.json", "shard_00000.safetensors", "shard_00001.safetensors"]

    # 2. layersync-train with the paper's B/2 recipe, shrunk; the recipe expects a 256-px cache
    assert train.main([
        "--plugin", "image", "--config", str(RECIPE), "--out", str(run), "--steps", "3", "--step-mode", "eager",
        "--set", f"data.path={latents}", "--set", f"data.expect.preprocessing.data.image_size={SIZE}",
        "--set", f"tokenizer.path={vae}", "--set", "model.size=T/2", "--layersync", "2:4",
        "--set", "train.batch_size=8", "--set", "train.num_workers=0", "--set", "train.device=cpu",
        "--set", "train.log_every=1", "--set", "train.ckpt_every=3", "--set", "train.sample_every=3",
        "--set", "sample.steps=3", "--set", f"sample.num={GRID}",
    ]) == 0
    records = read_metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert all(math.isfinite(v) for v in r.values())
        # -weight * cosine similarity of blocks 2 and 4: about -0.2 here (adaLN-Zero blocks start as identities)
        assert np.float32(-0.2) <= r["layersync_loss"] < 0
        assert r["loss"] == np.float32(r["flow_loss"]) + np.float32(r["layersync_loss"])
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_0000003.pt"]
    state = checkpoint.load(run / "checkpoints" / "step_0000003.pt")
    assert state["step"] == 3 and state["input_shape"] == LATENT and state["num_classes"] == 2
    assert state["config"]["model"]["size"] == "T/2" and state["config"]["layersync"]["pairs"] == [[2, 4]]
    assert [p.name for p in (run / "samples").iterdir()] == ["step_0000003.png"]
    check_training_grid(run / "samples" / "step_0000003.png")

    # 3. layersync-sample: an ADM sample set (a folder --out: the trailing "/" asks for one below 65 samples)
    assert sample.main(["--ckpt", str(run), "--out", f"{fid_dir}/", "-n", str(NUM_SAMPLES), "--batch", "5",
                        "--device", "cpu"]) == 0
    assert sorted(p.name for p in fid_dir.iterdir()) == ["manifest.json", "samples.npz", "samples.png"]
    with np.load(fid_dir / "samples.npz") as npz:
        assert sorted(npz.files) == ["arr_0", "arr_1"]
        arr, labels = npz["arr_0"], npz["arr_1"]
    assert arr.dtype == np.uint8 and arr.shape == (NUM_SAMPLES, SIZE, SIZE, 3) and arr.std() > 0
    assert np.bincount(labels).tolist() == [NUM_SAMPLES // 2] * 2
    manifest = json.loads((fid_dir / "manifest.json").read_text())
    assert manifest["step"] == 3 and manifest["weights"] == "ema" and manifest["sample"]["steps"] == 3

    # 4. layersync-eval against a reference batch of the training images, on a random-weights Inception
    np.savez(tmp_path / "ref.npz", arr_0=images)
    weights = random_inception_file(tmp_path / "inception.pth")
    monkeypatch.setattr("layersync_image.inception.INCEPTION_FID", weight_for(weights))  # its size and SHA-256
    capsys.readouterr()  # drop what the earlier commands printed
    assert evaluate.main(["--plugin", "image", "--samples", str(fid_dir / "samples.npz"), "--ref", str(tmp_path / "ref.npz"),
                          "--weights", str(weights), "--batch", "16", "--device", "cpu",
                          "--out", str(tmp_path / "eval" / "result.json")]) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "eval" / "result.json").read_text())
    for key in ("fid", "sfid", "inception_score", "precision", "recall"):
        assert math.isfinite(result[key]) and f"{key}: {result[key]:.6g}" in printed, key
    assert result["fid"] > 0 and result["sfid"] > 0 and result["inception_score"] >= 1
    assert 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1
    assert result["num_samples"] == NUM_SAMPLES and result["num_ref"] == 2 * PER_CLASS
    assert result["weights"] == str(weights) and result["reference_statistics"] == "computed"
    assert [p.name for p in (tmp_path / "eval").iterdir()] == ["result.json"]
