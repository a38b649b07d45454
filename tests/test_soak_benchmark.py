"""The soak suite's quick run: it reports resident memory, loader throughput and the checkpoint folder,
and the checkpoints left match train.keep / train.keep_every."""

import json

import pytest

from benchmarks import soak


def test_expected_checkpoints():
    assert soak.expected_checkpoints(5000, 250, 3, 1000) == [1000, 2000, 3000, 4000, 4500, 4750, 5000]
    assert soak.expected_checkpoints(300, 25, 3, 100) == [100, 200, 250, 275, 300]
    assert soak.expected_checkpoints(110, 25, 2, 0) == [100, 110]  # the last step is always written
    assert soak.expected_checkpoints(60, 25, 0, 0) == [25, 50, 60]  # keep 0: nothing deleted


@pytest.mark.slow
def test_quick_soak_suite(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSYNC_RESULTS", str(tmp_path / "results"))
    report = soak.main(["--quick", "--workdir", str(tmp_path / "work")])
    (written,) = [json.loads(p.read_text()) for p in (tmp_path / "results").glob("soak-*.json")]
    assert written["rows"] == report["rows"] and not report["problem"], report["problem"]
    rows = {row["measurement"]: row for row in report["rows"]}
    assert set(rows) == {"resident memory", "loader throughput", "checkpoints"}
    for row in rows.values():  # memory and speed depend on the machine's load: shown, not judged here
        print(f"{row['measurement']}: {row['verdict']} {row['value']} ({row['detail']})")
        assert row["verdict"] in ("PASS", "FAIL")

    memory = rows["resident memory"]
    assert memory["start_mib"] > 0 and memory["end_mib"] > 0 and memory["bound_mib"] >= 50
    assert memory["processes"] == [3]  # the trainer and its 2 persistent loader workers, all along

    speed = rows["loader throughput"]
    assert speed["intervals"] == (300 - 50) // 10  # the log intervals after the warm-up
    assert 0 < speed["p5"] <= speed["median"] <= speed["p95"] and speed["ratio"] > 0

    ckpt = rows["checkpoints"]  # 300 steps, a checkpoint every 25, keep 3, keep_every 100
    assert ckpt["steps"] == ckpt["expected_steps"] == [100, 200, 250, 275, 300], ckpt
    assert ckpt["files"] == 5 and ckpt["bytes"] > 0 and not ckpt["tmp_left"]
    assert ckpt["max_rolling"] <= 3 + 1 and ckpt["verdict"] == "PASS"
    assert [t["id"] for t in report["targets"]] == ["soak_memory", "soak_throughput", "soak_checkpoints"]
