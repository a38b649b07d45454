"""Writing outputs so that a file that exists is a file that is complete."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic(path: str | Path) -> Iterator[Path]:
    """Yield ``PATH.tmp`` to write; it takes ``path``'s name only if the block succeeds.

    Writers that choose a format by extension need it told (``np.savez`` on an
    open file, ``save_image(..., format=...)``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_json(path: str | Path, data) -> None:
    with atomic(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
