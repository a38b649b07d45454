"""Bad input across every CLI and modality, one table row per case.

A CLI row runs ``main([...])`` in process and expects exit code 2 with one line on stderr naming the
thing that is wrong and what was expected; an API row expects a specific exception type. Every row
also checks that nothing was left that looks like a complete output (a checkpoint, a samples.npz, a
metrics.json, a cache shard).

The bad files are built once per module (``bad``); ``run`` is a 3-step tiny image run whose
checkpoint the sampling rows read.
"""

from __future__ import annotations

import errno
import os
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from helpers import TINY, png_tree, tiny_vae
from layersync import config as configuration
from layersync import files
from layersync.cli import cache as cache_cli
from layersync.cli import eval as eval_cli
from layersync.cli import main as main_cli
from layersync.cli import sample as sample_cli
from layersync.cli import train as train_cli
from layersync.errors import ConfigError, DataError, WriteError
from layersync.metrics import MissingWeightsError, WeightFile, resolve_weights
from layersync.objective import LayerSync
from layersync import checkpoint
from test_motion_data import caption, humanml_tree
from test_video_data import write_video

QUICK = ["--set", "train.batch_size=2", "--set", "train.device=cpu", "--set", "train.log_every=1",
         "--set", "train.ckpt_every=1", "--set", "train.sample_every=1000", "--set", "sample.num=2",
         "--set", "sample.steps=2"]
VIDEO_FOLDER = "data: {name: videofolder, frames: 4, size: 16, channels: 1, layout: folder}\n"


# ---- the bad files, once per module ---------------------------------------------------------------


def wav_tree(root, n=2, rate=16000, seconds=1.0):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            soundfile.write(root / c / f"{i}.wav", rng.uniform(-0.5, 0.5, int(rate * seconds)).astype(np.float32), rate)
    return root


