"""Fréchet Audio Distance: zero on a set against itself, growing with noise, reference statistics, CLAP loading."""

import inspect
import itertools
import math

import numpy as np
import pytest
import torch

from layersync.errors import ConfigError, DataError
from layersync.metrics import MissingWeightsError
from layersync_audio.audio_io import Clips, read_audio
from layersync_audio.clap import quantise_16bit
from layersync_audio.data import SPOKEN_DIGITS
from layersync_audio.fad import FADEvaluator, fad_clap, fad_vggish
from layersync_audio.vggish import VGGish, VGGishEmbedder


def speech_like(count: int, seconds: float, seed: int, rate: int = 16000) -> list[torch.Tensor]:
    """Harmonic tones with gliding pitch, decaying harmonics and syllable-rate envelopes, (1, samples) each.

    Synthetic stand-ins for speech; shipped clips may replace them.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    clips = []
    for _ in range(count):
        u = rng.random(6)
        pitch = (90 + 160 * u[0]) * (1 + 0.15 * np.sin(2 * np.pi * (0.3 + u[1]) * t + 6 * u[2]))
        phase = 2 * np.pi * np.cumsum(pitch) / rate
        tone = sum(np.exp(-k * (0.2 + 0.4 * u[3])) * np.sin(k * phase) for k in range(1, 12))
        envelope = np.maximum(np.sin(2 * np.pi * (2.5 + 3 * u[4]) * t + 6 * u[5]), 0) ** 2
        clip = tone * envelope
        clips.append(torch.from_numpy(0.5 * clip / np.abs(clip).max()).float()[None])
    return clips


def random_vggish(seed: int) -> VGGish:
    """VGGish with He-normal random weights, so that embeddings keep a usable scale through the layers."""
    torch.manual_seed(seed)
    network = VGGish()
    for layer in network.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            torch.nn.init.normal_(layer.bias, std=0.01)
    return network


@pytest.fixture(scope="module")
def embedder():
    return VGGishEmbedder(random_vggish(1234))  # FAD's behaviour does not need the published weights


def reference_of(embedder, clips, rate=16000) -> dict:
    evaluator = FADEvaluator(embedder, batch=32)
    evaluator.update(Clips(clips, rate), real=True)
    return evaluator.reference_statistics()


def fad_against(embedder, reference: dict, clips, rate=16000) -> dict:
    evaluator = FADEvaluator(embedder, batch=32)
    evaluator.use_reference_statistics(reference)
    evaluator.update(Clips(clips, rate))
    return evaluator.compute()


def test_factories_take_weights_batch_device():
    for factory in (fad_vggish, fad_clap):
        assert list(inspect.signature(factory).parameters) == ["weights", "batch", "device"]


def test_set_against_itself_is_zero(embedder):
    clips = speech_like(4, 2.0, seed=1)
    evaluator = FADEvaluator(embedder, batch=5)  # batches that straddle clips
    evaluator.update(Clips(clips, 16000), real=True)
    evaluator.update(Clips(clips, 16000))
    result = evaluator.compute()
    assert result["num_samples"] == result["num_ref"] == 4
    assert result["windows_vggish"] == result["windows_ref_vggish"] == 8  # 2 s: 2 examples of 0.96 s each
    spread = np.trace(evaluator.reference_statistics()["sigma_vggish"])
    # float32 embeddings, 8 windows in 128-d: the square root of a singular covariance costs ~sqrt(eps)
    assert spread > 0 and abs(result["fad_vggish"]) < 1e-6 * spread


def shipped_clips(count: int, offset: int) -> list[torch.Tensor]:
    """Spoken digits shipped with the package, (1, samples) each at 16 kHz: every 7th file from ``offset``."""
    files = sorted(SPOKEN_DIGITS.rglob("*.flac"))[offset::7][:count]
    return [torch.from_numpy(read_audio(f)[0]) for f in files]


def test_grows_with_noise(embedder):
    reference = reference_of(embedder, shipped_clips(30, 0))
    samples = shipped_clips(30, 3)  # other speakers and speeds than the reference's
    rng = np.random.default_rng(0)
    noise = [torch.from_numpy(rng.standard_normal(c.shape, np.float32)) for c in samples]
    # clips peak at 0.9; random weights saturate under much heavier noise
    noisy = [[c + level * n for c, n in zip(samples, noise, strict=True)] for level in (0.0, 0.001, 0.003, 0.01, 0.03)]
    scores = [fad_against(embedder, reference, clips)["fad_vggish"] for clips in noisy]
    assert all(a < b for a, b in itertools.pairwise(scores)), scores


def test_resamples_and_mixes_to_mono(embedder):
    import torchaudio

    clips, others = speech_like(6, 1.0, seed=4), speech_like(6, 1.0, seed=5)
    reference = reference_of(embedder, clips)
    stereo = [torch.cat([c + o, c - o]) for c, o in zip(clips, others, strict=True)]  # its mono mix is the clip
    stereo_48k = [torchaudio.functional.resample(c, 16000, 48000) for c in stereo]
    result = fad_against(embedder, reference, stereo_48k, rate=48000)
    assert result["windows_vggish"] == 6
    # these tones lie far below 7.5 kHz, where the round trip through 48 kHz is transparent:
    # the FAD stays at the numerical floor of a set against itself
    assert abs(result["fad_vggish"]) < 1e-5 * np.trace(reference["sigma_vggish"])


def test_short_clips_are_padded_to_one_window(embedder):
    short = [c[:, :4000] for c in speech_like(3, 1.0, seed=5)]
    evaluator = FADEvaluator(embedder)
    evaluator.update(Clips(short, 16000))
    assert evaluator.stats[False].count == 3


def test_reference_statistics_round_trip(embedder, tmp_path):
    reference, samples = speech_like(8, 1.0, seed=6), speech_like(8, 1.0, seed=7)
    first = FADEvaluator(embedder)
    first.update(Clips(reference, 16000), real=True)
    first.update(Clips(samples, 16000))
    np.savez(tmp_path / "ref.npz", **first.reference_statistics())
    second = FADEvaluator(embedder)
    with np.load(tmp_path / "ref.npz") as stored:
        assert sorted(stored.files) == ["mu_vggish", "sigma_vggish"]
        second.use_reference_statistics(dict(stored))
    second.update(Clips(speech_like(3, 1.0, seed=8), 16000), real=True)  # replaced by the statistics
    second.update(Clips(samples, 16000))
    result = second.compute()
    assert result["fad_vggish"] == pytest.approx(first.compute()["fad_vggish"], rel=1e-9)
    assert result["reference_vggish"] == "precomputed"
    assert (result["num_ref"], result["windows_ref_vggish"]) == (3, 0)


def test_plain_and_foreign_statistics(embedder):
    mu, sigma = np.zeros(128), np.eye(128)
    evaluator = FADEvaluator(embedder)
    evaluator.use_reference_statistics({"mu": mu, "sigma": sigma})
    stats = evaluator.reference_statistics()
    assert np.array_equal(stats["mu_vggish"], mu) and np.array_equal(stats["sigma_vggish"], sigma)
    other = FADEvaluator(embedder)
    other.use_reference_statistics({"mu_clap": np.zeros(512), "sigma_clap": np.eye(512)})  # another evaluator's
    other.update(Clips(speech_like(2, 2.0, seed=8), 16000))
    with pytest.raises(DataError, match="no reference.*mu_vggish/sigma_vggish"):
        other.compute()


@pytest.mark.parametrize("stats, key", [
    ({"mu_vggish": np.zeros(127), "sigma_vggish": np.eye(128)}, "mu_vggish"),
    ({"mu_vggish": np.zeros(128), "sigma_vggish": np.eye(64)}, "sigma_vggish"),
    ({"mu": np.zeros(128), "sigma": np.eye(128)[:, :3]}, "sigma"),
    ({"mu_vggish": np.zeros(128)}, "sigma_vggish"),
])
def test_bad_reference_statistics_name_the_key(embedder, stats, key):
    with pytest.raises(DataError, match=key):
        FADEvaluator(embedder).use_reference_statistics(stats)


def test_bad_clips_are_data_errors(embedder):
    evaluator = FADEvaluator(embedder)
    with pytest.raises(DataError, match="clip 1 holds NaN"):
        evaluator.update(Clips([torch.zeros(1, 16000), torch.full((1, 16000), float("nan"))], 16000))
    with pytest.raises(DataError, match="clip 0: expected a float waveform"):
        evaluator.update(Clips([torch.zeros(1, 0)], 16000))
    evaluator.update(Clips([torch.zeros(1, 16000)] * 2, 16000), real=True)
    evaluator.update(Clips([torch.zeros(1, 16000)], 16000))
    with pytest.raises(DataError, match="at least 2 windows of samples, got 1"):
        evaluator.compute()


# ---------------------------------------------------------------- CLAP


@pytest.fixture(scope="module")
def tiny_clap(tmp_path_factory):
    """A random CLAP small enough for CPU, saved as a transformers folder like laion/larger_clap_music."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    folder = tmp_path_factory.mktemp("tiny_clap")
    torch.manual_seed(0)
    config = ClapConfig(
        text_config=dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16, max_position_embeddings=32),
        audio_config=dict(hidden_size=32, patch_embeds_hidden_size=16, depths=[1, 1], num_attention_heads=[1, 2],
                          num_hidden_layers=2, spec_size=128, num_mel_bins=16),
        projection_dim=8)
    ClapModel(config).save_pretrained(folder)
    extractor = ClapFeatureExtractor(feature_size=16, frequency_min=50, frequency_max=14000, truncation="rand_trunc")
    extractor.save_pretrained(folder)
    return folder


