"""The digits evaluator: real digits score near zero FID and high class accuracy, noise does not."""

import numpy as np

from benchmarks import digits_metric


def test_real_digits_score_well_and_noise_badly():
    images, labels = digits_metric.real_digits()
    real = digits_metric.score(images, labels)
    assert real["n"] == 1797 and real["fid"] < 0.01 and real["class_accuracy"] > 0.95
    assert digits_metric.evaluator(0)["heldout_accuracy"] > 0.9

    noise = np.random.default_rng(0).integers(0, 256, size=(1000, 16, 16, 1), dtype=np.uint8)
    noisy = digits_metric.score(noise, np.arange(1000) % 10)
    assert noisy["fid"] > 100 * max(digits_metric.split_half_fid(), 1.0)
    assert noisy["class_accuracy"] < 0.2


def test_score_is_deterministic_for_a_fixed_seed():
    images, labels = digits_metric.real_digits()
    first = digits_metric.score(images[::3], labels[::3])
    digits_metric.evaluator.cache_clear()
    assert digits_metric.score(images[::3], labels[::3]) == first
