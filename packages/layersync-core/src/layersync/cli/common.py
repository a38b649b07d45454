"""Shared CLI plumbing: one-line errors with exit code 2, logging."""

from __future__ import annotations

import argparse
import logging
import sys
from functools import wraps

from layersync.errors import ConfigError, DataError

BAD_INPUT = (ConfigError, DataError, FileNotFoundError)


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line on stderr, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def entry_point(prog: str):
    """Wrap a CLI main: bad input -> one line on stderr and exit 2."""

    def wrap(func):
        return _guarded(prog, func)

    return wrap


def _guarded(prog, func):
    @wraps(func)
    def main(argv=None):
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
        try:
            return func(argv)
        except BAD_INPUT as exc:
            text = " ".join(str(exc.args[0] if exc.args else exc).split())
            print(f"{prog}: error: {text}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt as exc:
            print(f"interrupted: {exc}" if str(exc) else "interrupted", file=sys.stderr)
            sys.exit(130)

    return main


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=str, help="a YAML file merged over the modality's recipe")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="assignments",
                        help="override any config key, e.g. --set train.batch_size=128 (repeatable)")


def choice(**table):
    """An argparse type mapping a (case-insensitive) name onto our value."""

    def convert(value: str):
        try:
            return table[value.lower()]
        except KeyError:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(table)}, got '{value}'") from None

    return convert


def sit_size(value: str) -> str:
    """SiT-XL/2 -> XL/2 (the backbone checks the name and patch)."""
    size = value.removeprefix("SiT-")
    if size == value or "/" not in size:
        raise argparse.ArgumentTypeError(f"expected SiT-NAME/PATCH such as SiT-XL/2, got '{value}'")
    return size
