"""Does LayerSync help? The same small backbone trained with and without it, several budgets and seeds.

    python -m benchmarks quality [--modality image|audio|video|motion|all] [--quick] [--config RECIPE]
                                 [--budgets 500 1000 2000] [--seeds 0 1 2] [--eval-every N]

For each modality's default recipe (its bundled data set; --config: another recipe, e.g. the image
plugin's mnist.yaml): per seed, `layersync-train` once with LayerSync off and once with the recipe's
pairs (the image default recipe also: the paper's rule scaled to the depth, the pair `layersync
suggest-pairs` recommends from the vanilla seed-0 run's first budget, and a random pair), up to the
largest budget, keeping a checkpoint every --eval-every steps. Each checkpoint's EMA model draws --num
samples (the recipe's sampler; the real items' labels and masks in turn) that are scored with
benchmarks/quality_metric.py: a Frechet distance on the features of a classifier trained here on the
same data set, not the field's published metric.

Writes OUT/quality-MODALITY.{md,json,png} and OUT/runs-MODALITY/ (`layersync report` of seed 0's
runs): FID and class accuracy, mean +- std over seeds per budget, the relative improvement over
vanilla (and the paired difference, seed by seed), and the speed-up: the budget over the steps each
arm needs to reach (and stay at) vanilla's final FID. Runs resume: finished training runs and scored
checkpoints (WORK/MODALITY/scores.json) are kept; a larger budget trains on from the last checkpoint.
The defaults (FULL, FULL_BY_MODALITY) take one to two hours per modality on 2 CPU cores; --quick (2 + 4
steps, 2 seeds, 32 samples) only checks the pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import torch
from tqdm import tqdm

from benchmarks.common import RESULTS, publish
from benchmarks.quality_metric import Metric
from layersync import build
from layersync import config as configuration
from layersync.cli import report
from layersync.plugins import registry
from layersync.probe import paper_pair, suggest_pair
from layersync.sampling import seeded_samples
from layersync import checkpoint

MODALITIES = ("image", "audio", "video", "motion")
# real_rows: rows of real data for the metric (None: every item); sample_steps: the sampler's steps
# in training previews and scoring (None: the recipe's).
QUICK = {"budgets": [2, 4], "seeds": [0, 1], "eval_every": 2, "num": 32, "classifier_steps": 30, "probe_n": 64,
         "real_rows": 64, "sample_steps": 2}
FULL = {"budgets": None, "seeds": [0, 1, 2], "eval_every": 500, "num": 1000,
        "classifier_steps": 3000, "probe_n": 512, "real_rows": None, "sample_steps": None}
# Per modality, what the committed reports ran (benchmarks/results/quality-cpu-2026-11-28/): within one
# to two hours on 2 CPU cores each. Motion trains slowest and samples 160 frames: fewer samples, fewer steps.
FULL_BY_MODALITY = {"image": {"budgets": [500, 1000, 2000]},
                    "audio": {"budgets": [500, 1000, 1500], "num": 500},
                    "video": {"budgets": [500, 1000, 1500], "num": 500},
                    "motion": {"budgets": [200, 400, 600], "eval_every": 200, "num": 250, "sample_steps": 10}}


def recipe(modality: str, config_file: Path | None = None) -> dict:
    return configuration.load(registry().get("modalities", modality).recipe, config_file)


def pairs_text(pairs) -> str:
    return ",".join(f"{a}:{b}" for a, b in pairs) if pairs else "off"


def train(modality: str, run: Path, arm_pairs: str, seed: int, args, log: Path) -> float:
    """Train (or resume) one run up to the largest budget; its wall-clock seconds (0 if already done)."""
    last = max(args.budgets)
    if (run / "checkpoints" / f"step_{last:07d}.pt").exists():
        return 0.0
    command = [sys.executable, "-m", "layersync.cli.train", "--plugin", modality, "--out", str(run),
               "--steps", str(last), "--seed", str(seed), "--layersync", arm_pairs, "--set", "train.device=cpu",
               *(["--config", str(args.config)] if args.config else []),
               "--set", f"train.ckpt_every={args.eval_every}", "--set", "train.keep=0",
               "--set", f"train.sample_every={last}", "--set", f"train.log_every={min(25, args.eval_every)}"]
    if args.sample_steps:
        command += ["--set", f"sample.steps={args.sample_steps}", "--set", "sample.num=1"]
    began = time.perf_counter()
    threads = str(max(1, (os.cpu_count() or 1) // args.jobs))  # --jobs runs share the cores
    with open(log, "a") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": threads})
    if done.returncode != 0:
        raise SystemExit(f"quality: training {run} failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - began


@torch.no_grad()
def score_checkpoint(path: Path, metric: Metric, num: int) -> dict:
    state = checkpoint.load(path, keys=("step", "config", "input_shape", "num_classes", "ema"))
    config, reg = state["config"], registry()
    model = build.backbone(reg, config, state["input_shape"], int(state["num_classes"]))
    model.load_state_dict(state["ema"])
    model.eval()
    sampler = build.sampler(config, build.objective(config))
    labels, masks = metric.conditions(num)
    parts = []
    for start in range(0, num, 250):
        part = slice(start, start + 250)
        cond, mask = labels[part], None if masks is None else masks[part]
        parts.append(seeded_samples(sampler, model, tuple(state["input_shape"]), cond, 0, start, mask=mask))
    return metric.score(torch.cat(parts), labels, masks)


def probe_pair(run: Path, step: int, args) -> tuple[list[int], list[str]]:
    """The pair suggest-pairs gives for this run's checkpoint at ``step``."""
    from layersync.cli.probe import run_profile

    options = SimpleNamespace(data=None, n=args.probe_n, batch=64, seed=0, t=0.5)
    result = run_profile(str(run / "checkpoints" / f"step_{step:07d}.pt"), options, torch.device("cpu"))
    student, teacher, reasons = suggest_pair(result["accuracy"], result["cka"])
    return [student, teacher], reasons


