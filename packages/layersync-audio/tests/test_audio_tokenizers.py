"""Audio tokenizers: log-mel (Griffin-Lim decode, librosa parity) and the Oobleck VAE (a tiny random one)."""

import json
import math

import librosa
import numpy as np
import pytest
import torch
from diffusers import AutoencoderOobleck

from layersync.errors import ConfigError
from layersync.interfaces import Tokenizer
from layersync.metrics.weights import MissingWeightsError
from layersync_audio.tokenizers import SAO_REPO, load_oobleck, mel, oobleck

RATE, SAMPLES = 16000, 16384  # 1.024 s: a multiple of the default hop (256) -> 65 frames


def tone(freq, samples=SAMPLES, rate=RATE):
    return 0.3 * torch.sin(2 * math.pi * freq * torch.arange(samples) / rate)


def peak_hz(wave, rate=RATE):
    return torch.fft.rfft(wave).abs().argmax().item() * rate / len(wave)


def band_width(freq, n_mels=64, rate=RATE):
    """The distance between the centres of the (default) mel filters around ``freq``: the frequency resolution."""
    centres = librosa.mel_frequencies(n_mels + 2, fmin=0, fmax=rate / 2)
    return float(np.diff(centres)[np.searchsorted(centres, freq) - 1])


@pytest.fixture(scope="module")
def tok():
    return mel()


@pytest.fixture(scope="module")
def sine(tok):
    """A 440 Hz sine, (1, 1, SAMPLES), and its mel round trip."""
    x = tone(440)[None, None]
    return x, tok.decode(tok.encode(x))


def test_mel_shapes_length_and_rate(tok, sine):
    assert isinstance(tok, Tokenizer) and tok.sample_rate == RATE and tok.sample_info == {"sample_rate": RATE}
    x, y = sine
    z = tok.encode(x)
    assert z.dtype == torch.float32 and z.shape == (1, *tok.latent_shape((1, SAMPLES))) == (1, 64, 65)
    assert y.shape == x.shape and y.abs().max() <= 1
    other = mel(sample_rate=22050, hop_length=441, n_mels=80, n_iter=2)
    assert other.sample_info == {"sample_rate": 22050} and other.latent_shape((1, 441 * 50)) == (80, 51)
    assert other.decode(other.encode(torch.zeros(2, 1, 441 * 50))).shape == (2, 1, 441 * 50)


def test_mel_round_trip_keeps_the_tone(tok, sine):
    x, y = sine
    assert abs(peak_hz(y[0, 0]) - 440) < band_width(440)  # within the mel resolution (46 Hz here)
    mx, my = tok.log_mel(x).exp(), tok.log_mel(y).exp()
    assert mx.mean(-1).argmax() == my.mean(-1).argmax()  # the same loudest mel band
    assert ((mx - my).norm() / mx.norm()).item() < 0.3  # spectral convergence of the mel magnitudes (0.18)


def test_mel_filterbank_and_features_match_librosa():
    settings = [dict(sample_rate=16000, n_fft=1024, hop_length=256, n_mels=64, f_min=0.0, f_max=None),
                dict(sample_rate=22050, n_fft=2048, hop_length=512, n_mels=80, f_min=30.0, f_max=9000.0)]
    rng = np.random.default_rng(0)
    for s in settings:
        tok = mel(**s)
        f_max = s["f_max"] or s["sample_rate"] / 2
        reference = librosa.filters.mel(sr=s["sample_rate"], n_fft=s["n_fft"], n_mels=s["n_mels"], fmin=s["f_min"],
                                        fmax=f_max, htk=False, norm="slaney")
        ours = tok._mel.mel_scale.fb.T.numpy()
        np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5 * reference.max())
        y = (0.1 * rng.standard_normal(s["hop_length"] * 40)).astype(np.float32)
        spec = librosa.feature.melspectrogram(y=y, sr=s["sample_rate"], n_fft=s["n_fft"], hop_length=s["hop_length"],
                                              power=1.0, pad_mode="reflect", n_mels=s["n_mels"], fmin=s["f_min"],
                                              fmax=f_max)
        expected = (np.log(np.maximum(spec, tok.floor)) - tok.log_mean) / tok.log_std
        np.testing.assert_allclose(tok.encode(torch.from_numpy(y)[None, None])[0].numpy(), expected, atol=1e-3)


def test_mel_folds_stereo_into_the_mel_axis(tok):
    left, right = tone(440, samples=4096), tone(2000, samples=4096)
    x = torch.stack([left, right])[None]
    z = tok.encode(x)
    assert z.shape == (1, *tok.latent_shape((2, 4096))) == (1, 128, 17)
    assert torch.equal(z[:, :64], tok.encode(left[None, None]))
    assert torch.equal(z[:, 64:], tok.encode(right[None, None]))
    y = tok.decode(z)
    assert y.shape == (1, 2, 4096) and torch.equal(tok.decode(z), y)  # Griffin-Lim from zero phase: deterministic
    assert abs(peak_hz(y[0, 0]) - 440) < band_width(440) and abs(peak_hz(y[0, 1]) - 2000) < band_width(2000)


