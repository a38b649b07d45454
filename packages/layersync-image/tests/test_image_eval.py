"""Image evaluation: parity with torch-fidelity on a randomly initialised FID Inception, precision/recall
against brute force, verified weights, and clear errors for bad inputs."""

import fractions
import hashlib
import json
import os
import pickle
from unittest import mock

import numpy as np
import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as tfi
import torch_fidelity.metric_fid as fid
import torch_fidelity.metric_isc as isc
import torch_fidelity.metric_prc as prc
from PIL import Image

from helpers import tiny_args
from layersync.cli import eval as eval_cli
from layersync.cli import sample, train
from layersync.errors import DataError
from layersync.metrics import MissingWeightsError, WeightFile, frechet_distance
from layersync_image import evaluate as ev
from layersync_image.inception import INCEPTION_FID, FIDInception, load_inception
from layersync_image.output import to_uint8_nhwc


def random_inception_file(path, seed=0):
    """A state dict of torch-fidelity's Inception with random weights that keep activations O(1)."""
    extractor = tfi.FeatureExtractorInceptionV3
    with mock.patch.object(tfi, "load_state_dict_from_url"), mock.patch.object(extractor, "load_state_dict"):
        shapes = extractor("inception-v3-compat", ["2048"]).state_dict()  # built without loading weights
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in shapes.items():
        if name.endswith("conv.weight"):
            value = torch.randn(value.shape, generator=g) * (2 / value[0].numel()) ** 0.5
        elif name.endswith("bn.bias"):
            value = 0.1 * torch.randn(value.shape, generator=g)
        elif name == "fc.weight":
            value = 3 * torch.randn(value.shape, generator=g) / value.shape[1] ** 0.5
        elif name == "fc.bias":
            value = torch.randn(value.shape, generator=g)
        state[name] = value
    torch.save(state, path)
    return path


def weight_for(path):
    """A registry entry that the random file satisfies (size and SHA-256)."""
    data = path.read_bytes()
    return WeightFile("inception-fid", path.name, "https://example.org/x.pth", len(data), hashlib.sha256(data).hexdigest())


