"""One writer per index folder: a lock file holding the writer's pid, released by the kernel when it dies."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from ..errors import CatalogError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_FILE = "lock"
# POSIX locks belong to the process, and closing any descriptor of the file drops them: so within one process a
# second WriterLock on the same file must never open it. Paths this process holds:
_HELD: set[str] = set()


class IndexLocked(CatalogError):
    """Another live process is writing this index folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WriterLock:
    """An exclusive lock on STORE/lock. POSIX record locks (lockf) are used because the kernel drops them when
    the holder dies, even by kill -9, and forked children (DataLoader workers) do not inherit them — so a
    stale lock can never block the next run. The pid inside is only for messages and for systems without fcntl.
    """

    def __init__(self, store: str | os.PathLike):
        self.path = Path(store) / LOCK_FILE
        self.fd: int | None = None

    def holder(self) -> str:
        """'pid N on HOST' of the current holder, as written in the file (best effort)."""
        if os.path.realpath(self.path) in _HELD:
            return f"{os.getpid()} (this process)"
        try:
            text = self.path.read_text().strip()
        except OSError:
            return "another process"
        return text or "another process"

    def try_acquire(self) -> bool:
        """Take the lock if it is free (or held by a dead process); False when a live process holds it."""
        if self.fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path)
        if key in _HELD:
            return False
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            if fcntl is not None:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    return False
            else:  # pragma: no cover - fallback: trust the pid in the file
                text = os.read(fd, 100).decode(errors="replace").split()
                if text and text[0].isdigit() and int(text[0]) != os.getpid() and _pid_alive(int(text[0])):
                    os.close(fd)
                    return False
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        _HELD.add(key)
        return True

    def acquire(self, wait: float = 0.0, poll: float = 0.2) -> "WriterLock":
        """Take the lock, waiting up to `wait` seconds; raise IndexLocked with the holder's pid otherwise."""
        deadline = time.monotonic() + max(0.0, wait)
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                pid = self.holder().split()[0]
                raise IndexLocked(f"{self.path.parent} is being written by process {pid} (lock file {self.path}); "
                                  "wait for it to finish, or pass --wait SECONDS to queue behind it")
            time.sleep(poll)
        return self

    def release(self) -> None:
        """Give the lock up (the file stays; an unlocked file is free)."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
            if fcntl is not None:
                fcntl.lockf(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None
            _HELD.discard(os.path.realpath(self.path))

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
