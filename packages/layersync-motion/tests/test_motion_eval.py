"""The text-to-motion evaluator: checkpoint layout, word vectors, motion preprocessing, the HumanML3D metrics."""

import math
import os
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch

from layersync.errors import DataError
from layersync.metrics import MissingWeightsError
from layersync_motion import t2m
from layersync_motion.evaluate import (
    MotionBatch, MotionEvaluator, diversity, fid, matching_score, mean_ci95, multimodality, r_precision,
    t2m_evaluator,
)
from layersync_motion.t2m import POS_TAGS, T2MNetworks, WordVectors, caption_tokens, load_checkpoint

VOCAB = ["sos", "eos", "unk", "a", "man", "walk", "left", "arm", "with", "slowly", "person", "jump"]


def _gru(prefix: str, size: int, inputs: int) -> dict:
    shapes = {}
    for suffix in ("", "_reverse"):
        shapes.update({f"{prefix}gru.weight_ih_l0{suffix}": (3 * size, inputs),
                       f"{prefix}gru.weight_hh_l0{suffix}": (3 * size, size),
                       f"{prefix}gru.bias_ih_l0{suffix}": (3 * size,),
                       f"{prefix}gru.bias_hh_l0{suffix}": (3 * size,)})
    return shapes


def _co_head(hidden: int, out: int) -> dict:
    return {"output_net.0.weight": (hidden, 2 * hidden), "output_net.0.bias": (hidden,),
            "output_net.1.weight": (hidden,), "output_net.1.bias": (hidden,),
            "output_net.3.weight": (out, hidden), "output_net.3.bias": (out,), "hidden": (2, 1, hidden)}


# The reference's module names and sizes (networks/modules.py, evaluator_wrapper.py of text-to-motion).
REFERENCE_LAYOUT = {
    "movement_encoder": {"main.0.weight": (512, 259, 4), "main.0.bias": (512,), "main.3.weight": (512, 512, 4),
                         "main.3.bias": (512,), "out_net.weight": (512, 512), "out_net.bias": (512,)},
    "motion_encoder": {"input_emb.weight": (1024, 512), "input_emb.bias": (1024,), **_gru("", 1024, 1024),
                       **_co_head(1024, 512)},
    "text_encoder": {"pos_emb.weight": (300, 15), "pos_emb.bias": (300,), "input_emb.weight": (512, 300),
                     "input_emb.bias": (512,), **_gru("", 512, 512), **_co_head(512, 512)},
}


