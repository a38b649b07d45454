"""Video data: clip length, stride, resize and crop, class labels, bad files by path; moving digits; outputs."""

import logging
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from layersync.errors import ConfigError, DataError
from layersync_video.data import MovingDigits, VideoFolderDataset, decord_frames, pyav_frames
from layersync_video.output import save_clips, save_video

W, H = 32, 24


def write_video(path, n=20, w=W, h=H, fps=10, frame=None, codec="mpeg4", pts=None):
    """Frame i: uniform grey of brightness 10 * i (``frame(i)`` overrides); ``pts`` in ms for a variable rate."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = frame or (lambda i: np.full((h, w, 3), 10 * i, np.uint8))
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(n):
            f = av.VideoFrame.from_ndarray(frame(i), format="rgb24")
            if pts is not None:
                f.pts, f.time_base = pts[i], Fraction(1, 1000)
            out.mux(stream.encode(f))
        out.mux(stream.encode())
    return path


def index_of(clip):
    """Per frame of a (C, T, H, W) clip in [-1, 1] of brightness-coded frames: the frame index."""
    return [round(((f.mean().item() + 1) * 127.5) / 10) for f in clip.unbind(1)]


def test_clip_length_stride_and_size(tmp_path):
    write_video(tmp_path / "a.mp4")
    ds = VideoFolderDataset(str(tmp_path), frames=5, stride=3, size=16)
    assert len(ds) == 1 and ds.sample_shape == (3, 5, 16, 16) and ds.num_classes == 0 and ds.classes is None
    assert ds.fps == pytest.approx(10 / 3)
    assert ds.sources() == (tmp_path, [tmp_path / "a.mp4"])
    torch.manual_seed(0)
    starts = set()
    for _ in range(20):
        x, label = ds[0]
        assert x.shape == (3, 5, 16, 16) and x.dtype == torch.float32 and label == 0
        assert x.min() >= -1 and x.max() <= 1
        idx = index_of(x)
        assert np.diff(idx).tolist() == [3] * 4 and 0 <= idx[0] <= 20 - 13
        starts.add(idx[0])
    assert len(starts) > 1  # random temporal start


def test_short_side_resize_and_centre_crop(tmp_path):
    def frame(i):  # 32 wide x 24 high: left quarter black, right quarter white, middle grey
        a = np.full((H, W, 3), 128, np.uint8)
        a[:, :8], a[:, 24:] = 0, 255
        return a

    write_video(tmp_path / "a.avi", n=4, frame=frame)
    x, _ = VideoFolderDataset(str(tmp_path), frames=2, size=12)[0]
    assert x.shape == (3, 2, 12, 12)
    # short side 24 -> 12: 16 x 12, cropped to columns 2..13 of 16: 2 black, 8 grey, 2 white (originals 4..27)
    row = (x[0, 0, 6] + 1) * 127.5
    assert row[0] < 40 and row[-1] > 215 and abs(row[6] - 128) < 12
    assert (row[:1] < 40).all() and (row[3:9] - 128).abs().max() < 12
    gray = VideoFolderDataset(str(tmp_path), frames=2, size=12, channels=1)[0][0]
    assert gray.shape == (1, 2, 12, 12) and torch.allclose(gray[0], x.mean(0), atol=0.05)


def test_a_file_decord_cannot_decode_is_read_with_pyav(tmp_path):
    """decord fails on a 16-pixel-wide MPEG-4 ("DECORDArrayCopyFromTo: The size must exactly match"); PyAV reads it."""
    write_video(tmp_path / "narrow" / "a.mp4", w=16, h=240)
    ds = VideoFolderDataset(str(tmp_path / "narrow"), frames=5, stride=2, size=16)
    torch.manual_seed(0)
    for _ in range(5):
        x, _ = ds[0]
        assert x.shape == (3, 5, 16, 16) and np.diff(index_of(x)).tolist() == [2] * 4
    wide = write_video(tmp_path / "wide.mp4", n=6, frame=lambda i: np.full((H, W, 3), 40 * i, np.uint8))
    assert np.array_equal(pyav_frames(wide, [1, 4, 5]), decord_frames(wide, [1, 4, 5]))  # the same frame numbers


def test_class_layout_labels(tmp_path):
    for name in ("walk/v1.mp4", "walk/v2.mkv", "jump/v1.webm", "run/sub/v1.mp4"):
        write_video(tmp_path / name, n=6, codec="libvpx" if name.endswith("webm") else "mpeg4")
    ds = VideoFolderDataset(str(tmp_path), frames=4, size=8, layout="classes")
    assert ds.classes == ["jump", "run", "walk"] and ds.num_classes == 3
    assert [(p.relative_to(tmp_path).as_posix(), label) for p, label, *_ in ds.items] == [
        ("jump/v1.webm", 0), ("run/sub/v1.mp4", 1), ("walk/v1.mp4", 2), ("walk/v2.mkv", 2)]
    assert [ds[i][1] for i in range(4)] == [0, 1, 2, 2]


def test_too_short_fails_or_skips(tmp_path, caplog):
    write_video(tmp_path / "long.mp4", n=20)
    write_video(tmp_path / "short.mp4", n=6)
    with pytest.raises(DataError, match=r"short\.mp4 is too short: 6 frames; the clip needs 7"):
        VideoFolderDataset(str(tmp_path), frames=4, stride=2)
    with caplog.at_level(logging.WARNING, logger="layersync"):
        ds = VideoFolderDataset(str(tmp_path), frames=4, stride=2, on_error="skip")
    assert [p.name for p, *_ in ds.items] == ["long.mp4"]
    assert "skipping 1 bad video file(s) of 2" in caplog.text and "short.mp4" in caplog.text
    assert len(VideoFolderDataset(str(tmp_path), frames=3, stride=2)) == 2  # 5 frames span: both fit


@pytest.mark.parametrize("name, content", [("empty.mp4", b""), ("corrupt.avi", b"not a video" * 50),
                                           ("truncated.mp4", None)])
def test_bad_files_fail_naming_the_file(tmp_path, name, content):
    good = write_video(tmp_path / "good.mp4").read_bytes()
    (tmp_path / name).write_bytes(good[: len(good) // 2] if content is None else content)
    with pytest.raises(DataError, match=name.replace(".", r"\.")):
        VideoFolderDataset(str(tmp_path), frames=4)
    assert len(VideoFolderDataset(str(tmp_path), frames=4, on_error="skip")) == 1


def test_variable_frame_rate_fails(tmp_path):
    write_video(tmp_path / "vfr.mp4", n=10, pts=[sum(100 if k % 2 else 300 for k in range(i)) for i in range(10)])
    with pytest.raises(DataError, match=r"vfr\.mp4 has a variable frame rate"):
        VideoFolderDataset(str(tmp_path), frames=4)


def test_no_videos_and_bad_options(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match=rf"{tmp_path} holds no video files \(\.mp4, \.avi, \.webm, \.mkv\)"):
        VideoFolderDataset(str(tmp_path))
    with pytest.raises(DataError, match="has no class folders"):
        VideoFolderDataset(str(tmp_path), layout="classes")
    with pytest.raises(ConfigError, match="data.stride"):
        VideoFolderDataset(str(tmp_path), stride=0)
    with pytest.raises(DataError, match="is not a folder"):
        VideoFolderDataset(str(tmp_path / "missing"))


def test_moving_digits_deterministic_bouncing_labelled():
    ds = MovingDigits(frames=24, size=16, seed=3, length=50)
    assert ds.sample_shape == (1, 24, 16, 16) and ds.num_classes == 10 and ds.fps == 8
    x, label = ds[7]
    y, same = MovingDigits(frames=24, size=16, seed=3, length=50)[7]
    assert torch.equal(x, y) and label == same and 0 <= label < 10
    assert not torch.equal(x, MovingDigits(frames=24, size=16, seed=4)[7][0])
    assert not torch.equal(x, ds[8][0])
    assert x.shape == (1, 24, 16, 16) and x.min() >= -1 and x.max() <= 1
    labels = {ds[i][1] for i in range(50)}
    assert len(labels) >= 8
    rng = np.random.default_rng([0, 0])
    path = MovingDigits(frames=60, size=20).trajectory(rng)
    assert path.min() >= 0 and path.max() <= 12
    moves = np.diff(path, axis=0)
    assert (np.abs(moves) <= 3).all() and (np.sign(moves[:, 0]) > 0).any() and (np.sign(moves[:, 0]) < 0).any()
    root, files = ds.sources()
    assert files[0].exists()
    with pytest.raises(ConfigError, match="digit_size"):
        MovingDigits(size=6)


def test_save_video_gif_and_mp4(tmp_path):
    t = 6
    x = torch.full((3, 1, t, 16, 16), -1.0)
    for i in range(t):
        x[:, :, i, i : i + 4, i : i + 4] = 1  # a moving square: every frame differs
    preview = save_video(x, tmp_path / "s", {"fps": 4})
    gif = preview.path
    assert gif == tmp_path / "s.gif" and (preview.kind, preview.rate) == ("video", 4)
    with Image.open(gif) as im:
        assert im.n_frames == t and min(im.size) >= 64
    with av.open(str(tmp_path / "s.mp4")) as f:
        frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
    assert len(frames) == t and frames[0].shape[0] % 2 == 0 and frames[0].shape[1] % 2 == 0
    assert not list(tmp_path.glob("*.tmp"))
    save_clips(x.numpy()[:2, :, :, :15, :15], 10, tmp_path, {"fps": 8})
    assert sorted(p.name for p in (tmp_path / "mp4").iterdir()) == ["000010.mp4", "000011.mp4"]
    with av.open(str(tmp_path / "mp4" / "000011.mp4")) as f:
        assert sum(1 for _ in f.decode(video=0)) == t


def test_benchmark_reports_clips_per_second(tmp_path, monkeypatch):
    from benchmarks import video_data

    monkeypatch.setenv("LAYERSYNC_RESULTS", str(tmp_path))
    report = video_data.main(["--videos", "2", "--length", "12", "--side", "32", "--frames", "4", "--size", "16",
                              "--workers", "0", "--batch", "2", "--batches", "2", "--repeats", "1"])
    (row,) = report["rows"]
    assert row["files"] == 2 and row["clip"] == "3x4x16x16" and row["clips_per_s"] > 0
    assert len(list(tmp_path.glob("video_data-cpu-*.json"))) == 1
