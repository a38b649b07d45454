"""Published weights: found locally, size and SHA-256 checked, clear errors otherwise."""

import hashlib

import pytest

from layersync.metrics import MissingWeightsError, WeightFile, resolve_weights


def weight_for(content: bytes, prefix=False):
    digest = hashlib.sha256(content).hexdigest()
    return WeightFile("toy", "toy.pth", "https://example.org/toy.pth", len(content), digest[:8] if prefix else digest)


def test_found_in_weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSYNC_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / "toy.pth").write_bytes(b"weights")
    assert resolve_weights(weight_for(b"weights")) == tmp_path / "toy.pth"
    assert resolve_weights(weight_for(b"weights", prefix=True)) == tmp_path / "toy.pth"


def test_missing_file_names_file_hash_and_source(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSYNC_WEIGHTS_DIR", str(tmp_path))
    weight = weight_for(b"weights")
    with pytest.raises(MissingWeightsError) as info:
        resolve_weights(weight)
    text = str(info.value)
    assert str(tmp_path / "toy.pth") in text and weight.sha256 in text and weight.url in text


def test_wrong_checksum_and_size(tmp_path):
    path = tmp_path / "other.pth"
    path.write_bytes(b"WEIGHTS")  # same size, other content
    weight = weight_for(b"weights")
    with pytest.raises(MissingWeightsError, match=weight.sha256):
        resolve_weights(weight, path)
    path.write_bytes(b"short")
    with pytest.raises(MissingWeightsError, match="5 bytes, expected 7"):
        resolve_weights(weight, path)


class OneWeight:
    def __init__(self, weight):
        self.weight = weight

    def get(self, category, name):
        assert category == "weights"
        return self.weight


def test_fetch_verifies_before_the_file_takes_its_name(tmp_path, monkeypatch):
    from layersync.cli.main import fetch

    source = tmp_path / "published.pth"
    source.write_bytes(b"weights")
    monkeypatch.setenv("LAYERSYNC_WEIGHTS_DIR", str(tmp_path / "store"))
    good = weight_for(b"weights")
    good = WeightFile(good.name, good.filename, source.as_uri(), good.size, good.sha256)
    assert fetch(OneWeight(good), "toy").read_bytes() == b"weights"

    bad = WeightFile("toy", "bad.pth", source.as_uri(), 7, "0" * 64)
    with pytest.raises(MissingWeightsError):
        fetch(OneWeight(bad), "toy")
    assert not (tmp_path / "store" / "bad.pth").exists()