def image_sets(n=8, size=32):
    """Reference: uniform noise; samples: half noise, half smooth colour ramps (so P/R are not trivial)."""
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    noise = rng.integers(0, 256, (n // 2, size, size, 3), dtype=np.uint8)
    ramp = np.linspace(0, 1, size)[None, :, None, None] * rng.uniform(0, 255, (n - n // 2, 1, 1, 3))
    smooth = np.broadcast_to(ramp, (n - n // 2, size, size, 3)).round().astype(np.uint8)
    return np.concatenate([noise, smooth]), ref


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    return random_inception_file(tmp_path_factory.mktemp("weights") / "random-inception.pth")


@pytest.fixture(scope="module")
def evaluated(inception_file, tmp_path_factory):
    """Our evaluator, through the verified loader and the .npz readers, on random weights and images."""
    folder = tmp_path_factory.mktemp("eval")
    samples, ref = image_sets()
    np.savez(folder / "samples.npz", arr_0=samples)
    np.savez(folder / "ref.npz", arr_0=ref)
    with mock.patch("layersync_image.inception.INCEPTION_FID", weight_for(inception_file)):
        evaluator = ev.ImageEvaluator(weights=inception_file, batch=5, splits=2)
    result = eval_cli.run(evaluator, ev.NpzImages(folder / "samples.npz"), ev.open_images(folder / "ref.npz"), {}, 7)
    return evaluator, result, samples


def features(evaluator, real):
    side = evaluator.sides[real]
    return torch.cat(side.features), torch.cat(side.logits)


@pytest.mark.slow
def test_features_equal_torch_fidelity_extractor(evaluated, inception_file):
    evaluator, _, samples = evaluated
    theirs = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                             feature_extractor_weights_path=str(inception_file))
    with torch.no_grad():
        pool, logits = theirs(torch.from_numpy(samples[-2:]).permute(0, 3, 1, 2).contiguous())
    ours_pool, ours_logits = features(evaluator, False)
    torch.testing.assert_close(ours_pool[-2:], pool)
    torch.testing.assert_close(ours_logits[-2:], logits)


@pytest.mark.slow
def test_fid_matches_torch_fidelity(evaluated):
    evaluator, ours, _ = evaluated
    theirs = fid.fid_statistics_to_metric(fid.fid_features_to_statistics(features(evaluator, False)[0]),
                                          fid.fid_features_to_statistics(features(evaluator, True)[0]), verbose=False)
    assert ours["fid"] > 1e-3
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-4)


@pytest.mark.slow
def test_inception_score_matches_torch_fidelity(evaluated):
    evaluator, ours, _ = evaluated
    theirs = isc.isc_features_to_metric(features(evaluator, False)[1], splits=2, shuffle=False)
    assert ours["inception_score"] > 1.001  # random weights: close to 1, so compare what exceeds 1
    assert ours["inception_score"] - 1 == pytest.approx(theirs["inception_score_mean"] - 1, rel=1e-6)


@pytest.mark.slow
def test_precision_recall_match_torch_fidelity(evaluated):
    evaluator, ours, _ = evaluated
    theirs = prc.calculate_precision_recall_full(features(evaluator, False)[0], features(evaluator, True)[0], 3)
    assert (ours["precision"], ours["recall"]) == pytest.approx(theirs)
    assert 0 < ours["precision"] < 1 or 0 < ours["recall"] < 1


@pytest.mark.slow
def test_result_records_counts_and_mode(evaluated):
    _, ours, _ = evaluated
    assert ours["num_samples"] == 8 and ours["num_ref"] == 8 and ours["sfid"] > 0
    assert ours["resize"] == "torch-fidelity TF1-bilinear 299" and ours["reference_statistics"] == "computed"


def test_spatial_features_are_mixed_6d_1x1_branch_in_tf_order(inception_file):
    network = FIDInception(inception_file)
    images = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    pool, spatial, logits = network(images)
    net = network.net
    x = tfi.interpolate_bilinear_2d_like_tensorflow1x(images.float(), size=(299, 299), align_corners=False)
    x = (x - 128) / 128
    with torch.no_grad():
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                     "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c"):
            x = getattr(net, name)(x)
        branch = net.Mixed_6d.branch1x1(x)  # TF's mixed_6/conv (after its ReLU): (N, 192, 17, 17)
    expected = branch[:, :7].permute(0, 2, 3, 1).reshape(2, -1)  # ADM: NHWC [..., :7], flattened
    assert pool.shape == (2, 2048) and spatial.shape == (2, 2023) and logits.shape == (2, 1008)
    torch.testing.assert_close(spatial, expected)


def test_network_file_is_loaded_weights_only(tmp_path):
    path = tmp_path / "not-only-tensors.pth"
    torch.save({"payload": fractions.Fraction(1, 2)}, path)
    with pytest.raises(pickle.UnpicklingError, match="(?i)weights.only"):
        FIDInception(path)  # torch-fidelity asks for weights_only=False; we force it back on
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


class Projection(torch.nn.Module):
    """A cheap stand-in network: fixed random projections of the pixels."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.w = torch.nn.Parameter(torch.randn(3 * 8 * 8, 16, generator=g) / 64, requires_grad=False)
        self.weights_path = "stand-in.pth"

    def forward(self, x):
        f = (x.float() / 255).flatten(1) @ self.w
        return f, f[:, :5] ** 2, f[:, :10] * 3


def test_evaluator_layouts_batching_and_precomputed_statistics():
    rng = np.random.default_rng(1)
    fake = rng.integers(0, 256, (23, 8, 8, 3), dtype=np.uint8)
    real = rng.integers(0, 128, (17, 8, 8, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (12, 8, 8, 1), dtype=np.uint8)

    one = ev.ImageEvaluator(Projection(), batch=100)
    one.update(fake)
    one.update(real, real=True)
    many = ev.ImageEvaluator(Projection(), batch=4, distance_batch=5)
    many.update(torch.from_numpy(fake[:10]).permute(0, 3, 1, 2))  # NCHW tensor
    many.update(fake[10:])
    many.update(real, real=True)
    a, b = one.compute(), many.compute()
    for key in ("fid", "sfid", "inception_score", "precision", "recall"):
        assert a[key] == pytest.approx(b[key], rel=1e-6), key  # float32 features: batch size changes the rounding
    f_fake, _, logits = Projection()(torch.from_numpy(fake).permute(0, 3, 1, 2))
    f_real = Projection()(torch.from_numpy(real).permute(0, 3, 1, 2))[0]
    mu = lambda f: f.double().mean(0).numpy()
    cov = lambda f: np.cov(f.double().numpy(), rowvar=False)
    assert a["fid"] == pytest.approx(frechet_distance(mu(f_fake), cov(f_fake), mu(f_real), cov(f_real)), rel=1e-9)
    assert a["inception_score"] == pytest.approx(ev.inception_score(logits), rel=1e-12)

    mu_ref, sigma_ref = np.ones(16), np.eye(16)
    one.use_reference_statistics({"mu": mu_ref, "sigma": sigma_ref})
    c = one.compute()
    assert c["fid"] == pytest.approx(frechet_distance(mu(f_fake), cov(f_fake), mu_ref, sigma_ref), rel=1e-9)
    assert c["sfid"] == a["sfid"] and c["reference_statistics"] == "pool precomputed"

    grey = ev.ImageEvaluator(Projection())
    grey.update(gray)
    as_rgb = torch.from_numpy(gray).permute(0, 3, 1, 2).repeat(1, 3, 1, 1)
    torch.testing.assert_close(grey.sides[False].features[0], Projection()(as_rgb)[0])


def test_cli_prints_and_writes_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ev, "load_inception", lambda weights: Projection())
    rng = np.random.default_rng(3)
    fake = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    real = rng.integers(0, 200, (9, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "samples.npz", arr_0=fake)
    np.savez(tmp_path / "ref.npz", arr_0=real)
    out = tmp_path / "out" / "result.json"
    assert eval_cli.main(["--plugin", "image", "--samples", str(tmp_path / "samples.npz"), "--ref", str(tmp_path / "ref.npz"),
                    "--batch", "5", "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    direct = ev.ImageEvaluator(Projection())
    direct.update(real, real=True)
    direct.update(fake)
    expected = direct.compute()
    for key, value in expected.items():
        assert result[key] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), key
    assert result["weights"] == "stand-in.pth" and result["samples"] == str(tmp_path / "samples.npz")
    assert f"fid: {expected['fid']:.6g}" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["result.json"]


@pytest.mark.slow
def test_cli_reads_the_npz_of_a_preview(tmp_path, monkeypatch):
    """layersync-sample --out STEM writes STEM.npz (samples: float (N, C, H, W) in [-1, 1]): layersync-eval
    reads it as the sample set of the same images (arr_0: uint8 NHWC), to the same numbers."""
    monkeypatch.setattr(ev, "load_inception", lambda weights: Projection())
    run, preview = tmp_path / "run", tmp_path / "preview"
    assert train.main(tiny_args(run, 2)) == 0
    assert sample.main(["--ckpt", str(run), "--out", str(preview), "-n", "12", "--set", "sample.steps=2"]) == 0
    with np.load(preview.with_suffix(".npz")) as npz:
        images = to_uint8_nhwc(torch.from_numpy(npz["samples"]))
    assert images.shape == (12, 8, 8, 1)
    np.savez(tmp_path / "as_set.npz", arr_0=images)
    np.savez(tmp_path / "ref.npz", arr_0=np.random.default_rng(0).integers(0, 256, (12, 8, 8, 1), dtype=np.uint8))
    results = []
    for samples in (preview.with_suffix(".npz"), tmp_path / "as_set.npz"):
        out = tmp_path / f"{samples.stem}.json"
        assert eval_cli.main(["--plugin", "image", "--samples", str(samples), "--ref", str(tmp_path / "ref.npz"),
                              "--device", "cpu", "--out", str(out)]) == 0
        results.append(json.loads(out.read_text()))
    assert results[0]["num_samples"] == 12
    assert {k: v for k, v in results[0].items() if k != "samples"} == {k: v for k, v in results[1].items()
                                                                       if k != "samples"}


def brute_force_precision_recall(real, fake, k):
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    def inside(points, centres):
        d = np.linalg.norm(points[:, None] - centres[None], axis=-1)
        return np.mean([(d[i] <= radii(centres)).any() for i in range(len(points))])

    return inside(fake, real), inside(real, fake)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_against_brute_force(k):
    rng = np.random.default_rng(k)
    real = rng.normal(size=(37, 6))
    fake = rng.normal(0.7, 1.3, size=(29, 6))
    expected = brute_force_precision_recall(real, fake, k)
    got = ev.precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k=k, batch=8)
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0 < got[0] < 1 and 0 < got[1] < 1


def test_inception_score_of_extremes():
    confident = torch.full((20, 10), -30.0)
    confident[torch.arange(20), torch.arange(20) % 10] = 30.0  # sure of its class, classes balanced in each split
    assert ev.inception_score(confident, splits=2) == pytest.approx(10, rel=1e-6)
    assert ev.inception_score(torch.zeros(20, 10), splits=2) == pytest.approx(1)


def test_weights_missing_or_wrong(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSYNC_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(MissingWeightsError) as info:
        load_inception()
    text = str(info.value)
    assert str(tmp_path / INCEPTION_FID.filename) in text and INCEPTION_FID.sha256 in text and INCEPTION_FID.url in text

    wrong = tmp_path / "wrong.pth"
    with open(wrong, "wb") as f:
        f.truncate(INCEPTION_FID.size)  # the right size, the wrong bytes
    with pytest.raises(MissingWeightsError) as info:
        load_inception(wrong)
    text = str(info.value)
    assert str(wrong) in text and INCEPTION_FID.sha256 in text and INCEPTION_FID.url in text


def test_registered_weight_facts():
    assert INCEPTION_FID.filename.endswith(f"-{INCEPTION_FID.sha256[:8]}.pth")
    assert INCEPTION_FID.size == 95_628_359 and INCEPTION_FID.licence == "Apache-2.0"


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as info:
        eval_cli.main(list(args))
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1
    return err


@pytest.mark.parametrize("content, expected", [
    ({"images": np.zeros((2, 8, 8, 3), np.uint8)}, "no arr_0 (it holds images)"),
    ({"arr_0": np.zeros((2, 8, 8, 3), np.float32)}, "arr_0 is float32 of shape (2, 8, 8, 3); expected uint8"),
    ({"arr_0": np.zeros((8, 8, 3), np.uint8)}, "arr_0 is uint8 of shape (8, 8, 3); expected uint8 (N, H, W, 3)"),
    ({"arr_0": np.zeros((2, 3, 8, 8), np.uint8)}, "expected uint8 (N, H, W, 3)"),
])
def test_bad_npz_layouts(tmp_path, capsys, content, expected):
    np.savez(tmp_path / "bad.npz", **content)
    with pytest.raises(DataError, match=str(tmp_path / "bad.npz")) as info:
        ev.NpzImages(tmp_path / "bad.npz")
    assert expected in str(info.value)
    np.savez(tmp_path / "ok.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    err = run_cli(capsys, "--samples", str(tmp_path / "bad.npz"), "--ref", str(tmp_path / "ok.npz"))
    assert expected in err and str(tmp_path / "bad.npz") in err


def test_a_preview_npz_of_other_arrays_is_refused(tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", samples=np.zeros((2, 8, 8, 3), np.uint8))
    np.savez(tmp_path / "ok.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    err = run_cli(capsys, "--samples", str(tmp_path / "bad.npz"), "--ref", str(tmp_path / "ok.npz"))
    assert "samples is uint8 of shape (2, 8, 8, 3); expected a preview's float images (N, C, H, W)" in err


def test_other_bad_inputs(tmp_path, capsys):
    np.savez(tmp_path / "s.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    np.savez(tmp_path / "r16.npz", arr_0=np.zeros((2, 16, 16, 3), np.uint8))
    err = run_cli(capsys, "--samples", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "r16.npz"))
    assert "16x16" in err and "8x8" in err and "same resolution" in err

    np.savez(tmp_path / "stats.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8), mu=np.zeros(2048), sigma=np.eye(3))
    err = run_cli(capsys, "--samples", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "stats.npz"),
                  "--weights", str(tmp_path / "none"))  # checked before any weights are needed
    assert "sigma has shape (3, 3), expected (2048, 2048)" in err

    (tmp_path / "text.npz").write_text("not an archive")
    assert "not a readable .npz" in run_cli(capsys, "--samples", str(tmp_path / "text.npz"), "--ref", str(tmp_path / "s.npz"))

    folder = tmp_path / "ref"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    Image.new("RGB", (8, 9)).save(folder / "b.png")
    with pytest.raises(DataError, match="b.png is 8x9, expected 8x8"):
        list(ev.FolderImages(folder).batches(4))

    err = run_cli(capsys, "--plugin", "nosuch", "--samples", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "s.npz"))
    assert "unknown plugin 'nosuch'" in err and "image" in err

    err = run_cli(capsys, "--samples", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "s.npz"),
                  "--weights", str(tmp_path / "none.pth"))
    assert "none.pth" in err and INCEPTION_FID.sha256 in err


def test_reference_folder_and_precomputed_npz_statistics(tmp_path):
    folder = tmp_path / "ref"
    (folder / "class").mkdir(parents=True)
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / "class" / f"{i}.png")
    read = ev.open_images(folder)
    assert read.shape == (3, 8, 8, 3)
    np.testing.assert_array_equal(np.concatenate(list(read.batches(2))), images)

    stats = {"mu": np.zeros(2048), "sigma": np.eye(2048), "mu_s": np.ones(2023), "sigma_s": np.eye(2023)}
    np.savez(tmp_path / "ref.npz", arr_0=images, **stats)
    npz = ev.open_images(tmp_path / "ref.npz")
    np.testing.assert_array_equal(np.concatenate(list(npz.batches(2))), images)
    np.savez(tmp_path / "fortran.npz", arr_0=np.asfortranarray(images))
    np.testing.assert_array_equal(np.concatenate(list(ev.NpzImages(tmp_path / "fortran.npz").batches(2))), images)
    found = npz.statistics()
    assert set(found) == set(stats) and all(np.array_equal(found[k], stats[k]) for k in stats)
