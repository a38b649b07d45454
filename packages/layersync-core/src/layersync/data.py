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
    """A data set of files under ``root`` and the ``on_error`` policy for bad ones: ``usable`` for those found
    bad when the data set opens, ``__getitem__`` for those found bad only when decoded.

    ``fail``: the item's DataError stands. ``skip``: the next good item stands in for a bad
    one, and bad items are counted (per process). Subclasses set ``on_error``, ``root`` and
    ``items`` (rows that begin with the file) and define ``load(i) -> item``.
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

    def usable(self, good: list, bad: list[str], total: int, kind: str) -> list:
        """The ``good`` files of ``total`` when the data set opens, under ``on_error``: ``fail`` raises the first
        of the ``bad`` ones' messages, ``skip`` warns and leaves them out; no good file is a DataError."""
        if bad and self.on_error == "fail":
            more = f"; {len(bad) - 1} more bad file(s)" if len(bad) > 1 else ""
            raise DataError(f"{bad[0]}{more} (data.on_error=skip leaves bad files out)")
        if bad:
            log.warning("skipping %d bad %s file(s) of %d in %s (on_error=skip): %s%s", len(bad), kind, total,
                        self.root, "; ".join(bad[:3]), "; ..." if len(bad) > 3 else "")
        if not good:
            raise DataError(f"no usable {kind} file in {self.root}")
        return good

    def sources(self) -> tuple[Path, list[Path]]:
        """The folder and the files the items come from (a latent cache fingerprints them): ``items`` rows
        begin with the file."""
        return self.root, [path for path, *_ in self.items]

    def __len__(self):
        return len(self.items)
