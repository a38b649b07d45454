"""The benchmark suites run end to end on tiny settings and write their reports."""

import json

from benchmarks import __main__ as entry
from benchmarks import overhead, step_speed


def reports(folder, suite):
    return [json.loads(p.read_text()) for p in folder.glob(f"{suite}-*.json")]


def test_overhead_and_step_speed_write_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSYNC_RESULTS", str(tmp_path))
    overhead.main(["--input", "1x8x8", "--batch", "4", "--steps", "2", "--warmup", "1", "--repeats", "1"])
    (report,) = reports(tmp_path, "overhead")
    row = report["rows"][0]
    assert row["ratio"] == row["on_ms"] / row["off_ms"] and row["mode"] == "eager"
    assert report["machine"]["torch"] and report["machine"]["device"] == "cpu"

    step_speed.main(["--configs", "T/4:4:1x8x8", "--steps", "2", "--warmup", "1", "--repeats", "1"])
    (report,) = reports(tmp_path, "step_speed")
    assert [(r["layersync"], r["batch"]) for r in report["rows"]] == [("on", 4), ("off", 4)]
    assert all(r["mfu"] > 0 and r["images_per_s"] > 0 for r in report["rows"])
    assert "plain single file" in next(tmp_path.glob("step_speed-*.md")).read_text()


def test_entry_point_lists_suites_and_refuses_unknown(capsys):
    assert entry.main([]) == 0
    assert "step_speed" in capsys.readouterr().out
    assert entry.main(["nonsense"]) == 2
