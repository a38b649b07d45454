"""Representation probes: CKA, the linear probe and `layersync probe` on a tiny checkpoint."""

import json

import pytest
import torch

from helpers import tiny_args
from layersync.cli import main, train
from layersync.probe import cka_matrix, linear_cka, probe_accuracy


def features(n, d, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_cka_of_a_representation_with_itself_is_one():
    X = features(200, 16)
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(cka_matrix([X, X, X]), torch.ones(3, 3, dtype=torch.float64))


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    X, Y = features(300, 12), features(300, 20, seed=1)
    Y = Y + X @ features(12, 20, seed=2)  # related to X
    Q, _ = torch.linalg.qr(features(12, 12, seed=3))
    base = linear_cka(X, Y)
    assert 0.1 < base < 0.99
    assert linear_cka(X @ Q, Y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(7.5 * X, 0.01 * Y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(X, Y) == pytest.approx(linear_cka(Y, X), abs=1e-12)


def test_cka_of_independent_features_is_near_zero():
    assert linear_cka(features(3000, 8), features(3000, 8, seed=1)) < 0.02


def test_probe_reads_a_trivially_encoded_label_and_not_noise():
    labels = torch.arange(600) % 5
    encoded = torch.nn.functional.one_hot(labels, 5).double() + 0.1 * features(600, 5)
    assert probe_accuracy(torch.cat([encoded, features(600, 20, seed=1)], 1), labels, seed=0) > 0.98
    chance = [probe_accuracy(features(600, 20, seed=s), labels, seed=s) for s in range(5)]
    assert abs(sum(chance) / len(chance) - 0.2) < 0.06


@pytest.mark.slow
def test_probe_command_on_a_tiny_checkpoint(tmp_path):
    run = tmp_path / "run"
    assert train.main(tiny_args(run, 2)) == 0
    out = tmp_path / "probe"
    argv = ["probe", "--ckpt", str(run), "--compare", str(run), "--n", "64", "--device", "cpu", "--out", str(out)]
    assert main.main(argv) == 0
    report = json.loads((out / "probe.json").read_text())
    depth = report["depth"]
    assert depth > 1 and len(report["accuracy"]) == depth and len(report["compare"]["accuracy"]) == depth
    assert len(report["cka"]) == depth and all(len(row) == depth for row in report["cka"])
    assert all(0 <= a <= 1 for a in report["accuracy"]) and report["accuracy"] == report["compare"]["accuracy"]
    assert all(row[i] == pytest.approx(1.0) for i, row in enumerate(report["cka"]))
    assert (out / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
