"""SD-VAE tokenizer and latent cache, with a tiny randomly initialised AutoencoderKL."""

import json
import os

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image
from safetensors.torch import load_file
from torchvision.transforms.functional import normalize, to_tensor

from helpers import error_line, tiny_vae
from layersync.cache import LatentCacheDataset, latent_cache, shard_name
from layersync.cli import cache as cache_cli
from layersync.cli import train as train_cli
from layersync.errors import ConfigError, DataError
from layersync_image.data import center_crop
from layersync_image.vae import SD_SCALE, SDVAETokenizer, sd_vae

SIZE = 16  # images are cropped to 16x16; the tiny VAE downsamples by 2 -> latents (4, 8, 8)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    vae = tiny_vae(SIZE, std_bias=1.0)  # a non-trivial posterior std, so mean and std are both tested
    folder = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(folder)
    return folder


def make_tree(root, per_class=(3, 2), size=(24, 19)):
    rng = np.random.default_rng(0)
    for c, count in enumerate(per_class):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def cache_args(data, out, vae_dir, image_size=SIZE):
    return ["--plugin", "image", "--data", str(data), "--out", str(out), "--set", f"tokenizer.path={vae_dir}",
            "--set", f"data.image_size={image_size}", "--batch", "2", "--shard-size", "2", "--device", "cpu",
            "--workers", "0"]


def build(data, out, vae_dir, image_size=SIZE):
    """layersync-cache --plugin image, in process: the cache's meta (bad input raises)."""
    return cache_cli.run(cache_cli.parser().parse_args(cache_args(data, out, vae_dir, image_size)))


def reference_pixels(path):
    """The crop the cache must use: ADM centre crop, [-1, 1], no flip."""
    with Image.open(path) as image:
        return normalize(to_tensor(center_crop(image.convert("RGB"), SIZE)), 0.5, 0.5)


