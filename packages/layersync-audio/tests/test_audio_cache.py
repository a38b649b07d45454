"""layersync-cache --plugin audio with the mel tokenizer, and what core registers itself."""

import json

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import load_file

from helpers import error_line
from layersync.build import check_compatible
from layersync.cache import LatentCacheDataset, latent_cache, shard_name
from layersync.cli import cache as cache_cli
from layersync.cli.main import describe
from layersync.errors import ConfigError, DataError
from layersync.interfaces import IdentityTokenizer
from layersync.nn import build_sit1d
from layersync.plugins import Registry
from layersync_audio.data import AudioDataset
from layersync_audio.tokenizers import MelTokenizer

RATE, SAMPLES, HOP, N_MELS = 8000, 1920, 64, 16  # 30 hops: latents (16, 31)
MEL = {"sample_rate": RATE, "n_fft": 256, "hop_length": HOP, "n_mels": N_MELS}
LENGTHS = {"down": [2000, 2400, 2000], "up": [2400, 2000, 2200]}  # 0.25-0.3 s: the centre crop matters


def make_tree(root):
    """Two class folders of float WAVs of noise, each file its own seed; returns the files in label order."""
    files = []
    for c, (name, lengths) in enumerate(sorted(LENGTHS.items())):
        for i, n in enumerate(lengths):
            path = root / name / f"clip{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            x = np.random.default_rng(10 * c + i).uniform(-0.5, 0.5, n).astype(np.float32)
            soundfile.write(path, x, RATE, subtype="FLOAT")
            files.append(path)
    return files


def mel_sets(name="mel", **options):
    """--set tokenizer.name=NAME first (it drops the recipe's oobleck options), then the mel options."""
    return [f"tokenizer.name={name}", *[f"tokenizer.{k}={v}" for k, v in {**MEL, **options}.items()]]


def cache_args(data, out, *extra, tokenizer=None):
    sets = [a for value in (tokenizer or mel_sets()) for a in ("--set", value)]
    return ["--plugin", "audio", "--data", str(data), "--out", str(out), *sets,
            "--set", f"data.sample_rate={RATE}", "--set", f"data.samples={SAMPLES}", "--set", "data.channels=1",
            "--batch", "3", "--shard-size", "4", "--device", "cpu", "--workers", "0", *extra]


def build(data, out, *extra, tokenizer=None):
    """layersync-cache --plugin audio, in process: the cache's meta (bad input raises)."""
    return cache_cli.run(cache_cli.parser().parse_args(cache_args(data, out, *extra, tokenizer=tokenizer)))


def centre_clips(files):
    """The centre SAMPLES of each file, read straight from the WAVs: (N, 1, SAMPLES)."""
    clips = []
    for f in files:
        x = soundfile.read(f, dtype="float32")[0]
        start = (len(x) - SAMPLES) // 2
        clips.append(torch.from_numpy(x[start : start + SAMPLES]))
    return torch.stack(clips)[:, None]


@pytest.fixture
def cached(tmp_path):
    files = make_tree(tmp_path / "data")
    meta = build(tmp_path / "data", tmp_path / "cache")
    return files, meta, tmp_path / "cache"