def reference_checkpoint(path, seed: int = 0, legacy: bool = False):
    """A random checkpoint saved as the reference's trainer saves one."""
    g = torch.Generator().manual_seed(seed)
    state = {net: {k: torch.randn(shape, generator=g) * (0.5 / math.sqrt(shape[-1]) if len(shape) > 1 else 0.1)
                   for k, shape in layout.items()} for net, layout in REFERENCE_LAYOUT.items()}
    state.update(epoch=12, iter=3400, opt_text_encoder={"state": {}, "param_groups": [
        {"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0, "amsgrad": False, "params": [0, 1]}]})
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return state


def word_files(folder, vocab=VOCAB):
    folder.mkdir(parents=True, exist_ok=True)
    vectors = np.random.default_rng(0).standard_normal((len(vocab), 300)).astype(np.float32)
    np.save(folder / "our_vab_data.npy", vectors)
    (folder / "our_vab_words.pkl").write_bytes(pickle.dumps(list(vocab)))
    (folder / "our_vab_idx.pkl").write_bytes(pickle.dumps({w: i for i, w in enumerate(vocab)}))
    return folder / "our_vab_data.npy", folder / "our_vab_words.pkl", folder / "our_vab_idx.pkl"


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    return WordVectors.load(*word_files(tmp_path_factory.mktemp("glove")))


@pytest.fixture(scope="module")
def networks(tmp_path_factory, words):
    path = tmp_path_factory.mktemp("t2m") / "finest.tar"
    reference_checkpoint(path)
    rng = np.random.default_rng(1)
    return T2MNetworks.from_checkpoint(path, mean=rng.standard_normal(263), std=rng.uniform(0.5, 2, 263), words=words)


def motions(n: int, frames: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, frames, 263, generator=torch.Generator().manual_seed(seed))


CAPTIONS = [["a/DET", "man/NOUN", "walk/VERB"], ["a/DET", "person/NOUN", "jump/VERB", "slowly/ADV"],
            ["left/ADJ", "arm/NOUN"], ["a/DET", "zebra/NOUN", "with/ADP", "arm/NOUN"]]


# ---------------------------------------------------------------- networks and checkpoint

@pytest.mark.parametrize("legacy", [False, True])
def test_reference_checkpoint_loads_key_for_key(tmp_path, words, legacy):
    state = reference_checkpoint(tmp_path / "finest.tar", seed=3, legacy=legacy)
    nets = T2MNetworks.from_checkpoint(tmp_path / "finest.tar", words=words)
    for net, layout in REFERENCE_LAYOUT.items():
        ours = getattr(nets, net).state_dict()
        assert set(ours) == set(layout)
        for key in layout:
            torch.testing.assert_close(ours[key], state[net][key], rtol=0, atol=0)
    lengths = torch.tensor([48, 20, 4])
    emb = nets.motion_embeddings(motions(3), lengths)
    assert emb.shape == (3, 512) and torch.isfinite(emb).all()
    assert nets.text_embeddings(CAPTIONS[:3]).shape == (3, 512)
    assert nets.weights_path == tmp_path / "finest.tar"


def test_checkpoint_with_wrong_checksum_names_the_file(tmp_path):
    path = tmp_path / "finest.tar"
    reference_checkpoint(path)
    with pytest.raises(MissingWeightsError, match=str(path)):
        load_checkpoint(path, replace(t2m.T2M_CHECKPOINT, sha256="0" * 64))
    with pytest.raises(MissingWeightsError, match="t2m.zip"):
        load_checkpoint(tmp_path / "missing.tar")


def test_checkpoint_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)

    path = tmp_path / "finest.tar"
    torch.save({"movement_encoder": {}, "motion_encoder": {}, "text_encoder": {}, "extra": Evil()}, path)
    with pytest.raises(MissingWeightsError, match="weights_only"):
        load_checkpoint(path)
    assert not (tmp_path / "ran").exists()


def test_load_t2m_reads_the_weights_folder_layout(tmp_path, monkeypatch):
    (tmp_path / "t2m/text_mot_match/model").mkdir(parents=True)
    reference_checkpoint(tmp_path / t2m.T2M_CHECKPOINT.filename)
    (tmp_path / "dataset").mkdir()
    np.save(tmp_path / "dataset/t2m_mean.npy", np.zeros(263))
    np.save(tmp_path / "dataset/t2m_std.npy", np.full(263, 2.0))
    word_files(tmp_path / "glove")
    with pytest.raises(MissingWeightsError, match="t2m_mean.npy"):  # not MDM's file: its checksum differs
        t2m.load_t2m(tmp_path)
    for name in ("T2M_MEAN", "T2M_STD", "GLOVE_WORDS", "GLOVE_INDEX"):  # stand-ins, not the published files
        monkeypatch.setattr(t2m, name, replace(getattr(t2m, name), size=None, sha256=None))
    nets = t2m.load_t2m(tmp_path)
    assert torch.equal(nets.std, torch.full((263,), 2.0)) and len(nets.words) == len(VOCAB)
    evaluator = t2m_evaluator(weights=tmp_path, batch=2)
    assert evaluator.weights_path == tmp_path / t2m.T2M_CHECKPOINT.filename


# ---------------------------------------------------------------- words

def test_word_pickles_with_code_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)

    vectors, words_pkl, index = word_files(tmp_path)
    words_pkl.write_bytes(pickle.dumps(["sos", Evil()]))
    with pytest.raises(DataError, match=r"our_vab_words\.pkl.*refused to load .*system"):
        WordVectors.load(vectors, words_pkl, index)
    assert not (tmp_path / "ran").exists()
    words_pkl.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(DataError, match="expected a list of words"):
        WordVectors.load(vectors, words_pkl, index)


def test_tokens_follow_the_reference_rules(words):
    rows = {w: i for i, w in enumerate(VOCAB)}
    assert words.lookup("man/NOUN") == (rows["man"], POS_TAGS.index("NOUN"))
    assert words.lookup("left/ADJ") == (rows["left"], POS_TAGS.index("Loc_VIP"))  # VIP overrides the tagger
    assert words.lookup("walk/VERB") == (rows["walk"], POS_TAGS.index("Act_VIP"))
    assert words.lookup("with/CCONJ") == (rows["with"], POS_TAGS.index("OTHER"))  # tag outside the 15
    assert words.lookup("zebra/NOUN") == (rows["unk"], POS_TAGS.index("OTHER"))  # unknown word
    vectors, pos, lengths = words.encode([CAPTIONS[0], ["a/DET"] * 25])
    assert vectors.shape == (2, 22, 300) and pos.shape == (2, 22, 15) and lengths.tolist() == [5, 22]
    torch.testing.assert_close(vectors[0, 0], words.vectors[rows["sos"]])
    torch.testing.assert_close(vectors[0, 4], words.vectors[rows["eos"]])
    torch.testing.assert_close(vectors[0, 5:], words.vectors[rows["unk"]].expand(17, -1))
    assert caption_tokens("a man walks.#a/DET man/NOUN walk/VERB#0.0#0.0") == CAPTIONS[0]
    with pytest.raises(DataError, match="word/POS"):
        words.lookup("walk")


# ---------------------------------------------------------------- motion preprocessing

def test_frames_past_the_floored_length_do_not_count(networks):
    x = motions(1, 60)
    base = networks.motion_embeddings(x, [37])  # floored to 36
    changed = x.clone()
    changed[:, 36:] = torch.randn(1, 24, 263) * 100
    torch.testing.assert_close(networks.motion_embeddings(changed, [37]), base, rtol=0, atol=0)
    torch.testing.assert_close(networks.motion_embeddings(x, [36]), base, rtol=0, atol=0)
    torch.testing.assert_close(networks.motion_embeddings(x[:, :37], [37]), base, rtol=1e-5, atol=1e-6)  # padding
    longer = torch.cat([x, motions(1, 60, seed=9)])  # the reference pads every clip to 196 frames, whatever the batch
    torch.testing.assert_close(networks.motion_embeddings(longer, [37, 60])[:1], base, rtol=1e-5, atol=1e-6)
    inside = x.clone()
    inside[:, 35] += 1.0
    assert not torch.allclose(networks.motion_embeddings(inside, [37]), base)
    with pytest.raises(DataError, match="lengths"):
        networks.motion_embeddings(x, [3])


# ---------------------------------------------------------------- metrics

def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).standard_normal((300, 16))
    assert abs(fid(x, x)) < 1e-8
    assert fid(x, x + 0.5) == pytest.approx(16 * 0.25, rel=1e-6)


def test_r_precision_is_one_for_identical_and_chance_for_shuffled():
    rng = np.random.default_rng(0)
    text = rng.standard_normal((32 * 400, 8))
    np.testing.assert_array_equal(r_precision(text, text), [1.0, 1.0, 1.0])
    shuffled = text[rng.permutation(len(text))]
    np.testing.assert_allclose(r_precision(text, shuffled), np.array([1, 2, 3]) / 32, atol=0.01)


def test_r_precision_and_matching_score_against_brute_force():
    rng = np.random.default_rng(1)
    text = rng.standard_normal((70, 6))  # two groups of 32; the last 6 are dropped
    motion = text + rng.standard_normal((70, 6))
    hits = np.zeros(3)
    for g in range(2):
        for i in range(32 * g, 32 * g + 32):
            own = np.linalg.norm(text[i] - motion[i])
            rank = sum(np.linalg.norm(text[i] - motion[j]) < own for j in range(32 * g, 32 * g + 32))
            hits += [rank < k for k in (1, 2, 3)]
    np.testing.assert_allclose(r_precision(text, motion), hits / 64)
    brute = np.mean([math.dist(a, b) for a, b in zip(text, motion)])
    assert matching_score(text, motion) == pytest.approx(brute, rel=1e-12)
    with pytest.raises(DataError, match="group of 32"):
        r_precision(text[:31], motion[:31])


def test_diversity_and_multimodality():
    same = np.ones((400, 8))
    assert diversity(same, 300, np.random.default_rng(0)) == 0.0
    x = np.random.default_rng(2).standard_normal((400, 8))
    rng = np.random.default_rng(5)
    a, b = rng.choice(400, 300, replace=False), rng.choice(400, 300, replace=False)
    expected = np.mean([math.dist(x[i], x[j]) for i, j in zip(a, b)])
    assert diversity(x, 300, np.random.default_rng(5)) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(DataError, match="more than 300"):
        diversity(x[:300], 300)
    groups = np.repeat(np.random.default_rng(3).standard_normal((4, 1, 8)), 12, axis=1)
    assert multimodality(groups, 10, np.random.default_rng(0)) == 0.0  # identical motions within each text
    assert multimodality(groups + np.random.default_rng(4).standard_normal(groups.shape), 10) > 0


def test_ci95_is_1_96_std_over_sqrt_n():
    mean, ci = mean_ci95([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and ci == pytest.approx(1.96 * math.sqrt(1.25) / 2)
    means, cis = mean_ci95([[0.1, 0.2, 0.3], [0.3, 0.4, 0.5]])
    np.testing.assert_allclose(means, [0.2, 0.3, 0.4])
    np.testing.assert_allclose(cis, 1.96 * 0.1 / math.sqrt(2))


# ---------------------------------------------------------------- the evaluator

def test_evaluator_end_to_end(networks):
    x, lengths = motions(8, 40, seed=7), torch.tensor([40, 36, 33, 20, 12, 8, 4, 25])
    captions = CAPTIONS * 2
    evaluator = MotionEvaluator(networks, batch=3, repeats=4, seed=1, group=4, diversity_times=5, mm_times=2)
    evaluator.update(MotionBatch(x, lengths, captions), real=True)
    evaluator.update(MotionBatch(x, lengths, captions))
    evaluator.update_multimodality(motions(6, 24, seed=3).reshape(2, 3, 24, 263), torch.full((2, 3), 24))
    result = evaluator.compute()
    assert abs(result["fid"]) < 1e-3  # the same motions on both sides
    for key in ("r_precision_top1", "r_precision_top2", "r_precision_top3", "matching_score", "diversity",
                "multimodality", "r_precision_top1_real", "diversity_real"):
        assert key in result and f"{key}_ci95" in result
    assert 0 <= result["r_precision_top1"] <= result["r_precision_top2"] <= result["r_precision_top3"] <= 1
    text, motion = networks.text_embeddings(captions), networks.motion_embeddings(x, lengths)
    assert result["matching_score"] == pytest.approx(matching_score(text, motion), rel=1e-6)  # 2 whole groups of 4
    assert result["matching_score_ci95"] == pytest.approx(0, abs=1e-9)
    assert (result["num_samples"], result["num_ref"], result["reference"]) == (8, 8, "computed")

    stats = evaluator.reference_statistics()
    assert stats["mu_t2m"].shape == (512,) and stats["sigma_t2m"].shape == (512, 512)
    again = MotionEvaluator(networks, repeats=1, group=4, diversity_times=5)
    again.use_reference_statistics(stats)
    again.update(MotionBatch(x[:4], lengths[:4], captions[:4]), real=True)  # counted, not embedded
    again.update(MotionBatch(x[4:], lengths[4:], captions[4:]))
    with pytest.warns(UserWarning, match="diversity skipped"):
        single = again.compute()
    assert single["reference"] == "precomputed" and single["num_ref"] == 4
    assert "r_precision_top1_ci95" not in single and single["fid"] > 1e-3
    with pytest.raises(DataError, match="MotionBatch"):
        again.update(x)
    with pytest.raises(DataError, match="263"):
        again.update(MotionBatch(x[..., :200], lengths))
