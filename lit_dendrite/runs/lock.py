"""One process at a time: an exclusive lock on a file, with the holder (host, pid, Slurm job, time) written in it.

The lock is ``flock``: the kernel drops it when the last descriptor of its open file is closed, so when its
process ends however it ends (killed, preempted, crashed); a forked child still running (a data loader worker
winding down) keeps it a moment longer. Linux maps it to NFS locks, where a crashed node's lock is only dropped
when the server's lease expires. So a process that finds the lock held by its own Slurm job (a requeued job is the
same job, its previous process is dead) or by a dead process on its own host waits up to :data:`STALE_WAIT_S` for
the release instead of failing.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from lit_dendrite.errors import ProjectError

STALE_WAIT_S = 180.0
POLL_S = 0.5


class Locked(ProjectError, RuntimeError):
    """The lock is held by another live process; the message names it."""


def _holder_now() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(holder: dict[str, Any] | None) -> str:
    """One phrase naming a holder."""
    if not holder:
        return "another process (no holder recorded)"
    job = f", Slurm job {holder['slurm_job']}" if holder.get("slurm_job") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{job}, since {holder.get('since')}"


class FileLock:
    """Exclusive lock on ``path`` (created if missing); ``advice`` ends the error a second process gets, and
    ``wait_s`` is how long ``with`` waits for it."""

    def __init__(self, path: Path, advice: str, wait_s: float = 0.0) -> None:
        self.path, self.advice, self.wait_s = Path(path), advice, wait_s
        self._fd: int | None = None

    def holder(self) -> dict[str, Any] | None:
        """Who holds (or last held) the lock, as written in the file; None if unknown."""
        try:
            data = json.loads(self.path.read_text() or "null")
        except (OSError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def held(self) -> bool:
        """Whether a process holds the lock now, as far as can be told without taking it: a holder is recorded (a
        release clears it) and, on this host, its process is alive; a holder on another host counts as holding it."""
        holder = self.holder()
        if not holder:
            return False
        return holder.get("host") != socket.gethostname() or _alive(int(holder.get("pid", 0)))

    def _ended_holder(self, holder: dict[str, Any] | None) -> bool:
        """True where the holder is gone although the lock is still reported (lease not expired yet)."""
        if not holder:
            return False
        own_job = os.environ.get("SLURM_JOB_ID")
        if own_job and holder.get("slurm_job") == own_job and holder.get("pid") != os.getpid():
            return True
        return holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", 0)))

    def acquire(self, wait_s: float | None = None) -> None:
        """Take the lock, waiting up to ``wait_s`` (default: the lock's; longer for an ended holder, see the
        module); raise :class:`Locked` naming the holder otherwise."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        start, wait_s = time.monotonic(), self.wait_s if wait_s is None else wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EACCES, errno.EAGAIN, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise
            holder = self.holder()
            waited = time.monotonic() - start
            if waited >= wait_s and not (self._ended_holder(holder) and waited < STALE_WAIT_S):
                os.close(fd)
                if self._ended_holder(holder):
                    raise Locked(
                        f"{self.path} is still locked {waited:.0f} s after its holder ({describe(holder)}) ended: "
                        "the file system has not released it yet; try again in a few minutes"
                    )
                raise Locked(f"{self.path} is locked by {describe(holder)}; {self.advice}")
            time.sleep(POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder_now()).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Clear the holder and drop the lock."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> FileLock:
        if self._fd is None:
            self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()
