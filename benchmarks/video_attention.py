"""Memory of full versus factorised attention in the spatio-temporal SiT as the clip grows.

Each case runs in a fresh process: build SiT-3D, one forward and backward pass at the given
batch, and report the peak memory the pass added (CUDA: max_memory_allocated; CPU: the rise
of the process's peak resident set size) and the pass's time.

    python -m benchmarks video_attention                          # T = 8, 16, 32 on CPU
    python -m benchmarks video_attention --device cuda --size B/2 --spatial 32 --batch 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from benchmarks.common import publish, resolve_device, table

CASE = """
import json, resource, sys, time, torch
from layersync.nn import build_sit3d
frames, spatial, size, attention, batch, device = sys.argv[1:]
frames, spatial, batch = int(frames), int(spatial), int(batch)
torch.manual_seed(0)
model = build_sit3d((4, frames, spatial, spatial), 0, size, attention=attention).to(device)
x, t = torch.randn(batch, 4, frames, spatial, spatial, device=device), torch.rand(batch, device=device)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if device == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
start = time.perf_counter()
out, _ = model(x, t)
out.square().mean().backward()
if device == "cuda":
    torch.cuda.synchronize(); peak = (torch.cuda.max_memory_allocated() - base) / 2**20
else:
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"peak_mib": peak, "seconds": time.perf_counter() - start}))
"""


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks video_attention", description=__doc__.splitlines()[0])
    p.add_argument("--frames", default="8,16,32", help="clip lengths (latent frames), comma-separated")
    p.add_argument("--spatial", type=int, default=16, help="latent height and width")
    p.add_argument("--size", default="S/2")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    rows = []
    for frames in map(int, args.frames.split(",")):
        row = {"frames": frames, "tokens": frames * (args.spatial // int(args.size.split("/")[1])) ** 2}
        for attention in ("full", "factorised"):
            out = subprocess.run([sys.executable, "-c", CASE, str(frames), str(args.spatial), args.size, attention,
                                  str(args.batch), device], capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            row[f"{attention}_mib"], row[f"{attention}_s"] = result["peak_mib"], result["seconds"]
        row["memory_ratio"] = row["full_mib"] / max(row["factorised_mib"], 1e-9)
        rows.append(row)
    markdown = table(rows, list(rows[0])) + (f"\n\nSiT-3D-{args.size}, 4 x T x {args.spatial} x {args.spatial} latents, "
                                             f"batch {args.batch}, one forward and backward pass, {device}")
    print(markdown)
    report, path = publish("video_attention", device, rows, markdown, config=vars(args))
    print(f"report: {path}")
    return report


if __name__ == "__main__":
    main()
