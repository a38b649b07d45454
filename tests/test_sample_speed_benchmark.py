"""benchmarks/sample_speed.py: the CPU smoke run writes its side-by-side report."""

import json

import pytest

from benchmarks import __main__ as entry

pytestmark = pytest.mark.slow


def test_cpu_smoke_reports_eager_and_compiled_images_per_second(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSYNC_RESULTS", str(tmp_path))
    assert entry.main(["sample_speed", "--device", "cpu", "--configs", "T/4:2:1x8x8", "--timed-steps", "3",
                       "--repeats", "1"]) == 0
    (path,) = tmp_path.glob("sample_speed-cpu-*.json")
    report = json.loads(path.read_text())
    (row,) = report["rows"]
    assert (row["model"], row["input"], row["batch"], row["steps"], row["timed_steps"]) == ("SiT-T/4", "1x8x8", 2, 250, 3)
    assert row["compiled"] == "compile" and row["compile_s"] > 0
    for mode in ("eager", "compiled"):
        assert row[f"{mode}_images_per_s"] == pytest.approx(2 / row[f"{mode}_s"])
    assert row["speedup"] == pytest.approx(row["eager_s"] / row["compiled_s"])
    assert report["targets"] == []  # the target is SiT-XL/2's, on a GPU
    assert "scaled from runs of 3 steps" in report["markdown"]
