"""layersync: the umbrella command (plugins, weights, fetch)."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from layersync.cli.common import Parser, entry_point
from layersync.errors import ConfigError
from layersync.files import atomic
from layersync.metrics.weights import MissingWeightsError, resolve_weights, weights_dir
from layersync.plugins import registry


def describe(info) -> str:
    if info.error:
        return f"{info.name} {info.version}: FAILED TO LOAD ({info.error})"
    parts = [f"{category}: {', '.join(names)}" for category, names in info.provides.items()]
    return f"{info.name} {info.version}: " + ("; ".join(parts) or "contributes nothing")


def list_weights(reg) -> None:
    for name in reg.names("weights"):
        weight = reg.get("weights", name)
        try:
            state = f"ok at {resolve_weights(weight)}"
        except MissingWeightsError as exc:
            state = f"MISSING ({str(exc).split(';')[0]})"
        print(f"{name}: {weight.filename} [{weight.licence}] {state}")


def fetch(reg, name: str) -> Path:
    """Download a registered weight file into the weights folder and verify it."""
    try:
        weight = reg.get("weights", name)
    except KeyError as exc:
        raise ConfigError(exc.args[0]) from None
    target = weights_dir() / weight.filename
    print(f"fetching {weight.url} -> {target}")
    with atomic(target) as tmp:
        urllib.request.urlretrieve(weight.url, tmp)
        resolve_weights(weight, tmp)  # size and SHA-256 before it takes the real name
    return target


@entry_point("layersync")
def main(argv=None):
    p = Parser(prog="layersync", description="LayerSync utilities.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("plugins", help="list discovered plugins, their versions and what they contribute")
    sub.add_parser("weights", help=f"list the published weight files plugins need and whether they are in {weights_dir()}")
    fetch_parser = sub.add_parser("fetch", help="download a listed weight file (needs internet) and verify it")
    fetch_parser.add_argument("name")
    args = p.parse_args(argv)
    reg = registry()
    if args.command == "plugins":
        if not reg.plugins:
            print("no plugins installed (install e.g. layersync-image)")
        for info in reg.plugins:
            print(describe(info))
    elif args.command == "weights":
        list_weights(reg)
    else:
        print(f"verified {fetch(reg, args.name)}")
    return 0


if __name__ == "__main__":
    main()