def test_meta_describes_one_deterministic_view(cached):
    _, meta, out = cached
    assert meta == json.loads((out / "meta.json").read_text())
    assert meta["views"] == 1 and meta["stochastic"] is False
    assert meta["latent_shape"] == [N_MELS, SAMPLES // HOP + 1]
    assert meta["classes"] == ["down", "up"] and meta["num_classes"] == 2
    assert meta["num_items"] == 6 and meta["num_shards"] == 2 and meta["shard_size"] == 4
    fingerprint = meta["fingerprint"]
    assert fingerprint["tokenizer"] == MelTokenizer(**MEL).fingerprint()
    assert fingerprint["preprocessing"] == {"data": {"name": "audiofolder", "layout": "classes", "sample_rate": RATE,
                                                     "samples": SAMPLES, "channels": 1, "offset": "centre"},
                                            "scale": 1.0}
    assert fingerprint["data"]["files"] == 6


def test_shards_hold_the_mel_of_the_centre_crops(cached):
    files, _, out = cached
    shards = [load_file(out / shard_name(i)) for i in range(2)]
    assert [set(s) for s in shards] == [{"mean", "label"}] * 2  # no std: the mel tokenizer is deterministic
    assert [len(s["label"]) for s in shards] == [4, 2]
    mean = torch.cat([s["mean"] for s in shards])
    assert mean.shape == (6, 1, N_MELS, SAMPLES // HOP + 1) and mean.dtype == torch.float32
    assert torch.cat([s["label"] for s in shards]).tolist() == [0, 0, 0, 1, 1, 1]
    clips = centre_clips(files)
    data = AudioDataset(str(files[0].parents[1]), sample_rate=RATE, samples=SAMPLES, offset="centre")
    items = torch.stack([data[i][0] for i in range(6)])
    assert torch.equal(items, clips)  # the data set's centre crop is the file's centre
    tokenizer = MelTokenizer(**MEL)
    torch.testing.assert_close(mean[:, 0], tokenizer.encode(clips), atol=1e-5, rtol=1e-5)
    for i in (0, 4):  # one at a time too: batching does not change an item's latents
        torch.testing.assert_close(mean[i, 0], tokenizer.encode(clips[i : i + 1])[0], atol=1e-5, rtol=1e-5)
    off_centre = torch.stack([torch.from_numpy(soundfile.read(f, dtype="float32")[0][:SAMPLES]) for f in files])
    assert not torch.allclose(mean[:, 0], tokenizer.encode(off_centre[:, None]), atol=1e-3)


def test_dataset_yields_the_stored_latents_unchanged(cached):
    _, _, out = cached
    stored = torch.cat([load_file(out / shard_name(i))["mean"] for i in range(2)])
    data = latent_cache(str(out), expect={"preprocessing": {"data": {"sample_rate": RATE, "samples": SAMPLES},
                                                            "scale": 1.0}, "tokenizer": {"name": "mel"}})
    assert data.encoded is True and len(data) == 6 and data.sample_shape == (N_MELS, SAMPLES // HOP + 1)
    assert data.classes == ["down", "up"] and data.num_classes == 2 and data.stochastic is False
    for i in range(6):
        z, label = data[i]
        assert torch.equal(z, stored[i, 0]) and label == (i >= 3)
    torch.manual_seed(1)
    again = data[4][0]
    assert torch.equal(again, stored[4, 0])  # no noise: the same latents whatever the RNG
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=6)))
    assert torch.equal(batch[0], stored[:, 0]) and batch[1].tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(DataError, match=r"tokenizer.n_mels: 16 in the cache, 64 expected"):
        LatentCacheDataset(str(out), expect={"tokenizer": {"n_mels": 64}})


