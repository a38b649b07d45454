"""VGGish: the network against torch-vggish-yamnet's, the front end against its input processing, the weight file."""

import hashlib
import math

import pytest
import torch

from layersync.metrics import MissingWeightsError, WeightFile
from layersync_audio import vggish
from layersync_audio.fad import fad_vggish
from layersync_audio.vggish import EXAMPLE_FRAMES, LOG_OFFSET, VGGISH, VGGish, VGGishEmbedder, log_mel, mel_matrix
from test_audio_fad import random_vggish, speech_like


@pytest.fixture(scope="module")
def signal() -> torch.Tensor:
    """3 s of a speech-like tone at 16 kHz, (samples,)."""
    return speech_like(1, 3.0, seed=0)[0][0]


@pytest.fixture(scope="module")
def network() -> VGGish:
    return random_vggish(seed=5).eval()


def test_network_matches_torch_vggish_yamnet(network, signal):
    from torch_vggish_yamnet.vggish.model import VGGish as Reference

    ours = network
    reference = Reference().eval()
    reference.load_state_dict(ours.state_dict())  # strict: the same keys and shapes, so the same random weights
    examples = log_mel(VGGishEmbedder(ours).windows(signal))[:, None]
    assert examples.shape == (3, 1, EXAMPLE_FRAMES, 64)
    with torch.no_grad():
        raw = ours(examples)
        published = reference(examples)  # torchvggish's network, final ReLU included
        reference.embeddings = torch.nn.Sequential(*list(reference.embeddings)[:-1])  # what fadtk reads
        torch.testing.assert_close(raw, reference(examples), rtol=1e-5, atol=1e-5 * raw.abs().max().item())
    torch.testing.assert_close(raw.relu(), published, rtol=1e-5, atol=1e-5 * raw.abs().max().item())
    assert (raw < 0).any()  # the dropped ReLU matters


def test_front_end_matches_torch_vggish_yamnet(signal):
    """Same frames and |STFT| as the package's (torchaudio) front end; only the mel triangles differ, slightly.

    The package centres its frames (reflect padding) and VGGish does not, so the package reads
    the signal 40 samples later and its frame t + 1 is our frame t (from our frame 1 on: its
    frame 1 reaches into the padding). Its 64 HTK triangles are drawn linearly in Hz,
    VGGish's linearly in mel: the weights differ by 0.001 to 0.005.
    """
    from torch_vggish_yamnet.input_proc import WaveformToInput

    front = WaveformToInput().mel_trans_ope
    ours = log_mel(signal).double().exp() - LOG_OFFSET
    magnitude = front.spectrogram(signal[None, 40:])[0].T.double().sqrt()[2 : len(ours) + 1]
    theirs_with_our_mel = magnitude @ mel_matrix()
    # its float32 FFT errs by ~1e-7 of the loudest bin: compare mel energies, whose quiet bands the log would magnify
    torch.testing.assert_close(ours[1:], theirs_with_our_mel, rtol=1e-5, atol=1e-6 * theirs_with_our_mel.max().item())
    difference = (mel_matrix() - front.mel_scale.fb.double()).abs()
    assert 1e-3 < difference.max() < 5e-3


def test_constants_are_vggish_params():
    from torch_vggish_yamnet.params import VGGishParams as P

    assert (vggish.SAMPLE_RATE, vggish.MEL_BANDS, vggish.MEL_MIN_HZ, vggish.MEL_MAX_HZ, LOG_OFFSET) == (
        P.SAMPLE_RATE, P.NUM_MEL_BINS, P.MEL_MIN_HZ, P.MEL_MAX_HZ, P.LOG_OFFSET)
    assert (vggish.FRAME, vggish.HOP) == (round(P.SAMPLE_RATE * P.STFT_WINDOW_LENGTH_SECONDS),
                                         round(P.SAMPLE_RATE * P.STFT_HOP_LENGTH_SECONDS))
    assert vggish.FFT == 2 ** math.ceil(math.log2(vggish.FRAME))
    assert (EXAMPLE_FRAMES, vggish.EMBEDDING_DIM) == (P.NUM_FRAMES, P.EMBEDDING_SIZE)
    assert P.EXAMPLE_HOP_SECONDS == P.EXAMPLE_WINDOW_SECONDS == EXAMPLE_FRAMES * P.STFT_HOP_LENGTH_SECONDS


def test_windows_are_the_clips_examples(network, signal):
    """Windows of 15600 samples every 15360 give the 96-frame blocks of the whole clip's log-mel."""
    windows = VGGishEmbedder(network).windows(signal)
    whole = log_mel(signal)
    assert len(windows) == len(whole) // EXAMPLE_FRAMES
    blocks = whole[: len(windows) * EXAMPLE_FRAMES].reshape(len(windows), EXAMPLE_FRAMES, 64)
    torch.testing.assert_close(log_mel(windows), blocks)


def test_wrong_checksum_names_file_and_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSYNC_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / VGGISH.filename).write_bytes(b"not the published weights")
    for load in (vggish.load_vggish, fad_vggish):
        with pytest.raises(MissingWeightsError) as info:
            load()
        assert str(tmp_path / VGGISH.filename) in str(info.value) and VGGISH.sha256 in str(info.value)


def test_verified_file_loads_weights_only(network, tmp_path, monkeypatch):
    path = tmp_path / "vggish.pth"
    torch.save(network.state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr(vggish, "VGGISH", WeightFile("vggish", path.name, VGGISH.url, path.stat().st_size, digest))
    loaded = vggish.load_vggish(path)
    assert loaded.weights_path == path and not loaded.training
    for key, value in network.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
