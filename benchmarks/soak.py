"""Soak: a tiny run trained for thousands of steps: resident memory, data-loader throughput and the
checkpoint folder under ``train.keep`` must stay flat.

One training process (``python -m layersync.cli.train``, SiT-T/4 on the bundled digits at 8x8, batch
16, ``train.num_workers=2`` so that the DataLoader's worker processes run the whole time, a
checkpoint every 250 steps with ``train.keep=3`` and ``train.keep_every=1000``) is watched from
this process every ``--poll`` seconds: the resident memory of the trainer and of its loader workers
(psutil if installed, else ``/proc``), their CPU time, the last step logged in ``metrics.jsonl`` and
the files of ``checkpoints/``. Then:

- ``resident memory``: the RSS summed over the trainer and its workers, the median of the samples
  taken while steps [warm-up, warm-up + w) ran against the median over [steps - w, steps), w = 5% of
  the steps (at least one log interval). The warm-up (default 300 steps) lies past the first
  checkpoint write, so one-off allocations (the first ``torch.save``, lazily built kernels, the
  workers' first batches) are not counted as growth. Target: growth <= max(5% of the start, 50 MiB).
  The allocator's noise over three processes (glibc arenas, the freed pickle buffers of the
  checkpoint writes) stays within a few tens of MiB, and 5% scales the bound with the run's size.
  The summed RSS counts the pages the forked workers share with the trainer once per process (about
  1.9 GiB here, against a PSS of about 650 MiB), so the bound is about 94 MiB: a leak of more than
  about 22 KiB a step (94 MiB over the ~4450 steps between the two windows; one 75x75 fp32 tensor
  kept per step) fails. Smaller leaks show in the least-squares slope (MiB per 1000 steps) that the
  report gives with the PSS (shared pages counted once; it also moves with the library pages shared
  with other processes on the machine), the trainer alone and the peak.
- ``loader throughput``: ``samples_per_s`` of every log interval after the warm-up, from
  ``metrics.jsonl``: median, p5, p95 and the median of the last 20% of the intervals over the median
  of the first 20%. Target: ratio >= 0.9. On a shared machine the load of other processes moves
  this, so the report also gives the same ratio per CPU second of the process tree (not a target)
  and the load average in both windows.
- ``checkpoints``: at the end the folder must hold exactly the last ``keep`` checkpoints plus those of
  every ``keep_every``-th step, no ``.tmp`` left; and at every sample the checkpoints outside the
  ``keep_every`` milestones (plus a ``.tmp`` being written) must number at most ``keep + 1``: the
  folder grows by one file per ``keep_every`` steps and no faster. Bytes and files at the end,
  and the largest folder seen.

The trainer runs with ``OMP_NUM_THREADS=1`` (``--threads``): on 2 busy cores, two OpenMP threads
for a model this small spin against the two loader workers and other jobs and make a step about
10x slower and far noisier; a soak measures drift over time, not peak speed.

    python -m benchmarks soak                 # 5000 steps, about 6 min on 2 busy cores
    python -m benchmarks soak --quick         # 300 steps (a checkpoint every 25, keep_every 100): CI
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import TINY_RUN, publish, set_args, table, target

try:
    import psutil
except ImportError:  # the /proc fallback
    psutil = None

MiB = 2**20
CKPT = re.compile(r"^step_(\d+)\.pt$")
COLUMNS = ["measurement", "value", "detail", "target", "verdict"]
DEFAULT = {"steps": 5000, "log_every": 50, "ckpt_every": 250, "keep": 3, "keep_every": 1000, "warmup": 300,
           "poll": 0.5, "timeout": 3600.0}
QUICK = {"steps": 300, "log_every": 10, "ckpt_every": 25, "keep": 3, "keep_every": 100, "warmup": 50,
         "poll": 0.2, "timeout": 300.0}


# ---- the process tree ----------------------------------------------------------------------------
def _proc_children(pid: int) -> list[int]:
    """Every descendant of ``pid``, from the parent ids in /proc/*/stat."""
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(name))
    found, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _proc_field(path: str, key: str) -> int | None:
    """A ``key:  N kB`` line of a /proc file, in bytes."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0.0


def tree_stats(pid: int) -> dict | None:
    """RSS (main, workers), PSS (None if unreadable), CPU seconds and the process count of ``pid``
    and its descendants; None once ``pid`` is gone."""
    if psutil is not None:
        try:
            main = psutil.Process(pid)
            procs = [main, *main.children(recursive=True)]
        except psutil.Error:
            return None
        rss, pss, cpu = [], 0, 0.0
        for p in procs:
            try:
                rss.append(p.memory_info().rss)
                cpu += sum(p.cpu_times()[:2])
                try:
                    pss = None if pss is None else pss + p.memory_full_info().pss
                except (psutil.Error, AttributeError):
                    pss = None
            except psutil.Error:  # a worker that just went
                if p is main:
                    return None
        if not rss:
            return None
        return {"rss_main": rss[0], "rss_workers": sum(rss[1:]), "pss": pss, "cpu_s": cpu, "procs": len(rss)}
    pids = [pid, *_proc_children(pid)]
    rss, pss, cpu = [], 0, 0.0
    for p in pids:
        value = _proc_field(f"/proc/{p}/status", "VmRSS")
        if value is None:
            if p == pid:
                return None
            continue
        rss.append(value)
        share = _proc_field(f"/proc/{p}/smaps_rollup", "Pss")
        pss = None if pss is None or share is None else pss + share
        cpu += _proc_cpu(p)
    return {"rss_main": rss[0], "rss_workers": sum(rss[1:]), "pss": pss, "cpu_s": cpu, "procs": len(rss)}


# ---- the run folder ------------------------------------------------------------------------------
def folder_stats(folder: Path, keep_every: int) -> dict:
    """Files and bytes of the checkpoints folder; ``rolling``: the checkpoints outside the
    ``keep_every`` milestones plus the ``.tmp`` files being written."""
    files = size = rolling = tmp = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        entries = []
    for entry in entries:
        match = CKPT.match(entry.name)
        is_tmp = entry.name.endswith(".tmp")
        if not (match or is_tmp):
            continue
        try:
            size += entry.stat().st_size
        except OSError:  # renamed or deleted between the listing and the stat
            continue
        files += bool(match)
        tmp += is_tmp
        rolling += is_tmp or not (keep_every > 0 and int(match.group(1)) % keep_every == 0)
    return {"ckpt_files": files, "ckpt_bytes": size, "rolling": rolling, "tmp": tmp}


class Metrics:
    """Reads ``metrics.jsonl`` as it grows (whole lines only)."""

    def __init__(self, path: Path):
        self.path, self.offset, self.records = path, 0, []

    def poll(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            data = b""
        end = data.rfind(b"\n")
        if end >= 0:
            self.offset += end + 1
            for line in data[: end + 1].splitlines():
                try:
                    self.records.append(json.loads(line))
                except ValueError:
                    continue
        return self.records[-1]["step"] if self.records else 0


def expected_checkpoints(steps: int, every: int, keep: int, keep_every: int) -> list[int]:
    """The steps whose checkpoints are left at the end: the last ``keep`` written and every multiple of
    ``keep_every`` (``keep`` 0: all of them)."""
    saved = list(range(every, steps + 1, every)) + ([steps] if steps % every else [])
    if keep <= 0:
        return saved
    return sorted(set(saved[-keep:]) | {s for s in saved if keep_every > 0 and s % keep_every == 0})


# ---- one watched run -----------------------------------------------------------------------------
def train_and_watch(run: Path, cfg: dict, args) -> tuple[int, list[dict], list[dict], float, str]:
    """Launch the trainer, sample it until it exits: (exit code, samples, metrics records, wall
    seconds, note)."""
    sets = {**TINY_RUN, "data.image_size": args.image_size, "model.size": args.size,
            "train.batch_size": args.batch, "train.log_every": cfg["log_every"],
            "train.ckpt_every": cfg["ckpt_every"], "train.keep": cfg["keep"], "train.keep_every": cfg["keep_every"],
            "train.num_workers": args.workers, "train.device": args.device}
    argv = [sys.executable, "-m", "layersync.cli.train", "--plugin", "image", "--out", str(run),
            "--steps", str(cfg["steps"]), "--seed", str(args.seed),
            *set_args(sets)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.threads > 0:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    metrics, samples, note = Metrics(run / "metrics.jsonl"), [], ""
    run.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(run.parent / f"{run.name}.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        try:
            next_report = start + 30
            while proc.poll() is None:
                now = time.monotonic()
                step = metrics.poll()
                stats = tree_stats(proc.pid)
                if stats is not None:
                    samples.append({"t": round(now - start, 3), "step": step, **stats,
                                    **folder_stats(run / "checkpoints", cfg["keep_every"]),
                                    "load1": os.getloadavg()[0]})
                if now >= next_report:
                    rss = (stats["rss_main"] + stats["rss_workers"]) / MiB if stats else float("nan")
                    print(f"  {now - start:5.0f} s: step {step}/{cfg['steps']}, RSS {rss:.0f} MiB", flush=True)
                    next_report = now + 30
                if now - start > cfg["timeout"]:
                    note = f"stopped after {cfg['timeout']:.0f} s (--timeout) at step {step}"
                    break
                time.sleep(cfg["poll"])
        finally:
            if proc.poll() is None:
                stop(proc)
    metrics.poll()
    return proc.returncode, samples, metrics.records, time.monotonic() - start, note


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM (the trainer saves and exits), then SIGKILL to its process group (the workers)."""
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


# ---- the measurements ----------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between the order statistics (numpy's default)."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def slope(xs: list[float], ys: list[float]) -> float:
    """The least-squares slope of ys over xs (NaN with fewer than two distinct xs)."""
    if len(set(xs)) < 2:
        return float("nan")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def window(samples: list[dict], lo: int, hi: int, first: bool) -> list[dict]:
    """Samples with a logged step in [lo, hi); if none, the nearest one inside the run."""
    found = [s for s in samples if lo <= s["step"] < hi]
    return found or (samples[:1] if first else samples[-1:])


def memory(samples: list[dict], cfg: dict) -> dict:
    steps, warm = cfg["steps"], cfg["warmup"]
    w = max(cfg["log_every"], round(0.05 * steps))
    during = [s for s in samples if warm <= s["step"] < steps]  # not the final sampling at the last step
    if not during:
        return {"measurement": "resident memory", "value": "n/a", "detail": "no sample after the warm-up",
                "target": "", "verdict": "FAIL", "passed": False}
    rss = lambda s: (s["rss_main"] + s["rss_workers"]) / MiB  # noqa: E731
    head, tail = window(during, warm, warm + w, True), window(during, steps - w, steps, False)
    start, end = statistics.median(map(rss, head)), statistics.median(map(rss, tail))
    growth = end - start
    bound = max(0.05 * start, 50.0)
    pss_ok = all(s["pss"] is not None for s in head + tail)
    pss_start = statistics.median(s["pss"] / MiB for s in head) if pss_ok else None
    pss_end = statistics.median(s["pss"] / MiB for s in tail) if pss_ok else None
    per_1k = 1000 * slope([s["step"] for s in during], [rss(s) for s in during])
    procs = sorted({s["procs"] for s in during})
    row = {
        "measurement": "resident memory",
        "value": f"{growth:+.1f} MiB ({100 * growth / start:+.2f}%)",
        "detail": (f"RSS of the trainer + workers {start:.0f} -> {end:.0f} MiB (steps {warm}-{warm + w} vs "
                   f"{steps - w}-{steps}; main {statistics.median(s['rss_main'] / MiB for s in head):.0f} -> "
                   f"{statistics.median(s['rss_main'] / MiB for s in tail):.0f}); "
                   + (f"PSS {pss_start:.0f} -> {pss_end:.0f} MiB; " if pss_ok else "")
                   + f"peak {max(map(rss, during)):.0f} MiB, slope {per_1k:+.2f} MiB/1k steps; "
                   f"processes {'/'.join(map(str, procs))}"),
        "target": f"growth <= max(5%, 50 MiB) = {bound:.0f} MiB",
        "passed": growth <= bound,
        "start_mib": start, "end_mib": end, "growth_mib": growth, "growth_pct": 100 * growth / start,
        "bound_mib": bound, "peak_mib": max(map(rss, during)), "slope_mib_per_1k_steps": per_1k,
        "rss_main_start_mib": statistics.median(s["rss_main"] / MiB for s in head),
        "rss_main_end_mib": statistics.median(s["rss_main"] / MiB for s in tail),
        "pss_start_mib": pss_start, "pss_end_mib": pss_end, "processes": procs,
        "window_steps": w, "samples_start": len(head), "samples_end": len(tail),
        "source": "psutil" if psutil is not None else "/proc",
    }
    return row


def throughput(records: list[dict], samples: list[dict], cfg: dict, batch: int) -> dict:
    warm = cfg["warmup"]
    kept = [r for r in records if r["step"] - cfg["log_every"] >= warm and r.get("samples_per_s")]
    rates = [r["samples_per_s"] for r in kept]
    if len(rates) < 2:
        return {"measurement": "loader throughput", "value": "n/a", "detail": f"{len(rates)} log intervals after "
                "the warm-up", "target": "last/first 20% >= 0.9", "verdict": "FAIL", "passed": False}
    k = max(1, round(0.2 * len(rates)))
    first, last = statistics.median(rates[:k]), statistics.median(rates[-k:])
    ratio = last / first

    def per_cpu(lo: int, hi: int) -> float:  # samples per CPU second of the tree between two logged steps
        a = next((s for s in samples if s["step"] >= lo), None)
        b = next((s for s in samples if s["step"] >= hi), None)
        if a is None or b is None or b["cpu_s"] <= a["cpu_s"] or b["step"] <= a["step"]:
            return float("nan")
        return (b["step"] - a["step"]) * batch / (b["cpu_s"] - a["cpu_s"])

    def load(lo: int, hi: int) -> float:
        found = [s["load1"] for s in samples if lo <= s["step"] < hi]
        return statistics.fmean(found) if found else float("nan")

    lo1, hi1 = kept[0]["step"] - cfg["log_every"], kept[k - 1]["step"]
    lo2, hi2 = kept[-k]["step"] - cfg["log_every"], kept[-1]["step"]
    cpu_first, cpu_last = per_cpu(lo1, hi1), per_cpu(lo2, min(hi2, cfg["steps"] - 1))
    p5, p95 = percentile(rates, 0.05), percentile(rates, 0.95)
    return {
        "measurement": "loader throughput",
        "value": f"last/first 20% = {ratio:.3f}",
        "detail": (f"samples/s over {len(rates)} log intervals of {cfg['log_every']} steps: median "
                   f"{statistics.median(rates):.1f}, p5 {p5:.1f}, p95 {p95:.1f}; first 20% {first:.1f}, "
                   f"last 20% {last:.1f}; per CPU second {cpu_first:.1f} -> {cpu_last:.1f} "
                   f"(ratio {cpu_last / cpu_first:.3f}); load average {load(lo1, hi1):.1f} -> {load(lo2, hi2):.1f}"),
        "target": "last/first 20% >= 0.9",
        "passed": ratio >= 0.9,
        "intervals": len(rates), "median": statistics.median(rates), "p5": p5, "p95": p95,
        "first_20pct": first, "last_20pct": last, "ratio": ratio,
        "per_cpu_s_first": cpu_first, "per_cpu_s_last": cpu_last, "per_cpu_s_ratio": cpu_last / cpu_first,
        "load_first": load(lo1, hi1), "load_last": load(lo2, hi2),
    }


def checkpoints(run: Path, samples: list[dict], cfg: dict) -> dict:
    folder = run / "checkpoints"
    names = sorted(os.listdir(folder)) if folder.is_dir() else []
    found = sorted(int(m.group(1)) for n in names if (m := CKPT.match(n)))
    sizes = [(folder / n).stat().st_size for n in names if CKPT.match(n)]
    tmp = [n for n in names if n.endswith(".tmp")]
    expected = expected_checkpoints(cfg["steps"], cfg["ckpt_every"], cfg["keep"], cfg["keep_every"])
    end = folder_stats(folder, cfg["keep_every"])
    most_rolling = max((s["rolling"] for s in samples), default=0)
    most_bytes = max((s["ckpt_bytes"] for s in samples), default=0)
    most_files = max((s["ckpt_files"] for s in samples), default=0)
    bound = cfg["keep"] + 1
    over = [s for s in samples if s["rolling"] > bound]
    # the folder over time, at each quarter of the run
    quarters = {}
    for q in (0.25, 0.5, 0.75):
        s = next((s for s in samples if s["step"] >= q * cfg["steps"]), None)
        if s is not None:
            quarters[f"step_{s['step']}"] = {"files": s["ckpt_files"], "bytes": s["ckpt_bytes"]}
    quarters[f"end (step {cfg['steps']})"] = {"files": end["ckpt_files"], "bytes": end["ckpt_bytes"]}
    passed = found == expected and not tmp and not over
    detail = (f"{end['ckpt_bytes'] / MiB:.1f} MiB in {len(found)} files (steps {', '.join(map(str, found))}); "
              f"expected {', '.join(map(str, expected))}; over time "
              + ", ".join(f"{k.replace('_', ' ')}: {v['files']} files {v['bytes'] / MiB:.0f} MiB"
                          for k, v in quarters.items())
              + f"; at most {most_rolling} rolling (non-milestone + .tmp) files, {most_files} files, "
              f"{most_bytes / MiB:.0f} MiB at once")
    if sizes:
        detail += f"; a checkpoint {min(sizes) / MiB:.1f}-{max(sizes) / MiB:.1f} MiB"
    if tmp:
        detail += f"; .tmp left: {', '.join(tmp)}"
    return {
        "measurement": "checkpoints",
        "value": f"{len(found)} files, {end['ckpt_bytes'] / MiB:.1f} MiB",
        "detail": detail,
        "target": (f"= last {cfg['keep']} + every {cfg['keep_every']}th ({len(expected)} files); "
                   f"<= {bound} rolling files at any time"),
        "passed": passed,
        "files": len(found), "steps": found, "expected_files": len(expected), "expected_steps": expected,
        "bytes": end["ckpt_bytes"], "tmp_left": tmp, "max_rolling": most_rolling, "rolling_bound": bound,
        "samples_over_bound": len(over), "max_files": most_files, "max_bytes": most_bytes,
        "over_time": quarters, "file_bytes": sorted(set(sizes)),
    }


def thin(samples: list[dict], n: int = 200) -> list[dict]:
    """At most about ``n`` samples, evenly spread, for the report."""
    every = max(1, len(samples) // n)
    return samples[::every]


# ---- main ----------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks soak", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps (default 5000; 300 with --quick)")
    p.add_argument("--quick", action="store_true", help="the CI check: 300 steps, a checkpoint every 25, "
                   "keep_every 100, logs every 10, warm-up 50")
    p.add_argument("--log-every", type=int, default=None, help="log interval (default 50; 10 with --quick)")
    p.add_argument("--ckpt-every", type=int, default=None, help="checkpoint interval (default 250; 25 with --quick)")
    p.add_argument("--keep", type=int, default=None, help="train.keep (default 3)")
    p.add_argument("--keep-every", type=int, default=None, help="train.keep_every (default 1000; 100 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="steps before the start of the measurements "
                   "(default 300; 50 with --quick)")
    p.add_argument("--poll", type=float, default=None, help="seconds between samples (default 0.5; 0.2 with --quick)")
    p.add_argument("--timeout", type=float, default=None, help="stop the run after this many seconds "
                   "(default 3600; 300 with --quick)")
    p.add_argument("--workers", type=int, default=2, help="train.num_workers (default 2)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the trainer (default 1; 0: unset)")
    p.add_argument("--size", default=TINY_RUN["model.size"], help="model.size (default T/4)")
    p.add_argument("--image-size", type=int, default=TINY_RUN["data.image_size"], help="data.image_size (default 8)")
    p.add_argument("--batch", type=int, default=TINY_RUN["train.batch_size"], help="train.batch_size (default 16)")
    p.add_argument("--device", default="cpu", help="train.device (default cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the run goes (default: a temporary folder, removed)")
    p.add_argument("--keep-run", action="store_true", help="keep the run folder and its log")
    args = p.parse_args(argv)
    base = QUICK if args.quick else DEFAULT
    cfg = {key: getattr(args, key) if getattr(args, key, None) is not None else value for key, value in base.items()}
    if cfg["warmup"] >= cfg["steps"]:
        p.error(f"--warmup {cfg['warmup']} must be below --steps {cfg['steps']}")

    own = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="layersync-soak-")) if own else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    run = work / "run"
    if run.exists():
        shutil.rmtree(run)
    print(f"soak: {cfg['steps']} steps of SiT-{args.size} at {args.image_size}x{args.image_size}, batch {args.batch}, "
          f"{args.workers} loader workers, a checkpoint every {cfg['ckpt_every']} (keep {cfg['keep']}, "
          f"keep_every {cfg['keep_every']}); memory via {'psutil' if psutil else '/proc'}", flush=True)
    try:
        rc, samples, records, wall, note = train_and_watch(run, cfg, args)
        log = (work / "run.log").read_bytes().decode(errors="replace").replace("\r", "\n").splitlines()
        log_tail = " / ".join(line for line in log if line.strip() and "%|" not in line)[-400:]
        rows = [memory(samples, cfg), throughput(records, samples, cfg, args.batch), checkpoints(run, samples, cfg)]
    finally:
        if own and not args.keep_run:
            shutil.rmtree(work, ignore_errors=True)
    last = records[-1]["step"] if records else 0
    problem = note or (f"the trainer exited with {rc} at step {last}: {log_tail}" if rc != 0 else "")
    if not problem and last != cfg["steps"]:
        problem = f"metrics.jsonl ends at step {last}, not {cfg['steps']}"
    for row in rows:
        row["verdict"] = "PASS" if row.pop("passed") and not problem else "FAIL"

    markdown = table(rows, COLUMNS) + (
        f"\n\n{last} of {cfg['steps']} steps in {wall:.0f} s (exit {rc}), SiT-{args.size} on the digits at "
        f"{args.image_size}x{args.image_size}, batch {args.batch}, {args.workers} loader workers, "
        f"OMP_NUM_THREADS={args.threads or 'unset'}, a checkpoint every {cfg['ckpt_every']} with keep "
        f"{cfg['keep']} and keep_every {cfg['keep_every']}, {len(samples)} samples every {cfg['poll']} s; "
        f"measurements after a {cfg['warmup']}-step warm-up. Memory: RSS summed over the trainer and its loader "
        f"workers ({'psutil' if psutil else '/proc'}), the median of the first and of the last 5% of the steps."
        + (f"\n\n**The run did not complete:** {problem}" if problem else ""))
    print(markdown)
    verdicts = [
        target("soak_memory", f"RSS growth over {cfg['steps']} steps (trainer + loader workers)",
               rows[0].get("growth_mib"), rows[0]["verdict"] == "PASS"),
        target("soak_throughput", "loader samples/s, last 20% over first 20% of the log intervals",
               rows[1].get("ratio"), rows[1]["verdict"] == "PASS"),
        target("soak_checkpoints", f"checkpoints left under keep={cfg['keep']}, keep_every={cfg['keep_every']}",
               rows[2].get("files"), rows[2]["verdict"] == "PASS"),
    ]
    config = {**vars(args), **cfg, "workdir": None, "threads": args.threads}
    report, path = publish("soak", args.device, rows, markdown, config=config, targets=verdicts, exit_code=rc,
                           wall_s=wall, problem=problem, samples=thin(samples))
    print(f"report: {path}")
    return report


if __name__ == "__main__":
    main()