def depth_of(run: Path, step: int) -> int:
    state = checkpoint.load(run / "checkpoints" / f"step_{step:07d}.pt", keys=("config", "input_shape", "num_classes"))
    return build.backbone(registry(), state["config"], state["input_shape"], int(state["num_classes"])).depth


def choose_arms(modality: str, base: dict, work: Path, args, scores: dict) -> dict:
    """arm name -> pairs text. The image default recipe: the pair-choice arms too, each distinct pair once."""
    arms = {"vanilla": "off", "layersync": pairs_text(base["layersync"]["pairs"])}
    if modality != "image" or args.config:
        return arms
    if "pair_choice" not in scores:
        first = min(args.budgets)
        run = work / f"vanilla_s{args.seeds[0]}"
        train(modality, run, "off", args.seeds[0], args, work / "logs" / f"{run.name}.log")
        depth = depth_of(run, first)
        suggested, reasons = probe_pair(run, first, args)
        taken = {arms["layersync"], pairs_text([paper_pair(depth)]), pairs_text([suggested])}
        candidates = [[a, b] for b in range(2, depth + 1) for a in range(1, b) if pairs_text([[a, b]]) not in taken]
        scores["pair_choice"] = {"depth": depth, "paper": list(paper_pair(depth)), "suggested": suggested,
                                 "suggested_from": f"{run.name} step {first}", "reasons": reasons,
                                 "random": random.Random(0).choice(candidates)}
    choice = scores["pair_choice"]
    for name in ("paper", "suggested", "random"):
        text = pairs_text([choice[name]])
        if text not in arms.values():
            arms[name] = text
    return arms


def eval_steps(args) -> list[int]:
    """The scored checkpoints: every --eval-every steps up to the largest budget (budgets are multiples of it)."""
    return list(range(args.eval_every, max(args.budgets) + 1, args.eval_every))


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """The step (linearly interpolated) from which a mean FID curve stays at or below ``target``.

    Early checkpoints can score below a later one (blurry samples near the data's mean features), so a
    first crossing followed by a rise does not count; None if the curve ends above ``target``."""
    above = [i for i, (_, value) in enumerate(curve) if value > target]
    if not curve or (above and above[-1] == len(curve) - 1):
        return None
    if not above:
        return float(curve[0][0])
    (s0, v0), (s1, v1) = curve[above[-1]], curve[above[-1] + 1]
    return s0 + (s1 - s0) * (v0 - target) / (v0 - v1)


def seed_values(scores: dict, arm: str, step: int, key: str, seeds: list[int]) -> list[float]:
    """An arm's ``key`` score at ``step``, one per seed that has it."""
    runs = scores["runs"]
    return [runs[f"{arm}_s{s}"]["scores"][str(step)][key] for s in seeds
            if str(step) in runs.get(f"{arm}_s{s}", {}).get("scores", {})]


