"""GPU quality runs: SiT-S/2 on the bundled digits (16x16), LayerSync 4:8 against vanilla, same seeds.

    python -m benchmarks.gpu_quality WORK OUT [--steps N] [--seeds 0 1] [--num 2000] [--runs NAME...]

For each seed, LayerSync then vanilla (or only the runs named, e.g. vanilla_s0): `layersync-train` for N steps (batch 256), then
`layersync-sample` draws a sample set from the EMA weights. After every run OUT/quality_samples.npz
(keys RUN/samples: uint8 NHWC images, RUN/cond: labels) and OUT/quality.json (config, final losses, wall times) are rewritten,
so a run cut short keeps the finished ones. The samples are scored later, on a CPU, by the quality
benchmark's evaluator; a GPU machine here cannot keep files between sessions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SETTINGS = ["model.size=S/2", "train.batch_size=256", "optim.lr=5e-4", "train.ema_decay=0.999",
            "train.log_every=100", "train.ckpt_every=100000", "train.sample_every=100000"]
VARIANTS = {"layersync": "4:8", "vanilla": "off"}


def last_metrics(run: Path) -> dict:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1]) if lines else {}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--num", type=int, default=2000)
    p.add_argument("--runs", nargs="+", help="only these runs (VARIANT_sSEED)")
    args = p.parse_args(argv)
    report = {"settings": SETTINGS, "steps": args.steps, "pairs": VARIANTS, "runs": {}}
    arrays = {}
    for seed in args.seeds:
        for variant, pairs in VARIANTS.items():
            name = f"{variant}_s{seed}"
            if args.runs and name not in args.runs:
                continue
            run = args.work / name
            began = time.perf_counter()
            train = [sys.executable, "-m", "layersync.cli.train", "--plugin", "image", "--out", str(run),
                     "--steps", str(args.steps), "--seed", str(seed), "--layersync", pairs]
            for setting in SETTINGS:
                train += ["--set", setting]
            subprocess.run(train, check=True)
            trained = time.perf_counter()
            subprocess.run([sys.executable, "-m", "layersync.cli.sample", "--ckpt", str(run), "--out",
                            f"{run / 'set'}/", "-n", str(args.num), "--batch", "500", "--seed", "0"], check=True)
            with np.load(run / "set" / "samples.npz") as f:
                arrays[f"{name}/samples"], arrays[f"{name}/cond"] = f["arr_0"], f["arr_1"]
            report["runs"][name] = {"final": last_metrics(run), "train_s": trained - began,
                                    "sample_s": time.perf_counter() - trained}
            np.savez_compressed(args.out / "quality_samples.npz", **arrays)
            (args.out / "quality.json").write_text(json.dumps(report, indent=1))
            print(f"{name}: {report['runs'][name]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
