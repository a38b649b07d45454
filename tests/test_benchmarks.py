"""The benchmark suites run end to end on tiny settings and write their reports."""

import json
import math
import weakref

import pytest
import torch

from benchmarks import __main__ as entry
from benchmarks import audio_data, overhead, step_speed, summary, video_attention
from benchmarks.common import datasheet_peak
from layersync import LayerSync
from layersync_image.sit import build_sit, parse_size


def reports(folder, suite):
    return [json.loads(p.read_text()) for p in folder.glob(f"{suite}-*.json")]


@pytest.mark.slow
def test_overhead_and_step_speed_write_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSYNC_RESULTS", str(tmp_path))
    overhead.main(["--input", "1x8x8", "--batch", "4", "--steps", "2", "--warmup", "1", "--repeats", "1"])
    (report,) = reports(tmp_path, "overhead")
    row = report["rows"][0]
    assert row["ratio"] == row["on_ms"] / row["off_ms"] and row["mode"] == "eager"
    assert report["machine"]["torch"] and report["machine"]["device"] == "cpu"
    assert [t["id"] for t in report["targets"]] == ["overhead_SiT-T/4"]
    for path in tmp_path.iterdir():
        path.unlink()

    overhead.main(["--size", "T/2", "--input", "16x8", "--batch", "4", "--steps", "2", "--warmup", "1", "--repeats", "1"])
    (report,) = reports(tmp_path, "overhead")
    row = report["rows"][0]  # the audio backbone: 16 channels x 8 frames, 4 tokens of 2 frames
    assert row["model"] == "SiT-1D-T/2" and row["tokens_per_s"] == pytest.approx(4 * 4 / (row["on_ms"] / 1e3))

    step_speed.main(["--configs", "T/4:4:1x8x8", "--modes", "eager", "graph", "graph-eager", "plain",
                     "--large-batch", "8", "--grad-accum", "2", "--checkpoint-blocks", "all",
                     "--steps", "2", "--warmup", "1", "--repeats", "1"])
    (report,) = reports(tmp_path, "step_speed")  # rewritten after every row: still one report
    rows = report["rows"]
    assert [(r["mode"], r["layersync"], r["batch"], r["grad_accum"], r["checkpoint_blocks"]) for r in rows] == [
        ("eager", "on", 4, 1, 0), ("eager", "off", 4, 1, 0), ("plain", "on", 4, 1, 0), ("plain", "off", 4, 1, 0),
        ("eager", "on", 8, 2, 6), ("eager", "off", 8, 2, 6)]  # the large-batch rows: all 6 blocks checkpointed
    assert all(r["mfu_measured_peak"] > 0 and r["images_per_s"] > 0 for r in rows)
    assert all(math.isnan(r["mfu"]) for r in rows)  # a CPU has no datasheet peak
    assert all(r["finite_check_ms"] > 0 for r in rows if r["mode"] != "plain")
    assert all(math.isnan(r["finite_check_ms"]) for r in rows if r["mode"] == "plain")
    for mode in ("graph", "graph-eager"):  # skipped with the reason, not a crash
        assert f"{mode}: not run: train.step_mode={mode} needs a CUDA device" in report["markdown"]
    assert "no datasheet peak" in report["markdown"] and "plain single file" in report["markdown"]
    assert [t["id"] for t in report["targets"]] == ["large_batch", "large_batch", "plain_baseline"]


