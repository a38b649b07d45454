"""python -m benchmarks [SUITE [ARGS...]]: list the suites, or run one.

Each suite prints a table and writes a JSON and a Markdown report (machine,
versions, date) under results/ (or $LAYERSYNC_RESULTS).
"""

import importlib
import sys

SUITES = {
    "overhead": "LayerSync on/off step-time ratio in the default step mode (target <= 1.01 GPU, <= 1.02 CPU)",
    "step_speed": "eager, compile, graph, graph-eager and the plain SiT: step time, memory, images/s, MFU",
    "sample_speed": "250-step SDE Euler with CFG, model eager vs compiled (+CUDA graphs): images/s (target >= 1.5x)",
    "audio_data": "audio clips/s decoded and resampled through a DataLoader, 0 and 2 workers",
    "video_attention": "memory and time of full vs factorised SiT-3D attention as the clip grows (T = 8, 16, 32)",
    "video_data": "video clips/s decoded (decord), resized and cropped through a DataLoader, 0 and 2 workers",
    "faults": "SIGKILL at random points, a full disk, a corrupt checkpoint: resumed runs end bit-identical",
    "quality": "LayerSync vs vanilla (and pair choices) per modality: classifier-feature FID over budgets and seeds",
    "soak": "thousands of steps: resident memory growth, loader samples/s drift, checkpoint folder under keep",
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "list"):
        print(__doc__)
        for name, what in SUITES.items():
            print(f"  {name:<12} {what}")
        return 0
    if argv[0] not in SUITES:
        print(f"unknown suite '{argv[0]}' (known: {', '.join(SUITES)})", file=sys.stderr)
        return 2
    importlib.import_module(f"benchmarks.{argv[0]}").main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
