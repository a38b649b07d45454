"""FVD on I3D: the architecture against piergiaj's InceptionI3d, the TorchScript reader, the metric's properties."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from layersync.errors import DataError
from layersync.metrics import MissingWeightsError, WeightFile
from layersync_video import i3d
from layersync_video.fvd import FVDEvaluator, as_uint8_clips


def reference_manifest() -> dict:
    """Key -> shape of piergiaj/pytorch-i3d ``InceptionI3d(400)``, from its channel table."""
    shapes = {}

    def unit(name, cin, cout, k, bn=True):
        shapes[f"{name}.conv3d.weight"] = (cout, cin, k, k, k)
        if bn:
            for s in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{name}.bn.{s}"] = (cout,)
            shapes[f"{name}.bn.num_batches_tracked"] = ()

    unit("Conv3d_1a_7x7", 3, 64, 7)
    unit("Conv3d_2b_1x1", 64, 64, 1)
    unit("Conv3d_2c_3x3", 64, 192, 3)
    table = [("Mixed_3b", 192, [64, 96, 128, 16, 32, 32]), ("Mixed_3c", 256, [128, 128, 192, 32, 96, 64]),
             ("Mixed_4b", 480, [192, 96, 208, 16, 48, 64]), ("Mixed_4c", 512, [160, 112, 224, 24, 64, 64]),
             ("Mixed_4d", 512, [128, 128, 256, 24, 64, 64]), ("Mixed_4e", 512, [112, 144, 288, 32, 64, 64]),
             ("Mixed_4f", 528, [256, 160, 320, 32, 128, 128]), ("Mixed_5b", 832, [256, 160, 320, 32, 128, 128]),
             ("Mixed_5c", 832, [384, 192, 384, 48, 128, 128])]
    for name, cin, o in table:
        unit(f"{name}.b0", cin, o[0], 1)
        unit(f"{name}.b1a", cin, o[1], 1)
        unit(f"{name}.b1b", o[1], o[2], 3)
        unit(f"{name}.b2a", cin, o[3], 1)
        unit(f"{name}.b2b", o[3], o[4], 3)
        unit(f"{name}.b3b", cin, o[5], 1)
    unit("logits", 1024, 400, 1, bn=False)
    shapes["logits.conv3d.bias"] = (400,)
    return shapes


def test_state_dict_matches_reference_manifest():
    got = {k: tuple(v.shape) for k, v in i3d.InceptionI3d().state_dict().items()}
    assert got == reference_manifest()


@pytest.mark.slow
def test_output_shapes_of_a_16_frame_clip():
    torch.manual_seed(0)
    net = i3d.InceptionI3d().eval()
    clips = torch.randint(0, 256, (1, 3, 16, 64, 80), dtype=torch.uint8)
    with torch.no_grad():
        logits, pooled = net(i3d.preprocess(clips), with_pooled=True)
    assert logits.shape == (1, 400) and pooled.shape == (1, 1024)
    assert torch.isfinite(logits).all()


def test_same_padding_is_tf_same():
    assert i3d.same_padding((16, 224, 224), (7, 7, 7), (2, 2, 2)) == (2, 3, 2, 3, 2, 3)
    assert i3d.same_padding((8, 7, 7), (3, 3, 3), (2, 2, 2)) == (1, 1, 1, 1, 0, 1)  # TF: pad (out-1)*s+k-in
    assert i3d.same_padding((5,), (3,), (1,)) == (1, 1)


def test_preprocess_scales_and_resizes():
    clips = torch.full((2, 3, 16, 32, 48), 255, dtype=torch.uint8)
    clips[:, :, :, 0, 0] = 0
    x = i3d.preprocess(clips)
    assert x.shape == (2, 3, 16, 224, 224) and x.dtype == torch.float32
    assert x.max() == 1 and x.min() >= -1
    frame = clips[0, :, 3].float()[None] / 255 * 2 - 1
    expected = F.interpolate(frame, size=(224, 224), mode="bilinear", align_corners=False)
    assert torch.allclose(x[0, :, 3], expected[0], atol=1e-6)


@pytest.mark.parametrize("frames", [8, 17])
def test_wrong_clip_length_names_16(frames):
    with pytest.raises(DataError, match=rf"16 frames, got {frames}"):
        as_uint8_clips(torch.zeros(2, 3, frames, 8, 8, dtype=torch.uint8))


def test_float_and_grey_clips():
    x = torch.zeros(1, 1, 16, 2, 2)
    x[:, :, 0], x[:, :, 2] = -1.0, 1.0
    out = as_uint8_clips(x)
    assert out.shape == (1, 3, 16, 2, 2) and out.dtype == torch.uint8
    assert out[0, 0, :3, 0, 0].tolist() == [0, 128, 255]  # StyleGAN-V's quantisation


class StandIn(nn.Module):
    """A cheap, time-sensitive feature network in place of I3D."""

    feature_dim = 48

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv3d(3, 4, (3, 1, 1))

    def forward(self, x):
        return torch.tanh(self.conv(F.adaptive_avg_pool3d(x, (16, 2, 2)))).mean(3).flatten(1)[:, :48]


def moving_bars(n: int, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 3, 16, 32, 32): bright bars moving at random speeds and phases."""
    g = torch.Generator().manual_seed(seed)
    speed, phase = torch.rand(n, generator=g) * 2 + 0.5, torch.rand(n, generator=g) * 32
    t, col = torch.arange(16.0)[None, :, None], torch.arange(32.0)[None, None, :]
    centre = (phase[:, None, None] + speed[:, None, None] * t) % 32
    rows = torch.exp(-((col - centre) ** 2) / 8)  # (n, 16, 32)
    clip = rows[:, None, :, None, :].expand(n, 3, 16, 32, 32)
    return (clip * 255).to(torch.uint8)


