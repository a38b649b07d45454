"""layersync-sample: draw samples from a checkpoint into a picture and an .npz."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from layersync import build
from layersync import config as configuration
from layersync.cli.common import Parser, entry_point
from layersync.errors import ConfigError
from layersync.plugins import registry
from layersync.train import checkpoint

log = logging.getLogger("layersync")


def parser() -> Parser:
    p = Parser(prog="layersync-sample", description=__doc__)
    p.add_argument("--ckpt", required=True, help="a checkpoint file, or a run folder (its latest checkpoint)")
    p.add_argument("--out", required=True, help="output stem: writes OUT.png (or the modality's format) and OUT.npz")
    p.add_argument("--num", type=int, help="number of samples (sets sample.num)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cond", type=int, nargs="*", help="class labels to cycle through (default: all classes)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="assignments",
                   help="override a sample.* key, e.g. --set sample.cfg_scale=4")
    return p


def find_checkpoint(path: Path) -> Path:
    if path.is_dir():
        found = checkpoint.latest(path / "checkpoints") or checkpoint.latest(path)
        if found is None:
            raise ConfigError(f"no checkpoint (step_*.pt) in {path} or {path / 'checkpoints'}")
        return found
    if not path.exists():
        raise ConfigError(f"checkpoint {path} does not exist")
    return path


@entry_point("layersync-sample")
def main(argv=None):
    args = parser().parse_args(argv)
    path = find_checkpoint(Path(args.ckpt))
    try:
        state = checkpoint.load(path)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    config = state["config"]
    for assignment in args.assignments:
        if not assignment.startswith("sample."):
            raise ConfigError(f"--set may only change sample.* keys here, got '{assignment}'")
        config = configuration.set_key(config, assignment)
    if args.num is not None:
        config["sample"]["num"] = args.num
    reg = registry()
    modality = build.modality(reg, config)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    model = build.backbone(reg, config, state["input_shape"], state["num_classes"])
    model.load_state_dict(state["model" if args.raw else "ema"])
    model.to(device).eval()
    tokenizer = build.tokenizer(reg, config)
    sampler = build.sampler(config, build.objective(config))

    n = config["sample"]["num"]
    g = torch.Generator().manual_seed(args.seed)
    noise = torch.randn((n, *state["input_shape"]), generator=g).to(device)
    classes = torch.tensor(args.cond) if args.cond else torch.arange(max(state["num_classes"], 1))
    cond = classes.repeat((n + len(classes) - 1) // len(classes))[:n].to(device)
    x = tokenizer.decode(sampler(model, noise, cond, generator=g)).float().cpu()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture = modality.save_samples(x, out)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, samples=x.numpy(), cond=cond.cpu().numpy())
    os.replace(tmp, out.with_suffix(".npz"))
    log.info("%d samples from %s (step %d): %s, %s", n, path, state["step"], picture, out.with_suffix(".npz"))
    return 0


if __name__ == "__main__":
    main()
