"""Sampling speed: images/s of the paper's FID sampler with the model eager vs compiled.

The sampler is 250-step SDE Euler with CFG (scale 4.0; the conditional and null-condition
halves as one doubled batch) and per-sample noise from CPU generators: ``seeded_samples``,
as layersync-sample runs it (fp32, TF32 matmuls on CUDA). Compiled is ``CompiledModel``:
torch.compile with static shapes, recorded as CUDA graphs on a GPU. Every step costs one
model evaluation of the same shape, so a repetition runs ``--timed-steps`` steps and its
time per evaluation is scaled to the evaluations of ``--steps``; compiling and recording
happen in an untimed first run (``compile_s``). Eager and compiled repetitions alternate on
one model. Target (GPU): compiled vs eager >= 1.5x at SiT-XL/2.

    python -m benchmarks sample_speed                             # CPU smoke: SiT-T/4 on 1x8x8
    python -m benchmarks sample_speed --device cuda --configs B/2:64 XL/2:64
"""

from __future__ import annotations

import argparse
import gc

import torch

from benchmarks.common import median, publish, resolve_device, table, target, timed
from benchmarks.overhead import parse_shape
from layersync import FlowObjective, Sampler, SamplerConfig
from layersync.sampling import CompiledModel, seeded_samples
from layersync.distributed import fast_defaults
from layersync_image.sit import build_sit

TARGET = 1.5  # compiled vs eager images/s
TARGET_MODEL = "SiT-XL/2"
CLASSES = 1000


def parse_config(spec: str) -> tuple[str, int, tuple[int, ...]]:
    """'SIZE:BATCH[:CxHxW]' -> (size, batch, input shape; default 4x32x32, ImageNet 256's latents)."""
    size, batch, *rest = spec.split(":")
    return size, int(batch), parse_shape(rest[0]) if rest else (4, 32, 32)


def sde_euler(steps: int, cfg_scale: float) -> Sampler:
    return Sampler(FlowObjective(), SamplerConfig(method="sde", solver="euler", steps=steps, cfg_scale=cfg_scale))


def measure(size: str, batch: int, shape: tuple[int, ...], args, device: str) -> dict:
    torch.manual_seed(0)
    model = build_sit(shape, CLASSES, size).to(device).eval()
    nets = {"eager": model, "compiled": CompiledModel(model)}
    cond = torch.arange(batch, device=device) % CLASSES
    sampler = sde_euler(args.timed_steps, args.cfg_scale)

    def run(name):
        return lambda: seeded_samples(sampler, nets[name], shape, cond, seed=0)

    timed(run("eager"), 1, device)  # warm-up
    compile_s = timed(run("compiled"), 1, device)[0]  # compiles and records the graphs
    times = {name: [] for name in nets}
    for repeat in range(args.repeats):
        for name in list(nets) if repeat % 2 == 0 else reversed(nets):  # alternated, against drift
            times[name] += timed(run(name), 1, device)
    scale = sde_euler(args.steps, args.cfg_scale).evaluations() / sampler.evaluations()
    seconds = {name: median(t) * scale for name, t in times.items()}
    return {"model": f"SiT-{size}", "input": "x".join(map(str, shape)), "batch": batch, "cfg_scale": args.cfg_scale,
            "steps": args.steps, "timed_steps": args.timed_steps,
            "compiled": "compile + CUDA graphs" if device == "cuda" else "compile",
            "compile_s": compile_s, "eager_s": seconds["eager"], "compiled_s": seconds["compiled"],
            "eager_images_per_s": batch / seconds["eager"], "compiled_images_per_s": batch / seconds["compiled"],
            "speedup": seconds["eager"] / seconds["compiled"]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks sample_speed", description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", help="SIZE:BATCH[:CxHxW]; default B/2:64 XL/2:64 on GPU, T/4:4:1x8x8 on CPU")
    p.add_argument("--steps", type=int, default=250, help="SDE steps the images/s are for")
    p.add_argument("--timed-steps", type=int, default=10, help="SDE steps run per repetition (at least 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions of each of eager and compiled")
    p.add_argument("--cfg-scale", type=float, default=4.0)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    fast_defaults(torch.device(device))
    configs = args.configs or (["B/2:64", "XL/2:64"] if device == "cuda" else ["T/4:4:1x8x8"])
    rows = []
    for spec in configs:
        torch._dynamo.reset()  # each model compiles afresh, and the last one's graphs are let go
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        rows.append(measure(*parse_config(spec), args, device))
        print(table(rows[-1:], list(rows[-1])).splitlines()[-1], flush=True)
    verdicts = [target("sample_speedup", f"{row['model']} batch {row['batch']}: compiled vs eager images/s, "
                       f"{row['steps']}-step SDE Euler, CFG {row['cfg_scale']} (>= {TARGET}x on a GPU)",
                       row["speedup"], row["speedup"] >= TARGET if device == "cuda" else None)
                for row in rows if row["model"] == TARGET_MODEL]
    notes = [f"times per batch of {args.steps} steps, scaled from runs of {args.timed_steps} steps "
             "(every step is one model evaluation of the same shape)"]
    notes += [f"{t['verdict']}: {t['what']}: {t['value']:.3g}" for t in verdicts]
    markdown = "\n".join([table(rows, list(rows[0])), "", *notes])
    print(markdown)
    report, path = publish("sample_speed", device, rows, markdown, config=vars(args), targets=verdicts)
    print(f"report: {path}")
    return report


if __name__ == "__main__":
    main()
