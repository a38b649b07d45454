"""Video data loading: clips/s decoded with decord (resized, cropped) through a torch DataLoader.

By default 20 generated H.264 MP4s of 64 frames at 128x128 (a moving square on
noise, written with PyAV to a temporary folder), 16-frame clips at 64x64, with 0
and 2 DataLoader workers. Each figure is the median over repetitions of a timed
run of batches, after one untimed batch (worker start).

    python -m benchmarks video_data
    python -m benchmarks video_data --path DATA --layout classes --frames 16 --stride 2 --size 64
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.audio_data import clips_per_s
from benchmarks.common import publish, table
from layersync_video.data import VideoFolderDataset
from layersync_video.output import write_mp4


def write_videos(folder: Path, count: int, frames: int, side: int, fps: int = 25) -> None:
    """``count`` MP4s of ``frames`` frames, side x side: a bright square moving over noise."""
    rng = np.random.default_rng(0)
    for v in range(count):
        clip = rng.integers(0, 96, (frames, side, side, 3), dtype=np.uint8)
        for t in range(frames):
            y = (v * 7 + t * 3) % (side - side // 4)
            clip[t, y : y + side // 4, y : y + side // 4] = 230
        write_mp4(folder / f"{v:03d}.mp4", clip, fps)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks video_data", description=__doc__.splitlines()[0])
    p.add_argument("--path", default=None, help="a video folder (default: generated videos)")
    p.add_argument("--layout", default="folder")
    p.add_argument("--videos", type=int, default=20, help="generated videos")
    p.add_argument("--length", type=int, default=64, help="frames per generated video")
    p.add_argument("--side", type=int, default=128, help="generated videos' width and height")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--workers", default="0,2", help="DataLoader worker counts, comma-separated")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=10, help="timed batches per repetition")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.path
        if path is None:
            path = tmp
            write_videos(Path(tmp), args.videos, args.length, args.side)
        dataset = VideoFolderDataset(path, frames=args.frames, stride=args.stride, size=args.size,
                                     layout=args.layout)
        rows = []
        for workers in map(int, args.workers.split(",")):
            speed = clips_per_s(dataset, args.batch, workers, args.batches, args.repeats)
            rows.append({"files": len(dataset), "clip": "x".join(map(str, dataset.sample_shape)),
                         "stride": args.stride, "workers": workers, "clips_per_s": speed,
                         "frames_per_s": speed * args.frames})
    source = args.path or f"{args.videos} generated H.264 MP4s, {args.length} frames at {args.side}x{args.side}"
    markdown = table(rows, list(rows[0])) + f"\n\n{source}; batch {args.batch}, {args.batches} timed batches, " \
        f"median of {args.repeats}; clip: channels x frames x height x width"
    print(markdown)
    report, out = publish("video_data", "cpu", rows, markdown, config=vars(args))
    print(f"report: {out}")
    return report


if __name__ == "__main__":
    main()
