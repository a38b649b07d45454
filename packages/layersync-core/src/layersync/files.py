"""Writing outputs so that a file that exists is a file that is complete."""

from __future__ import annotations

import errno
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from layersync.errors import WriteError


@contextmanager
def atomic(path: str | Path) -> Iterator[Path]:
    """Yield ``PATH.tmp`` to write; it takes ``path``'s name only if the block succeeds.

    Writers that choose a format by extension need it told (``np.savez`` on an
    open file, ``save_image(..., format=...)``). The file's data reach the disk
    (fsync) before the rename, and the rename does (fsync of the folder) before
    this returns, so after a crash ``path`` is the old file or the new one, whole.

    An OSError writing the file, in the fsyncs or the rename (a full disk, a
    read-only folder, ...) removes the temporary file and raises a ``WriteError`` naming
    ``path`` and the system's reason; an existing ``path`` is left as it was.
    Writers that report a failed write otherwise (``torch.save`` to a file name
    says "unexpected pos") should write to an open file: ``open(tmp, "wb")``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # a file where a folder of the path should be: say so, not "file exists"
        raise WriteError(path, OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), exc.filename)) from None
    except OSError as exc:
        raise WriteError(path, exc) from None
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        _discard(tmp)
        if exc.filename is not None and os.fspath(exc.filename) not in (os.fspath(tmp), os.fspath(path)):
            raise  # about another file (one the block reads): not this write's error
        raise WriteError(path, exc) from None
    except BaseException:
        _discard(tmp)
        raise
    try:
        _fsync(path.parent, folder=True)
    except OSError as exc:
        raise WriteError(path, exc) from None


def _fsync(path: Path, folder: bool = False) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    if folder and not hasattr(os, "O_DIRECTORY"):  # Windows cannot open a folder: nothing to flush there
        return
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if folder else 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if not (folder and exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EBADF)):
            raise  # some file systems cannot fsync a folder; a file's data must reach the disk
    finally:
        os.close(fd)


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except OSError:  # the folder itself is unusable: there is no partial file to remove
        pass


def write_json(path: str | Path, data) -> None:
    with atomic(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
