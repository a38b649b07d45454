"""Fault injection: SIGKILL at random points, a full disk, a corrupt checkpoint; resumed runs must end
with the uninterrupted run's weights, bit for bit.

A tiny image run (SiT-T/4 on the bundled digits at 8x8, CPU, fixed seed, a checkpoint every few
steps) goes once without interruption: the reference. Then, each through the real CLI
(``python -m layersync.cli.train``, run again on the same folder to resume):

- ``kill``: the same run in a fresh folder, killed with SIGKILL ``--n`` times and resumed after
  each kill until it completes. The kill points come from a seeded ``random.Random``: during a
  checkpoint write (as soon as a new ``*.tmp`` shows in the checkpoints folder, plus a few ms),
  at a random step (plus a fraction of a step), or during start-up (import, restore). After
  every kill each ``step_*.pt`` must load with ``torch.load(weights_only=True)``, the library must
  not list a leftover ``.tmp`` as a checkpoint, and the next run must resume from the newest
  readable checkpoint. The final checkpoint's ``model`` and ``ema`` must equal the reference's.
- ``disk full``: the run folder on a tmpfs that holds one checkpoint and a half (root and a
  working ``mount -t tmpfs``, else NOT RUN): the second checkpoint write must fail with exit code 2
  and "no space left on device" on stderr, the first checkpoint staying readable; then (not with
  ``--quick``) the tmpfs is grown and the run resumed to the end, to the reference's weights.
- ``corrupt (truncated)`` / ``corrupt (random bytes)``: the reference's folder cut back to its
  checkpoints up to the one before the last, that one damaged, then resumed: the run should fall
  back to the newest readable checkpoint with a warning naming the bad one, move it aside and
  end with the reference's weights.
- ``two writers`` (beside the reference run): the run in a fresh folder, paused (SIGSTOP) as soon as
  its lock file names it, and a second run with another seed started on the same folder: the second
  must be refused (exit 2, naming the folder and the first's pid); resumed, the first must end with
  the reference's metrics, checkpoints and weights.

Steps lost: over the faults, the steps trained since the newest readable checkpoint at the
fault (from ``metrics.jsonl``, one line a step): the work done again. A FAIL row is a finding,
the suite reports what it observed.

    python -m benchmarks faults               # 20 kills of a 60-step run (a checkpoint every 5 steps)
    python -m benchmarks faults --quick       # 3 kills of a 6-step run (every 2): the CI check
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.common import TINY_RUN, publish, set_args, table, target

# the tiny run, with the data loaded in the training process (fewer processes)
SETTINGS = {**TINY_RUN, "train.num_workers": 0, "train.device": "cpu"}
CKPT = re.compile(r"^step_(\d+)\.pt$")
RESUMING = re.compile(r"resuming .* from step (\d+)")
KINDS = ("checkpoint write", "step", "start-up")
COLUMNS = ["scenario", "faults", "recovered", "steps_lost", "mismatches", "unreadable", "verdict", "observed"]


# ---- one training process ------------------------------------------------------------------------
@dataclass
class Attempt:
    rc: int
    killed: bool
    wall_s: float
    first_step_s: float | None  # launch to the first metrics line written by this process
    log: Path
    note: str = ""


class TrainLauncher:
    """Launches the training CLI on a run folder, optionally killing it when a trigger fires."""

    def __init__(self, work: Path, steps: int, ckpt_every: int, seed: int, timeout_s: float):
        self.work, self.steps, self.ckpt_every, self.seed, self.timeout_s = work, steps, ckpt_every, seed, timeout_s
        self.count, self.process_s = 0, 0.0
        self.live: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopped = False

    def argv(self, out: Path, seed: int) -> list[str]:
        sets = set_args({**SETTINGS, "train.ckpt_every": self.ckpt_every})
        return [sys.executable, "-m", "layersync.cli.train", "--plugin", "image", "--out", str(out),
                "--steps", str(self.steps), "--seed", str(seed), *sets]

    def launch(self, out: Path, seed: int | None = None) -> tuple[subprocess.Popen, Path]:
        """Start the CLI on ``out`` (with ``seed``: another run than the reference's), its output to a log."""
        if self.stopped:
            raise RuntimeError("stopped")
        with self.lock:
            self.count += 1
            log = self.work / "logs" / f"{self.count:03d}-{out.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log, "wb") as sink:
            proc = subprocess.Popen(self.argv(out, self.seed if seed is None else seed), stdout=sink,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.work, env=env)
        self.live.add(proc)
        return proc, log

    def run(self, out: Path, trigger=None, seed: int | None = None) -> Attempt:
        metrics = out / "metrics.jsonl"
        before = read_bytes(metrics)
        start = time.monotonic()
        proc, log = self.launch(out, seed)
        killed, first, note = False, None, ""
        try:
            while proc.poll() is None:
                elapsed = time.monotonic() - start
                if first is None and metrics_changed(metrics, before):
                    first = elapsed
                if trigger is not None and trigger(elapsed):
                    os.kill(proc.pid, signal.SIGKILL)
                    killed = True
                    break
                if elapsed > self.timeout_s:
                    os.kill(proc.pid, signal.SIGKILL)
                    note = f"hung: killed after {self.timeout_s:.0f} s"
                    break
                time.sleep(trigger.poll_s if trigger is not None else 0.02)
            rc = proc.wait()
        finally:
            self.end(proc)
        wall = time.monotonic() - start
        with self.lock:
            self.process_s += wall
        return Attempt(rc, killed, wall, first, log, note)

    def end(self, proc: subprocess.Popen) -> None:
        """Never leave a child running (a stopped one included)."""
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        self.live.discard(proc)

    def stop(self) -> None:
        self.stopped = True
        for proc in list(self.live):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)



