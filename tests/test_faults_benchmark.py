"""The fault-injection suite's quick run: SIGKILLs (one during a checkpoint write) and resumes end
with the uninterrupted run's weights, every checkpoint left after a kill can be read, and a second
run on a run's folder is refused while the first ends as the reference."""

import json

import pytest

from benchmarks import faults

pytestmark = pytest.mark.slow


def test_quick_fault_suite(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSYNC_RESULTS", str(tmp_path / "results"))
    report = faults.main(["--quick", "--workdir", str(tmp_path / "work")])
    (written,) = [json.loads(p.read_text()) for p in (tmp_path / "results").glob("faults-*.json")]
    assert written["rows"] == report["rows"]
    rows = {row["scenario"]: row for row in report["rows"]}
    for name, row in rows.items():  # the disk-full and corrupt rows depend on work in progress: shown, not checked
        print(f"{name}: {row['verdict']} ({row['observed']})")
    assert rows["two writers"]["verdict"] == "PASS", rows["two writers"]
    kill = rows["kill"]
    assert kill["faults"] == 3 and kill["recovered"] == 3, kill
    assert kill["mismatches"] == 0 and kill["unreadable"] == 0, kill
    assert report["kills"][0]["aim"].startswith("checkpoint write"), report["kills"]
    assert not any(k["listed_tmp"] for k in report["kills"]), report["kills"]