def summarise(modality: str, arms: dict, scores: dict, args, metric: Metric) -> tuple:
    """The report's rows, its Markdown, the mean FID curves and the speed-ups."""
    steps = eval_steps(args)
    runs = scores["runs"]

    def values(arm, step, key):
        return seed_values(scores, arm, step, key, args.seeds)

    rows = []
    for budget in args.budgets:
        for arm, pairs in arms.items():
            fids, accs = values(arm, budget, "fid"), values(arm, budget, "class_accuracy")
            if not fids:
                continue
            row = {"budget": budget, "arm": arm, "pairs": pairs, "seeds": len(fids),
                   "fid": mean_std(fids), "class_accuracy": mean_std(accs)}
            base = values("vanilla", budget, "fid")
            if arm != "vanilla" and base and len(base) == len(fids):
                row["relative_improvement"] = 1 - row["fid"][0] / statistics.fmean(base)
                row["paired_difference"] = mean_std([b - f for b, f in zip(base, fids)])
            rows.append(row)
    curves = {arm: [(s, statistics.fmean(v)) for s in steps if len(v := values(arm, s, "fid")) == len(args.seeds)]
              for arm in arms}
    last = max(args.budgets)
    target = dict(curves["vanilla"]).get(last)
    speedups = {}
    for arm in arms:
        at = reach(curves[arm], target) if target is not None and arm != "vanilla" else None
        speedups[arm] = None if at is None else last / at

    def pm(pair, digits=3):
        return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"

    recipe_text = f"recipe {args.config.name}" if args.config else "default recipe, its bundled data set"
    lines = [f"Modality **{modality}** ({recipe_text}), seeds {args.seeds}, "
             f"{args.num} samples per checkpoint. Metric: Frechet distance on the features of a classifier trained "
             f"on this data set (held-out accuracy {metric.heldout_accuracy:.3f}; see benchmarks/quality_metric.py), "
             "lower is better; class accuracy: the classifier agrees with the sample's label, higher is better.", "",
             "| steps | arm | pairs | FID (mean ± std) | class accuracy | vs vanilla | paired Δ FID (vanilla − arm) |",
             "|---:|---|---|---:|---:|---:|---:|"]
    for row in rows:
        improvement = f"{row['relative_improvement']:+.1%}" if "relative_improvement" in row else ""
        paired = pm(row["paired_difference"]) if "paired_difference" in row else ""
        lines.append(f"| {row['budget']} | {row['arm']} | {row['pairs']} | {pm(row['fid'])} | "
                     f"{pm(row['class_accuracy'])} | {improvement} | {paired} |")
    lines += ["", f"Speed-up: {last} steps over the steps each arm needs to reach and stay at vanilla's mean FID "
              f"at {last} ({'n/a' if target is None else f'{target:.3f}'}), linearly interpolated between "
              f"checkpoints every {args.eval_every} steps:", ""]
    for arm, speedup in speedups.items():
        if arm != "vanilla":
            lines.append(f"- {arm} ({arms[arm]}): " + ("not reached" if speedup is None else f"{speedup:.2f}x"))
    if "pair_choice" in scores:
        choice = scores["pair_choice"]
        lines += ["", f"Pair choice (depth {choice['depth']}): paper's rule {pairs_text([choice['paper']])}, "
                  f"suggest-pairs on {choice['suggested_from']}: {pairs_text([choice['suggested']])}, random "
                  f"{pairs_text([choice['random']])}. Arms with the same pair are run once."]
        lines += [f"  - {reason}" for reason in choice["reasons"]]
    seconds = {arm: [runs[f"{arm}_s{s}"]["train_s"] for s in args.seeds if runs.get(f"{arm}_s{s}", {}).get("train_s")]
               for arm in arms}
    timed = {arm: statistics.fmean(v) * 1000 / last for arm, v in seconds.items() if v}
    if timed:
        lines += ["", f"Training wall time per 1000 steps (CPU, {args.jobs} run(s) at a time; other work on the machine "
                  "adds noise): "
                  + ", ".join(f"{arm} {value:.0f} s" for arm, value in timed.items())]
    return rows, "\n".join(lines) + "\n", curves, speedups


def plot(modality: str, arms: dict, scores: dict, args, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    steps = eval_steps(args)
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2)
    for arm, pairs in arms.items():
        for ax, key in zip(axes, ("fid", "class_accuracy")):
            points = [(step, *mean_std(v)) for step in steps
                      if len(v := seed_values(scores, arm, step, key, args.seeds)) == len(args.seeds)]
            if points:
                x, m, sd = zip(*points)
                ax.plot(x, m, marker="o", label=f"{arm} ({pairs})")
                ax.fill_between(x, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], alpha=0.2)
    axes[0].set(xlabel="training step", ylabel="FID on classifier features (lower is better)", yscale="log",
                title=f"{modality}: mean ± std over {len(args.seeds)} seeds")
    axes[1].set(xlabel="training step", ylabel="class accuracy (higher is better)", title="label agreement")
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(target, format="png", dpi=100)


def settings(modality: str, args) -> SimpleNamespace:
    """The options of one modality's run: the command line's, else --quick's, else the modality's defaults."""
    defaults = QUICK if args.quick else FULL | FULL_BY_MODALITY[modality]
    return SimpleNamespace(**{**vars(args), **{k: v for k, v in defaults.items() if getattr(args, k, None) is None}})