def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def metrics_changed(path: Path, before: bytes) -> bool:
    data = read_bytes(path)
    return data != before and last_step(data) is not None and data.endswith(b"\n")


def last_step(data: bytes) -> int | None:
    """The step of the last whole line of a metrics.jsonl."""
    for line in reversed(data.split(b"\n")[:-1]):  # what follows the last newline is a partial line
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def log_text(path: Path) -> str:
    """The process's output without the progress bar's redraws."""
    lines = read_bytes(path).decode(errors="replace").replace("\r", "\n").splitlines()
    return "\n".join(line for line in lines if line.strip() and not re.search(r"\d+%\|", line))


def last_lines(path: Path, n: int = 1) -> str:
    return " / ".join(log_text(path).splitlines()[-n:])[:300]


# ---- kill triggers -------------------------------------------------------------------------------
class AtStartup:
    """Kill ``delay`` s after the launch."""

    poll_s = 0.005

    def __init__(self, delay: float):
        self.delay = delay

    def __call__(self, elapsed: float) -> bool:
        return elapsed >= self.delay


class AtStep:
    """Kill ``jitter`` s after this process has logged step ``step``, or when it logs the next step
    (before that step's checkpoint is written), whichever comes first."""

    poll_s = 0.005

    def __init__(self, metrics: Path, step: int, jitter: float):
        self.metrics, self.step, self.jitter = metrics, step, jitter
        self.before, self.deadline = read_bytes(metrics), None

    def __call__(self, elapsed: float) -> bool:
        if self.deadline is None:
            data = read_bytes(self.metrics)
            if data != self.before and (last_step(data) or 0) >= self.step:
                self.deadline = elapsed + self.jitter
            return self.deadline is not None and (self.jitter == 0 or last_step(data) > self.step)
        if elapsed >= self.deadline:
            return True
        return (last_step(read_bytes(self.metrics)) or 0) > self.step


class AtCheckpointWrite:
    """Kill ``delay`` s after the ``k``-th checkpoint write of this process begins (a ``*.tmp``
    appears, or a leftover one is rewritten)."""

    poll_s = 0.001

    def __init__(self, folder: Path, k: int, delay: float):
        self.folder, self.k, self.delay = folder, k, delay
        self.baseline, self.seen, self.deadline = tmp_files(folder), set(), None

    def __call__(self, elapsed: float) -> bool:
        if self.deadline is None:
            for name, mtime in tmp_files(self.folder).items():
                if self.baseline.get(name) != mtime:
                    self.seen.add(name)
            if len(self.seen) >= self.k:
                self.deadline = elapsed + self.delay
        return self.deadline is not None and elapsed >= self.deadline


def tmp_files(folder: Path) -> dict[str, int]:
    try:
        with os.scandir(folder) as entries:
            return {e.name: e.stat().st_mtime_ns for e in entries if e.name.endswith(".tmp")}
    except OSError:  # the folder does not exist yet, or a file went between listing and stat
        return {}


