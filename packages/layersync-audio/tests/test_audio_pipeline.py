"""The audio modality end to end on its bundled data: train, sample WAVs, FAD through layersync-eval."""

import json
import math

import numpy as np
import pytest
import soundfile

from helpers import error_line, read_metrics
from layersync.cli import eval as eval_cli
from layersync.cli import sample, train
from layersync_audio.audio_io import read_audio, write_wav
from layersync_audio.data import SPOKEN_DIGITS
from layersync_audio.output import GAP_SECONDS
from test_audio_fad import random_vggish

RATE, SAMPLES = 16000, 15104  # the default recipe's clip: 59 hops of 256 samples
QUICK = ["--set", "train.batch_size=8", "--set", "train.device=cpu", "--set", "train.log_every=1",
         "--set", "train.ckpt_every=3", "--set", "train.sample_every=3", "--set", "sample.num=4",
         "--set", "sample.steps=2", "--set", "tokenizer.n_iter=4"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("audio") / "run"
    assert train.main(["--plugin", "audio", "--out", str(out), "--steps", "3", *QUICK]) == 0
    return out


@pytest.mark.slow
def test_default_trains_with_layersync_and_writes_wav_and_spectrograms(run):
    records = read_metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert all(math.isfinite(v) for v in r.values())
        assert np.float32(-0.2) <= r["layersync_loss"] < 0  # -0.2 * cosine of blocks 2 and 4
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000003.png", "step_0000003.wav"]
    audio, rate = soundfile.read(run / "samples" / "step_0000003.wav")
    assert rate == RATE and len(audio) == 4 * (SAMPLES + int(GAP_SECONDS * RATE))
    assert 0 < np.abs(audio).max() <= 1


@pytest.mark.slow
def test_sample_set_is_an_npz_with_its_rate_and_one_wav_per_sample(run, tmp_path):
    out = tmp_path / "set"
    assert sample.main(["--ckpt", str(run), "--out", f"{out}/", "-n", "5", "--batch", "2", "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "samples.npz", "samples.png", "samples.wav", "wav"]
    with np.load(out / "samples.npz") as npz:
        assert sorted(npz.files) == ["arr_0", "arr_1", "sample_rate"]
        waveforms, rate = npz["arr_0"], int(npz["sample_rate"])
    assert waveforms.dtype == np.float32 and waveforms.shape == (5, 1, SAMPLES) and rate == RATE
    wavs = sorted((out / "wav").iterdir())
    assert [p.name for p in wavs] == [f"{i:06d}.wav" for i in range(5)]
    for i, path in enumerate(wavs):  # each WAV is its sample, 16-bit
        audio, wav_rate = read_audio(path)
        assert wav_rate == RATE and np.abs(audio - waveforms[i]).max() <= 1 / 32767 + 1e-6
    assert json.loads((out / "manifest.json").read_text())["sample_info"] == {"sample_rate": RATE}


@pytest.fixture
def stand_in_vggish(monkeypatch):
    """The published VGGish is not here: the verified loader returns a randomly initialised one."""
    network = random_vggish(7)
    network.weights_path = "stand-in.pth"
    monkeypatch.setattr("layersync_audio.vggish.load_vggish", lambda weights=None: network)


def wav_folder(folder, files, noise=0.0):
    rng = np.random.default_rng(0)
    for file in files:
        audio, rate = read_audio(file)
        write_wav(folder / (file.stem + ".wav"), audio + noise * rng.standard_normal(audio.shape), rate)
    return folder


def test_eval_prints_fad_of_two_wav_folders_and_reuses_saved_statistics(tmp_path, capsys, stand_in_vggish):
    files = sorted(SPOKEN_DIGITS.rglob("*.flac"))
    ref = wav_folder(tmp_path / "ref", files[0::20])
    close, far = wav_folder(tmp_path / "close", files[3::20]), wav_folder(tmp_path / "far", files[3::20], noise=0.05)
    scores = {}
    for name, folder in (("close", close), ("far", far)):
        args = ["--plugin", "audio", "--evaluator", "fad-vggish", "--samples", str(folder), "--ref", str(ref),
                "--device", "cpu", "--out", str(tmp_path / f"{name}.json")]
        assert eval_cli.main(args + (["--save-ref-stats", str(tmp_path / "ref_stats.npz")] if name == "close" else [])) == 0
        result = json.loads((tmp_path / f"{name}.json").read_text())
        assert f"fad_vggish: {result['fad_vggish']:.6g}" in capsys.readouterr().out
        assert result["num_ref"] == len(files[0::20]) and result["weights"] == "stand-in.pth"
        scores[name] = result["fad_vggish"]
    assert 0 < scores["close"] < scores["far"]
    assert eval_cli.main(["--plugin", "audio", "--evaluator", "fad-vggish", "--samples", str(close),
                          "--ref", str(tmp_path / "ref_stats.npz"), "--device", "cpu",
                          "--out", str(tmp_path / "stats.json")]) == 0
    again = json.loads((tmp_path / "stats.json").read_text())
    assert again["fad_vggish"] == pytest.approx(scores["close"], rel=1e-9)
    assert again["reference_vggish"] == "precomputed"


@pytest.mark.slow
def test_eval_reads_the_npz_of_a_preview(run, tmp_path, stand_in_vggish):
    """layersync-sample --out STEM writes STEM.npz (samples, cond, sample_rate): layersync-eval reads it as
    it reads a sample set, to the same numbers."""
    assert sample.main(["--ckpt", str(run), "--out", str(tmp_path / "preview"), "--device", "cpu"]) == 0
    with np.load(tmp_path / "preview.npz") as npz:
        assert sorted(npz.files) == ["cond", "sample_rate", "samples"]
        np.savez(tmp_path / "as_set.npz", arr_0=npz["samples"], sample_rate=npz["sample_rate"])
    ref = wav_folder(tmp_path / "ref", sorted(SPOKEN_DIGITS.rglob("*.flac"))[:4])
    results = []
    for name in ("preview.npz", "as_set.npz"):
        assert eval_cli.main(["--plugin", "audio", "--evaluator", "fad-vggish", "--samples", str(tmp_path / name),
                              "--ref", str(ref), "--device", "cpu", "--out", str(tmp_path / "fad.json")]) == 0
        results.append(json.loads((tmp_path / "fad.json").read_text()))
    assert results[0]["num_samples"] == 4 and math.isfinite(results[0]["fad_vggish"])
    assert results[0]["fad_vggish"] == results[1]["fad_vggish"]


def test_eval_bad_inputs_name_the_file(tmp_path, capsys, stand_in_vggish):
    good = wav_folder(tmp_path / "good", sorted(SPOKEN_DIGITS.rglob("*.flac"))[:3])
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "a.wav").write_bytes(b"RIFF....not audio")
    np.savez(tmp_path / "nan.npz", arr_0=np.full((2, 1, 100), np.nan, np.float32), sample_rate=RATE)
    np.savez(tmp_path / "norate.npz", arr_0=np.zeros((2, 1, 100), np.float32))
    (tmp_path / "notes.txt").write_text("not audio")
    cases = {
        "empty": "holds no audio files",
        "corrupt": "cannot decode audio file",
        "nan.npz": "sample 0 of arr_0 holds NaN",
        "norate.npz": "no sample_rate",
        "notes.txt": "not a readable .npz",
    }
    for name, expected in cases.items():
        err = error_line(eval_cli.main, ["--plugin", "audio", "--evaluator", "fad-vggish", "--samples",
                                         str(tmp_path / name), "--ref", str(good), "--device", "cpu"], capsys)
        assert expected in err and name in err, err
