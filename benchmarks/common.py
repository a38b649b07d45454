"""Shared pieces of the benchmark suites: machine facts, timing, reports, the tiny run."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from layersync.distributed import pick_device

RESULTS = Path(__file__).resolve().parents[1] / "results"

# A tiny image run (SiT-T/4 on the bundled digits at 8x8) that trains in seconds on a CPU: the run of
# the tests (tests/helpers.py) and of the fault and soak suites, as config overrides.
TINY_RUN = {
    "data.image_size": 8,
    "model.size": "T/4",
    "train.batch_size": 16,
    "train.log_every": 1,
    "train.sample_every": 1_000_000,  # samples at the last step only
    "sample.num": 4,
    "sample.steps": 2,
}


def set_args(settings: dict) -> list[str]:
    """The ``--set key=value`` arguments of a CLI for ``settings``."""
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]


# Dense tensor-core peaks (TFLOP/s, without sparsity) from NVIDIA's datasheets; the first entry
# whose name is in torch.cuda.get_device_name() wins. "tf32" is the peak of fp32 runs (TF32 on).
# The NVL cards are listed as unknown so that they do not fall through to the SXM figures.
DATASHEET_TFLOPS = (
    ("H100 PCIe", {"bf16": 756.5, "tf32": 378.0}),
    ("H100 NVL", {}),
    ("H200 NVL", {}),
    ("H100", {"bf16": 989.4, "tf32": 494.7}),  # SXM
    ("H200", {"bf16": 989.4, "tf32": 494.7}),  # SXM
    ("A100", {"bf16": 312.0, "tf32": 156.0}),
)


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def resolve_device(name: str) -> str:
    return pick_device(name).type


def datasheet_peak(name: str, precision: str) -> float:
    """Dense peak FLOP/s of the named card in ``precision`` ("bf16" or "tf32"); NaN if unknown."""
    peaks = next((p for key, p in DATASHEET_TFLOPS if key in name), {})
    return peaks.get(precision, float("nan")) * 1e12


def machine_info(device: str) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "commit": commit,
    }


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, n: int, device: str) -> list[float]:
    """Wall-clock seconds of ``n`` calls, synchronising the device around each."""
    times = []
    for _ in range(n):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def median(values) -> float:
    return statistics.median(values)


def table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of the given columns (floats to 4 significant digits)."""

    def fmt(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def target(key: str, what: str, value, passed: bool | None) -> dict:
    """A verdict for benchmarks/summary.py; ``passed`` None: could not be judged here."""
    return {"id": key, "what": what, "value": value,
            "verdict": "NOT RUN" if passed is None else "PASS" if passed else "FAIL"}


def publish(suite: str, device: str, rows: list[dict], markdown: str, path: Path | None = None,
            **extra) -> tuple[dict, Path]:
    """Write ``<suite>-<device>-<date>.json`` and ``.md`` (with the machine, versions and date)
    under the results folder, or over the report at ``path`` (a suite that publishes after
    every row). Returns the report and the .md path."""
    report = {"suite": suite, "machine": machine_info(device), "rows": rows, "markdown": markdown, **extra}
    if path is None:
        out_dir = Path(os.environ.get("LAYERSYNC_RESULTS", RESULTS))
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = report["machine"]["date"].replace(":", "").replace("+0000", "Z")
        path = out_dir / f"{suite}-{device}-{stamp}.md"
    path.with_suffix(".json").write_text(json.dumps(report, indent=2))
    header = "\n".join(f"- {k}: {v}" for k, v in report["machine"].items())
    path.write_text(f"# {suite}\n\n{header}\n\n{markdown}\n")
    return report, path