# ---- the state of a run folder -------------------------------------------------------------------
@dataclass
class Folder:
    checkpoints: dict[int, str]  # step -> file name, every step_*.pt
    unreadable: list[str]
    tmp: list[str]
    listed_tmp: list[str]  # .tmp files the library lists as checkpoints (must be none)
    newest: int  # the newest readable checkpoint's step, 0 if none


class Inspector:
    """Loads every checkpoint of a folder (once per file version) and reports what it finds."""

    def __init__(self):
        self.cache: dict[tuple, bool] = {}

    def readable(self, path: Path) -> bool:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
        if key not in self.cache:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                self.cache[key] = isinstance(state, dict) and "model" in state and "ema" in state
            except Exception:
                self.cache[key] = False
        return self.cache[key]

    def __call__(self, run: Path) -> Folder:
        from layersync import checkpoint

        folder = run / "checkpoints"
        names = sorted(os.listdir(folder)) if folder.is_dir() else []
        ckpts = {int(m.group(1)): name for name in names if (m := CKPT.match(name))}
        unreadable = [ckpts[s] for s in sorted(ckpts) if not self.readable(folder / ckpts[s])]
        readable = [s for s in ckpts if ckpts[s] not in unreadable]
        listed = [p.name for p in checkpoint.list_checkpoints(folder)] if folder.is_dir() else []
        return Folder(ckpts, unreadable, [n for n in names if n.endswith(".tmp")],
                      [n for n in listed if not CKPT.match(n)], max(readable, default=0))


def weights(run: Path) -> tuple[int, dict] | None:
    """(step, {"model": ..., "ema": ...}) of the newest checkpoint; None if there is none."""
    folder = run / "checkpoints"
    ckpts = {int(m.group(1)): name for name in os.listdir(folder) if (m := CKPT.match(name))} if folder.is_dir() else {}
    if not ckpts:
        return None
    step = max(ckpts)
    state = torch.load(folder / ckpts[step], map_location="cpu", weights_only=True)
    return step, {key: state[key] for key in ("model", "ema")}


def mismatches(run: Path, reference: tuple[int, dict], total: int) -> tuple[int | None, str]:
    """Tensors of the final model and EMA state dicts that differ from the reference's (or are
    missing on either side); None, with the reason, when there is no final checkpoint."""
    try:
        found = weights(run)
    except Exception as exc:
        return None, f"final checkpoint unreadable ({type(exc).__name__})"
    if found is None or found[0] != total:
        return None, f"no checkpoint of step {total} (newest: {found[0] if found else 'none'})"
    _, ref = reference
    differ = 0
    for key in ("model", "ema"):
        a, b = ref[key], found[1][key]
        differ += len(set(a) ^ set(b))
        differ += sum(1 for name in set(a) & set(b) if not torch.equal(a[name], b[name]))
    return differ, ""


def steps_reached(run: Path, before: bytes, resumed_from: int) -> int:
    """The last step a killed process logged: from metrics.jsonl if that process changed it (it
    cuts the file back to its resume point, then appends a line a step), else its resume point."""
    data = read_bytes(run / "metrics.jsonl")
    if data == before:
        return resumed_from
    return max(last_step(data) or 0, resumed_from)


def resumed_from_log(log: Path) -> int | None:
    found = RESUMING.findall(log_text(log))
    return int(found[-1]) if found else None


# ---- scenarios -----------------------------------------------------------------------------------
@dataclass
class Plan:
    kind: str
    u: float  # where in the allowed range (the k-th checkpoint, the target step, the start-up delay)
    v: float  # the extra delay, as a fraction of its range


def make_plan(n: int, rng: random.Random) -> list[Plan]:
    """The first kill hits a checkpoint write and the second a step; the rest are drawn."""
    kinds = [KINDS[0], KINDS[1]][:n] + rng.choices(KINDS, weights=(4, 4, 2), k=max(0, n - 2))
    return [Plan(kind, rng.random(), rng.random()) for kind in kinds]


def checkpoint_steps(start: int, total: int, every: int) -> list[int]:
    return [s for s in range(start + 1, total + 1) if s % every == 0 or s == total]