def test_tokenizer_shapes_scale_and_decode(vae_dir):
    tok = sd_vae(path=str(vae_dir))
    ref = AutoencoderKL.from_pretrained(vae_dir).eval()
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    assert tok.latent_shape((3, SIZE, SIZE)) == (4, SIZE // 2, SIZE // 2)
    with torch.no_grad():
        posterior = ref.encode(x).latent_dist
        decoded = ref.decode(posterior.mean).sample
    torch.testing.assert_close(tok.encode(x, sample=False), posterior.mean * 0.18215)
    eps = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(5))
    sample = tok.encode(x, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(sample, (posterior.mean + posterior.std * eps) * SD_SCALE)
    out = tok.decode(posterior.mean * SD_SCALE)
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    torch.testing.assert_close(out, decoded.clamp(-1, 1))
    assert SDVAETokenizer(ref, scale=0.5).encode(x, sample=False).allclose(posterior.mean * 0.5, atol=1e-6)


def test_tokenizer_refuses_shapes_it_cannot_encode(vae_dir):
    with pytest.raises(ConfigError, match="divisible by 2"):
        sd_vae(path=str(vae_dir)).latent_shape((3, 15, 16))


def test_missing_vae_folder_says_where_and_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSYNC_WEIGHTS_DIR", str(tmp_path / "weights"))
    expected_dir = tmp_path / "weights" / "sd-vae-ft-mse"
    with pytest.raises(DataError) as info:
        sd_vae(variant="mse")
    message = str(info.value)
    assert str(expected_dir) in message
    assert f"download stabilityai/sd-vae-ft-mse --local-dir {expected_dir}" in message


def test_cache_stores_the_moments_of_each_image_and_its_flip(tmp_path, vae_dir):
    data = make_tree(tmp_path / "data")
    meta = build(data, tmp_path / "cache", vae_dir)
    assert meta["num_items"] == 5 and meta["num_shards"] == 3 and meta["latent_shape"] == [4, 8, 8]
    files = sorted((data / c / f) for c in ("class0", "class1") for f in sorted(os.listdir(data / c)))
    x = torch.stack([reference_pixels(f) for f in files])
    ref = AutoencoderKL.from_pretrained(vae_dir).eval()
    with torch.no_grad():
        plain, flipped = ref.encode(x).latent_dist, ref.encode(x.flip(-1)).latent_dist
    shards = [load_file(tmp_path / "cache" / shard_name(i)) for i in range(3)]
    mean, std = torch.cat([s["mean"] for s in shards]), torch.cat([s["std"] for s in shards])
    assert mean.shape == (5, 2, 4, 8, 8)
    torch.testing.assert_close(mean[:, 0], plain.mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(std[:, 0], plain.std, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mean[:, 1], flipped.mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(std[:, 1], flipped.std, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mean[:, 0], mean[:, 1])
    assert torch.cat([s["label"] for s in shards]).tolist() == [0, 0, 0, 1, 1]


def test_rerun_does_no_work_and_a_missing_shard_is_completed(tmp_path, vae_dir, monkeypatch):
    data, out = make_tree(tmp_path / "data"), tmp_path / "cache"
    build(data, out, vae_dir)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    calls = []
    moments = SDVAETokenizer.moments
    monkeypatch.setattr(SDVAETokenizer, "moments", lambda self, x: calls.append(len(x)) or moments(self, x))
    build(data, out, vae_dir)
    assert calls == [] and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    kept = load_file(out / shard_name(1))
    (out / shard_name(1)).unlink()
    with pytest.raises(DataError, match=r"incomplete: 1 of 3 shards missing \(shard_00001"):
        LatentCacheDataset(str(out))
    build(data, out, vae_dir)
    assert calls == [4]  # one batch: 2 images and their flips
    redone = load_file(out / shard_name(1))
    for key in kept:
        torch.testing.assert_close(redone[key], kept[key], atol=1e-6, rtol=1e-6)
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())


def test_changed_data_or_size_is_refused_by_name(tmp_path, vae_dir, capsys):
    data, out = make_tree(tmp_path / "data"), tmp_path / "cache"
    build(data, out, vae_dir)
    with pytest.raises(DataError, match=r"preprocessing changed \(preprocessing.data.image_size: 16 in the cache, 32 now"):
        build(data, out, vae_dir, image_size=32)
    Image.new("RGB", (20, 20)).save(data / "class1" / "new.png")
    with pytest.raises(DataError, match=r"the data changed \(data.files: 5 in the cache, 6 now; data.names_sha256"):
        build(data, out, vae_dir)
    (data / "class1" / "new.png").unlink()
    Image.new("RGB", (30, 30), "red").save(data / "class0" / "0.png")  # same name, other content
    with pytest.raises(SystemExit) as exit_info:
        cache_cli.main(cache_args(data, out, vae_dir))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("layersync-cache: error: latent cache") and "the data changed (data.stats_sha256" in err
    assert "names_sha256" not in err


def test_changed_vae_is_refused(tmp_path, vae_dir):
    data, out = make_tree(tmp_path / "data"), tmp_path / "cache"
    build(data, out, vae_dir)
    other = AutoencoderKL.from_pretrained(vae_dir)
    with torch.no_grad():
        other.decoder.conv_out.bias.add_(0.1)
    other.save_pretrained(tmp_path / "other_vae")
    with pytest.raises(DataError, match=r"the tokenizer changed \(tokenizer.state_sha256"):
        build(data, out, tmp_path / "other_vae")


@pytest.mark.slow
def test_training_reads_the_cache_with_the_vae_that_made_it_only(tmp_path, vae_dir, capsys):
    data, out = make_tree(tmp_path / "data"), tmp_path / "cache"
    build(data, out, vae_dir)

    def train(run, *tokenizer):
        return ["--plugin", "image", "--out", str(tmp_path / run), "--steps", "1", "--set", "data.name=latent-cache",
                "--set", f"data.path={out}", *tokenizer, "--set", "model.size=T/4", "--set", "train.batch_size=2",
                "--set", "train.device=cpu", "--set", "train.sample_every=1000", "--set", "sample.num=2"]

    assert train_cli.main(train("run", "--set", "tokenizer.name=sd-vae", "--set", f"tokenizer.path={vae_dir}")) == 0
    capsys.readouterr()
    line = error_line(train_cli.main, train("identity"), capsys)  # the image recipe's tokenizer: identity
    assert line.startswith(f"layersync-train: error: latent cache {out} holds latents of tokenizer 'sd-vae', but "
                           "the run's tokenizer is IdentityTokenizer")
    other = AutoencoderKL.from_pretrained(vae_dir)
    with torch.no_grad():
        other.encoder.conv_in.bias.add_(0.1)
    other.save_pretrained(tmp_path / "other_vae")
    line = error_line(train_cli.main, train("other", "--set", "tokenizer.name=sd-vae", "--set",
                                            f"tokenizer.path={tmp_path / 'other_vae'}"), capsys)
    assert "the tokenizer changed (tokenizer.state_sha256" in line and "in the run's tokenizer" in line


def test_dataset_yields_scaled_samples_of_the_stored_moments(tmp_path, vae_dir):
    out = tmp_path / "cache"
    build(make_tree(tmp_path / "data"), out, vae_dir)
    data = latent_cache(str(out), expect={"preprocessing": {"data": {"image_size": SIZE}, "scale": SD_SCALE}})
    assert data.encoded is True and len(data) == 5 and data.num_classes == 2 and data.sample_shape == (4, 8, 8)
    assert [data[i][1] for i in range(5)] == [0, 0, 0, 1, 1]
    stored = load_file(out / shard_name(1))  # items 2 and 3
    flips = set()
    for seed in range(20):  # the view and eps come from torch's RNG, in that order
        torch.manual_seed(seed)
        z, label = data[3]
        torch.manual_seed(seed)
        flip = int(torch.randint(2, (1,)))
        eps = torch.randn(4, 8, 8)
        assert z.shape == (4, 8, 8) and label == 1
        torch.testing.assert_close(z, (stored["mean"][1, flip] + stored["std"][1, flip] * eps) * SD_SCALE)
        flips.add(flip)
    assert flips == {0, 1}
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=5, num_workers=1)))
    assert batch[0].shape == (5, 4, 8, 8) and batch[1].tolist() == [0, 0, 0, 1, 1]