def test_datasheet_peaks():
    assert datasheet_peak("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4e12)
    assert datasheet_peak("NVIDIA H200", "tf32") == pytest.approx(494.7e12)
    assert datasheet_peak("NVIDIA H100 PCIe", "bf16") == pytest.approx(756.5e12)
    assert math.isnan(datasheet_peak("NVIDIA H100 NVL", "bf16"))  # not the SXM figure
    assert math.isnan(datasheet_peak("AMD EPYC 9654", "bf16"))


def test_cpu_flop_count_includes_attention():
    """Against a count by hand of the matmuls of SiT-T/2 on 1x32x32 (256 tokens: attention
    is a quarter of the FLOPs), at a batch above the one FlopCounterMode sees."""
    depth, dim, _, patch = parse_size("T/2")
    batch, tokens, mlp = 6, (32 // patch) ** 2, 4 * dim
    model = build_sit((1, 32, 32), 10, "T/2")
    counted = step_speed.step_flops(model, (1, 32, 32), batch, LayerSync.parse("2:4"), "cpu", None)
    per_token = 2 * dim * (3 * dim + dim + 2 * mlp) + 2 * dim * patch**2  # qkv, proj, fc1, fc2; final linear
    attention = 4 * tokens * tokens * dim  # q @ k^T and weights @ v over all heads, per sample
    # backward: twice the forward matmuls; torch's formula for attention counts 2.5x (it recomputes q @ k^T)
    by_hand = batch * (3 * (depth * tokens * per_token) + 3.5 * depth * attention)
    assert by_hand <= counted <= 1.01 * by_hand  # the rest (adaLN, embedders) is < 1%


def test_summary_marks_targets_and_steps(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "results").mkdir(parents=True)
    (work / "steps.tsv").write_text("install\tPASS\t12\nimport\tPASS\t4\ngraph_check\tFAIL (exit 1)\t30\n"
                                    "overhead_b2\tPASS\t20\nspeed_b2\tTIMEOUT (120s)\t120\n")
    report = {"suite": "overhead", "machine": {"device_name": "GPU X"}, "rows": [], "markdown": "| a |",
              "targets": [{"id": "overhead_SiT-B/2", "what": "on/off", "value": 1.01, "verdict": "PASS"}]}
    (work / "results" / "overhead-cuda-1.json").write_text(json.dumps(report))
    summary.main([str(work), str(out)])
    verdicts = {line.split("|")[1].strip(): line.split("|")[2].strip()
                for line in (out / "report.md").read_text().splitlines() if line.startswith("| ")}
    assert verdicts["install and import"] == "PASS" and verdicts["LayerSync overhead, SiT-B/2"] == "PASS"
    assert verdicts["graph replay equals eager"].startswith("FAIL")  # the step failed before its verdict
    assert verdicts["graph vs eager"].startswith("FAIL (TIMEOUT") and verdicts["graph vs compile"].startswith("FAIL")
    assert verdicts["SiT-XL/2 MFU"] == "NOT RUN" and verdicts["tests"] == "NOT RUN"
    assert verdicts["LayerSync overhead, SiT-XL/2"] == "NOT RUN"
    assert json.loads((out / "results.json").read_text())[0]["suite"] == "overhead"


def test_step_speed_targets_are_ratios_of_rows_of_one_configuration():
    def row(model, mode, batch, images_per_s, mfu=float("nan"), grad_accum=1, checkpoint_blocks=0):
        return {"model": model, "mode": mode, "layersync": "on", "batch": batch, "images_per_s": images_per_s,
                "mfu": mfu, "grad_accum": grad_accum, "checkpoint_blocks": checkpoint_blocks}

    b2 = [row("SiT-B/2", "eager", 64, 100.0), row("SiT-B/2", "compile", 64, 170.0), row("SiT-B/2", "graph", 64, 180.0)]
    found = {t["id"]: t for t in step_speed.targets_of(b2, 64, "GPU X")}
    assert found.keys() == {"graph_vs_eager", "graph_vs_compile"}  # no MFU target for SiT-B/2
    assert found["graph_vs_eager"]["value"] == pytest.approx(1.8) and found["graph_vs_eager"]["verdict"] == "PASS"
    assert found["graph_vs_compile"]["verdict"] == "PASS"  # 180 / 170 = 1.059

    xl2 = [row("SiT-XL/2", "graph", 128, 300.0, mfu=0.42), row("SiT-XL/2", "plain", 64, 210.0),
           row("SiT-XL/2", "graph", 256, 270.0, grad_accum=2)]
    found = {t["id"]: t for t in step_speed.targets_of(xl2, 256, "GPU X")}
    assert found.keys() == {"graph_vs_plain", "mfu", "large_batch"}
    assert found["graph_vs_plain"]["verdict"] == "FAIL" and "batch 128 vs 64" in found["graph_vs_plain"]["what"]
    assert found["mfu"]["verdict"] == "PASS" and "stretch 45% not met" in found["mfu"]["what"]
    assert found["large_batch"]["value"] == pytest.approx(0.9) and found["large_batch"]["verdict"] == "PASS"
    halved = xl2[:2] + [row("SiT-XL/2", "graph", 128, 300.0, grad_accum=2)]  # 256 did not fit even so
    assert step_speed.targets_of(halved, 256, "GPU X")[-1]["verdict"] == "FAIL"


def test_entry_point_lists_suites_and_refuses_unknown(capsys):
    assert entry.main([]) == 0
    assert "step_speed" in capsys.readouterr().out
    assert entry.main(["nonsense"]) == 2


def test_out_of_memory_halves_the_batch_after_freeing_the_failed_try(monkeypatch):
    tries, left_behind = [], []

    def measure(base, batch, *args):
        assert all(ref() is None for ref in left_behind), "the failed try's tensors are still alive"
        activations = torch.zeros(1)
        left_behind.append(weakref.ref(activations))
        tries.append(batch)
        if batch > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return 0.1, 1.0, 10

    monkeypatch.setattr(step_speed, "measure", measure)
    assert step_speed.measure_fitting(None, 64) == (16, (0.1, 1.0, 10))
    assert tries == [64, 32, 16]


def test_audio_data_reports_clips_per_second(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSYNC_RESULTS", str(tmp_path))
    audio_data.main(["--rates", "16000,8000", "--workers", "0", "--batch", "4", "--batches", "2", "--repeats", "1"])
    (report,) = reports(tmp_path, "audio_data")
    assert [(r["target_hz"], r["source_hz"]) for r in report["rows"]] == [(16000, "16000"), (8000, "16000")]
    for row in report["rows"]:
        assert row["clips_per_s"] > 0 and row["audio_s_per_s"] == pytest.approx(row["clips_per_s"] * row["clip_s"])


@pytest.mark.slow
def test_video_attention_reports_both_attentions_per_length(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSYNC_RESULTS", str(tmp_path))
    video_attention.main(["--frames", "2,4", "--spatial", "4", "--size", "T/2", "--batch", "1"])
    (report,) = reports(tmp_path, "video_attention")
    assert [(r["frames"], r["tokens"]) for r in report["rows"]] == [(2, 8), (4, 16)]
    for row in report["rows"]:
        assert row["full_s"] > 0 and row["factorised_s"] > 0
        assert row["memory_ratio"] == pytest.approx(row["full_mib"] / max(row["factorised_mib"], 1e-9))