def make_trigger(plan: Plan, run: Path, resume: int, total: int, every: int, kills_left: int, timing: dict):
    """(trigger, description) for one kill, from the plan's draws and where the run stands: the
    expected progress per kill is about the remaining steps over the remaining kills."""
    remaining = total - resume
    kind = plan.kind if not (plan.kind == "step" and remaining < 2) else KINDS[0]
    if kind == "checkpoint write":
        writes = len(checkpoint_steps(resume, total, every))
        k_max = max(1, min(writes, 1 + round(2 * remaining / (kills_left * every))))
        k = 1 + int(plan.u * k_max)
        delay = plan.v * 0.02
        return AtCheckpointWrite(run / "checkpoints", k, delay), f"checkpoint write #{k} + {1e3 * delay:.0f} ms"
    if kind == "step":
        span = max(1, min(remaining - 1, round(2 * remaining / kills_left)))
        step = resume + 1 + int(plan.u * span)
        jitter = plan.v * timing["step_s"]
        return AtStep(run / "metrics.jsonl", step, jitter), f"step {step} + {1e3 * jitter:.0f} ms"
    delay = plan.u * timing["startup_s"]
    return AtStartup(delay), f"start-up + {delay:.2f} s"


def kill_scenario(launcher: TrainLauncher, work: Path, reference, n: int, rng: random.Random,
                  timing: dict) -> tuple[dict, list]:
    run, total, every = work / "kill", launcher.steps, launcher.ckpt_every
    inspect = Inspector()
    plans = make_plan(n, rng)
    kills, problems, runs = [], [], 0
    completed = False
    while True:
        state = inspect(run)
        resume = state.newest
        trigger, aim = None, ""
        if len(kills) < n and resume < total:
            trigger, aim = make_trigger(plans[len(kills)], run, resume, total, every, n - len(kills), timing)
        before = read_bytes(run / "metrics.jsonl")
        attempt = launcher.run(run, trigger)
        runs += 1
        said = resumed_from_log(attempt.log)
        if said is not None and said != resume:
            problems.append(f"run {runs} resumed from step {said}, the newest readable checkpoint is step {resume}")
        if attempt.note:
            problems.append(f"run {runs} {attempt.note}")
            break
        if attempt.killed:
            after = inspect(run)
            reached = steps_reached(run, before, resume)
            fresh_tmp = set(tmp_files(run / "checkpoints").items()) - set(trigger.baseline.items()) \
                if isinstance(trigger, AtCheckpointWrite) else set()
            kill = {"kill": len(kills) + 1, "aim": aim, "resumed_from": resume, "reached": reached,
                    "newest_readable": after.newest, "steps_lost": max(0, reached - after.newest),
                    "mid_write": bool(fresh_tmp), "tmp_left": after.tmp, "unreadable": after.unreadable,
                    "listed_tmp": after.listed_tmp, "wall_s": round(attempt.wall_s, 2)}
            kills.append(kill)
            print(f"  kill {kill['kill']:>2} at {aim:<32} reached step {reached:>3}, newest readable checkpoint "
                  f"{after.newest:>3}{'  (mid-write)' if kill['mid_write'] else ''}"
                  f"{'  UNREADABLE ' + ', '.join(after.unreadable) if after.unreadable else ''}", flush=True)
            continue
        if attempt.rc == 0:
            completed = True
            if trigger is not None:
                problems.append(f"run {runs} finished before its kill ({aim}): {len(kills)} of {n} faults injected")
        else:
            problems.append(f"run {runs} failed to resume (exit {attempt.rc}): {last_lines(attempt.log, 2)}")
        break

    recovered = len(kills) if completed else max(0, len(kills) - 1)  # the last kill's resume failed
    differ, why = mismatches(run, reference, total) if completed else (None, "the run did not complete")
    unreadable = sum(len(k["unreadable"]) for k in kills) + len(inspect(run).unreadable)
    listed_tmp = sum(len(k["listed_tmp"]) for k in kills)
    mid_write = sum(k["mid_write"] for k in kills)
    by_kind = {kind: sum(k["aim"].startswith(kind) for k in kills) for kind in KINDS}
    passed = (completed and differ == 0 and unreadable == 0 and listed_tmp == 0 and len(kills) == n
              and not problems)
    observed = (f"{runs} runs; kills: {by_kind['checkpoint write']} at a checkpoint write ({mid_write} left a .tmp), "
                f"{by_kind['step']} at a step, {by_kind['start-up']} at start-up")
    observed += "".join(f"; {p}" for p in problems) + (f"; {why}" if why else "")
    if listed_tmp:
        observed += f"; {listed_tmp} .tmp files listed as checkpoints"
    row = {"scenario": "kill", "faults": len(kills), "recovered": recovered,
           "steps_lost": sum(k["steps_lost"] for k in kills), "mismatches": "n/a" if differ is None else differ,
           "unreadable": unreadable, "verdict": "PASS" if passed else "FAIL", "observed": observed}
    return row, kills


