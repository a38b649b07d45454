"""Shared pieces of the benchmark suites: machine facts, timing, reports."""

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

from layersync.train.distributed import pick_device

RESULTS = Path(__file__).resolve().parents[1] / "results"


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


def publish(suite: str, device: str, rows: list[dict], markdown: str, **extra) -> tuple[dict, Path]:
    """Print the suite's tables and write ``<suite>-<device>-<date>.json`` and ``.md``
    (with the machine, versions and date) under the results folder."""
    report = {"suite": suite, "machine": machine_info(device), "rows": rows, **extra}
    out_dir = Path(os.environ.get("LAYERSYNC_RESULTS", RESULTS))
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = report["machine"]["date"].replace(":", "").replace("+0000", "Z")
    base = out_dir / f"{suite}-{report['machine']['device']}-{stamp}"
    base.with_suffix(".json").write_text(json.dumps(report, indent=2))
    header = "\n".join(f"- {k}: {v}" for k, v in report["machine"].items())
    base.with_suffix(".md").write_text(f"# {suite}\n\n{header}\n\n{markdown}\n")
    print(markdown)
    return report, base.with_suffix(".md")
