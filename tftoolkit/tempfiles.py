"""Temporary files and folders written beside their target, then renamed into place.

A temporary name (``.tmp-<host>-<pid>-<id>``) says which host and process wrote it, so
that what a killed process left can be told from what a live one is writing, and
removed (on a shared disk only by the host that wrote it: another host's process ids
mean nothing here).
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any, Callable

TMP_PREFIX = ".tmp-"


def temporary_path(folder: Path, suffix: str = "") -> Path:
    """A new name in ``folder`` for a file or folder being written: this host, this
    process, and a random part (hostnames hold no ``/``), then ``suffix`` (``.npz``:
    NumPy appends its own to a name without it)."""
    return Path(folder) / (f"{TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-"
                           f"{uuid.uuid4().hex[:8]}{suffix}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files and folders in ``folder`` that this host's processes
    left when they died; returns them. Another host's are left alone."""
    removed, host = [], socket.gethostname()
    for path in Path(folder).glob(f"{TMP_PREFIX}*"):
        written_by = path.name[len(TMP_PREFIX):].rsplit("-", 2)  # host-pid-random
        if (len(written_by) == 3 and written_by[0] == host and written_by[1].isdigit()
                and not _alive(int(written_by[1]))):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def fsync(path: Path) -> None:
    """Flush a written file's content to disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def replace_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """Write ``path`` through a temporary file beside it, flushed to disk, then rename it
    into place: ``path`` is always either its old content or the whole new one."""
    tmp = temporary_path(path.parent, path.suffix)
    try:
        write(tmp)
        fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
