"""Atomic file writes (temporary name next to the target, then ``os.replace``) that give the
file the permissions a plain ``open()`` would (``0o666`` minus the umask), not ``mkstemp``'s
private 0600, so teammates on a shared server can read what a run wrote. Import-light: the
heads, features and training code use it without importing the few-shot package."""

from __future__ import annotations

import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_UMASK_LOCK = threading.Lock()


def file_mode() -> int:
    """The mode ``open(path, "w")`` would create a file with: ``0o666`` minus the umask."""
    with _UMASK_LOCK:  # reading the umask means setting it; keep threads from seeing the 0
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_target(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success give it the umask's mode and rename
    it over ``path``; on any error (Ctrl-C included) remove it, so no half-written file stays.
    ``suffix`` lets writers that pick a format by extension (PIL, OpenCV) see the right one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file next to ``path`` and rename it over ``path``."""
    with atomic_target(path) as tmp:
        tmp.write_bytes(data)