def mount_tmpfs(folder: Path, size: int) -> str | None:
    """Mount a tmpfs of ``size`` bytes on ``folder``; None, or why it cannot be done."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not root: cannot mount a small tmpfs to fill"
    if shutil.which("mount") is None:
        return "no mount command"
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return f"mount -t tmpfs failed: {(done.stderr or done.stdout).strip()[:200]}"
    return None


def unmount(folder: Path) -> None:
    if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def disk_full_scenario(launcher: TrainLauncher, work: Path, reference, ckpt_size: int, resume: bool) -> dict:
    every, total = launcher.ckpt_every, launcher.steps
    row = {"scenario": "disk full", "faults": 0, "recovered": "n/a", "steps_lost": "n/a", "mismatches": "n/a",
           "unreadable": "n/a"}
    if total < 2 * every:
        return {**row, "verdict": "NOT RUN", "observed": "the run has fewer than two checkpoints"}
    mnt = work / "tmpfs"
    size = ckpt_size + ckpt_size // 2 + (1 << 20)  # one checkpoint and a half, and the small files
    why = mount_tmpfs(mnt, size)
    if why:
        return {**row, "verdict": "NOT RUN", "observed": why}
    try:
        run = mnt / "run"
        attempt = launcher.run(run)
        text = log_text(attempt.log)
        state = Inspector()(run)
        reached = last_step(read_bytes(run / "metrics.jsonl")) or 0
        clear = attempt.rc == 2 and "no space left on device" in text.lower()
        kept = every in state.checkpoints and not state.unreadable
        observed = f"exit {attempt.rc}: {last_lines(attempt.log)}; checkpoints {sorted(state.checkpoints)}"
        observed += f", .tmp left: {state.tmp}" if state.tmp else ", no .tmp left"
        if state.unreadable:
            observed += f", unreadable: {state.unreadable}"
        row.update(faults=1, steps_lost=max(0, reached - state.newest), unreadable=len(state.unreadable))
        passed = clear and kept and not state.listed_tmp
        if resume and attempt.rc != 0:  # free space, resume: the run must end with the reference's weights
            subprocess.run(["mount", "-o", f"remount,size={(total // every + 3) * ckpt_size + (8 << 20)}",
                            str(mnt)], capture_output=True)
            again = launcher.run(run)
            differ, why = mismatches(run, reference, total) if again.rc == 0 else (None, "")
            row.update(recovered=int(again.rc == 0 and differ is not None),
                       mismatches="n/a" if differ is None else differ)
            observed += (f"; after freeing space the resume exited {again.rc}"
                         + (f" ({last_lines(again.log)})" if again.rc else "") + (f", {why}" if why else ""))
            passed = passed and again.rc == 0 and differ == 0
        return {**row, "verdict": "PASS" if passed else "FAIL", "observed": observed}
    finally:
        unmount(mnt)


def corrupt_scenario(launcher: TrainLauncher, work: Path, reference_run: Path, reference, how: str, seed: int) -> dict:
    every, total = launcher.ckpt_every, launcher.steps
    steps = checkpoint_steps(0, total, every)
    row = {"scenario": f"corrupt ({how})", "faults": 0, "recovered": 0, "steps_lost": 0, "mismatches": "n/a",
           "unreadable": "n/a"}
    if len(steps) < 3:
        return {**row, "verdict": "NOT RUN", "observed": "the run has fewer than three checkpoints"}
    bad, good = steps[-2], steps[-3]  # the latest checkpoint of a run cut back before its end
    run = work / f"corrupt-{how.replace(' ', '-')}"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy2(reference_run / name, run / name)
    for step in steps[:-1]:
        shutil.copy2(reference_run / "checkpoints" / f"step_{step:07d}.pt", run / "checkpoints")
    bad_name = f"step_{bad:07d}.pt"
    path = run / "checkpoints" / bad_name
    size = path.stat().st_size
    if how == "truncated":
        os.truncate(path, size // 2)
    else:
        path.write_bytes(random.Random(seed).randbytes(size))
    attempt = launcher.run(run)
    text = log_text(attempt.log)
    said = resumed_from_log(attempt.log)
    state = Inspector()(run)
    aside = [n for n in os.listdir(run / "checkpoints") if n.startswith(bad_name + ".") and not n.endswith(".tmp")]
    warned = bad_name in text
    differ, why = mismatches(run, reference, total) if attempt.rc == 0 else (None, "")
    if attempt.rc == 0:
        observed = (f"exit 0; {'a warning names ' + bad_name if warned else 'no message names ' + bad_name}; "
                    f"resumed from step {said if said is not None else '?'}; "
                    + (f"moved aside as {', '.join(aside)}" if aside else "not moved aside"))
    else:
        observed = f"exit {attempt.rc}: {last_lines(attempt.log)}"
    observed += f"; {why}" if why else ""
    passed = attempt.rc == 0 and warned and said == good and bool(aside) and differ == 0 and not state.unreadable
    return {**row, "faults": 1, "recovered": int(attempt.rc == 0 and differ is not None),
            "steps_lost": bad - good if said == good else "n/a", "mismatches": "n/a" if differ is None else differ,
            "unreadable": len(state.unreadable), "verdict": "PASS" if passed else "FAIL", "observed": observed}


@dataclass
class TwoWriters:
    run: Path
    first_rc: int
    first_pid: int
    second: Attempt


def holder(lock: Path) -> int | None:
    """The pid a run folder's lock file names, if any."""
    try:
        return json.loads(read_bytes(lock))["pid"]
    except (ValueError, KeyError, TypeError):
        return None


