"""layersync: the umbrella command (plugins, weights, fetch, check-plugin, new-plugin, probe, suggest-pairs, report)."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

import layersync
from layersync.cli import check_plugin, new_plugin, probe, report
from layersync.cli.common import Parser, entry_point
from layersync.errors import ConfigError
from layersync.files import atomic
from layersync.metrics.weights import MissingWeightsError, resolve_weights, weights_dir
from layersync.plugins import registry


def describe(info, verbose: bool = False) -> str:
    if info.disabled:
        return f"{info.name} {info.version}: disabled (LAYERSYNC_DISABLE_PLUGINS)"
    if info.error:
        return f"{info.name} {info.version}: FAILED TO LOAD ({info.error})"
    parts = [f"{category}: {', '.join(names)}" for category, names in info.provides.items()]
    lines = [f"{info.name} {info.version}: " + ("; ".join(parts) or "contributes nothing")]
    if verbose:
        api = "undeclared" if info.api is None else info.api
        lines.append(f"  distribution {info.dist}, module {info.module}, plugin API {api}")
        lines += [f"  hook {hook}" for hook in info.hooks]
    lines += [f"  warning: {text}" for text in info.warnings]
    return "\n".join(lines)


def list_weights(reg) -> None:
    weights_dir()  # a file where the folder should be: one error, not every weight MISSING
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
    plugins = sub.add_parser("plugins", help="list discovered plugins, their versions and what they contribute")
    plugins.add_argument("-v", "--verbose", action="store_true",
                         help="also each plugin's distribution, module, plugin API and hook implementations")
    sub.add_parser("weights", help="list the published weight files plugins need and whether they are in the weights "
                                   "folder ($LAYERSYNC_WEIGHTS_DIR, default ~/.cache/layersync/weights)")
    fetch_parser = sub.add_parser("fetch", help="download a listed weight file (needs internet) and verify it")
    fetch_parser.add_argument("name")
    check_plugin.configure(sub.add_parser("check-plugin", help="build and exercise every piece a plugin provides"))
    new_plugin.configure(sub.add_parser("new-plugin", help=new_plugin.HELP))
    probe.configure(sub.add_parser("probe", help=probe.HELP))
    probe.configure(sub.add_parser("suggest-pairs", help=probe.SUGGEST_HELP), suggest=True)
    report.configure(sub.add_parser("report", help=report.HELP))
    args = p.parse_args(argv)
    if args.command == "check-plugin":
        return check_plugin.run(args)
    if args.command == "new-plugin":
        return new_plugin.run(args)
    if args.command == "probe":
        return probe.run(args)
    if args.command == "suggest-pairs":
        return probe.suggest(args)
    if args.command == "report":
        return report.run(args)
    reg = registry()
    if args.command == "plugins":
        print(f"layersync-core {layersync.__version__}, plugin API {layersync.PLUGIN_API}")
        for info in reg.plugins:
            print(describe(info, args.verbose))
    elif args.command == "weights":
        list_weights(reg)
    else:
        print(f"verified {fetch(reg, args.name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