def run_modality(modality: str, args) -> None:
    args = settings(modality, args)
    label = f"{modality}-{args.config.stem}" if args.config else modality
    work = args.work / label
    (work / "logs").mkdir(parents=True, exist_ok=True)
    record = work / "scores.json"
    scores = json.loads(record.read_text()) if record.exists() else {"runs": {}}
    base = recipe(modality, args.config)
    metric = Metric(base, classifier_steps=args.classifier_steps, rows=args.real_rows)
    arms = choose_arms(modality, base, work, args, scores)
    steps = eval_steps(args)
    names = {f"{arm}_s{seed}": (arm, seed) for seed in args.seeds for arm in arms}

    def train_one(name: str) -> float:
        arm, seed = names[name]
        return train(modality, work / name, arms[arm], seed, args, work / "logs" / f"{name}.log")

    with ThreadPoolExecutor(args.jobs) as pool:  # training runs are subprocesses: --jobs of them at a time
        for name, seconds in tqdm(zip(names, pool.map(train_one, names)), total=len(names),
                                  desc=f"quality {modality}", unit="run"):
            entry = scores["runs"].setdefault(name, {"pairs": arms[names[name][0]], "scores": {}})
            entry["train_s"] = entry.get("train_s", 0.0) + seconds  # summed over resumes
            for step in steps:
                if str(step) not in entry["scores"]:
                    entry["scores"][str(step)] = score_checkpoint(work / name / "checkpoints" / f"step_{step:07d}.pt",
                                                                  metric, args.num)
            record.write_text(json.dumps(scores, indent=1))
    rows, markdown, curves, speedups = summarise(modality, arms, scores, args, metric)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(label, arms, scores, args, args.out / f"quality-{label}.png")
    report.write([work / f"{arm}_s{args.seeds[0]}" for arm in arms], args.out / f"runs-{label}")
    markdown += (f"\n![FID and class accuracy against steps](quality-{label}.png)\n\nTraining curves, "
                 f"config differences and previews of seed {args.seeds[0]}'s runs: [runs-{label}/report.md]"
                 f"(runs-{label}/report.md) (`layersync report`).\n")
    publish("quality", "cpu", rows, markdown, path=args.out / f"quality-{label}.md", modality=modality,
            arms=arms, curves=curves, speedups=speedups,
            settings={k: getattr(args, k) for k in FULL} | {"config": args.config and args.config.name},
            heldout_accuracy=metric.heldout_accuracy, pair_choice=scores.get("pair_choice"))
    print(markdown)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modality", default="image", choices=(*MODALITIES, "all"))
    p.add_argument("--config", type=Path, help="a recipe merged over the modality's, e.g. the image plugin's "
                   "mnist.yaml (one modality; reports are named quality-MODALITY-STEM)")
    p.add_argument("--quick", action="store_true", help="tiny budgets: checks the pipeline only (CI)")
    p.add_argument("--budgets", type=int, nargs="+", help="training steps to score (default per modality: "
                   + ", ".join(f"{m} {' '.join(map(str, d['budgets']))}" for m, d in FULL_BY_MODALITY.items()) + ")")
    p.add_argument("--seeds", type=int, nargs="+", help=f"default {FULL['seeds']}")
    p.add_argument("--eval-every", type=int, help=f"also score every N steps (default {FULL['eval_every']}, "
                   "motion 200)")
    p.add_argument("--num", type=int, help=f"samples per checkpoint (default {FULL['num']}; audio, video 500, "
                   "motion 250)")
    p.add_argument("--classifier-steps", type=int, help=f"metric classifier steps (default {FULL['classifier_steps']})")
    p.add_argument("--sample-steps", type=int, help="sampler steps for scoring (default: the recipe's; motion 10)")
    p.add_argument("--probe-n", type=int, help=f"items suggest-pairs probes (default {FULL['probe_n']})")
    p.add_argument("--jobs", type=int, default=1, help="training runs at a time (default 1; the training wall "
                   "times it reports count only with 1)")
    p.add_argument("--work", type=Path, default=Path("runs/quality"), help="training runs (default runs/quality)")
    p.add_argument("--out", type=Path, default=RESULTS / "quality", help="reports (default results/quality)")
    args = p.parse_args(argv)
    modalities = MODALITIES if args.modality == "all" else [args.modality]
    for modality in modalities:
        run = settings(modality, args)
        if min(run.budgets) < 1 or run.eval_every < 1 or any(b % run.eval_every for b in run.budgets):
            p.error(f"{modality}: budgets {run.budgets} must be positive multiples of the evaluation interval "
                    f"{run.eval_every} (--budgets, --eval-every)")
    if len(settings(modalities[0], args).seeds) < 2:
        p.error("--seeds: at least 2 seeds, for a spread")
    if args.config and args.modality == "all":
        p.error("--config applies to one --modality")
    for modality in modalities:
        run_modality(modality, args)
