"""Shared CLI plumbing: one-line errors with exit code 2, logging."""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
from functools import wraps

from layersync.config import SEED_MAX
from layersync.errors import ConfigError, DataError, NonFiniteError, reason

BAD_INPUT = (ConfigError, DataError, FileNotFoundError)
# errno values that only writing gives (a file error with another errno may come from reading)
WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG}
NONFINITE_EXIT = 3


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line on stderr, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def entry_point(prog: str):
    """Wrap a CLI main: bad input -> one line on stderr and exit 2."""

    def wrap(func):
        @wraps(func)
        def main(argv=None):
            logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
            try:
                return func(argv)
            except OSError as exc:
                if exc.errno is None or exc.filename is None:
                    if isinstance(exc, BAD_INPUT):  # FileNotFoundError("a message")
                        _fail(prog, exc)
                    raise
                _fail(prog, file_error(exc))
            except BAD_INPUT as exc:
                _fail(prog, exc)
            except NonFiniteError as exc:  # NaN or inf in training or samples: exit 3
                _fail(prog, exc, NONFINITE_EXIT)
            except KeyboardInterrupt as exc:  # 128 + the signal: 130 for SIGINT (Ctrl-C), 143 for SIGTERM
                print(f"interrupted: {exc}" if str(exc) else "interrupted", file=sys.stderr)
                sys.exit(143 if getattr(exc, "signum", None) == signal.SIGTERM else 130)

        return main

    return wrap


def file_error(exc: OSError) -> str:
    """An OSError about a file as one phrase: 'cannot write X: no space left on device' for the
    errors that only writing gives, else 'X: permission denied' ('A -> B: ...' for a rename)."""
    where = str(exc.filename) + (f" -> {exc.filename2}" if getattr(exc, "filename2", None) else "")
    if exc.errno in WRITE_ERRNOS:
        return f"cannot write {where}: {reason(exc)}"
    return f"{where}: {reason(exc)}"


def _fail(prog, exc, code: int = 2) -> None:
    text = " ".join(str(exc.args[0] if isinstance(exc, Exception) and exc.args else exc).split())
    print(f"{prog}: error: {text}", file=sys.stderr)
    sys.exit(code)


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


def _integer(text: str, least: int, what: str, most: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < least or (most is not None and value > most):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
    return value


def seed(text: str) -> int:
    """An argparse type: a seed from 0 to SEED_MAX (what the config's seed may be)."""
    return _integer(text, 0, f"an integer from 0 to {SEED_MAX}", SEED_MAX)


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (counts, batches, steps, sizes)."""
    return _integer(text, 1, "a whole number >= 1")


def grid_points(text: str) -> int:
    """An argparse type: a number of time grid points (at least 2)."""
    return _integer(text, 2, "at least 2 time grid points")


def add_device(parser: argparse.ArgumentParser, default: str = "auto", note: str = "") -> None:
    """The --device flag every command that runs a model has."""
    parser.add_argument("--device", default=default, help=f"auto (cuda if there is one, else cpu), cpu, cuda, "
                                                          f"cuda:N or mps (default {default}){note}")


def sit_size(value: str) -> str:
    """SiT-XL/2 -> XL/2 (the backbone checks the name and patch)."""
    size = value.removeprefix("SiT-")
    if size == value or "/" not in size:
        raise argparse.ArgumentTypeError(f"expected SiT-NAME/PATCH such as SiT-XL/2, got '{value}'")
    return size
