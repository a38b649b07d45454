"""Motion data: the HumanML3D layout on a synthetic tree, bad inputs by path, the shipped mocap set,
the CLIP text encoder (tiny config), smplx bodies from a synthetic .npz, save_motion."""

import json
import logging
import string

import numpy as np
import pytest
import torch
from PIL import Image

from layersync.errors import DataError
from layersync.metrics import MissingWeightsError
from layersync_motion.data import MOCAP, MotionDataset
from layersync_motion.text import TextEncoder

WIDTH = 263
SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]


def features(frames, width=WIDTH, seed=0):
    return np.random.default_rng(seed).normal(size=(frames, width)).astype(np.float32)


def caption(text, start=0.0, end=0.0):
    return f"{text}#{' '.join(w + '/OTHER' for w in text.split())}#{start}#{end}"


def humanml_tree(root, motions, width=WIDTH, split="train"):
    """``{id: (features or frames, [caption lines] or None)}`` -> a HumanML3D-layout folder."""
    (root / "new_joint_vecs").mkdir(parents=True)
    (root / "texts").mkdir()
    rng = np.random.default_rng(1)
    np.save(root / "Mean.npy", rng.normal(size=width).astype(np.float32))
    np.save(root / "Std.npy", rng.uniform(0.5, 2, size=width).astype(np.float32))
    for k, (id_, (x, lines)) in enumerate(motions.items()):
        np.save(root / "new_joint_vecs" / f"{id_}.npy", features(x, width, k) if isinstance(x, int) else x)
        if lines is not None:
            (root / "texts" / f"{id_}.txt").write_text("\n".join(lines) + "\n")
    (root / f"{split}.txt").write_text("\n".join(motions) + "\n")
    return root


def normalised(root, id_):
    x = np.load(root / "new_joint_vecs" / f"{id_}.npy")
    return (x - np.load(root / "Mean.npy")) / np.load(root / "Std.npy")


def offsets(x, mask, ref):
    """The offsets at which item (x, mask) is a window of the normalised motion ``ref``."""
    m = int(mask.sum())
    window = x[:, :m].T.numpy()
    return [o for o in range(len(ref) - m + 1) if np.allclose(window, ref[o : o + m], atol=1e-5)]