def test_clap_windows_and_embeddings(tiny_clap):
    evaluator = fad_clap(weights=tiny_clap, batch=2)
    assert evaluator.weights_path == tiny_clap
    evaluator.update(Clips(speech_like(1, 2.5, seed=10) + speech_like(1, 0.5, seed=11), 16000), real=True)
    evaluator.update(Clips(speech_like(1, 1.5, seed=12), 16000))
    # a 10 s window starts every second (fadtk): 2.5 s -> 3, 0.5 s -> 1, 1.5 s -> 2
    result = evaluator.compute()
    assert (result["windows_ref_clap"], result["windows_clap"]) == (4, 2)
    assert math.isfinite(result["fad_clap"]) and result["fad_clap"] > 0
    windows = evaluator.embedder.windows(torch.ones(48000 * 2 + 1))
    assert windows.shape == (3, 480000) and windows[2, 1:].abs().sum() == 0 and windows[2, 0] == 1
    embeddings = evaluator.embedder.embed(windows[:2])
    assert embeddings.shape == (2, 8)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(2))


def test_clap_quantises_like_fadtk():
    x = torch.tensor([1.5, -1.0, 0.5, -2e-5, 0.99999])
    expected = torch.tensor([32767, -32767, 16383, 0, 32766]) / 32767  # clipped, scaled, truncated toward zero
    torch.testing.assert_close(quantise_16bit(x), expected)


def test_clap_missing_folder_says_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSYNC_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(MissingWeightsError) as info:
        fad_clap()
    folder = tmp_path / "larger_clap_music"
    assert str(folder) in str(info.value)
    assert f"hf download laion/larger_clap_music --local-dir {folder}" in str(info.value)
    with pytest.raises(MissingWeightsError, match="elsewhere"):
        fad_clap(weights=tmp_path / "elsewhere")


def test_clap_fused_checkpoint_is_refused(tiny_clap, tmp_path):
    from transformers import ClapFeatureExtractor, ClapModel

    ClapModel.from_pretrained(tiny_clap).save_pretrained(tmp_path)
    ClapFeatureExtractor(feature_size=16, truncation="fusion").save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="truncation 'fusion'.*unfused"):
        fad_clap(weights=tmp_path)
