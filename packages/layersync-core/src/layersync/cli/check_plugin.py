"""layersync check-plugin NAME: the conformance checks a plugin's CI runs (see ``layersync.check``).

Prints one row per check, ``PASS|WARN|FAIL|SKIP  item  check  detail``; exit code 0 without a
FAIL, 1 with one, 2 for an unknown plugin name.
"""

from __future__ import annotations

import sys

from layersync.cli.common import add_device
from layersync.errors import ConfigError


def configure(parser) -> None:
    parser.add_argument("name", metavar="NAME", help="the plugin (its entry-point name, see `layersync plugins`)")
    add_device(parser, "cpu", note="; on CUDA, graph safety is also checked on a CUDA forward")


def run(args) -> int:
    from layersync.check import check_plugin, exit_code, table
    from layersync.distributed import pick_device

    try:
        results = check_plugin(args.name, device=pick_device(args.device))
    except ConfigError as exc:
        print(f"layersync check-plugin: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(table(results))
    counts = {status: sum(r.status == status for r in results) for status in ("PASS", "WARN", "FAIL", "SKIP")}
    print(f"{counts['PASS']} passed, {counts['WARN']} warned, {counts['FAIL']} failed, {counts['SKIP']} skipped")
    return exit_code(results)
