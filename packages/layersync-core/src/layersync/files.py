"""Writing outputs so that a file that exists is a file that is complete."""

from __future__ import annotations

import errno
import json
import os
import secrets
import shlex
import shutil
import socket
import sys
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

from layersync.errors import ConfigError, WriteError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK = ".layersync.lock"  # in a folder a command writes to: the lock, and who holds it


@contextmanager
def atomic(path: str | Path) -> Iterator[Path]:
    """Yield ``PATH.<random>.tmp`` to write (a name no other writer uses); it takes ``path``'s name
    only if the block succeeds.

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
    _make_folder(path.parent, path)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with suppress(OSError):  # the folder itself is unusable: there is no partial file to remove
            tmp.unlink(missing_ok=True)
        if not isinstance(exc, OSError):
            raise
        if exc.filename is not None and os.fspath(exc.filename) not in (os.fspath(tmp), os.fspath(path)):
            raise  # about another file (one the block reads): not this write's error
        raise WriteError(path, exc) from None
    try:
        _fsync(path.parent, folder=True)
    except OSError as exc:
        raise WriteError(path, exc) from None


@contextmanager
def folder_lock(folder: str | Path, what: str) -> Iterator[Path]:
    """Hold ``folder`` (created if missing) for this process while the block writes there.

    An advisory lock (``flock``) on ``folder/.layersync.lock``, a file that records the holder's pid,
    host and command and is removed on release; the kernel drops the lock when the process ends,
    however it ends, so a crash never leaves the folder locked (only the file). A second writer gets
    a ConfigError naming ``what`` (``run folder``), the folder and the holder. Readers take no lock.
    """
    folder = Path(folder)
    _make_folder(folder, folder)
    path = folder / LOCK
    if fcntl is None:  # Windows has no flock: nothing is locked there
        yield path
        return
    fd = _take(path, f"{what} {folder}")
    try:
        yield path
    finally:
        with suppress(OSError):  # while still held: a writer that opened it meanwhile opens it anew
            path.unlink()
        os.close(fd)  # releases the lock


def _take(lock: Path, what: str) -> int:
    """``lock`` opened and locked by this process, which it records as the holder; a ConfigError naming
    ``what`` and the holder if another process holds it."""
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise WriteError(lock, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.path.samestat(os.fstat(fd), os.stat(lock)):  # not a file its holder removed on release
                command = shlex.join([os.path.basename(arg) for arg in sys.argv[:1]] + sys.argv[1:])
                holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
                os.ftruncate(fd, 0)  # a crashed holder's record
                os.write(fd, json.dumps(holder).encode())
                return fd
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"{what} is in use: {_holder(lock)} writes there; wait for it to end or stop it, "
                              "or choose another --out") from None
        except FileNotFoundError:  # removed on release after this process opened it: open it anew
            pass
        except OSError as exc:
            os.close(fd)
            raise WriteError(lock, exc) from None
        os.close(fd)


def discard_unfinished(folder: Path) -> None:
    """Delete the ``*.tmp`` files and folders that writes cut short by a crash left in ``folder``; only while
    holding it (``folder_lock``): no other process's write is under way there."""
    for path in Path(folder).glob("*.tmp"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _holder(lock: Path) -> str:
    """Who holds ``lock``, as its holder recorded it: 'pid 123 on node1 (layersync-train ...)'."""
    try:
        held = json.loads(lock.read_text())
        return f"pid {held['pid']} on {held['host']} ({held['command']})"
    except (OSError, ValueError, KeyError, TypeError):  # the holder has not written it yet
        return "another process"


def _make_folder(folder: Path, target: Path) -> None:
    """``mkdir -p folder``; a WriteError about ``target`` if it cannot be made."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # a file where a folder of the path should be: say so, not "file exists"
        raise WriteError(target, OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), exc.filename)) from None
    except OSError as exc:
        raise WriteError(target, exc) from None


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


def write_json(path: str | Path, data) -> None:
    with atomic(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