def test_items_shapes_masks_padding_normalisation(tmp_path):
    root = humanml_tree(tmp_path, {"a": (120, [caption("a person walks")]), "b": (199, [caption("someone runs")]),
                                   "c": (40, [caption("a person sits")])})
    data = MotionDataset(root, condition="none", max_frames=196)
    assert len(data) == 3 and data.sample_shape == (WIDTH, 196) and data.num_classes == 0 and data.fps == 20
    assert data.mean.shape == data.std.shape == (WIDTH,) and data.mean.dtype == np.float32
    seen = set()
    for _ in range(12):
        for i, id_ in enumerate("abc"):
            x, cond, mask = data[i]
            n = len(np.load(root / "new_joint_vecs" / f"{id_}.npy"))
            m = int(mask.sum())
            assert x.shape == (WIDTH, 196) and x.dtype == torch.float32 and mask.dtype == torch.bool and cond == 0
            assert m in (n // 4 * 4, n // 4 * 4 - 4) and mask[:m].all() and m <= 196  # MDM's cut to a multiple of 4
            assert (x[:, m:] == 0).all()  # padding
            assert offsets(x, mask, normalised(root, id_))  # (f - mean) / std, a window of the motion
            seen.add((id_, m))
    assert ("b", 196) in seen and ("b", 192) in seen  # both of MDM's "single" and "double" cuts occur
    assert data.sources() == (root, [root / "train.txt", root / "Mean.npy", root / "Std.npy",
                                     *[root / sub / f"{i}.{ext}" for i in "abc"
                                       for sub, ext in (("new_joint_vecs", "npy"), ("texts", "txt"))]])
    conds, masks = data.preview(4)
    assert conds.tolist() == [0, 0, 0, 0] and masks.sum(1).tolist() == [120, 196, 40, 120]


def test_time_span_captions_are_sub_clips(tmp_path):
    lines = [caption("a person walks"), caption("then turns", 1.0, 4.0), caption("and waves", 5.0, 7.05)]
    root = humanml_tree(tmp_path, {"a": (150, lines), "b": (80, [caption("only a part", 0.0, 2.5)])})
    data = MotionDataset(root, condition="none")
    assert sorted(data.lengths().tolist()) == [41, 50, 60, 150]  # 20-80, 100-141, 0-50 (b has no whole caption)
    ref = normalised(root, "a")
    by_length = {int(n): i for i, n in enumerate(data.lengths())}
    for _ in range(5):
        x, _, mask = data[by_length[60]]
        assert int(mask.sum()) in (60, 56) and offsets(x, mask, ref[20:80])  # within frames 20-80 only
        x, _, mask = data[by_length[41]]
        assert int(mask.sum()) in (40, 36) and offsets(x, mask, ref[100:141])
    assert data.captions == ["a person walks", "then turns", "and waves", "only a part"]
    assert data.tokens[1] == ["then/OTHER", "turns/OTHER"]


@pytest.mark.parametrize("case", ["width", "nan", "no caption file", "short", "long", "span", "bad line"])
def test_bad_input_is_named_and_skipped(tmp_path, case, caplog):
    good = {"ok1": (60, [caption("a person walks")]), "ok2": (100, [caption("a person jumps")])}
    bad = {"width": (features(60, 250), [caption("x")]),
           "nan": (np.where(np.arange(60)[:, None] == 7, np.nan, features(60)).astype(np.float32), [caption("x")]),
           "no caption file": (60, None), "short": (39, [caption("x")]), "long": (200, [caption("x")]),
           "span": (100, [caption("x", 1.0, 2.0)]), "bad line": (100, ["no fields here"])}[case]
    root = humanml_tree(tmp_path, {**good, "bad": bad})
    named = {"no caption file": root / "texts" / "bad.txt", "span": root / "texts" / "bad.txt",
             "bad line": root / "texts" / "bad.txt"}.get(case, root / "new_joint_vecs" / "bad.npy")
    with pytest.raises(DataError, match=str(named)):
        MotionDataset(root, condition="none")
    with caplog.at_level(logging.WARNING, logger="layersync"):
        data = MotionDataset(root, condition="none", on_error="skip")
    assert data.skipped == 1 and len(data) == 2 and sorted(data.lengths().tolist()) == [60, 100]
    assert "skipping 1 bad" in caplog.text and str(named) in caplog.text


def test_split_ids_that_leave_their_folder_are_refused(tmp_path):
    root = humanml_tree(tmp_path / "kit", {"k1": (50, [caption("x")])}, width=251)
    (tmp_path / "other").mkdir()
    np.save(tmp_path / "other" / "x.npy", features(50, 251))  # readable, but outside the data root
    (tmp_path / "other" / "x.txt").write_text(caption("y") + "\n")
    (root / "train.txt").write_text("k1\n../../other/x\n")
    with pytest.raises(DataError, match=rf"the split file {root / 'train.txt'}: '../../other/x' leads outside"):
        MotionDataset(root, layout="kit", condition="none", on_error="skip")


def test_bounds_follow_min_and_max_frames(tmp_path):
    root = humanml_tree(tmp_path, {"a": (30, [caption("x")]), "b": (63, [caption("y")]), "c": (64, [caption("z")])})
    data = MotionDataset(root, condition="none", min_frames=24, max_frames=60, on_error="skip")
    assert data.sample_shape == (WIDTH, 60) and sorted(data.lengths().tolist()) == [30, 63] and data.skipped == 1
    assert all(int(data[i][2].sum()) <= 60 for i in range(len(data)) for _ in range(4))


def test_kit_layout_and_action_labels(tmp_path):
    root = humanml_tree(tmp_path, {"k1": (50, [caption("x")]), "k2": (30, [caption("y", 0.0, 2.0)])}, width=251)
    with pytest.raises(DataError, match="actions.txt"):
        MotionDataset(root, layout="kit", condition="action")
    (root / "actions.txt").write_text("k1 wave\nk2 bow\n")
    data = MotionDataset(root, layout="kit", condition="action")
    assert data.min_frames == 24 and data.fps == 12.5 and data.sample_shape == (251, 196)
    assert data.classes == ["bow", "wave"] and data.num_classes == 2 and data.lengths().tolist() == [50, 25]
    assert [data[i][1] for i in range(2)] == [1, 0]
    labels, masks = data.preview(5)
    assert labels.tolist() == [0, 1, 0, 1, 0] and masks.sum(1).tolist() == [24, 48, 24, 48, 24]
    with pytest.raises(DataError, match="Mean.npy: expected 263 finite values"):
        MotionDataset(root, condition="none")


def test_shipped_mocap_loads_with_action_labels():
    data = MotionDataset(condition="action")
    assert MOCAP.is_file() and MOCAP.stat().st_size < 6e6 and data.sources() == (MOCAP.parent, [MOCAP])
    assert data.num_classes == 15 and {"walk", "run", "backflip", "kick"} <= set(data.classes)
    assert len(data) > 100 and data.skipped == 0 and data.sample_shape == (263, 196)
    x, label, mask = data[0]
    assert x.shape == (263, 196) and 0 <= label < 15 and 40 <= mask.sum() <= 196 and (x[:, ~mask] == 0).all()
    frames = torch.cat([torch.from_numpy(m) for m in data.motions])
    z = (frames - torch.from_numpy(data.mean)) / torch.from_numpy(data.std)
    assert z.mean(0).abs().max() < 1e-3 and 0.3 < z.std() < 2  # Mean/Std are the data set's own
    labels, _ = data.preview(16)
    assert labels.tolist() == [*range(15), 0]
    assert (MOCAP.parent / "README.txt").is_file()


def test_shipped_mocap_is_what_make_mocap_makes():
    source = pytest.importorskip("pybullet_data").getDataPath()
    from pathlib import Path

    from layersync_motion import make_mocap

    made = make_mocap.motions(Path(source) / "data" / "motions", ["walk", "kick"])
    shipped = np.load(MOCAP)
    for id_ in ("walk", "M_walk", "kick_1"):
        assert np.allclose(made[id_][1], shipped[f"new_joint_vecs/{id_}"], atol=1e-5)
        assert made[id_][2] == shipped[f"texts/{id_}"].tolist()


def tiny_clip(folder):
    """A random CLIP text model (16-d projection) and a letter-level CLIP tokenizer saved to ``folder``."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    letters = list(string.ascii_lowercase)
    vocab = ["<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters), "wa", "wal", "walk</w>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\nw a\nwa l\nwal k</w>\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=32, projection_dim=16,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    CLIPTextModelWithProjection(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_text_encoder_and_text_conditioning(tmp_path):
    clip = TextEncoder(tiny_clip(tmp_path / "clip"), device="cpu")
    texts = ["a person walks", "someone runs", "a person walks " * 20]
    emb = clip.encode(texts)
    assert emb.shape == (3, 16) and emb.dtype == torch.float32 and clip.dim == 16
    assert torch.allclose(clip.encode(texts[:1])[0], emb[0], atol=1e-5)  # padding does not change it
    assert not torch.allclose(emb[0], emb[1])
    root = humanml_tree(tmp_path / "data", {"a": (60, [caption("a person walks"), caption("someone runs")]),
                                            "b": (80, [caption("a person walks"), caption("jumps", 1.0, 3.0)])})
    data = MotionDataset(root, condition="text", text_encoder=tmp_path / "clip")
    assert data.cond_dim == 16 and data.num_classes == 0
    assert data.captions == ["a person walks", "someone runs", "jumps"]
    table = clip.encode(data.captions)
    drawn = set()
    for _ in range(20):
        cond = data[0][1]
        assert set(cond) == {"text"} and cond["text"].shape == (16,) and cond["text"].dtype == torch.float32
        k = int((table - cond["text"]).abs().sum(1).argmin())
        assert (table[k] - cond["text"]).abs().max() < 1e-5
        drawn.add(k)
    assert drawn == {0, 1}  # a random caption of the item per draw
    conds, masks = data.preview(4)
    assert torch.allclose(conds["text"], table[[0, 1, 2, 0]], atol=1e-5)
    assert masks.sum(1).tolist() == [60, 60, 40, 60]
    with pytest.raises(MissingWeightsError, match="hf download openai/clip-vit-base-patch32 --local-dir"):
        MotionDataset(root, condition="text", text_encoder=tmp_path / "absent")


def synthetic_smpl(path, vertices=6890, betas=10):
    """An SMPL-shaped .npz (random template and regressor, zero pose blend shapes): what smplx reads."""
    rng = np.random.default_rng(0)
    regressor = np.zeros((24, vertices), np.float32)
    for j in range(24):
        regressor[j, rng.choice(vertices, 8, replace=False)] = 1 / 8
    weights = rng.random((vertices, 24)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, v_template=rng.normal(size=(vertices, 3)).astype(np.float32) * 0.3,
                        shapedirs=rng.normal(size=(vertices, 3, betas)).astype(np.float32) * 0.01,
                        posedirs=np.zeros((vertices, 3, 207), np.float32), J_regressor=regressor,
                        weights=weights / weights.sum(1, keepdims=True),
                        kintree_table=np.array([[2**32 - 1, *SMPL_PARENTS[1:]], list(range(24))], np.int64),
                        f=rng.integers(0, vertices, (64, 3)).astype(np.uint32))
    return path


def test_smplx_body_from_a_synthetic_npz(tmp_path):
    from layersync_motion.body import body_from_pose, load_body

    model = synthetic_smpl(tmp_path / "models" / "smpl" / "SMPL_NEUTRAL.npz")
    body = load_body(tmp_path / "models")
    vertices, joints = body_from_pose(body, torch.zeros(2, 69))
    assert vertices.shape == (2, 6890, 3) and joints.shape == (2, 24, 3)
    arrays = np.load(model)
    assert torch.allclose(joints[0], torch.from_numpy(arrays["J_regressor"] @ arrays["v_template"]), atol=1e-5)
    assert torch.allclose(vertices[1], torch.from_numpy(arrays["v_template"]), atol=1e-5)
    pose = torch.zeros(1, 69)
    pose[0, 3 * 3] = 0.8  # left knee
    bent = body_from_pose(body, pose, transl=torch.tensor([[0.0, 1.0, 0.0]]))[1]
    assert torch.allclose(bent[0, :4], joints[0, :4] + torch.tensor([0.0, 1.0, 0.0]), atol=1e-5)
    assert (bent[0, 7] - joints[0, 7] - torch.tensor([0.0, 1.0, 0.0])).norm() > 1e-3  # the ankle moved
    assert load_body(model) is not None  # the file itself
    with pytest.raises(DataError, match=f"no SMPL model at {tmp_path / 'nowhere'}.*smpl.is.tue.mpg.de"):
        load_body(tmp_path / "nowhere")
    (tmp_path / "pkl" / "smpl").mkdir(parents=True)
    (tmp_path / "pkl" / "smpl" / "SMPL_NEUTRAL.pkl").write_bytes(b"not read")
    with pytest.raises(DataError, match="only .npz SMPL files are read"):
        load_body(tmp_path / "pkl")


def test_save_motion_writes_a_gif_and_arrays(tmp_path):
    from layersync_motion.kinematics import recover_joints
    from layersync_motion.output import MAX_GIF_FRAMES, save_motion

    data = MotionDataset(condition="none")
    raw = np.stack([data.motions[i][:150] for i in range(3)])  # (3, 150, 263)
    preview = save_motion(raw, tmp_path / "out" / "preview", {"lengths": [150, 100, 60]})
    path = preview.path
    assert path == tmp_path / "out" / "preview.gif" and preview.kind == "video"
    gif = Image.open(path)
    step = -(-150 // MAX_GIF_FRAMES)
    assert gif.n_frames == -(-150 // step) == 75 and gif.info["duration"] == 1000 * step // 20
    colours = np.unique(np.asarray(gif.convert("RGB")).reshape(-1, 3), axis=0)
    assert gif.size[0] >= 200 and len(colours) > 2  # something drawn
    feats = np.load(tmp_path / "out" / "preview_features.npy")
    joints = np.load(tmp_path / "out" / "preview_joints.npy")
    assert feats.shape == (3, 150, 263) and joints.shape == (3, 150, 22, 3)
    assert np.isnan(joints[1, 100:]).all() and np.isfinite(joints[1, :100]).all() and np.isnan(feats[2, 60:]).all()
    assert np.allclose(joints[0], recover_joints(torch.from_numpy(raw[0])).numpy(), atol=1e-5)
    assert np.allclose(feats[0], raw[0])
    # normalised, channels first, with the data set's mean/std: the same result
    norm = torch.from_numpy((raw - data.mean) / data.std).transpose(1, 2)
    save_motion(norm, tmp_path / "n", {**data.sample_info, "lengths": [150, 100, 60]})
    assert np.allclose(np.load(tmp_path / "n_joints.npy")[0], joints[0], atol=1e-4)
    assert Image.open(tmp_path / "n.gif").n_frames == 75
    short = save_motion(raw[:1, :40], tmp_path / "s", {}).path
    assert Image.open(short).n_frames == 40 and Image.open(short).info["duration"] == 50
