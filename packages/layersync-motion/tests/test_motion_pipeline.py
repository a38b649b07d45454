"""The motion modality end to end on its bundled mocap: train with actions and with texts, sample sets in
the HumanML3D layout, and the text-to-motion metrics through layersync-eval."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import read_metrics
from layersync.cli import eval as eval_cli
from layersync.cli import sample, train
from layersync.nn import SiT1D
from layersync_motion.data import MotionDataset
from layersync_motion.samples import read_samples, save_items
from layersync_motion.t2m import T2MNetworks, WordVectors
from test_motion_data import tiny_clip
from test_motion_eval import reference_checkpoint, word_files

pytestmark = pytest.mark.slow

QUICK = ["--set", "train.batch_size=8", "--set", "train.device=cpu", "--set", "train.log_every=1",
         "--set", "train.ckpt_every=2", "--set", "train.sample_every=2", "--set", "sample.num=3",
         "--set", "sample.steps=2"]


def check_run(run):
    records = read_metrics(run)
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert all(math.isfinite(v) for v in r.values())
        assert np.float32(-0.2) <= r["layersync_loss"] < 0
    names = sorted(p.name for p in (run / "samples").iterdir())
    assert names == ["step_0000002.gif", "step_0000002_features.npy", "step_0000002_joints.npy"]
    with Image.open(run / "samples" / "step_0000002.gif") as gif:
        assert gif.n_frames > 1
    joints = np.load(run / "samples" / "step_0000002_joints.npy")
    assert joints.shape[:1] == (3,) and joints.shape[2:] == (22, 3)


def test_default_trains_with_action_labels_and_samples_the_humanml3d_layout(tmp_path):
    run = tmp_path / "run"
    assert train.main(["--plugin", "motion", "--out", str(run), "--steps", "2", *QUICK]) == 0
    check_run(run)
    out = tmp_path / "set"
    assert sample.main(["--ckpt", str(run), "--out", f"{out}/", "-n", "4", "--batch", "3", "--device", "cpu",
                        "--cond", "walk", "run"]) == 0
    files = sorted((out / "new_joint_vecs").iterdir())
    assert [f.name for f in files] == [f"{i:06d}.npy" for i in range(4)]
    with np.load(out / "samples.npz") as npz:
        lengths = npz["lengths"]
    for file, length in zip(files, lengths):
        motion = np.load(file)
        assert motion.shape == (length, 263) and np.isfinite(motion).all()
    assert not (out / "texts").exists()  # action samples carry no captions


@pytest.fixture
def stand_in_evaluator(tmp_path, monkeypatch):
    """The published evaluator is not here: random networks of its architecture and a tiny GloVe."""
    reference_checkpoint(tmp_path / "finest.tar")
    words = WordVectors.load(*word_files(tmp_path / "glove"))
    rng = np.random.default_rng(1)
    networks = T2MNetworks.from_checkpoint(tmp_path / "finest.tar", mean=rng.standard_normal(263),
                                           std=rng.uniform(0.5, 2, 263), words=words)
    monkeypatch.setattr("layersync_motion.evaluate.load_t2m", lambda weights=None: networks)


def humanml3d_folder(root, data: MotionDataset):
    """The bundled mocap written out in the HumanML3D layout (motions, captions with tokens, test split)."""
    (root / "new_joint_vecs").mkdir(parents=True)
    (root / "texts").mkdir()
    for k, motion_id in enumerate(data.motion_ids):
        np.save(root / "new_joint_vecs" / f"{motion_id}.npy", data.motions[k])
        item = next(it for it in data.items if it.motion == k)
        c = item.captions[0]
        (root / "texts" / f"{motion_id}.txt").write_text(f"{data.captions[c]}#{' '.join(data.tokens[c])}#0.0#0.0\n")
    (root / "test.txt").write_text("\n".join(data.motion_ids) + "\n")
    return root


def test_text_conditions_train_sample_with_guidance_and_evaluate(tmp_path, capsys, stand_in_evaluator, monkeypatch):
    clip = tiny_clip(tmp_path / "clip")
    text = ["--set", "data.condition=text", "--set", f"data.text_encoder={clip}", "--set", "model.cond_dims={text: 16}"]
    run = tmp_path / "run"
    dropped = []  # text conditions have no classes, and are still dropped for guidance
    drop_cond = SiT1D.drop_cond
    monkeypatch.setattr(SiT1D, "drop_cond", lambda self, cond, drop: dropped.append(sorted(cond)) or drop_cond(self, cond, drop))
    assert train.main(["--plugin", "motion", "--out", str(run), "--steps", "2", *QUICK, *text]) == 0
    assert dropped == [["text"], ["text"]]
    check_run(run)
    state = torch.load(run / "checkpoints" / "step_0000002.pt", weights_only=True)
    assert state["sample_info"]["fps"] == 20 and len(state["sample_info"]["mean"]) == 263

    out = tmp_path / "set"
    assert sample.main(["--ckpt", str(run), "--out", f"{out}/", "-n", "40", "--batch", "20", "--device", "cpu",
                        "--cfg-scale", "2.5"]) == 0
    texts = sorted((out / "texts").iterdir())
    assert len(texts) == 40 and all("/" in t.read_text().split("#")[1] for t in texts)  # word/POS tokens kept

    data = MotionDataset(condition="text", text_encoder=str(clip), max_frames=160, split="test")
    ref = humanml3d_folder(tmp_path / "ref", data)
    assert eval_cli.main(["--plugin", "motion", "--samples", str(out), "--ref", str(ref), "--device", "cpu",
                          "--out", str(tmp_path / "metrics.json")]) == 0
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["num_samples"] == 40 and math.isfinite(result["fid"]) and result["fid"] > 0
    assert 0 <= result["r_precision_top1"] <= result["r_precision_top3"] <= 1
    assert f"fid: {result['fid']:.6g}" in capsys.readouterr().out

    # a preview's .npz (normalised samples, mean/std, lengths, captions) reads as the same samples written
    # as a sample set's items, and evaluates
    preview = tmp_path / "preview.npz"
    assert sample.main(["--ckpt", str(run), "--out", str(preview.with_suffix("")), "-n", "40", "--batch", "20",
                        "--device", "cpu", "--cfg-scale", "2.5"]) == 0
    with np.load(preview) as npz:
        info = {"mean": npz["mean"], "std": npz["std"], "lengths": npz["lengths"].tolist(),
                "captions": npz["captions"].tolist()}
        save_items(npz["samples"], 0, tmp_path / "items", info)
    [read], [written] = (list(read_samples(path).batches(40)) for path in (preview, tmp_path / "items"))
    assert read.lengths == written.lengths and read.captions == written.captions
    for a, b, length in zip(read.features, written.features, read.lengths):
        np.testing.assert_allclose(a[:length], b[:length], rtol=1e-6, atol=1e-6)
    assert eval_cli.main(["--plugin", "motion", "--samples", str(preview), "--ref", str(ref), "--device", "cpu",
                          "--out", str(tmp_path / "preview.json")]) == 0
    result = json.loads((tmp_path / "preview.json").read_text())
    assert result["num_samples"] == 40 and math.isfinite(result["fid"]) and 0 <= result["r_precision_top1"] <= 1
