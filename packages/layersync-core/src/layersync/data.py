"""Shared behaviour of data sets read from files."""

from __future__ import annotations

import logging
from pathlib import Path, PurePath

from layersync.errors import DataError

log = logging.getLogger("layersync")


def inside(root: str | Path, relative: str, source) -> Path:
    """``root / relative`` for a name read from ``source`` (a split, index or metadata file); a DataError
    naming ``source`` and the name where it may lead outside ``root`` (an absolute path, a ``..`` part)."""
    if PurePath(relative).anchor or ".." in PurePath(relative).parts:
        raise DataError(f"{source}: {relative!r} leads outside {root} (expected a name inside that folder)")
    return Path(root) / relative


class SkipsBadItems:
    """``__getitem__`` under the ``on_error`` policy for files found bad only when decoded.

    ``fail``: the item's DataError stands. ``skip``: the next good item stands in for a bad
    one, and bad items are counted (per process). Subclasses set ``on_error`` and ``root``
    and define ``load(i) -> item`` and ``__len__``.
    """

    def __getitem__(self, i):
        if self.on_error == "fail":
            return self.load(i)
        bad = self.__dict__.setdefault("_bad", set())
        for j in ((i + k) % len(self) for k in range(len(self))):
            if j in bad:
                continue
            try:
                return self.load(j)
            except DataError as exc:
                bad.add(j)
                log.warning("skipping (on_error=skip, %d file(s) so far in this process): %s", len(bad), exc)
        raise DataError(f"no decodable file left in {self.root}")