def two_writers(launcher: TrainLauncher, run: Path) -> TwoWriters:
    """The run in ``run``, paused (SIGSTOP) as soon as it holds the folder (its lock file names it) while a
    second run with another seed starts there, then resumed (SIGCONT) to its end."""
    first, _ = launcher.launch(run)
    deadline = time.monotonic() + launcher.timeout_s
    try:
        while first.poll() is None and holder(run / ".layersync.lock") != first.pid and time.monotonic() < deadline:
            time.sleep(0.005)
        first.send_signal(signal.SIGSTOP)  # busy writing for as long as the second takes
        try:
            second = launcher.run(run, seed=launcher.seed + 1)
        finally:
            first.send_signal(signal.SIGCONT)
        return TwoWriters(run, first.wait(timeout=launcher.timeout_s), first.pid, second)
    finally:
        launcher.end(first)


def two_writers_scenario(found: TwoWriters, reference_run: Path, reference, total: int) -> dict:
    """The second run must have exited 2 naming the folder and the first's pid; the first must have ended
    with the reference's metrics, checkpoints and weights."""
    run, rc, said = found.run, found.first_rc, last_lines(found.second.log)
    refused = found.second.rc == 2 and f"run folder {run} is in use: pid {found.first_pid} on " in said
    records = [json.loads(line) for line in read_bytes(run / "metrics.jsonl").decode().splitlines()]
    expected = [json.loads(line) for line in (reference_run / "metrics.jsonl").read_text().splitlines()]
    metrics_kept = [(r["step"], r["loss"]) for r in records] == [(r["step"], r["loss"]) for r in expected]
    state = Inspector()(run)
    kept = metrics_kept and state.checkpoints == Inspector()(reference_run).checkpoints and not state.unreadable
    differ, why = mismatches(run, reference, total) if rc == 0 else (None, f"the first run exited {rc}")
    observed = (f"second run exit {found.second.rc}: {said}; first run exit {rc}, "
                f"metrics {'as' if metrics_kept else 'unlike'} the reference's ({len(records)} lines), "
                f"checkpoints {sorted(state.checkpoints)}" + (f"; {why}" if why else ""))
    return {"scenario": "two writers", "faults": 1, "recovered": int(rc == 0), "steps_lost": 0,
            "mismatches": "n/a" if differ is None else differ, "unreadable": len(state.unreadable),
            "verdict": "PASS" if refused and kept and differ == 0 else "FAIL", "observed": observed}


