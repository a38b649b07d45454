"""layersync: the umbrella command (``layersync plugins``)."""

from __future__ import annotations

from layersync.cli.common import Parser, entry_point
from layersync.plugins import registry


def describe(info) -> str:
    if info.error:
        return f"{info.name} {info.version}: FAILED TO LOAD ({info.error})"
    parts = [f"{category}: {', '.join(names)}" for category, names in info.provides.items()]
    return f"{info.name} {info.version}: " + ("; ".join(parts) or "contributes nothing")


@entry_point("layersync")
def main(argv=None):
    p = Parser(prog="layersync", description="LayerSync utilities.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("plugins", help="list discovered plugins, their versions and what they contribute")
    args = p.parse_args(argv)
    if args.command == "plugins":
        reg = registry()
        if not reg.plugins:
            print("no plugins installed (install e.g. layersync-image)")
        for info in reg.plugins:
            print(describe(info))
    return 0


if __name__ == "__main__":
    main()
