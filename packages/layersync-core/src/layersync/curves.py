"""Loss curves from ``metrics.jsonl``: a run's ``curves.png``, and several runs overlaid (``layersync report``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from layersync.files import atomic

# (record key, panel title, y scale): the flow loss is positive and falls over decades; the LayerSync
# term is a negative cosine and the total may cross zero, so those two stay linear
TERMS = (("flow_loss", "flow loss", "log"), ("layersync_loss", "LayerSync term (weighted)", "linear"),
         ("loss", "total loss", "linear"))


def read_metrics(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl``; a line that is not a record (cut short by a stop) is left out."""
    records = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def plot(runs: dict[str, list[dict]]):
    """One panel per term of ``TERMS``, one line per run (a label each); non-finite values (null) leave gaps."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * len(TERMS), 4))
    for ax, (key, title, scale) in zip(fig.subplots(1, len(TERMS)), TERMS):
        for label, records in runs.items():
            steps = [r["step"] for r in records]
            values = [math.nan if r.get(key) is None else r[key] for r in records]
            ax.plot(steps, values, label=label, linewidth=1)
        ax.set(xlabel="step", title=title, yscale=scale)
        ax.grid(alpha=0.3)
        if scale == "linear":
            ax.ticklabel_format(axis="y", useOffset=False)
        if len(runs) > 1:
            ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def save(fig, path: Path) -> Path:
    with atomic(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)


def write_curves(run: Path) -> Path | None:
    """``RUN/curves.png`` from ``RUN/metrics.jsonl`` (None while it holds no record)."""
    records = read_metrics(run / "metrics.jsonl")
    return save(plot({run.name: records}), run / "curves.png") if records else None
