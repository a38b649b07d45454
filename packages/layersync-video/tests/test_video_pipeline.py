"""The video modality end to end on moving digits: train, sample MP4s, FVD through layersync-eval;
and the frame-wise SD-VAE tokenizer against the image VAE applied frame by frame."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import read_metrics, tiny_vae
from layersync.cli import eval as eval_cli
from layersync.cli import sample, train
from layersync_video.tokenizers import FrameVAETokenizer

QUICK = ["--set", "train.batch_size=8", "--set", "train.device=cpu", "--set", "train.log_every=1",
         "--set", "train.ckpt_every=2", "--set", "train.sample_every=2", "--set", "sample.num=4",
         "--set", "sample.steps=2", "--set", "data.frames=16", "--set", "data.length=64"]


class StandIn(torch.nn.Module):
    """A cheap stand-in for I3D (its published weights are not here): pooled frame statistics."""

    feature_dim = 3 * 16 * 2

    def forward(self, clips):
        x = clips.float()
        return torch.cat([x.mean((3, 4)).flatten(1), x.std((3, 4)).flatten(1)], 1)


@pytest.mark.slow
def test_default_trains_samples_mp4s_and_evaluates_fvd(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert train.main(["--plugin", "video", "--out", str(run), "--steps", "2", *QUICK]) == 0
    records = read_metrics(run)
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(v) for r in records for v in r.values())
    assert all(np.float32(-0.2) <= r["layersync_loss"] < 0 for r in records)
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000002.gif", "step_0000002.mp4"]
    with Image.open(run / "samples" / "step_0000002.gif") as gif:
        assert gif.n_frames > 1

    out = tmp_path / "set"
    assert sample.main(["--ckpt", str(run), "--out", f"{out}/", "-n", "6", "--batch", "3", "--device", "cpu"]) == 0
    with np.load(out / "samples.npz") as npz:
        clips = npz["arr_0"]
    assert clips.shape == (6, 1, 16, 16, 16) and clips.dtype == np.float32
    assert sorted(p.name for p in (out / "mp4").iterdir()) == [f"{i:06d}.mp4" for i in range(6)]

    monkeypatch.setattr("layersync_video.i3d.load_i3d", lambda weights=None: StandIn())
    args = ["--plugin", "video", "--samples", str(out / "samples.npz"), "--device", "cpu", "--batch", "4"]
    assert eval_cli.main([*args, "--ref", str(out / "mp4"), "--out", str(tmp_path / "fvd.json")]) == 0
    result = json.loads((tmp_path / "fvd.json").read_text())
    assert result["num_samples"] == result["num_ref"] == 6 and math.isfinite(result["fvd"])
    assert f"fvd: {result['fvd']:.6g}" in capsys.readouterr().out

    preview = tmp_path / "preview"  # its .npz: float clips as samples, as a sample set's arr_0
    assert sample.main(["--ckpt", str(run), "--out", str(preview), "--device", "cpu"]) == 0
    args[args.index("--samples") + 1] = str(preview.with_suffix(".npz"))
    assert eval_cli.main([*args, "--ref", str(out / "mp4"), "--out", str(tmp_path / "preview.json")]) == 0
    result = json.loads((tmp_path / "preview.json").read_text())
    assert result["num_samples"] == 4 and math.isfinite(result["fvd"])


def test_frame_vae_is_the_image_vae_frame_by_frame():
    vae = tiny_vae(16)
    tok = FrameVAETokenizer(vae)
    x = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    z = tok.encode(x, sample=False)
    assert z.shape == (2, 4, 5, 8, 8) and tok.latent_shape((3, 5, 16, 16)) == (4, 5, 8, 8)
    with torch.no_grad():
        for frame in range(5):
            expected = vae.encode(x[:, :, frame]).latent_dist.mean * tok.scale
            torch.testing.assert_close(z[:, :, frame], expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(tok.decode(z)[:, :, frame], vae.decode(z[:, :, frame] / tok.scale).sample.clamp(-1, 1),
                                       atol=1e-5, rtol=1e-5)


def test_layersync_cache_encodes_video_clips_with_the_frame_vae(tmp_path):
    """layersync-cache --plugin video: frame-VAE latents of centre clips, read back by the latent cache."""
    from layersync.cache import LatentCacheDataset
    from layersync.cli import cache as cache_cli
    from test_video_data import write_video

    for name in ("a", "b", "c"):
        write_video(tmp_path / "videos" / f"{name}.mp4", n=12, w=32, h=32)
    tiny_vae(16).save_pretrained(tmp_path / "vae")
    args = ["--plugin", "video", "--data", str(tmp_path / "videos"), "--out", str(tmp_path / "cache"),
            "--set", f"tokenizer.path={tmp_path / 'vae'}", "--set", "data.frames=4", "--set", "data.size=16",
            "--batch", "2", "--shard-size", "2", "--device", "cpu", "--workers", "0"]
    meta = cache_cli.run(cache_cli.parser().parse_args(args))
    assert meta["num_items"] == 3 and meta["latent_shape"] == [4, 4, 8, 8] and meta["stochastic"]
    data = LatentCacheDataset(str(tmp_path / "cache"), expect={"preprocessing": {"data": {"frames": 4, "size": 16}}})
    z, label = data[1]
    assert z.shape == (4, 4, 8, 8) and label == 0 and torch.isfinite(z).all()
