"""layersync probe --ckpt C: per-block linear-probe accuracy and block-by-block CKA of a checkpoint's EMA model.
layersync suggest-pairs --ckpt C: the LayerSync pair that profile recommends, and why.

Encodes --n items of the checkpoint's data set (``--data`` replaces data.path), noises them at time
--t with a seeded generator and runs the model with the null condition (``layersync.probe.profile``).
Writes OUT/probe.json and OUT/probe.png: accuracy per block (left; ``--compare C2`` adds a second
checkpoint's line, e.g. LayerSync against vanilla) and the CKA heat-map of each checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from layersync import build
from layersync.cli.common import add_device, positive_int, seed
from layersync.errors import ConfigError
from layersync.files import atomic, write_json
from layersync.pipeline import Pipeline
from layersync.plugins import registry
from layersync.probe import paper_pair, profile, suggest_pair
from layersync.distributed import pick_device

HELP = "linear-probe accuracy and CKA of every block of a checkpoint's EMA model"
SUGGEST_HELP = "recommend a LayerSync pair (--layersync K:K2) from a checkpoint's probe profile"


def configure(parser, suggest: bool = False) -> None:
    parser.add_argument("--ckpt", required=True, help="a checkpoint, or a run folder (its latest checkpoint)")
    if not suggest:
        parser.add_argument("--compare", help="a second checkpoint whose accuracy line joins the plot")
    parser.add_argument("--data", help="the data set's path (data.path); default: the checkpoint's")
    parser.add_argument("--n", type=int, default=512, help="items to probe (default 512), half fit, half scored")
    parser.add_argument("--t", type=float, default=0.5, help="the noise level (default 0.5; 1 is clean data)")
    parser.add_argument("--batch", type=positive_int, default=64)
    parser.add_argument("--seed", type=seed, default=0)
    add_device(parser)
    if not suggest:
        parser.add_argument("--out", default="probe", help="the folder for probe.json and probe.png (default ./probe)")


def run_profile(ckpt: str, args, device: torch.device) -> dict:
    pipe = Pipeline.from_checkpoint(ckpt, device=device, compile=False)
    config, num_classes = pipe.config, pipe.num_classes
    if num_classes < 2:
        raise ConfigError(f"{ckpt}: probing needs a data set of class labels; this model has {num_classes} classes")
    if args.data is not None:
        config["data"]["path"] = args.data
    dataset = build.dataset(registry(), config)
    if len(dataset) < args.n:
        raise ConfigError(f"--n {args.n}: the data set has only {len(dataset)} items")
    encoded = bool(getattr(dataset, "encoded", False))
    torch.manual_seed(args.seed)  # a tokenizer may sample its latents

    def batches():
        for start in range(0, args.n, args.batch):
            items = [dataset[i] for i in range(start, min(start + args.batch, args.n))]
            x = torch.stack([torch.as_tensor(item[0]) for item in items])
            y = torch.as_tensor([int(item[1]) for item in items])
            with torch.no_grad():
                yield (x if encoded else pipe.tokenizer.encode(x.to(device)).cpu()), y

    result = profile(pipe.backbone, batches(), args.t, pipe.sampler.objective.path, args.seed)
    return {"checkpoint": ckpt, "step": pipe.step, **result}


def label(result: dict) -> str:
    """A short name for a checkpoint: its run folder's name and the step."""
    path = Path(result["checkpoint"])
    run = path.parent.parent if path.parent.name == "checkpoints" else path
    return f"{run.name or path.name} (step {result['step']})"


def plot(results: list[dict], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * (1 + len(results)), 4.5))
    left, *maps = fig.subplots(1, 1 + len(results))
    for result in results:
        blocks = range(1, result["depth"] + 1)
        left.plot(blocks, result["accuracy"], marker="o", label=label(result))
    left.set(xlabel="block", ylabel="linear-probe accuracy", ylim=(0, 1), title="probe accuracy per block")
    left.legend(fontsize="small")
    for ax, result in zip(maps, results):
        depth = result["depth"]
        image = ax.imshow(result["cka"], vmin=0, vmax=1, cmap="viridis", origin="lower",
                          extent=(0.5, depth + 0.5, 0.5, depth + 0.5))
        ax.set(xlabel="block", ylabel="block", title=f"linear CKA: {label(result)}")
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    with atomic(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def check(args) -> None:
    if args.n < 4:
        raise ConfigError(f"--n {args.n}: expected at least 4 items")


def suggest(args) -> int:
    check(args)
    result = run_profile(args.ckpt, args, pick_device(args.device))
    student, teacher, reasons = suggest_pair(result["accuracy"], result["cka"])
    paper = paper_pair(result["depth"])
    print(f"--layersync {student}:{teacher}")
    for reason in reasons:
        print(f"  {reason}")
    print(f"  for comparison, the paper's SiT-XL/2 pair 8:16 of 28 blocks scaled to {result['depth']} blocks is "
          f"{paper[0]}:{paper[1]}")
    return 0


def run(args) -> int:
    check(args)
    device = pick_device(args.device)
    results = [run_profile(ckpt, args, device) for ckpt in [args.ckpt, args.compare] if ckpt is not None]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"t": args.t, "n": args.n, "seed": args.seed, **results[0]}
    if len(results) > 1:
        report["compare"] = results[1]
    write_json(out / "probe.json", report)
    plot(results, out / "probe.png")
    for result in results:
        best = max(range(result["depth"]), key=result["accuracy"].__getitem__)
        print(f"{result['checkpoint']}: best probe accuracy {result['accuracy'][best]:.3f} at block {best + 1} "
              f"of {result['depth']}")
    print(f"wrote {out / 'probe.json'} and {out / 'probe.png'}")
    return 0
