"""Build gpu_check's report from what its steps left, with the standard library only.

    python3 benchmarks/summary.py WORK OUT

WORK holds steps.tsv (step, status, seconds per line), logs/STEP.log, results/*.json (the
suites' reports, each with its targets), env.json (versions and card, from the import
check), nvidia-smi.txt and run/metrics.jsonl (the train run). Writes OUT/report.md (summary
of the targets, steps, the suites' tables, tails of failed steps' logs) and OUT/results.json
(all suite reports), and prints the summary.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# (label, target id in the suites' reports or None for the steps' own status, steps, what)
TARGETS = (
    ("install and import", None, ("install", "import"),
     "pip install (editable, else --target); layersync, layersync_image and the image plugin load"),
    ("tests", None, ("tests",), "CUDA tests (graph step, conditions, non-finite flags)"),
    ("graph replay equals eager", "graph_replay", ("graph_check",),
     "benchmarks/graph_check.py: graph (compiled) and graph-eager against their uncaptured steps, fp32 and bf16"),
    ("LayerSync overhead, SiT-B/2", "overhead_SiT-B/2", ("overhead_b2",), "on/off step time <= 1.01, graph, batch 64"),
    ("LayerSync overhead, SiT-XL/2", "overhead_SiT-XL/2", ("overhead_xl2",), "on/off step time <= 1.01, graph"),
    ("graph vs eager", "graph_vs_eager", ("speed_b2",), "graph >= 1.8x eager images/s, SiT-B/2 batch 64"),
    ("graph vs compile", "graph_vs_compile", ("speed_b2",), "graph >= 1.03x compile images/s, SiT-B/2 batch 64"),
    ("graph vs plain file", "graph_vs_plain", ("speed_xl2",),
     "graph >= 1.5x the images/s of benchmarks/plain_sit.py, SiT-XL/2, each at its largest batch that fits"),
    ("SiT-XL/2 MFU", "mfu", ("speed_xl2",), "graph >= 40% (stretch 45%) of the datasheet dense bf16 peak"),
    ("SiT-XL/2 batch 256", "large_batch", ("speed_xl2",),
     "batch 256 by gradient accumulation >= 85% of the images/s of the largest batch that fits"),
    ("sampling speed", None, ("sample_speed",), "SiT-B/2 and XL/2 batch 64, eager vs compiled and captured"),
    ("train run", None, ("train",), "200 steps of the default image run"),
)


def read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def step_verdict(statuses: list[str]) -> str:
    """PASS if every step passed, else the first step's status that is not PASS."""
    if not statuses:
        return "NOT RUN"
    return next((s for s in statuses if s != "PASS"), "PASS")


def train_value(work: Path) -> str:
    """The train run's last logged step, loss and speed."""
    metrics = work / "run" / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    if not lines:
        return ""
    last = json.loads(lines[-1])
    return f"step {last['step']}, loss {last['loss']:.4f}, {last['samples_per_s']:.0f} samples/s"


def summary_rows(steps: dict, reports: list[dict], work: Path) -> list[tuple[str, str, str]]:
    """(label, verdict, value and what) per target, in TARGETS order, then any other target found."""
    found = [t for r in reports for t in r.get("targets", [])]
    rows = []
    for label, key, names, what in TARGETS:
        status = step_verdict([steps[n] for n in names if n in steps])
        mine = [t for t in found if t["id"] == key] if key else []
        for t in mine:
            rows.append((label, t["verdict"], f"{fmt(t['value'])}: {t['what']}"))
        if mine:
            continue
        if key and status == "PASS":
            status = "NOT RUN (no verdict in its report)"
        elif key and not status.startswith(("FAIL", "NOT RUN")):
            status = f"FAIL ({status})"
        rows.append((label, status, train_value(work) if label == "train run" else what))
    known = {key for _, key, _, _ in TARGETS}
    rows += [(t["id"], t["verdict"], f"{fmt(t['value'])}: {t['what']}") for t in found if t["id"] not in known]
    return rows


def main(argv=None) -> int:
    work, out = (Path(a) for a in (argv or sys.argv[1:]))
    out.mkdir(parents=True, exist_ok=True)
    steps, seconds = {}, {}
    for line in (work / "steps.tsv").read_text().splitlines() if (work / "steps.tsv").exists() else []:
        name, status, took = line.split("\t")
        steps[name], seconds[name] = status, took
    reports = [read_json(p, {}) for p in sorted((work / "results").glob("*.json"))]
    env = read_json(work / "env.json", {})
    smi = (work / "nvidia-smi.txt").read_text().strip() if (work / "nvidia-smi.txt").exists() else "not available"

    table = ["| target | verdict | value / what |", "|---|---|---|"]
    table += [f"| {label} | {verdict} | {detail} |" for label, verdict, detail in summary_rows(steps, reports, work)]
    lines = [f"# gpu_check on {env.get('device_name', 'an unknown device')}", "",
             f"- card (torch.cuda.get_device_name): {env.get('device_name', 'unknown')}",
             f"- card (nvidia-smi: name, memory, driver): {smi}",
             f"- python {env.get('python', '?')}, torch {env.get('torch', '?')}, CUDA {env.get('cuda', '?')}",
             f"- steps took {sum(int(s) for s in seconds.values())} s", "", "## Summary", "", *table, "",
             "## Steps", "", "| step | status | seconds |", "|---|---|---|",
             *(f"| {n} | {steps[n]} | {seconds[n]} |" for n in steps)]
    for r in reports:
        lines += ["", f"## {r.get('suite')} ({r.get('machine', {}).get('date', '')})", "", r.get("markdown", "")]
    for name, status in steps.items():
        log = work / "logs" / f"{name}.log"
        if status != "PASS" and log.exists():
            tail = log.read_text(errors="replace").splitlines()[-25:]
            lines += ["", f"## log of {name} ({status}), last lines", "", "```", *tail, "```"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(reports, indent=1))
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
