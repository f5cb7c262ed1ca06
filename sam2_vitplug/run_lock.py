"""One run at a time per output: a lock file held with ``flock`` for the run's lifetime.

Why: two runs writing the same checkpoint folder or the same ``--out`` interleave their files
(``seg train``) or merge each other's shards too early (``fewshot run``). The OS releases an
``flock`` when its process dies, so a killed run never blocks the next one; a second live run
gets one line naming the lock file and the holder's pid. Shared by ``seg train`` and
``fewshot run``; import-light (no torch).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


class RunLock:
    """Hold ``lock_path`` exclusively while the ``with`` block runs.

    ``what`` names the output in the error (``--out 'r.json'``), ``hint`` says what to do
    instead. ``cleanup_dir``: a folder this lock may create; it is removed again on exit when the
    run left nothing in it.
    """

    def __init__(self, lock_path: str | os.PathLike, what: str, hint: str, *,
                 cleanup_dir: str | os.PathLike | None = None) -> None:
        self.path = Path(lock_path)
        self.what = what
        self.hint = hint
        self.cleanup_dir = Path(cleanup_dir) if cleanup_dir is not None else None
        self._fd: int | None = None
        self._created = False

    def __enter__(self) -> "RunLock":
        import fcntl

        from .atomic import file_mode

        self._created = self.cleanup_dir is not None and not self.cleanup_dir.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ValueError(f"{self.what} is in use by another run (pid {holder}; lock file '{self.path}'); "
                             f"{self.hint}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None
        folder = self.cleanup_dir
        if self._created and folder is not None and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