def test_mel_refusals_and_fingerprint(tok):
    with pytest.raises(ConfigError, match=r"data\.seconds.*data\.samples=16128 \(1\.008 s"):
        tok.latent_shape((1, 16000))
    with pytest.raises(ConfigError, match=r"at least 768"):
        tok.latent_shape((1, 256))
    with pytest.raises(ConfigError, match="f_max"):
        mel(f_max=9000)
    with pytest.raises(ConfigError, match="n_mels=64"):
        tok.decode(torch.zeros(1, 100, 5))
    fingerprint = json.loads(json.dumps(tok.fingerprint()))
    assert fingerprint == mel().fingerprint() != mel(log_mean=-4.0).fingerprint()
    assert fingerprint["name"] == "mel" and fingerprint["n_mels"] == 64


# ---- Oobleck ------------------------------------------------------------------------------------

HOP = 8  # the tiny VAE: downsampling ratios (2, 4), 6 latent channels, stereo at 16 kHz


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    vae = AutoencoderOobleck(encoder_hidden_size=12, downsampling_ratios=[2, 4], channel_multiples=[1, 2],
                             decoder_channels=12, decoder_input_channels=6, audio_channels=2, sampling_rate=16000)
    folder = tmp_path_factory.mktemp("oobleck")
    vae.save_pretrained(folder)
    return folder


def test_oobleck_shapes_moments_and_scale(vae_dir):
    tok = oobleck(path=str(vae_dir))
    assert isinstance(tok, Tokenizer) and (tok.sample_info, tok.hop) == ({"sample_rate": 16000}, HOP)
    x = torch.stack([tone(440, samples=128), tone(1000, samples=128)])[None].repeat(3, 1, 1)
    shape = tok.latent_shape((2, 128))
    assert shape == (6, 128 // HOP)
    mean, std = tok.moments(x)
    assert mean.shape == std.shape == (3, *shape) and mean.dtype == std.dtype == torch.float32
    assert (std > 0).all() and torch.equal(tok.encode(x, sample=False), mean)
    z = tok.encode(x, generator=torch.Generator().manual_seed(0))
    assert z.shape == (3, *shape) and not torch.equal(z, mean)
    y = tok.decode(z)
    assert y.shape == x.shape and y.dtype == torch.float32 and y.abs().max() <= 1
    scaled = oobleck(path=str(vae_dir), scale=0.5)
    assert torch.allclose(scaled.encode(x, sample=False), 0.5 * mean)
    assert torch.allclose(scaled.decode(0.5 * z), y, atol=1e-6)


def test_oobleck_refusals(vae_dir):
    tok = oobleck(path=str(vae_dir))
    with pytest.raises(ConfigError, match=r"data\.channels=2"):
        tok.latent_shape((1, 128))
    with pytest.raises(ConfigError, match=r"multiple of 8.*data\.samples=96 .* or data\.samples=104 "):
        tok.latent_shape((2, 100))


def test_oobleck_fingerprint_follows_the_weights(vae_dir):
    tok = oobleck(path=str(vae_dir))
    fingerprint = json.loads(json.dumps(tok.fingerprint()))
    assert fingerprint == oobleck(path=str(vae_dir)).fingerprint()
    assert fingerprint["name"] == "oobleck" and fingerprint["config"]["downsampling_ratios"] == [2, 4]
    with torch.no_grad():
        tok.vae.decoder.conv1.bias[0] += 1e-3
    assert tok.fingerprint()["state_sha256"] != fingerprint["state_sha256"]


def test_oobleck_reads_the_repo_layout_and_names_the_download(vae_dir, tmp_path, monkeypatch):
    (tmp_path / "sao").mkdir()
    (tmp_path / "sao" / "vae").symlink_to(vae_dir)  # what `hf download ... --include "vae/*"` leaves
    assert load_oobleck(tmp_path / "sao").config.sampling_rate == 16000
    monkeypatch.setenv("LAYERSYNC_WEIGHTS_DIR", str(tmp_path / "weights"))
    with pytest.raises(MissingWeightsError) as info:
        oobleck()
    message, folder = str(info.value), tmp_path / "weights" / "stable-audio-open-1.0-vae"
    assert f'hf download {SAO_REPO} --include "vae/*" --local-dir {folder}' in message
    assert "gated" in message and "tokenizer.path" in message and str(folder / "vae") in message
