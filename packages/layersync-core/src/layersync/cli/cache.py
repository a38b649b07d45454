"""layersync-cache: encode a data set once with the modality's tokenizer, for training on latents.

The data and tokenizer come from the modality's cache recipe (image: SD-VAE latents of
256x256 ADM centre crops and their flips), then --config, then --set; --data sets
data.path. The cache resumes where it stopped and refuses to mix inputs; under torchrun
the shards are shared out across ranks (see ``layersync.cache``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from layersync import build
from layersync import config as configuration
from layersync.cache import write_cache
from layersync.cli.common import Parser, add_config_args, add_device, entry_point, positive_int
from layersync.errors import ConfigError
from layersync.plugins import registry

UNRECORDED = ("path", "on_error")  # data options that the data fingerprint already covers


def parser() -> Parser:
    p = Parser(prog="layersync-cache", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plugin", required=True, help="the modality (layersync plugins lists them)")
    p.add_argument("--data", required=True, help="the data to encode (sets data.path)")
    p.add_argument("--out", required=True, help="the cache folder (created, or resumed)")
    add_config_args(p)
    p.add_argument("--batch", type=positive_int, default=64, help="items per encoder batch (each with its views)")
    p.add_argument("--shard-size", type=positive_int, default=1024, help="items per shard file")
    add_device(p)
    p.add_argument("--workers", type=int, default=4, help="data loader processes")
    return p


def cache_config(modality, args) -> dict:
    """defaults() <- the modality's cache recipe <- --config <- --set, with data.path = --data."""
    config = configuration.load(modality.cache_recipe or modality.recipe, args.config, args.assignments)
    return configuration.set_value(config, "data.path", args.data)


def run(args) -> dict:
    """Build the modality's data set and tokenizer from the config and write (or complete) the cache."""
    reg = registry()
    modality = build.lookup(reg, "modalities", build.modality_name(reg, args.plugin))
    config = cache_config(modality, args)
    name, options = configuration.options(config["data"])
    if name == "latent-cache":
        raise ConfigError("data.name is latent-cache: that data is encoded already; name the data set to encode")
    dataset = build.dataset(reg, config)
    tokenizer = build.tokenizer(reg, config)
    build.check_compatible(dataset, tokenizer)
    preprocessing = {"data": {"name": name, **{k: v for k, v in options.items() if k not in UNRECORDED}}}
    return write_cache(dataset, tokenizer, Path(args.out), preprocessing=preprocessing, views=modality.cache_views,
                       batch=args.batch, shard_size=args.shard_size, device=args.device, workers=args.workers)


@entry_point("layersync-cache")
def main(argv=None):
    run(parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    main()