# ---- main ----------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks faults", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=None, help="SIGKILLs of the kill scenario (default 20; 3 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 60; 6 with --quick)")
    p.add_argument("--ckpt-every", type=int, default=None, help="checkpoint interval (default 5; 2 with --quick)")
    p.add_argument("--seed", type=int, default=0, help="the training seed and the seed of the kill points")
    p.add_argument("--quick", action="store_true", help="the CI check: 3 kills of a 6-step run, one corrupt "
                   "variant, no resume after the full disk")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the runs go (default: a temporary folder, removed)")
    p.add_argument("--keep", action="store_true", help="keep the run folders and logs")
    args = p.parse_args(argv)
    n = args.n if args.n is not None else 3 if args.quick else 20
    steps = args.steps or (6 if args.quick else 60)
    every = args.ckpt_every or (2 if args.quick else 5)

    own = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="layersync-faults-")) if own else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    launcher = TrainLauncher(work, steps, every, args.seed, timeout_s=600)
    started = time.monotonic()
    rows, kills = [], []
    try:
        print(f"reference: {steps} steps, a checkpoint every {every}, seed {args.seed}; beside it, the two-writers "
              "scenario", flush=True)
        ref_run = work / "reference"
        with ThreadPoolExecutor(max_workers=1) as pool:  # on the core the reference run leaves free
            writers = pool.submit(two_writers, launcher, work / "two-writers")
            try:
                ref = launcher.run(ref_run)
            except BaseException:  # Ctrl-C: end the other thread's processes too
                launcher.stop()
                raise
            found_writers = writers.result()
        if ref.rc != 0:
            raise SystemExit(f"faults: the reference run failed (exit {ref.rc}): {last_lines(ref.log, 3)}")
        elapsed = [json.loads(line)["elapsed_s"] for line in (ref_run / "metrics.jsonl").read_text().splitlines()]
        timing = {"startup_s": ref.first_step_s or 5.0,
                  "step_s": (elapsed[-1] - elapsed[0]) / max(1, len(elapsed) - 1), "reference_s": ref.wall_s}
        reference = weights(ref_run)
        ckpt_size = max(p.stat().st_size for p in (ref_run / "checkpoints").glob("step_*.pt"))
        print(f"  {ref.wall_s:.1f} s (start-up {timing['startup_s']:.1f} s, {timing['step_s'] * 1e3:.0f} ms a step), "
              f"checkpoints of {ckpt_size / 2**20:.1f} MiB", flush=True)

        def others() -> list[dict]:  # in a second thread, beside the kill scenario: 2 cores run 2 processes
            found = [disk_full_scenario(launcher, work, reference, ckpt_size, resume=not args.quick)]
            for how in ("truncated",) if args.quick else ("truncated", "random bytes"):
                found.append(corrupt_scenario(launcher, work, ref_run, reference, how, args.seed))
            return found

        print(f"kill: {n} SIGKILLs, resuming after each; beside it, the disk-full and corrupt scenarios", flush=True)
        with ThreadPoolExecutor(max_workers=1) as pool:
            side = pool.submit(others)
            try:
                row, kills = kill_scenario(launcher, work, reference, n, rng, timing)
            except BaseException:  # Ctrl-C or a bug: end the other thread's process too
                launcher.stop()
                raise
            rows = [row, *side.result(), two_writers_scenario(found_writers, ref_run, reference, steps)]
    finally:
        launcher.stop()
        if own and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.monotonic() - started

    markdown = table(rows, COLUMNS) + (
        f"\n\n{steps} steps, a checkpoint every {every}, seed {args.seed}; {launcher.count} training processes, "
        f"{wall:.0f} s ({launcher.process_s:.0f} s of processes). steps_lost: steps trained since the newest "
        "readable checkpoint at each fault (work redone); "
        "mismatches: tensors of the final model and EMA state dicts that differ from the uninterrupted run's; "
        "unreadable: step_*.pt files that torch.load(weights_only=True) cannot read, after each fault.")
    verdicts = [target(f"faults_{r['scenario'].split(' (')[0].replace(' ', '_')}"
                       + (f"_{r['scenario'].split('(')[1][:-1].replace(' ', '_')}" if "(" in r["scenario"] else ""),
                       f"fault injection, {r['scenario']}: {r['observed']}"[:300], r["mismatches"],
                       None if r["verdict"] == "NOT RUN" else r["verdict"] == "PASS") for r in rows]
    print(markdown)
    config = {**vars(args), "n": n, "steps": steps, "ckpt_every": every, "workdir": None}
    report, path = publish("faults", "cpu", rows, markdown, config=config, targets=verdicts, kills=kills,
                           processes=launcher.count, wall_s=wall)
    print(f"report: {path}")
    return report


if __name__ == "__main__":
    main()