def fvd_of(real, fake, batch=16) -> float:
    ev = FVDEvaluator(StandIn(), batch=batch)
    ev.update(real, real=True)
    ev.update(fake)
    out = ev.compute()
    assert out["clip_frames"] == 16 and out["num_samples"] == len(fake) and "preprocessing" in out
    return out["fvd"]


@pytest.mark.slow
def test_fvd_of_a_set_with_itself_is_zero():
    real = moving_bars(64)
    assert fvd_of(real, real, batch=7) == pytest.approx(0, abs=1e-6)


@pytest.mark.slow
def test_fvd_grows_with_temporal_shuffling_and_noise():
    real, fake = moving_bars(64, seed=0), moving_bars(64, seed=1)
    g = torch.Generator().manual_seed(2)
    shuffled = []
    for k in (0, 4, 8, 16):  # the first k frames shuffled among themselves
        perm = torch.cat([torch.randperm(k, generator=g), torch.arange(k, 16)]) if k else torch.arange(16)
        shuffled.append(fvd_of(real, fake[:, :, perm]))
    assert shuffled == sorted(shuffled) and shuffled[-1] > 2 * shuffled[0]
    noisy = []
    for level in (0.0, 0.1, 0.3, 0.6):
        x = fake.float() / 127.5 - 1 + level * torch.randn(fake.shape, generator=g)
        noisy.append(fvd_of(real, x.clamp(-1, 1)))
    assert noisy == sorted(noisy) and noisy[-1] > 2 * noisy[0]


@pytest.mark.slow
def test_reference_statistics_round_trip():
    real, fake = moving_bars(32, seed=0), moving_bars(32, seed=1)
    ev = FVDEvaluator(StandIn())
    ev.update(real, real=True)
    stats = ev.reference_statistics()
    other = FVDEvaluator(StandIn())
    other.use_reference_statistics({"mu": stats["mu_i3d"], "sigma": stats["sigma_i3d"]})
    other.update(fake)
    ev.update(fake)
    assert other.compute()["fvd"] == pytest.approx(ev.compute()["fvd"], rel=1e-9)
    with pytest.raises(DataError, match="sigma_i3d"):
        other.use_reference_statistics({"mu_i3d": np.zeros(48)})


def test_wrong_checksum_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "i3d_kinetics400_fvd.pt"
    torch.save({}, path)
    monkeypatch.setattr(i3d, "I3D_FVD", WeightFile("i3d-fvd", path.name, "https://example.invalid/x", None, "0" * 64))
    with pytest.raises(MissingWeightsError, match="i3d_kinetics400_fvd.pt"):
        i3d.load_i3d(path)


class HassonyLike(nn.Module):
    """Names as in hassony2's I3D (what StyleGAN-V's TorchScript class points to)."""

    def __init__(self):
        super().__init__()
        self.conv3d_1a_7x7 = nn.Module()
        self.conv3d_1a_7x7.conv3d = nn.Conv3d(3, 4, 1, bias=False)
        self.conv3d_1a_7x7.batch3d = nn.BatchNorm3d(4)
        self.mixed_3b = nn.Module()
        self.mixed_3b.branch_1 = nn.Sequential(nn.Conv3d(4, 4, 1), nn.Conv3d(4, 4, 1))
        self.conv3d_0c_1x1 = nn.Module()
        self.conv3d_0c_1x1.conv3d = nn.Conv3d(4, 2, 1)

    def forward(self, x):
        x = self.conv3d_1a_7x7.batch3d(self.conv3d_1a_7x7.conv3d(x))
        return self.conv3d_0c_1x1.conv3d(self.mixed_3b.branch_1(x))


def test_torchscript_conversion_reads_tensors_without_running_code(tmp_path):
    module = HassonyLike()
    with torch.no_grad():
        module.conv3d_1a_7x7.batch3d.running_mean.normal_()
    torch.jit.save(torch.jit.script(module), tmp_path / "tiny.pt")
    assert i3d.is_torchscript(tmp_path / "tiny.pt")
    state = i3d.convert_torchscript(tmp_path / "tiny.pt", out=tmp_path / "tiny_sd.pt")
    expected = {i3d.rename_to_ours(k): v for k, v in module.state_dict().items()}
    assert set(state) == set(expected)
    assert "Conv3d_1a_7x7.bn.running_mean" in state and "Mixed_3b.b1b.weight" in state
    assert "logits.conv3d.bias" in state
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    reloaded = torch.load(tmp_path / "tiny_sd.pt", weights_only=True)
    assert set(reloaded) == set(expected)


def test_converted_full_network_loads_key_for_key(tmp_path):
    net = i3d.InceptionI3d()
    torch.save(net.state_dict(), tmp_path / "i3d_kinetics400_fvd.pt")
    loaded = i3d.load_i3d(tmp_path / "i3d_kinetics400_fvd.pt")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))
