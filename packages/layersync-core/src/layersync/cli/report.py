"""layersync report RUN [RUN...] [--out DIR]: one Markdown page that compares training runs.

Writes DIR/report.md (default: RUN/report/ in the first run's folder) with, beside it, curves.png (every
run's loss terms overlaid, one line per run and term) and a copy of each run's latest preview (samples_N.png
or .gif); the page also has a table of each run's newest checkpoint and last losses, the config keys on which
the runs differ (every key for one run), and the numbers of ``layersync-eval --out RUN/metrics.json`` where a
run has that file.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
from pathlib import Path

from layersync import curves
from layersync.config import flatten, read_yaml, show
from layersync.errors import ConfigError
from layersync.files import atomic
from layersync import checkpoint

HELP = "compare training runs: loss curves overlaid, config differences, latest samples, eval results (report.md)"
LAST = 10  # the last losses: a mean over this many log records
PREVIEWS = (".png", ".gif")  # preview files a Markdown page shows


def configure(parser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders (the --out of layersync-train)")
    parser.add_argument("--out", help="the folder for report.md and its images (default: RUN/report in the first run)")


def load(path: Path) -> dict:
    """What the report needs of one run folder."""
    if not path.is_dir():
        raise ConfigError(f"{path}: no such run folder")
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise ConfigError(f"{metrics} not found: {path} is not a training run's folder, or its run logged without "
                          "jsonl (train.loggers)")
    records = curves.read_metrics(metrics)
    if not records:
        raise ConfigError(f"{metrics} holds no log record yet")
    previews = sorted(p for p in (path / "samples").glob("step_*") if p.suffix in PREVIEWS)
    evaluated = path / "metrics.json"
    saved = checkpoint.latest(path / "checkpoints")
    return {
        "path": path,
        "records": records,
        "config": flatten(read_yaml(path / "config.yaml")) if (path / "config.yaml").is_file() else {},
        "checkpoint_step": None if saved is None else checkpoint.step_of(saved),
        "preview": previews[-1] if previews else None,  # names carry the zero-padded step: the last is the newest
        "eval": read_eval(evaluated) if evaluated.is_file() else None,
    }


def read_eval(path: Path) -> dict:
    try:
        result = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"{path} is not JSON: expected the output of layersync-eval --out") from None
    if not isinstance(result, dict):
        raise ConfigError(f"{path} holds no mapping of metrics: expected the output of layersync-eval --out")
    return result


def table(header: list[str], rows: list[list]) -> list[str]:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *map(line, rows)]


def mean_last(records: list[dict], key: str) -> str:
    values = [r[key] for r in records[-LAST:] if r.get(key) is not None]
    return f"{statistics.fmean(values):.4f}" if values else "-"


def step_cell(run: dict) -> str:
    """The step of the newest checkpoint, with the last logged step where that differs."""
    saved, logged = run["checkpoint_step"], run["records"][-1]["step"]
    return str(saved) if saved == logged else f"{'no checkpoint' if saved is None else saved} (logged: {logged})"


def summary(labels: list[str], runs: list[dict]) -> list[str]:
    return table(["run", "folder", "checkpoint step", f"flow loss (last {LAST} logs)", "LayerSync term",
                  "samples/s (median)"],
                 [[label, f"`{run['path']}`", step_cell(run), mean_last(run["records"], "flow_loss"),
                   mean_last(run["records"], "layersync_loss"),
                   f"{statistics.median(r.get('samples_per_s') or 0 for r in run['records']):.1f}"]
                  for label, run in zip(labels, runs)])


def config_diff(labels: list[str], runs: list[dict]) -> list[str]:
    """The keys on which the runs differ (every key of a single run)."""
    keys = sorted(set().union(*(run["config"] for run in runs)))
    if len(runs) > 1:
        keys = [k for k in keys if len({show(run["config"].get(k, "-")) for run in runs}) > 1]
    if not keys:
        return ["The runs agree on every config key."]
    return table(["key", *labels], [[k, *(show(run["config"].get(k, "-")) for run in runs)] for k in keys])


def previews(labels: list[str], runs: list[dict], out: Path) -> list[str]:
    """Each run's latest preview, copied to ``out/samples_N.png`` (or .gif)."""
    lines = []
    for i, (label, run) in enumerate(zip(labels, runs), 1):
        preview = run["preview"]
        if preview is None:
            lines += [f"{label}: no preview image in `{run['path'] / 'samples'}`", ""]
            continue
        copy = out / f"samples_{i}{preview.suffix}"
        with atomic(copy) as tmp:
            shutil.copyfile(preview, tmp)
        step = re.match(r"step_(\d+)", preview.name)
        lines += [f"**{label}**" + (f" (step {int(step[1])})" if step else ""), "", f"![{label}]({copy.name})", ""]
    return lines


def number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def evaluations(labels: list[str], runs: list[dict]) -> list[str]:
    """The numbers of each run's ``metrics.json`` (runs without one are left out)."""
    done = [(label, run["eval"]) for label, run in zip(labels, runs) if run["eval"]]
    keys = sorted({k for _, result in done for k, v in result.items() if number(v)})
    if not keys:
        return []
    return ["## Evaluation (layersync-eval)", "", *table(
        ["metric", *(label for label, _ in done)],
        [[k, *(f"{result[k]:.6g}" if number(result.get(k)) else "-" for _, result in done)] for k in keys])]


def write(paths: list[Path], out: Path):
    """Write ``out/report.md`` and its images for the runs at ``paths``; returns the overlay figure."""
    runs = [load(Path(p)) for p in paths]
    names = [run["path"].name for run in runs]
    labels = names if len(set(names)) == len(names) else [str(run["path"]) for run in runs]
    out.mkdir(parents=True, exist_ok=True)
    figure = curves.plot({label: run["records"] for label, run in zip(labels, runs)})
    curves.save(figure, out / "curves.png")
    lines = ["# Training runs compared", "", *summary(labels, runs), "", "## Loss curves", "",
             "![loss curves](curves.png)", "", "## Config", "", *config_diff(labels, runs), "",
             "## Latest samples", "", *previews(labels, runs, out), *evaluations(labels, runs)]
    with atomic(out / "report.md") as tmp:
        tmp.write_text("\n".join(lines).rstrip() + "\n")
    return figure


def run(args) -> int:
    out = Path(args.out) if args.out else Path(args.runs[0]) / "report"
    write([Path(p) for p in args.runs], out)
    print(f"wrote {out / 'report.md'}")
    return 0