def test_latents_feed_a_sit1d(cached):
    """The cache's latents are (channels, frames) inputs of the 1-D backbone."""
    _, meta, out = cached
    data = LatentCacheDataset(str(out))
    model = build_sit1d(tuple(meta["latent_shape"]), data.num_classes, "T/1")
    z, y = next(iter(torch.utils.data.DataLoader(data, batch_size=6)))
    pred, hidden = model(z, torch.rand(6), y, capture=(2,))
    assert pred.shape == z.shape and hidden[2].shape == (6, SAMPLES // HOP + 1, 128)


def test_cache_is_refused_with_a_tokenizer_that_did_not_make_it(cached):
    _, _, out = cached
    data = LatentCacheDataset(str(out))
    check_compatible(data, MelTokenizer(**MEL))
    with pytest.raises(ConfigError, match=r"holds latents of tokenizer 'mel', but the run's tokenizer is "
                                          r"IdentityTokenizer"):
        check_compatible(data, IdentityTokenizer())
    with pytest.raises(ConfigError, match=r"tokenizer changed \(tokenizer.n_mels: 16 in the cache, 8 in the run's"):
        check_compatible(data, MelTokenizer(**{**MEL, "n_mels": 8}))


def test_rerun_does_no_work(cached, monkeypatch):
    files, _, out = cached
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    calls = []
    encode = MelTokenizer.encode
    monkeypatch.setattr(MelTokenizer, "encode", lambda self, x: calls.append(len(x)) or encode(self, x))
    build(files[0].parents[1], out)
    assert calls == [] and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    (out / shard_name(1)).unlink()
    build(files[0].parents[1], out)
    assert calls == [2]  # only the missing shard's two items


def test_changed_tokenizer_option_is_refused_by_key(cached):
    files, _, out = cached
    with pytest.raises(DataError) as info:
        build(files[0].parents[1], out, tokenizer=mel_sets(n_mels=8))
    message = str(info.value)
    assert "made from other inputs: the tokenizer changed (tokenizer.n_mels: 16 in the cache, 8 now)" in message
    assert "write to a new --out or delete" in message
    with pytest.raises(DataError, match=r"tokenizer.log_std: 3.0 in the cache, 2.0 now"):
        build(files[0].parents[1], out, "--set", "tokenizer.log_std=2.0")


def test_tokenizer_override_forms(tmp_path):
    """The section as one mapping caches as the keys do; options set before the name are dropped with oobleck's."""
    make_tree(tmp_path / "data")
    meta = build(tmp_path / "data", tmp_path / "a")
    mapping = "tokenizer={name: mel, sample_rate: 8000, n_fft: 256, hop_length: 64, n_mels: 16}"
    other = build(tmp_path / "data", tmp_path / "b", tokenizer=[mapping])
    assert other["fingerprint"] == meta["fingerprint"]
    torch.testing.assert_close(load_file(tmp_path / "b" / shard_name(0)), load_file(tmp_path / "a" / shard_name(0)))
    name_last = mel_sets()[1:] + ["tokenizer.name=mel"]  # the mel defaults: 16 kHz
    with pytest.raises(ConfigError, match="data.sample_rate is 8000 but the tokenizer takes sample_rate 16000"):
        build(tmp_path / "data", tmp_path / "c", tokenizer=name_last)


def test_sample_rate_mismatch_is_a_config_error(tmp_path, capsys):
    files = make_tree(tmp_path / "data")
    out = tmp_path / "cache"
    data = AudioDataset(str(tmp_path / "data"), sample_rate=16000, samples=SAMPLES, offset="centre")
    with pytest.raises(ConfigError, match=r"data.sample_rate is 16000 but the tokenizer takes sample_rate 8000: "
                                          r"set data.sample_rate=8000"):
        check_compatible(data, MelTokenizer(**MEL))
    check_compatible(AudioDataset(str(tmp_path / "data"), sample_rate=RATE, samples=SAMPLES), MelTokenizer(**MEL))
    with pytest.raises(ConfigError, match=r"data.sample_rate is 16000"):
        build(files[0].parents[1], out, "--set", "data.sample_rate=16000")
    assert not out.exists()
    line = error_line(cache_cli.main, cache_args(files[0].parents[1], out, "--set", "data.sample_rate=16000"), capsys)
    assert line.startswith("layersync-cache: error: data.sample_rate is 16000")


def test_identity_tokenizer_is_refused(tmp_path, capsys):
    make_tree(tmp_path / "data")
    out = tmp_path / "cache"
    args = cache_args(tmp_path / "data", out, tokenizer=["tokenizer.name=identity"])
    with pytest.raises(ConfigError, match=r"tokenizer IdentityTokenizer cannot be cached: .*identity tokenizer has "
                                          r"nothing to cache"):
        cache_cli.run(cache_cli.parser().parse_args(args))
    assert not out.exists()
    assert "cannot be cached" in error_line(cache_cli.main, args, capsys)


def test_core_registers_its_own_plugin():
    reg = Registry()
    core = {p.name: p for p in reg.plugins}["core"]
    assert core.error is None
    assert core.provides == {"datasets": ["latent-cache"], "tokenizers": ["identity"], "backbones": ["sit1d", "sit3d"]}
    assert reg.get("datasets", "latent-cache") is latent_cache
    assert reg.get("tokenizers", "identity") is IdentityTokenizer and reg.get("backbones", "sit1d") is build_sit1d
    line = describe(core)
    assert line.startswith("core ") and "datasets: latent-cache" in line and "backbones: sit1d, sit3d" in line
    assert "mel" in reg.names("tokenizers") and "audiofolder" in reg.names("datasets")