def test_dataset_refuses_a_cache_of_other_inputs(tmp_path, vae_dir):
    out = tmp_path / "cache"
    build(make_tree(tmp_path / "data"), out, vae_dir)
    with pytest.raises(DataError, match=r"preprocessing.data.image_size: 16 in the cache, 256 expected"):
        LatentCacheDataset(str(out), expect={"preprocessing": {"data": {"image_size": 256}}})
    with pytest.raises(DataError, match="not a latent cache"):
        LatentCacheDataset(str(tmp_path))
    meta = json.loads((out / "meta.json").read_text())
    assert set(meta["fingerprint"]) == {"data", "tokenizer", "preprocessing", "layout"}
    assert meta["fingerprint"]["preprocessing"]["data"] == {"name": "imagefolder", "image_size": SIZE, "channels": 3,
                                                            "hflip": False}


def test_cache_reads_hugging_face_parquet_shards(tmp_path, vae_dir):
    from test_image_parquet import png, write_shard

    rng = np.random.default_rng(3)
    arrays = [rng.integers(0, 255, (20, 24, 3), dtype=np.uint8) for _ in range(3)]
    folder = tmp_path / "parquet"
    folder.mkdir()
    write_shard(folder / "train-00000-of-00001.parquet", [(png(a), f"{i}.png", i % 2) for i, a in enumerate(arrays)])
    meta = build(folder, tmp_path / "cache", vae_dir)
    assert meta["num_items"] == 3 and meta["fingerprint"]["data"]["files"] == 3
    x = torch.stack([normalize(to_tensor(center_crop(Image.fromarray(a), SIZE)), 0.5, 0.5) for a in arrays])
    with torch.no_grad():
        plain = AutoencoderKL.from_pretrained(vae_dir).eval().encode(x).latent_dist
    mean = torch.cat([load_file(tmp_path / "cache" / shard_name(i))["mean"] for i in range(2)])
    torch.testing.assert_close(mean[:, 0], plain.mean, atol=1e-5, rtol=1e-5)
    assert LatentCacheDataset(tmp_path / "cache").labels.tolist() == [0, 1, 0]
