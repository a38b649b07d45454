"""Audio data: the shipped spoken digits, resampling, channels, offsets, layouts, bad files by path."""

import logging
import shutil

import numpy as np
import pytest
import soundfile
import torch
import torchaudio.functional as AF

from layersync import build
from layersync.errors import ConfigError, DataError
from layersync_audio import make_spoken_digits as make
from layersync_audio.data import SPOKEN_DIGITS, AudioDataset

RATE = 16_000


def write(path, x, rate=RATE, **kwargs):
    """(samples,) or (samples, channels) float -> an audio file (float WAV unless told)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs.setdefault("subtype", "FLOAT" if path.suffix == ".wav" else None)
    soundfile.write(path, np.asarray(x, dtype=np.float32), rate, **kwargs)
    return path


def sine(freq, seconds, rate=RATE, amp=0.5):
    return amp * np.sin(2 * np.pi * freq * np.arange(round(seconds * rate)) / rate)


def ramp(n):
    return np.arange(n) / n


def tree(root, spec):
    """``{relative path: seconds}`` -> sines of those lengths."""
    for name, seconds in spec.items():
        write(root / name, sine(300, seconds))
    return root


def test_shipped_spoken_digits_load():
    data = AudioDataset(offset="centre")
    files = sorted(SPOKEN_DIGITS.glob("*/*.flac"))
    assert data.classes == [str(d) for d in range(10)] and data.num_classes == 10
    assert len(data) == len(files) and data.sources() == (SPOKEN_DIGITS, files)
    assert data.sample_rate == RATE and data.sample_shape == (1, soundfile.info(files[0]).frames)
    for i in range(0, len(data), 97):
        x, y = data[i]
        assert x.shape == data.sample_shape and x.dtype == torch.float32
        assert data.classes[y] == files[i].parent.name
        assert 0.85 < x.abs().max() <= 0.91  # peak-normalised to 0.9, 16-bit
        quiet = x.shape[1] // 40
        assert x[0, :quiet].abs().max() < 1e-3 and x[0, -quiet:].abs().max() < 1e-3  # centred in silence
    assert sorted({len(list((SPOKEN_DIGITS / c).glob("*.flac"))) for c in data.classes}) == [len(files) // 10]


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_script_reproduces_a_shipped_clip():
    voice, pitch, speed = make.VOICES[-1], make.PITCHES[0], make.SPEEDS[0]
    shipped, _ = soundfile.read(SPOKEN_DIGITS / "7" / make.file_name(voice, pitch, speed), dtype="float32")
    regenerated = make.clip(shutil.which("espeak-ng"), "seven", voice, pitch, speed)
    np.testing.assert_allclose(regenerated, shipped, atol=2 / 32768, rtol=0)  # 16-bit rounding


def test_script_without_espeak_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemExit, match="espeak-ng was not found on PATH"):
        make.main([str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("source_rate,target_rate,seconds", [(16_000, 44_100, 0.5), (44_100, 16_000, 0.37)])
def test_resampling_length_frequency_and_window(tmp_path, source_rate, target_rate, seconds):
    wave = sine(440, 1.3, source_rate)
    write(tmp_path / "a" / "tone.wav", wave, source_rate)
    data = AudioDataset(str(tmp_path), sample_rate=target_rate, seconds=seconds, offset="centre")
    (x, _) = data[0]
    n = round(seconds * target_rate)
    assert x.shape == (1, n) and data.sample_shape == (1, n)
    spectrum = torch.fft.rfft(x[0] * torch.hann_window(n)).abs()
    assert abs(int(spectrum.argmax()) * target_rate / n - 440) <= target_rate / n  # within one bin
    full = AF.resample(torch.tensor(wave, dtype=torch.float32), source_rate, target_rate)
    start = (len(full) - n) // 2  # only the window was decoded: it must match resampling the whole file
    torch.testing.assert_close(x[0], full[start : start + n], atol=1e-4, rtol=0)


def test_mono_and_stereo(tmp_path):
    left, right = sine(300, 1), sine(500, 1, amp=0.25)
    write(tmp_path / "s" / "stereo.wav", np.stack([left, right], 1))
    write(tmp_path / "m" / "mono.wav", left)
    mono = AudioDataset(str(tmp_path / "s"), layout="folder", channels=1, offset="centre")[0][0]
    torch.testing.assert_close(mono[0], torch.tensor((left + right) / 2, dtype=torch.float32))
    stereo = AudioDataset(str(tmp_path / "s"), layout="folder", channels=2, offset="centre")[0][0]
    torch.testing.assert_close(stereo, torch.tensor(np.stack([left, right]), dtype=torch.float32))
    doubled = AudioDataset(str(tmp_path / "m"), layout="folder", channels=2, offset="centre")
    assert doubled.sample_shape == (2, RATE) and torch.equal(doubled[0][0][0], doubled[0][0][1])


def test_centre_offset_is_the_middle(tmp_path):
    write(tmp_path / "r.wav", ramp(1000))
    x, _ = AudioDataset(str(tmp_path), layout="folder", samples=200, offset="centre")[0]
    assert x[0, 0].item() == pytest.approx(400 / 1000)


def test_random_offset_varies_within_range(tmp_path):
    write(tmp_path / "r.wav", ramp(1000))
    data = AudioDataset(str(tmp_path), layout="folder", samples=995)
    starts = [round(data[0][0][0, 0].item() * 1000) for _ in range(200)]
    assert sorted(set(starts)) == list(range(6))  # every start from 0 to 1000 - 995, and only those
    torch.manual_seed(3)
    again = data[0][0]
    torch.manual_seed(3)
    assert torch.equal(data[0][0], again)  # torch's global RNG: worker seeding applies


def test_class_and_folder_layouts(tmp_path):
    root = tree(tmp_path / "d", {"cat/a.wav": 1, "cat/deep/b.flac": 1, "dog/c.ogg": 1, "dog/d.wav": 1})
    (root / "dog" / "notes.txt").write_text("not audio")
    data = AudioDataset(str(root), seconds=0.5)
    assert data.classes == ["cat", "dog"] and data.num_classes == 2 and len(data) == 4
    assert [data[i][1] for i in range(4)] == [0, 0, 1, 1]
    assert [p.name for p in data.sources()[1]] == ["a.wav", "b.flac", "c.ogg", "d.wav"]
    flat = AudioDataset(str(root), layout="folder", seconds=0.5)
    assert flat.classes is None and flat.num_classes == 0 and len(flat) == 4
    assert {flat[i][1] for i in range(4)} == {0} and flat[2][0].shape == (1, RATE // 2)


def jamendo(tmp_path, rows):
    lines = ["TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS"]
    lines += [f"track_{i:07d}\tartist_000001\talbum_000001\t{path}\t1.0\t" + "\t".join(tags)
              for i, (path, tags) in enumerate(rows)]
    (tmp_path / "meta.tsv").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "meta.tsv")


def test_jamendo_tags(tmp_path):
    audio = tmp_path / "audio"
    write(audio / "14" / "14.mp3", sine(300, 1.2, 44_100), 44_100)
    write(audio / "15" / "15.low.mp3", sine(300, 1.2, 44_100), 44_100)  # the low-quality download's name
    write(audio / "16" / "16.mp3", sine(300, 1.2, 44_100), 44_100)
    meta = jamendo(tmp_path, [("14/14.mp3", ["genre---rock", "mood/theme---calm"]),
                              ("15/15.mp3", ["genre---jazz", "genre---rock", "instrument---piano"]),
                              ("16/16.mp3", ["instrument---guitar"])])
    genre = AudioDataset(str(audio), layout="jamendo", metadata=meta, tags="genre", sample_rate=RATE, seconds=1)
    assert genre.classes == ["jazz", "rock"] and len(genre) == 2  # the track without a genre is left out
    assert [genre[i][1] for i in range(2)] == [1, 0] and genre[0][0].shape == (1, RATE)
    assert [p.name for p in genre.sources()[1]] == ["14.mp3", "15.low.mp3"]
    mood = AudioDataset(str(audio), layout="jamendo", metadata=meta, tags="mood/theme", seconds=1)
    assert mood.classes == ["calm"] and len(mood) == 1 and mood.sample_rate == 44_100
    plain = AudioDataset(str(audio), layout="jamendo", metadata=meta, seconds=1)
    assert plain.num_classes == 0 and len(plain) == 3
    with pytest.raises(ConfigError, match="data.tags=tempo: expected one of genre, instrument, mood/theme or null"):
        build.call("dataset", "audiofolder", AudioDataset, str(audio), section="data", layout="jamendo",
                   metadata=meta, tags="tempo", seconds=1)
    (tmp_path / "bad.tsv").write_text("id\tpath\n1\ta.mp3\n")
    with pytest.raises(DataError, match="bad.tsv.*TRACK_ID"):
        AudioDataset(str(audio), layout="jamendo", metadata=str(tmp_path / "bad.tsv"), seconds=1)


def test_jamendo_paths_outside_the_audio_folder_are_refused(tmp_path):
    write(tmp_path / "audio" / "14" / "14.mp3", sine(300, 1.2, 44_100), 44_100)
    write(tmp_path / "private.wav", sine(300, 1.2))
    meta = jamendo(tmp_path, [("14/14.mp3", []), ("../private.wav", [])])
    with pytest.raises(DataError, match=r"meta.tsv line 3: '../private.wav' leads outside .*audio"):
        AudioDataset(str(tmp_path / "audio"), layout="jamendo", metadata=meta, seconds=1)


def test_corrupt_and_empty_files_are_named(tmp_path):
    root = tree(tmp_path / "d", {"a/good.wav": 1, "a/good2.wav": 1})
    (root / "a" / "broken.flac").write_bytes(b"this is not a flac file")
    with pytest.raises(DataError, match=r"broken\.flac"):
        AudioDataset(str(root))
    (root / "a" / "broken.flac").unlink()
    (root / "a" / "empty.wav").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.wav is empty"):
        AudioDataset(str(root))


def test_skip_leaves_bad_files_out_with_a_count(tmp_path, caplog):
    root = tree(tmp_path / "d", {"a/good.wav": 1, "b/good.wav": 1, "b/short.wav": 0.2})
    (root / "a" / "broken.wav").write_bytes(b"RIFF garbage")
    (root / "b" / "empty.ogg").write_bytes(b"")
    with pytest.raises(DataError, match=r"broken\.wav.*2 more bad file"):
        AudioDataset(str(root), on_error="fail", seconds=0.5)
    with caplog.at_level(logging.WARNING, logger="layersync"):
        data = AudioDataset(str(root), on_error="skip", seconds=0.5)
    assert [p.name for p in data.sources()[1]] == ["good.wav", "good.wav"] and data.num_classes == 2
    assert "skipping 3 bad audio file(s) of 5" in caplog.text and "short.wav" in caplog.text


def test_folder_without_audio_names_folder_and_extensions(tmp_path):
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "a" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=r"d[/\\]a holds no audio files \(\.wav, \.flac"):
        AudioDataset(str(tmp_path / "d"))
    with pytest.raises(DataError, match=r"d holds no audio files"):
        AudioDataset(str(tmp_path / "d"), layout="folder")


def test_too_short_clip_is_named(tmp_path):
    root = tree(tmp_path / "d", {"a/long.wav": 1, "a/short.wav": 0.25})
    with pytest.raises(DataError, match=r"short\.wav is too short: 4000 samples at 16000 Hz.*needs 8000"):
        AudioDataset(str(root), seconds=0.5)
    with pytest.raises(DataError, match=r"short\.wav is too short: 4000 samples.*needs 4800 \(0\.300 s\)"):
        AudioDataset(str(root), samples=6615, sample_rate=22_050)  # 0.3 s at 22,050 Hz: 4,800 samples at 16 kHz


def test_nan_samples_fail_or_are_replaced(tmp_path, caplog):
    bad = sine(300, 1)
    bad[5000:5100] = np.nan
    root = tree(tmp_path / "d", {"a/0.wav": 1, "a/2.wav": 1})
    write(root / "a" / "1.wav", bad)
    data = AudioDataset(str(root), offset="centre")
    assert data[0][0].shape == (1, RATE)
    with pytest.raises(DataError, match=r"1\.wav holds NaN"):
        data[1]
    skip = AudioDataset(str(root), offset="centre", on_error="skip")
    with caplog.at_level(logging.WARNING, logger="layersync"):
        x, _ = skip[1]
    torch.testing.assert_close(x, skip[2][0])  # deterministically the next good item
    assert "1.wav holds NaN" in caplog.text and "1 file(s) so far" in caplog.text


def test_unsupported_extension_is_named(tmp_path):
    audio = tmp_path / "audio"
    write(audio / "1.wav", sine(300, 1))
    (audio / "2.aac").write_bytes(b"\x00" * 100)
    meta = jamendo(tmp_path, [("1.wav", []), ("2.aac", [])])
    with pytest.raises(DataError, match=r"2\.aac: unsupported audio extension '\.aac' \(expected \.wav"):
        AudioDataset(str(audio), layout="jamendo", metadata=meta)
    assert len(AudioDataset(str(audio), layout="jamendo", metadata=meta, on_error="skip")) == 1


def test_options_are_checked(tmp_path):
    tree(tmp_path / "d", {"a/x.wav": 1, "a/y.wav": 0.5})
    write(tmp_path / "d" / "a" / "z.wav", sine(300, 1, 8000), 8000)
    with pytest.raises(ConfigError, match="sample rates 8000, 16000 Hz"):
        AudioDataset(str(tmp_path / "d"))
    with pytest.raises(ConfigError, match="0.500 to 1.000 s"):
        AudioDataset(str(tmp_path / "d"), sample_rate=RATE)
    for bad in ({"seconds": 1, "samples": 10}, {"layout": "tree"}, {"offset": "start"}, {"channels": 3},
                {"samples": 0.5}, {"tags": "genre"}):
        with pytest.raises(ConfigError):
            build.call("dataset", "audiofolder", AudioDataset, str(tmp_path / "d"), section="data", **bad)


def test_benchmark_writes_its_report(tmp_path, monkeypatch):
    from benchmarks import audio_data

    monkeypatch.setenv("LAYERSYNC_RESULTS", str(tmp_path))
    report = audio_data.main(["--rates", "8000", "--workers", "0", "--batch", "4", "--batches", "2", "--repeats", "1"])
    (row,) = report["rows"]
    assert row["target_hz"] == 8000 and row["source_hz"] == "16000" and row["clips_per_s"] > 0
    assert len(list(tmp_path.glob("audio_data-cpu-*.json"))) == 1
