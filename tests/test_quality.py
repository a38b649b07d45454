"""The quality benchmark: its classifier-feature metric, pair choice, and the --quick pipeline."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmarks import quality, quality_metric
from layersync import config as configuration
from layersync.cli import main
from layersync.plugins import registry
from layersync.probe import paper_pair, suggest_pair

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "packages/layersync-image/src/layersync_image/recipes/mnist.yaml"


@pytest.mark.slow
def test_real_digits_score_well_and_noise_badly():
    metric = quality_metric.image_metric(0)
    assert len(metric.real.x) == 1797 and metric.heldout_accuracy > 0.9
    real = metric.score(metric.real.x, metric.real.labels)
    assert real["fid"] < 1e-6 and real["class_accuracy"] > 0.95
    labels, masks = metric.conditions(1000)
    assert masks is None and torch.equal(labels[:1797 % 1000], metric.real.labels[:1797 % 1000])
    noisy = metric.score(torch.rand(1000, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1, labels)
    half = metric.score(metric.real.x[::2], metric.real.labels[::2])
    assert noisy["fid"] > 50 * max(half["fid"], 1.0) and noisy["class_accuracy"] < 0.25


def test_metric_is_deterministic_for_a_fixed_seed():
    config = configuration.load(registry().get("modalities", "image").recipe)
    a, b = (quality_metric.Metric(config, classifier_steps=20) for _ in range(2))
    x = a.real.x[::5]
    assert a.score(x, a.real.labels[::5]) == b.score(x, a.real.labels[::5])


def test_masked_positions_do_not_change_motion_scores():
    config = configuration.load(registry().get("modalities", "motion").recipe)
    metric = quality_metric.Metric(config, classifier_steps=20)
    labels, masks = metric.conditions(64)
    assert masks is not None and not masks.all()
    x = metric.real.x[:64].clone()
    garbage = x + 100 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * ~masks[:, None]
    assert metric.score(garbage, labels, masks) == pytest.approx(metric.score(x, labels, masks))
    # the held-out split is by item: no item has rows on both sides
    assert metric.real.items.unique().numel() == 134 and len(metric.real.x) >= 500


def test_classifier_pools_over_valid_positions_only():
    net = quality_metric.Classifier((3, 40), 4)
    x = torch.randn(2, 3, 40)
    mask = torch.arange(40) < 16
    spoiled = x.clone()
    spoiled[..., 24:] = 1e3  # beyond every position the mask keeps after three stride-2 convolutions
    assert torch.allclose(net.features(x, mask.expand(2, -1)), net.features(spoiled, mask.expand(2, -1)))
    assert not torch.allclose(net.features(x), net.features(spoiled))


def test_budgets_must_be_multiples_of_the_evaluation_interval(capsys):
    with pytest.raises(SystemExit) as exit_info:
        quality.main(["--modality", "motion", "--budgets", "300", "--seeds", "0", "1"])
    assert exit_info.value.code == 2 and "motion: budgets [300]" in capsys.readouterr().err  # motion scores every 200
    with pytest.raises(SystemExit):
        quality.main(["--modality", "all", "--config", str(MNIST)])


def test_settings_take_the_command_line_then_the_modality_defaults():
    given = SimpleNamespace(quick=False, num=300, **{k: None for k in ("budgets", "seeds", "eval_every",
                                                                          "classifier_steps", "sample_steps", "probe_n")})
    motion, image = quality.settings("motion", given), quality.settings("image", given)
    assert (motion.budgets, motion.eval_every, motion.sample_steps, motion.num) == ([200, 400, 600], 200, 10, 300)
    assert (image.budgets, image.eval_every, image.sample_steps, image.seeds) == ([500, 1000, 2000], 500, None, [0, 1, 2])
    assert quality.settings("video", SimpleNamespace(**{**vars(given), "quick": True})).budgets == [2, 4]


def test_suggested_pair_follows_the_rule():
    cka = [[1.0] * 10 for _ in range(10)]
    accuracy = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.6, 0.9, 0.95]
    student, teacher, reasons = suggest_pair(accuracy, cka)
    assert (student, teacher) == (4, 7)  # blocks 9 and 10 are the last 20%
    assert "teacher 7" in reasons[0] and "student 4" in reasons[1] and "small effect" in reasons[2]
    assert suggest_pair([0.5] * 6, cka)[:2] == (2, 4)  # ties: the deeper block
    assert suggest_pair([0.9, 0.1], cka)[:2] == (1, 2)
    with pytest.raises(ValueError, match="at least 2 blocks"):
        suggest_pair([0.5], cka)


def test_paper_pair_scales_the_reference_pair():
    assert paper_pair(28) == (8, 16)
    assert paper_pair(6) == (2, 3) and paper_pair(2) == (1, 2) and paper_pair(12) == (3, 7)


def test_speed_up_interpolates_between_checkpoints():
    assert quality.reach([(500, 10.0), (1000, 6.0), (1500, 4.0)], 8.0) == pytest.approx(750.0)
    assert quality.reach([(500, 3.0)], 8.0) == 500.0
    assert quality.reach([(500, 10.0), (1000, 9.0)], 8.0) is None
    # a dip below the target that rises again is not reaching it: the last crossing counts
    assert quality.reach([(500, 7.0), (1000, 12.0), (1500, 6.0)], 8.0) == pytest.approx(1000 + 500 * 4 / 6)
    assert quality.reach([(500, 7.0), (1000, 12.0)], 8.0) is None


def test_suggest_pairs_command_on_a_tiny_checkpoint(tiny_run, capsys):
    assert main.main(["suggest-pairs", "--ckpt", str(tiny_run), "--n", "64", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith("--layersync ")
    student, teacher = map(int, first.split()[1].split(":"))
    assert 1 <= student < teacher <= 6 and "paper's SiT-XL/2 pair" in out


@pytest.mark.slow
def test_quick_pipeline_for_every_modality(tmp_path):
    def bench(*args):
        command = [sys.executable, "-m", "benchmarks", "quality", "--quick", "--work", str(tmp_path / "work"),
                   "--out", str(tmp_path / "out"), "--jobs", "2", *args]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)

    done = bench("--modality", "all")
    assert done.returncode == 0, done.stderr[-3000:]
    for modality in quality.MODALITIES:
        report = json.loads((tmp_path / "out" / f"quality-{modality}.json").read_text())
        arms = report["arms"]
        assert arms["vanilla"] == "off" and arms["layersync"] != "off"
        assert {(row["budget"], row["arm"]) for row in report["rows"]} == {(b, a) for b in (2, 4) for a in arms}
        assert all(row["seeds"] == 2 and row["fid"][0] >= 0 for row in report["rows"])
        assert set(report["speedups"]) == set(arms)
        md = (tmp_path / "out" / f"quality-{modality}.md").read_text()
        assert f"](quality-{modality}.png)" in md and "| 4 | vanilla | off |" in md
        assert (tmp_path / "out" / f"quality-{modality}.png").read_bytes()[:4] == b"\x89PNG"
        runs = (tmp_path / "out" / f"runs-{modality}" / "report.md").read_text()
        assert all(f"{arm}_s0" in runs for arm in arms) and "curves.png" in runs
    image = json.loads((tmp_path / "out" / "quality-image.json").read_text())
    assert {"paper", "random"} <= set(image["arms"]) and image["pair_choice"]["depth"] == 6
    assert len(set(image["arms"].values())) == len(image["arms"])  # each pair trained once

    mnist = bench("--modality", "image", "--config", str(MNIST))
    assert mnist.returncode == 0, mnist.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "quality-image-mnist.json").read_text())
    assert report["settings"]["config"] == "mnist.yaml" and len(report["rows"]) == 2 * len(report["arms"])
    assert set(report["arms"]) == {"vanilla", "layersync"}  # pair choice is validated on the default recipe only
    assert "mnist-5k" in (tmp_path / "work" / "image-mnist" / "vanilla_s0" / "config.yaml").read_text()

    log = tmp_path / "work" / "audio" / "logs" / "vanilla_s0.log"
    before = log.read_text()
    again = bench("--modality", "audio")
    assert again.returncode == 0, again.stderr[-3000:]
    assert log.read_text() == before  # finished runs and scores are reused
