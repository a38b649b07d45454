"""layersync-eval: the metrics a modality's field reports, on a sample set against a reference.

The modality reads both (image: an ADM-format .npz or a folder of images; audio: a
folder of audio files or a sample set's .npz); the .npz of a preview
(``layersync-sample --out STEM``) reads as a sample set of its samples. The modality
names the evaluators it runs by default (image: FID, sFID, IS, precision, recall;
audio: FAD on VGGish and CLAP).
Reference statistics stored with the reference (e.g. ``mu``/``sigma`` in ADM's
reference batches) replace those of its items; --save-ref-stats writes them.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from layersync import build
from layersync.cli.common import Parser, add_device, entry_point, positive_int
from layersync.errors import ConfigError, DataError
from layersync.files import atomic, write_json
from layersync.plugins import registry
from layersync.distributed import pick_device

log = logging.getLogger("layersync")


def parser() -> Parser:
    p = Parser(prog="layersync-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plugin", default="image", help="the modality (default image; layersync plugins lists them)")
    p.add_argument("--samples", required=True, help="the samples: a file or folder the modality reads")
    p.add_argument("--ref", required=True, help="the reference: a file or folder the modality reads, or its statistics")
    p.add_argument("--evaluator", action="append", dest="evaluators", metavar="NAME",
                   help="run this evaluator (repeatable; default: the modality's own)")
    p.add_argument("--weights", help="the feature network's weights (a file or folder; default: the weights folder, "
                   "see `layersync weights`); only with one evaluator")
    p.add_argument("--batch", type=positive_int, default=50, help="items per feature-network pass")
    add_device(p)
    p.add_argument("--out", help="also write the numbers to this JSON file")
    p.add_argument("--save-ref-stats", metavar="NPZ", help="write the reference's statistics to this .npz for reuse")
    return p


def feed(evaluator, items, real: bool, batch: int) -> None:
    """Every batch of a sample set into the evaluator; a bad item names the set it came from."""
    log.info("%s: %d items from %s", "reference" if real else "samples", len(items), items.path)
    for chunk in items.batches(batch):
        try:
            evaluator.update(chunk, real=real)
        except DataError as exc:
            raise DataError(f"{items.path}: {exc}") from None


def run(evaluator, samples, reference, stats: dict, batch: int) -> dict:
    if stats:
        if not hasattr(evaluator, "use_reference_statistics"):
            raise ConfigError(f"{type(evaluator).__name__} cannot use the statistics stored in {reference.path}")
        evaluator.use_reference_statistics(stats)
    feed(evaluator, reference, True, batch)
    feed(evaluator, samples, False, batch)
    return evaluator.compute()


def save_statistics(path: str, evaluators: list) -> None:
    arrays = {}
    for evaluator in evaluators:
        if not hasattr(evaluator, "reference_statistics"):
            raise ConfigError(f"--save-ref-stats: {type(evaluator).__name__} does not hand out its statistics")
        arrays.update(evaluator.reference_statistics())
    with atomic(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    log.info("reference statistics (%s) written to %s", ", ".join(sorted(arrays)), path)


@entry_point("layersync-eval")
def main(argv=None):
    args = parser().parse_args(argv)
    reg = registry()
    chosen = build.modality_name(reg, args.plugin)
    modality = build.lookup(reg, "modalities", chosen)
    if modality.read_samples is None:
        raise ConfigError(f"modality '{chosen}' has no evaluation (it reads no sample sets)")
    names = args.evaluators or list(modality.evaluators)
    if args.weights and len(names) > 1:
        raise ConfigError(f"--weights names one network, but {len(names)} evaluators run ({', '.join(names)}); "
                          "choose one with --evaluator")
    for name in names:  # unknown names fail before any sample is read
        build.lookup(reg, "evaluators", name)
    samples, reference = modality.read_samples(Path(args.samples)), modality.read_samples(Path(args.ref))
    if hasattr(samples, "check_reference"):
        samples.check_reference(reference)
    stats = reference.statistics()
    device = pick_device(args.device)
    result, evaluators = {}, []
    for name in names:
        evaluator = build.make(reg, "evaluators", name, weights=args.weights, batch=args.batch, device=device)
        evaluators.append(evaluator)
        result.update(run(evaluator, samples, reference, stats, args.batch))
        if hasattr(evaluator, "weights_path"):
            result[f"weights_{name}" if len(names) > 1 else "weights"] = str(evaluator.weights_path)
    result.update(samples=str(samples.path), ref=str(reference.path))
    for key, value in result.items():
        print(f"{key}: {value:.6g}" if isinstance(value, float) else f"{key}: {value}")
    if args.out:
        write_json(args.out, result)
    if args.save_ref_stats:
        save_statistics(args.save_ref_stats, evaluators)
    return 0


if __name__ == "__main__":
    main()
