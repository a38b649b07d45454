"""Audio data loading: clips/s decoded (and resampled) through a torch DataLoader.

By default the shipped spoken digits (16 kHz FLAC, 1 s clips) at their own rate and
resampled to 44.1 kHz, with 0 and 2 DataLoader workers. Each figure is the median
over repetitions of a timed run of batches, after one untimed batch (worker start,
resampling kernels).

    python -m benchmarks audio_data
    python -m benchmarks audio_data --path DATA --layout folder --seconds 10 --rates 44100
"""

from __future__ import annotations

import argparse
import itertools
import time

from torch.utils.data import DataLoader

from benchmarks.common import median, publish, table
from layersync_audio.data import AudioDataset


def clips_per_s(dataset, batch: int, workers: int, batches: int, repeats: int) -> float:
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0)
    stream = itertools.chain.from_iterable(itertools.repeat(loader))  # epochs after epochs
    next(stream)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            next(stream)
        rates.append(batches * batch / (time.perf_counter() - start))
    return median(rates)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks audio_data", description=__doc__.splitlines()[0])
    p.add_argument("--path", default=None, help="a data folder (default: the shipped spoken digits)")
    p.add_argument("--layout", default="classes")
    p.add_argument("--seconds", type=float, default=None, help="clip length (default: the files' length)")
    p.add_argument("--rates", default="16000,44100", help="target sample rates, comma-separated")
    p.add_argument("--workers", default="0,2", help="DataLoader worker counts, comma-separated")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=20, help="timed batches per repetition")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    rows = []
    for rate, workers in itertools.product(map(int, args.rates.split(",")), map(int, args.workers.split(","))):
        dataset = AudioDataset(args.path, layout=args.layout, sample_rate=rate, seconds=args.seconds)
        source_rates = sorted({info.sample_rate for *_, info in dataset.items})
        speed = clips_per_s(dataset, args.batch, workers, args.batches, args.repeats)
        rows.append({"files": len(dataset), "source_hz": ",".join(map(str, source_rates)), "target_hz": rate,
                     "clip_s": dataset.samples / rate, "workers": workers, "clips_per_s": speed,
                     "audio_s_per_s": speed * dataset.samples / rate})
    markdown = table(rows, list(rows[0])) + f"\n\nbatch {args.batch}, {args.batches} timed batches, median of " \
        f"{args.repeats}; audio_s_per_s: seconds of audio delivered per second"
    print(markdown)
    report, path = publish("audio_data", "cpu", rows, markdown, config=vars(args))
    print(f"report: {path}")
    return report


if __name__ == "__main__":
    main()