@pytest.fixture(scope="module")
def bad(tmp_path_factory, tiny_run):
    root = tmp_path_factory.mktemp("bad")
    b = types.SimpleNamespace(root=root)
    b.missing = root / "nope"
    b.empty = root / "empty"
    b.empty.mkdir()
    b.not_a_vae = root / "not_a_vae"
    b.not_a_vae.mkdir()
    (b.not_a_vae / "config.json").write_text("{}")
    b.a_file = root / "a_file"
    b.a_file.write_text("x")

    # images: a good tree, a corrupt PNG and a corrupt JPEG among good ones, a folder of empty classes
    b.images = png_tree(root / "images")
    b.bad_png = png_tree(root / "bad_png")
    (b.bad_png / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    b.bad_jpg = png_tree(root / "bad_jpg", ext="jpg")
    (b.bad_jpg / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    b.empty_classes = root / "empty_classes"
    (b.empty_classes / "a").mkdir(parents=True)

    # audio: corrupt WAV and FLAC among good clips, an empty WAV
    b.bad_wav = wav_tree(root / "bad_wav")
    (b.bad_wav / "a" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    b.bad_flac = wav_tree(root / "bad_flac")
    (b.bad_flac / "b" / "broken.flac").write_bytes(b"fLaC this is not a flac file")
    b.empty_wav = wav_tree(root / "empty_wav")
    (b.empty_wav / "a" / "empty.wav").write_bytes(b"")

    # video: a corrupt and a truncated MP4 beside a good one
    b.bad_mp4 = root / "bad_mp4"
    b.bad_mp4.mkdir()
    good = write_video(b.bad_mp4 / "good.mp4", n=8, w=16, h=16).read_bytes()
    (b.bad_mp4 / "broken.mp4").write_bytes(b"not a video" * 50)
    b.cut_mp4 = root / "cut_mp4"
    b.cut_mp4.mkdir()
    (b.cut_mp4 / "good.mp4").write_bytes(good)
    (b.cut_mp4 / "cut.mp4").write_bytes(good[: len(good) // 2])
    b.video_config = root / "videofolder.yaml"
    b.video_config.write_text(VIDEO_FOLDER)

    # motion: HumanML3D trees with a corrupt .npy, a wrong width, NaN features, an empty motion folder
    ok = {"ok1": (60, [caption("a person walks")]), "ok2": (80, [caption("a person jumps")])}
    b.motion_corrupt = humanml_tree(root / "motion_corrupt", {**ok, "bad": (60, [caption("x")])})
    (b.motion_corrupt / "new_joint_vecs" / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    b.motion_width = humanml_tree(root / "motion_width", {**ok, "bad": (np.zeros((60, 250), np.float32),
                                                                          [caption("x")])})
    b.motion_nan = humanml_tree(root / "motion_nan", {**ok, "bad": (np.full((60, 263), np.nan, np.float32),
                                                                      [caption("x")])})
    b.motion_escape = humanml_tree(root / "motion_escape", ok)  # a split id that leads to another tree's motion
    for split in ("train", "test"):
        (b.motion_escape / f"{split}.txt").write_text("ok1\n../../motion_width/new_joint_vecs/ok1\n")
    b.motion_empty = root / "motion_empty"
    (b.motion_empty / "new_joint_vecs").mkdir(parents=True)
    (b.motion_empty / "texts").mkdir()

    # checkpoints
    b.ckpt_text = root / "text.pt"
    b.ckpt_text.write_text("not a checkpoint")
    b.ckpt_other = root / "other.pt"
    torch.save({"weights": torch.ones(2)}, b.ckpt_other)
    b.ckpt_list = root / "list.pt"
    torch.save([1, 2, 3], b.ckpt_list)

    # sample sets (.npz) for layersync-eval
    b.ok_npz = root / "ok.npz"
    np.savez(b.ok_npz, arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    b.ok12_npz = root / "ok12.npz"
    np.savez(b.ok12_npz, arr_0=np.random.default_rng(0).integers(0, 256, (12, 8, 8, 3), dtype=np.uint8))
    b.text_npz = root / "text.npz"
    b.text_npz.write_text("not an archive")
    b.float_npz = root / "float.npz"
    np.savez(b.float_npz, arr_0=np.zeros((4, 8, 8, 3), np.float32))
    b.nchw_npz = root / "nchw.npz"
    np.savez(b.nchw_npz, arr_0=np.zeros((4, 3, 8, 8), np.uint8))
    b.noarr_npz = root / "noarr.npz"
    np.savez(b.noarr_npz, images=np.zeros((4, 8, 8, 3), np.uint8))
    b.big_npz = root / "big.npz"
    np.savez(b.big_npz, arr_0=np.zeros((4, 16, 16, 3), np.uint8))
    b.badstats_npz = root / "badstats.npz"
    np.savez(b.badstats_npz, arr_0=np.zeros((4, 8, 8, 3), np.uint8), mu=np.zeros(2048), sigma=np.eye(3))
    b.video_npz = root / "video_wrong.npz"
    np.savez(b.video_npz, arr_0=np.zeros((4, 16, 16), np.float32))
    b.audio_npz = root / "audio_wrong.npz"
    np.savez(b.audio_npz, arr_0=np.zeros((4, 8, 8, 3), np.uint8), sample_rate=np.asarray(16000))
    b.audio_ok_npz = root / "audio_ok.npz"
    np.savez(b.audio_ok_npz, arr_0=np.zeros((4, 1, 16000), np.float32), sample_rate=np.asarray(16000))
    b.motion_npz = root / "motion_text.npz"
    b.motion_npz.write_text("not an archive")

    # config files
    b.yaml_broken = root / "broken.yaml"
    b.yaml_broken.write_text("train: [1, 2")
    b.yaml_list = root / "list.yaml"
    b.yaml_list.write_text("- train\n- data\n")
    b.yaml_section = root / "section.yaml"
    b.yaml_section.write_text("trainer: {steps: 3}\n")
    b.yaml_pairs = root / "pairs.yaml"
    b.yaml_pairs.write_text("layersync: {pairs: [[3, 99]]}\n")
    b.yaml_value = root / "value.yaml"
    b.yaml_value.write_text("optim: {lr: -1.0}\n")
    b.yaml_string = root / "string.yaml"
    b.yaml_string.write_text('train: {warmup_steps: "3"}\n')
    b.yaml_bomb = root / "bomb.yaml"  # 9 levels of 9 aliases (data takes any key): 9**9 strings once expanded
    levels = [f"  l0: &l0 [{', '.join(['lol'] * 9)}]"]
    levels += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    b.yaml_bomb.write_text("data:\n" + "\n".join(levels) + "\nmodel: *l8\n")

    # weights: the wrong file for the Inception network
    b.wrong_weights = root / "wrong.pth"
    b.wrong_weights.write_bytes(b"not the inception weights")

    # a tiny VAE and a latent cache of it, then the cache with a shard of the wrong shape
    b.vae = root / "vae"
    tiny_vae(8).save_pretrained(b.vae)
    b.cache = root / "cache"
    cache_cli.run(cache_cli.parser().parse_args(
        ["--plugin", "image", "--data", str(b.images), "--out", str(b.cache), "--set", f"tokenizer.path={b.vae}",
         "--set", "data.image_size=8", "--batch", "2", "--shard-size", "4", "--device", "cpu", "--workers", "0"]))
    b.bad_cache = root / "bad_cache"
    b.bad_cache.mkdir()
    (b.bad_cache / "meta.json").write_bytes((b.cache / "meta.json").read_bytes())
    from safetensors.torch import load_file, save_file
    shard = load_file(b.cache / "shard_00000.safetensors")
    shard["mean"] = shard["mean"][..., :2].contiguous()  # latents (4, 4, 2) where the meta says (4, 4, 4)
    save_file(shard, b.bad_cache / "shard_00000.safetensors")
    b.cache_meta_list = root / "cache_meta_list"
    b.cache_meta_list.mkdir()
    (b.cache_meta_list / "meta.json").write_text("[]")
    b.cache_no_meta = root / "cache_no_meta"
    b.cache_no_meta.mkdir()
    (b.cache_no_meta / "shard_00000.safetensors").write_bytes((b.cache / "shard_00000.safetensors").read_bytes())

    # the tiny image run's checkpoint: what sampling reads
    b.ckpt = tiny_run / "checkpoints" / "step_0000003.pt"
    assert b.ckpt.is_file()
    # a model that takes vector conditions, of a modality that makes none (the image modality has no conditions)
    state = torch.load(b.ckpt, weights_only=False)
    state["config"]["model"]["cond_dims"] = {"text": 4}
    b.ckpt_vectors = root / "vectors.pt"
    torch.save(state, b.ckpt_vectors)
    return b


# ---- what no failed command may leave -------------------------------------------------------------


def checkpoints(out):
    return sorted(Path(out).rglob("step_*.pt"))


def looks_complete(out: Path) -> list[str]:
    """Files under ``out`` that a finished command would leave: checkpoints, sample sets, metrics, shards."""
    if not out.exists():
        return []
    names = {"samples.npz", "metrics.json", "result.json", "stats.npz", "preview.npz", "preview.png",
             "samples.png"}
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if p.name in names or p.name.startswith("step_") and p.suffix == ".pt"
                  or p.name.startswith("shard_") or p.name.endswith(".tmp"))


# ---- the table --------------------------------------------------------------------------------------

# Each row: (cli, argv(b, out) -> list, expected substrings (may name b's attributes as {b.x} / {out}),
# setup(monkeypatch, b, out) or None). ``out`` is a fresh folder per row, absent at the start.

def fmt(texts, b, out):
    return [t.format(b=b, out=out) for t in texts]


def T(*extra, plugin="image", data=None, steps=1):
    """layersync-train argv: tiny settings for the modality."""
    def argv(b, out):
        base = ["--plugin", plugin, "--out", str(out), "--steps", str(steps)]
        base += TINY if plugin == "image" else QUICK
        if data is not None:
            base += ["--data", data.format(b=b, out=out)]
        return base + [x.format(b=b, out=out) for x in extra]
    return argv


def A(*args):
    """Any CLI's argv with {b.x} / {out} filled in."""
    return lambda b, out: [x.format(b=b, out=out) for x in args]


def S(*extra, ckpt="{b.ckpt}", target="{out}/preview"):
    return A("--ckpt", ckpt, "--out", target, "--device", "cpu", *extra)


def E(samples, ref="{b.ok_npz}", *extra, plugin="image"):
    return A("--plugin", plugin, "--samples", samples, "--ref", ref, "--device", "cpu", "--out", "{out}/metrics.json",
             *extra)


def C(plugin, data, *extra):
    return A("--plugin", plugin, "--data", data, "--out", "{out}", "--device", "cpu", "--workers", "0", "--batch", "2",
             *extra)


def IMAGE_CACHE(data, *extra):
    return C("image", data, "--set", "tokenizer.path={b.vae}", "--set", "data.image_size=8", *extra)


def fail_writes(err):
    """Every file write fails with ``err`` (ENOSPC, EROFS) when its data are flushed, as on a full disk."""
    def setup(monkeypatch, b, out):
        def fsync(fd):
            raise OSError(err, os.strerror(err))
        monkeypatch.setattr(files.os, "fsync", fsync)
    return setup


def fail_mkdir(err):
    """Creating ``out`` (or anything under it) fails as on a read-only mount."""
    def setup(monkeypatch, b, out):
        real = Path.mkdir

        def mkdir(self, *args, **kwargs):
            if self == out or out in self.parents:
                raise OSError(err, os.strerror(err), str(self))
            return real(self, *args, **kwargs)
        monkeypatch.setattr(Path, "mkdir", mkdir)
    return setup


def stand_in_inception(monkeypatch):
    class Projection(torch.nn.Module):
        weights_path = "stand-in.pth"

        def __init__(self):
            super().__init__()
            self.w = torch.randn(3 * 8 * 8, 16, generator=torch.Generator().manual_seed(1)) / 64

        def forward(self, x):
            f = (x.float() / 255).flatten(1) @ self.w
            return f, f[:, :5] ** 2, f[:, :10] * 3

    monkeypatch.setattr("layersync_image.evaluate.load_inception", lambda weights=None: Projection())


def with_inception(then=None):
    def setup(monkeypatch, b, out):
        stand_in_inception(monkeypatch)
        if then:
            then(monkeypatch, b, out)
    return setup


def no_weights(monkeypatch, b, out):
    monkeypatch.setenv("LAYERSYNC_WEIGHTS_DIR", str(b.empty))


def weights_dir_a_file(monkeypatch, b, out):
    monkeypatch.setenv("LAYERSYNC_WEIGHTS_DIR", str(b.a_file))


def manifest(text):
    """A sample-set folder {out}/set whose manifest.json holds ``text``."""
    def setup(monkeypatch, b, out):
        (out / "set").mkdir(parents=True)
        (out / "set" / "manifest.json").write_text(text)
    return setup


def held(folder):
    """``folder`` held by another writer (this process) for the row: monkeypatch keeps the lock and its undo
    drops it, which releases it."""
    def setup(monkeypatch, b, out):
        lock = files.folder_lock(folder.format(out=out), "run folder")
        lock.__enter__()
        monkeypatch.setattr(b, "held", lock, raising=False)
    return setup


HOLDER = f"is in use: pid {os.getpid()} on "
P = pytest.param
train, sample, evaluate, cache, umbrella = train_cli.main, sample_cli.main, eval_cli.main, cache_cli.main, main_cli.main

CLI_CASES = [
    # -- unknown plugins ---------------------------------------------------------------------------
    P(train, A("--plugin", "nope", "--out", "{out}"), ["unknown plugin 'nope'", "image"], None, id="train-plugin-unknown"),
    P(evaluate, E("{b.ok_npz}", plugin="nope"), ["unknown plugin 'nope'", "audio"], None, id="eval-plugin-unknown"),
    P(cache, C("nope", "{b.images}"), ["unknown plugin 'nope'", "video"], None, id="cache-plugin-unknown"),
    P(umbrella, A("check-plugin", "nope"), ["nope", "motion"], None, id="main-check-plugin-unknown"),
    P(umbrella, A("fetch", "nope"), ["nope"], None, id="main-fetch-unknown-weights"),
    P(umbrella, A("frobnicate"), ["invalid choice", "frobnicate"], None, id="main-unknown-command"),
    P(evaluate, E("{b.ok_npz}", "{b.ok_npz}", "--evaluator", "nope"), ["nope", "image"], None,
      id="eval-evaluator-unknown"),

    # -- missing paths and empty folders -------------------------------------------------------------
    P(train, T(data="{b.missing}"), ["{b.missing}"], None, id="train-image-data-missing"),
    P(train, T(data="{b.empty}"), ["{b.empty}"], None, id="train-image-data-empty"),
    P(train, T(data="{b.empty_classes}"), ["{b.empty_classes}"], None, id="train-image-data-empty-class"),
    P(train, T(plugin="audio", data="{b.missing}"), ["{b.missing}"], None, id="train-audio-data-missing"),
    P(train, T(plugin="audio", data="{b.empty}"), ["{b.empty}", "no class folders"], None, id="train-audio-data-empty"),
    P(train, T("--config", "{b.video_config}", plugin="video", data="{b.missing}"), ["{b.missing}"], None,
      id="train-video-data-missing"),
    P(train, T("--config", "{b.video_config}", plugin="video", data="{b.empty}"), ["{b.empty}", "no video files"],
      None, id="train-video-data-empty"),
    P(train, T(plugin="motion", data="{b.missing}"), ["{b.missing}"], None, id="train-motion-data-missing"),
    P(train, T(plugin="motion", data="{b.empty}"), ["{b.empty}"], None, id="train-motion-data-empty"),
    P(train, T(plugin="motion", data="{b.motion_empty}"), ["{b.motion_empty}"], None, id="train-motion-no-motions"),
    P(train, T("--config", "{b.missing}.yaml"), ["{b.missing}.yaml"], None, id="train-config-missing"),
    P(sample, S(ckpt="{b.missing}.pt"), ["{b.missing}.pt", "does not exist"], None, id="sample-ckpt-missing"),
    P(sample, S(ckpt="{b.empty}"), ["{b.empty}", "no checkpoint"], None, id="sample-ckpt-empty-folder"),
    P(evaluate, E("{b.missing}"), ["{b.missing}"], None, id="eval-image-samples-missing"),
    P(evaluate, E("{b.ok_npz}", "{b.missing}"), ["{b.missing}"], None, id="eval-image-ref-missing"),
    P(evaluate, E("{b.empty}"), ["{b.empty}"], None, id="eval-image-samples-empty-folder"),
    P(evaluate, E("{b.missing}", "{b.audio_ok_npz}", plugin="audio"), ["{b.missing}"], None,
      id="eval-audio-samples-missing"),
    P(evaluate, E("{b.empty}", "{b.audio_ok_npz}", plugin="audio"), ["{b.empty}", "no audio files"], None,
      id="eval-audio-samples-empty-folder"),
    P(evaluate, E("{b.missing}", "{b.missing}", plugin="video"), ["{b.missing}"], None, id="eval-video-samples-missing"),
    P(evaluate, E("{b.empty}", "{b.empty}", plugin="video"), ["{b.empty}", "no videos"], None,
      id="eval-video-samples-empty-folder"),
    P(evaluate, E("{b.missing}", "{b.missing}", plugin="motion"), ["{b.missing}"], None, id="eval-motion-samples-missing"),
    P(evaluate, E("{b.empty}", "{b.empty}", plugin="motion"), ["{b.empty}", "HumanML3D"], None,
      id="eval-motion-samples-empty-folder"),
    P(evaluate, E("{b.motion_empty}", "{b.motion_empty}", plugin="motion"), ["new_joint_vecs", "no motions"], None,
      id="eval-motion-samples-no-motions"),
    P(cache, IMAGE_CACHE("{b.missing}"), ["{b.missing}"], None, id="cache-image-data-missing"),
    P(cache, IMAGE_CACHE("{b.empty}"), ["{b.empty}"], None, id="cache-image-data-empty"),
    P(cache, C("audio", "{b.missing}"), ["{b.missing}"], None, id="cache-audio-data-missing"),
    P(cache, C("audio", "{b.empty}"), ["{b.empty}", "no class folders"], None, id="cache-audio-data-empty"),
    P(cache, C("video", "{b.missing}"), ["{b.missing}"], None, id="cache-video-data-missing"),
    P(cache, C("video", "{b.empty}"), ["{b.empty}", "no video files"], None, id="cache-video-data-empty"),

    # -- corrupt files of each kind ------------------------------------------------------------------
    P(train, T("--set", "data.channels=3", "--set", "train.batch_size=4", data="{b.bad_png}", steps=2), ["broken.png"], None,
      id="train-image-corrupt-png"),
    P(train, T("--set", "data.channels=3", "--set", "train.batch_size=4", data="{b.bad_jpg}", steps=2), ["broken.jpg"], None,
      id="train-image-corrupt-jpeg"),
    P(cache, IMAGE_CACHE("{b.bad_png}"), ["broken.png"], None, id="cache-image-corrupt-png"),
    P(cache, IMAGE_CACHE("{b.bad_jpg}"), ["broken.jpg"], None, id="cache-image-corrupt-jpeg"),
    P(train, T(plugin="audio", data="{b.bad_wav}"), ["broken.wav"], None, id="train-audio-corrupt-wav"),
    P(train, T(plugin="audio", data="{b.bad_flac}"), ["broken.flac"], None, id="train-audio-corrupt-flac"),
    P(train, T(plugin="audio", data="{b.empty_wav}"), ["empty.wav", "is empty"], None, id="train-audio-empty-wav"),
    P(cache, C("audio", "{b.bad_wav}"), ["broken.wav"], None, id="cache-audio-corrupt-wav"),
    P(cache, C("audio", "{b.bad_flac}"), ["broken.flac"], None, id="cache-audio-corrupt-flac"),
    P(train, T("--config", "{b.video_config}", plugin="video", data="{b.bad_mp4}"), ["broken.mp4"], None,
      id="train-video-corrupt-mp4"),
    P(train, T("--config", "{b.video_config}", plugin="video", data="{b.cut_mp4}"), ["cut.mp4"], None,
      id="train-video-truncated-mp4"),
    P(cache, C("video", "{b.bad_mp4}", "--set", "data.size=16", "--set", "data.frames=4"), ["broken.mp4"], None,
      id="cache-video-corrupt-mp4"),
    P(train, T(plugin="motion", data="{b.motion_corrupt}"), ["bad.npy"], None, id="train-motion-corrupt-npy"),
    P(evaluate, E("{b.motion_corrupt}", "{b.motion_corrupt}", plugin="motion"), ["t2m-evaluator", "weights"],
      no_weights, id="eval-motion-weights-absent"),
    P(sample, S(ckpt="{b.ckpt_text}"), ["{b.ckpt_text}", "cannot be read"], None, id="sample-ckpt-corrupt"),
    P(sample, S(ckpt="{b.ckpt_other}"), ["{b.ckpt_other}", "config"], None, id="sample-ckpt-not-a-checkpoint"),
    P(sample, S(ckpt="{b.ckpt_list}"), ["{b.ckpt_list}", "not a dict"], None, id="sample-ckpt-not-a-dict"),
    P(evaluate, E("{b.text_npz}"), ["{b.text_npz}", "not a readable .npz"], None, id="eval-image-npz-corrupt"),
    P(evaluate, E("{b.motion_npz}", "{b.motion_npz}", plugin="motion"), ["{b.motion_npz}", "not a readable .npz"],
      None, id="eval-motion-npz-corrupt"),
    P(evaluate, E("{b.text_npz}", "{b.text_npz}", plugin="video"), ["{b.text_npz}", "not a readable .npz"], None,
      id="eval-video-npz-corrupt"),
    P(evaluate, E("{b.text_npz}", "{b.audio_ok_npz}", plugin="audio"), ["{b.text_npz}"], None,
      id="eval-audio-npz-corrupt"),
    P(train, T("--config", "{b.yaml_broken}"), ["broken.yaml"], None, id="train-config-yaml-corrupt"),
    P(train, T("--config", "{b.yaml_list}"), ["list.yaml", "mapping"], None, id="train-config-yaml-not-mapping"),
    P(cache, IMAGE_CACHE("{b.images}", "--config", "{b.yaml_broken}"), ["broken.yaml"], None,
      id="cache-config-yaml-corrupt"),
    P(evaluate, E("{b.ok_npz}", "{b.ok_npz}", "--weights", "{b.wrong_weights}"),
      ["{b.wrong_weights}", "bytes, expected 95628359"], None, id="eval-weights-wrong-file"),
    P(evaluate, E("{b.ok_npz}", "{b.ok_npz}", "--weights", "{b.missing}.pth"), ["{b.missing}.pth", "SHA-256"], None,
      id="eval-weights-missing-file"),
    P(evaluate, E("{b.ok_npz}"), ["inception-fid", "{b.empty}", "layersync fetch"], no_weights, id="eval-image-weights-absent"),
    P(evaluate, E("{b.audio_ok_npz}", "{b.audio_ok_npz}", "--evaluator", "fad-vggish", plugin="audio"),
      ["vggish", "layersync fetch"], no_weights, id="eval-audio-weights-absent"),
    P(cache, IMAGE_CACHE("{b.images}", "--set", "tokenizer.path={b.not_a_vae}"), ["{b.not_a_vae}"], None,
      id="cache-tokenizer-path-not-a-vae"),
    P(cache, IMAGE_CACHE("{b.images}", "--set", "tokenizer.path={b.missing}"), ["{b.missing}"], None,
      id="cache-tokenizer-path-missing"),
    P(train, T("--set", "tokenizer.name=sd-vae", "--set", "tokenizer.path={b.not_a_vae}", "--set", "data.channels=3",
               data="{b.images}"), ["{b.not_a_vae}"], None, id="train-tokenizer-path-not-a-vae"),

    # -- wrong shapes and dtypes ---------------------------------------------------------------------
    P(evaluate, E("{b.float_npz}"), ["{b.float_npz}", "float32", "expected uint8"], None, id="eval-image-npz-dtype"),
    P(evaluate, E("{b.nchw_npz}"), ["{b.nchw_npz}", "(N, H, W, 3)"], None, id="eval-image-npz-shape"),
    P(evaluate, E("{b.noarr_npz}"), ["{b.noarr_npz}", "no arr_0"], None, id="eval-image-npz-no-arr0"),
    P(evaluate, E("{b.ok_npz}", "{b.big_npz}"), ["16x16", "8x8", "same resolution"], None, id="eval-image-size-mismatch"),
    P(evaluate, E("{b.ok_npz}", "{b.badstats_npz}"), ["sigma has shape (3, 3)", "(2048, 2048)"], None,
      id="eval-image-ref-stats-shape"),
    P(evaluate, E("{b.video_npz}", "{b.video_npz}", plugin="video"), ["{b.video_npz}", "arr_0 is float32"], None,
      id="eval-video-npz-shape"),
    P(evaluate, E("{b.audio_npz}", "{b.audio_ok_npz}", plugin="audio"), ["{b.audio_npz}", "uint8"], None,
      id="eval-audio-npz-shape"),
    P(train, T(plugin="motion", data="{b.motion_width}"), ["bad.npy", "263"], None, id="train-motion-npy-width"),
    P(train, T(plugin="motion", data="{b.motion_nan}"), ["bad.npy"], None, id="train-motion-npy-nan"),
    P(train, T(plugin="motion", data="{b.motion_escape}"),
      ["{b.motion_escape}/train.txt", "'../../motion_width/new_joint_vecs/ok1' leads outside"], None,
      id="train-motion-split-id-leaves-folder"),
    P(evaluate, E("{b.motion_escape}", "{b.motion_escape}", plugin="motion"),
      ["{b.motion_escape}/test.txt", "'../../motion_width/new_joint_vecs/ok1.npy' leads outside"], None,
      id="eval-motion-split-id-leaves-folder"),
    P(train, T("--set", "data.name=latent-cache", "--set", "data.path={b.bad_cache}"),
      ["{b.bad_cache}/shard_00000.safetensors", "expected"], None, id="train-latent-cache-wrong-shape"),
    P(train, T("--set", "data.name=latent-cache", "--set", "data.path={b.cache_no_meta}"),
      ["{b.cache_no_meta}", "meta.json"], None, id="train-latent-cache-no-meta"),
    P(train, T("--set", "data.name=latent-cache", "--set", "data.path={b.images}"),
      ["{b.images}", "not a latent cache"], None, id="train-latent-cache-not-a-cache"),
    P(train, T("--set", "data.name=latent-cache", "--set", "data.path={b.cache_meta_list}"),
      ["{b.cache_meta_list}/meta.json holds a JSON list"], None, id="train-latent-cache-meta-a-list"),
    P(train, T("--set", "data.name=latent-cache", "--set", "data.path={b.cache}"),
      ["latent cache {b.cache} holds latents of tokenizer 'sd-vae'", "IdentityTokenizer"], None,
      id="train-latent-cache-other-tokenizer"),
    P(cache, IMAGE_CACHE("{b.images}", "--set", "data.name=latent-cache"), ["latent-cache"], None,
      id="cache-of-a-cache"),

    # -- invalid config keys and values --------------------------------------------------------------
    P(train, T("--set", "train.batchsize=3"), ["train.batchsize", "batch_size"], None, id="train-key-train"),
    P(train, T("--set", "optim.learning_rate=1"), ["optim.learning_rate", "lr"], None, id="train-key-optim"),
    P(train, T("--set", "sample.stepz=3"), ["sample.stepz", "steps"], None, id="train-key-sample"),
    P(train, T("--set", "layersync.pair=[[1,2]]"), ["layersync.pair", "pairs"], None, id="train-key-layersync"),
    P(train, T("--set", "data.colour=1"), ["colour"], None, id="train-key-data"),
    P(train, T("--set", "model.width=3"), ["width", "backbone 'sit'"], None, id="train-key-model"),
    P(train, T("--config", "{b.yaml_section}"), ["trainer"], None, id="train-key-section"),
    P(train, T("--set", "train.precision=fp8"), ["train.precision", "fp8"], None, id="train-value-precision"),
    P(train, T("--set", "train.batch_size=0"), ["train.batch_size", "0"], None, id="train-value-batch"),
    P(train, T("--config", "{b.yaml_value}"), ["optim.lr", "-1.0"], None, id="train-value-from-file"),
    P(train, T("--config", "{b.yaml_string}"), ["train.warmup_steps='3' (a string): expected an integer >= 0"],
      None, id="train-value-string-for-integer"),
    P(train, T("--config", "{b.yaml_bomb}"), ["bomb.yaml", "line 3", "aliases are not allowed"], None,
      id="train-config-yaml-alias-bomb"),
    P(train, T("--seed", "99999999999999999999999"), ["seed=99999999999999999999999", str(2**63 - 1)], None,
      id="train-seed-too-large"),
    P(sample, S("--seed", "99999999999999999999999"), ["--seed", str(2**63 - 1)], None, id="sample-seed-too-large"),
    P(train, T("--set", "sample.method=jump"), ["sample.method", "jump"], None, id="train-value-sample-method"),
    P(train, T("--set", "model.size=Q/4"), ["Q/4"], None, id="train-value-model-size"),
    P(train, T("--set", "data.image_size=7"), ["7"], None, id="train-value-image-size"),
    P(train, T("--set", "train.batch_size=4096"), ["train.batch_size=4096", "at most"], None,
      id="train-value-batch-larger-than-data"),
    P(train, T(plugin="audio", *["--set", "data.layout=nope"]), ["layout", "nope"], None,
      id="train-audio-value-sample-rate"),
    P(train, T(plugin="motion", *["--set", "data.condition=smell"]), ["condition", "smell"], None,
      id="train-motion-value-condition"),
    P(train, T(plugin="video", *["--set", "data.frames=0"]), ["frames"], None, id="train-video-value-frames"),
    P(sample, S("--set", "train.steps=3"), ["sample.*", "train.steps=3"], None, id="sample-set-other-section"),
    P(sample, S("--set", "sample.stepz=3"), ["sample.stepz"], None, id="sample-key-unknown"),
    P(sample, S("--set", "sample.solver=rk9"), ["sample.solver", "rk9"], None, id="sample-value-solver"),
    P(sample, S("--cond", "99"), ["--cond 99", "0..9"], None, id="sample-cond-out-of-range"),
    P(sample, S(ckpt="{b.ckpt_vectors}"), ["{b.ckpt_vectors}", "model.cond_dims: text", "modality 'image' defines no "
      "conditions"], None, id="sample-vector-model-without-conditions"),
    P(sample, S("--model", "SiT-XL/2"), ["SiT-XL/2", "T/4"], None, id="sample-model-mismatch"),
    P(evaluate, E("{b.ok_npz}", "{b.ok_npz}", "--batch", "0"), ["--batch", "0"], None, id="eval-batch-zero"),
    P(cache, IMAGE_CACHE("{b.images}", "--shard-size", "0"), ["--shard-size", "0"], None, id="cache-shard-size-zero"),
    P(cache, IMAGE_CACHE("{b.images}", "--set", "data.image_size=-8"), ["data.image_size", "-8"], None,
      id="cache-value-image-size"),

    # -- invalid layer pairs for the depth (image T/4: 6 blocks; audio T/2: 6; video T/4: 6; motion XS/2: 8)
    P(train, T("--layersync", "3:99"), ["(3, 99)", "6"], None, id="train-image-pair-beyond-depth"),
    P(train, T("--layersync", "5:2"), ["5", "2"], None, id="train-image-pair-reversed"),
    P(train, T("--layersync", "0:3"), ["0"], None, id="train-image-pair-zero"),
    P(train, T("--layersync", "3:3"), ["3"], None, id="train-image-pair-same-block"),
    P(train, T("--config", "{b.yaml_pairs}"), ["(3, 99)"], None, id="train-image-pair-from-config"),
    P(train, T("--layersync", "3:99", plugin="audio"), ["(3, 99)"], None, id="train-audio-pair-beyond-depth"),
    P(train, T("--layersync", "5:2", plugin="video"), ["5", "2"], None, id="train-video-pair-reversed"),
    P(train, T("--layersync", "3:99", plugin="motion"), ["(3, 99)", "8"], None, id="train-motion-pair-beyond-depth"),
    P(train, T("--encoder-depth", "0", "--gt-encoder-depth", "3"), ["--encoder-depth/--gt-encoder-depth", "0"], None,
      id="train-reference-pair-zero"),

    # -- a read-only or full output folder ----------------------------------------------------------
    P(train, T(), ["cannot write", "step_0000001.pt", "no space left on device"], fail_writes(errno.ENOSPC),
      id="train-write-disk-full"),
    P(train, T(), ["cannot write {out}", "read-only file system"], fail_mkdir(errno.EROFS), id="train-write-read-only"),
    P(train, T(plugin="audio"), ["cannot write", "no space left on device"], fail_writes(errno.ENOSPC),
      id="train-audio-write-disk-full"),
    P(sample, S(), ["cannot write {out}/preview", "no space left on device"], fail_writes(errno.ENOSPC),
      id="sample-preview-disk-full"),
    P(sample, S(target="{out}/set/", *["-n", "4"]), ["cannot write {out}/set", "read-only file system"],
      fail_writes(errno.EROFS), id="sample-set-read-only"),
    P(sample, S(target="{b.a_file}/preview"), ["{b.a_file}", "not a directory"], None, id="sample-out-under-a-file"),
    P(sample, S(target="{out}/set/", *["-n", "4"]), ["{out}/set/manifest.json holds a JSON list"], manifest("[1, 2]"),
      id="sample-set-manifest-a-list"),
    P(sample, S(target="{out}/set/", *["-n", "4"]), ["{out}/set/manifest.json holds a JSON str"], manifest('"x"'),
      id="sample-set-manifest-a-string"),
    P(umbrella, A("weights"), ["LAYERSYNC_WEIGHTS_DIR={b.a_file} names a file"], weights_dir_a_file,
      id="main-weights-dir-a-file"),
    P(evaluate, E("{b.ok_npz}"), ["LAYERSYNC_WEIGHTS_DIR={b.a_file} names a file"], weights_dir_a_file,
      id="eval-weights-dir-a-file"),
    P(evaluate, E("{b.ok12_npz}", "{b.ok12_npz}"), ["cannot write {out}/metrics.json", "no space left on device"],
      with_inception(fail_writes(errno.ENOSPC)), id="eval-write-disk-full"),
    P(evaluate, E("{b.ok12_npz}", "{b.ok12_npz}", "--save-ref-stats", "{out}/stats.npz"),
      ["cannot write {out}", "read-only file system"], with_inception(fail_writes(errno.EROFS)),
      id="eval-write-read-only"),
    P(cache, IMAGE_CACHE("{b.images}"), ["cannot write {out}", "no space left on device"], fail_writes(errno.ENOSPC),
      id="cache-write-disk-full"),
    P(cache, IMAGE_CACHE("{b.images}"), ["cannot write {out}", "read-only file system"], fail_mkdir(errno.EROFS),
      id="cache-write-read-only"),

    # -- a folder that another command writes to ------------------------------------------------------
    P(train, T(), ["run folder {out} " + HOLDER], held("{out}"), id="train-run-folder-in-use"),
    P(sample, S(target="{out}/set/", *["-n", "4"]), ["sample set {out}/set " + HOLDER], held("{out}/set"),
      id="sample-set-in-use"),
    P(cache, IMAGE_CACHE("{b.images}"), ["latent cache {out} " + HOLDER], held("{out}"), id="cache-in-use"),
]


def run_cli(main, argv, capsys, prog) -> str:
    """Exit code 2 (or a returned 2) and one error line on stderr (after any progress bar), returned."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.replace("\r", "\n").splitlines() if f"{prog}: error:" in line]
    assert all(line.startswith(f"{prog}: error:") for line in lines), lines  # not glued to a progress bar
    assert code == 2, (code, err[-2000:])
    assert len(lines) == 1, err[-2000:]
    return lines[0]


@pytest.mark.parametrize("main, argv, expected, setup", CLI_CASES)
def test_cli(bad, tmp_path, capsys, monkeypatch, main, argv, expected, setup):
    out = tmp_path / "out"
    if setup is not None:
        setup(monkeypatch, bad, out)
    args = argv(bad, out)
    prog = {train: "layersync-train", sample: "layersync-sample", evaluate: "layersync-eval",
            cache: "layersync-cache", umbrella: "layersync check-plugin" if "check-plugin" in args else
            "layersync"}[main]
    line = run_cli(main, args, capsys, prog)
    monkeypatch.undo()
    for text in fmt(expected, bad, out):
        assert text in line, (text, line)
    assert "Traceback" not in line
    assert looks_complete(out) == []
    assert looks_complete(bad.empty) == [] and list(bad.empty.iterdir()) == []


# ---- the same through the API: the exception type names the kind of problem ------------------------


def wrong_weight():
    return WeightFile("toy", "toy.pth", "https://example.org/toy.pth", 7, "0" * 64)


API_CASES = [
    P(lambda b: checkpoint.load(b.ckpt_text), ValueError, ["{b.ckpt_text}", "cannot be read"], id="api-ckpt-corrupt"),
    P(lambda b: checkpoint.load(b.ckpt_other, keys=("config",)), ValueError, ["lacks config"], id="api-ckpt-keys"),
    P(lambda b: resolve_weights(wrong_weight(), b.wrong_weights), MissingWeightsError, ["bytes, expected 7"],
      id="api-weights-size"),
    P(lambda b: resolve_weights(wrong_weight(), b.ckpt_other.with_name("seven")), MissingWeightsError,
      ["expected " + "0" * 64], id="api-weights-checksum"),
    P(lambda b: configuration.load(None, b.yaml_broken), ConfigError, ["broken.yaml"], id="api-config-yaml"),
    P(lambda b: configuration.set_key(configuration.load(None), "train.nope=1"), ConfigError, ["train.nope"],
      id="api-config-key"),
    P(lambda b: LayerSync([[5, 2]]), ValueError, ["5", "2"], id="api-pair-reversed"),
    P(lambda b: LayerSync([[3, 99]]).validate(6), ValueError, ["99"], id="api-pair-depth"),
    P(lambda b: __import__("layersync_image.evaluate", fromlist=["x"]).NpzImages(b.float_npz), DataError,
      ["{b.float_npz}", "expected uint8"], id="api-image-npz-dtype"),
    P(lambda b: __import__("layersync_video.samples", fromlist=["x"]).read_samples(b.video_npz), DataError,
      ["{b.video_npz}"], id="api-video-npz-shape"),
    P(lambda b: __import__("layersync_motion.data", fromlist=["x"]).MotionDataset(b.motion_corrupt, condition="none"),
      DataError, ["bad.npy"], id="api-motion-corrupt-npy"),
    P(lambda b: list(__import__("layersync_motion.samples", fromlist=["x"]).read_samples(b.motion_corrupt).batches(2)),
      DataError, ["{b.motion_corrupt}/new_joint_vecs/bad.npy"], id="api-motion-samples-corrupt-npy"),
    P(lambda b: list(__import__("layersync_motion.samples", fromlist=["x"]).read_samples(b.motion_width).batches(2)),
      DataError, ["bad.npy", "(frames, 263)"], id="api-motion-samples-width"),
    P(lambda b: __import__("layersync_audio.data", fromlist=["x"]).AudioDataset(str(b.bad_flac)), DataError,
      ["broken.flac"], id="api-audio-corrupt-flac"),
    P(lambda b: __import__("layersync.cache", fromlist=["x"]).LatentCacheDataset(str(b.bad_cache)), DataError,
      ["shard_00000.safetensors", "expected"], id="api-latent-cache-shape"),
    P(lambda b: __import__("layersync_image.vae", fromlist=["x"]).sd_vae(str(b.not_a_vae)), (ConfigError, DataError),
      ["{b.not_a_vae}"], id="api-vae-not-a-vae"),
    P(lambda b: files.write_json(b.a_file / "x.json", {}), WriteError, ["cannot write", "not a directory"],
      id="api-write-under-a-file"),
]


@pytest.mark.parametrize("call, exc_type, expected", API_CASES)
def test_api(bad, call, exc_type, expected):
    (bad.root / "seven").write_bytes(b"WEIGHTS")
    with pytest.raises(exc_type) as info:
        call(bad)
    for text in fmt(expected, bad, None):
        assert text in str(info.value), (text, str(info.value))
