"""One writer per run folder: ``RUN/.lock`` is held while a run (``pretrain``, ``finetune``) or a study writes it.

Two runs into one ``--out`` would both "succeed" with their metrics interleaved and a checkpoint and its
``.prev`` from different runs. The lock file is created with ``O_CREAT | O_EXCL`` (the file system says which of
two runs created it; no check-then-write gap) before anything else is written to the folder, and holds JSON::

    {"pid": 4242, "host": "node07", "started": "2025-01-31T10:00:00+00:00", "command": "med3d-train finetune ...",
     "token": "<random>"}

It is removed when the run ends, by error too. A second run finding it is refused, naming the lock, its pid and
host. A lock whose process is gone (same host, ``os.kill(pid, 0)`` finds no such process: a run killed by
SIGKILL or a power cut) is stale and taken over, with a log line. On another host the process cannot be asked:
the lock is trusted, and the message says to delete it if no run is writing there. Under ``torchrun`` rank 0
alone takes it (the other ranks write nothing).

>>> with run_lock("runs/liver", log=print):
...     ...  # write the run folder
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import secrets
import shlex
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LOCK_FILE", "RunLock", "RunLockedError", "acquire_run_lock", "run_lock"]

LOCK_FILE = ".lock"


class RunLockedError(ValueError):
    """Another run holds the folder's lock; the message names the lock, its pid, host and what to do."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user: alive
        return True
    except OSError as exc:
        return exc.errno != errno.ESRCH
    return True


def _read(path: Path) -> dict[str, Any] | None:
    """The lock's record; None when it is gone. A file that is no record (empty: its writer died between creating
    and writing it; damaged) is ``{}``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _stale(holder: dict[str, Any], host: str) -> bool:
    """Whether the holder is a process of this host that no longer runs. A record without a pid (a damaged file,
    or one whose writer died between creating and writing it) is never taken for stale: the refusal names it."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    return holder.get("host") == host and not _pid_alive(pid)


def _describe(holder: dict[str, Any]) -> str:
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"
            f"{': ' + str(holder['command']) if holder.get('command') else ''}")


@dataclass
class RunLock:
    """A held lock; :meth:`release` removes its file (when it is still this lock's) and a folder it created
    that is left empty."""

    path: Path
    token: str
    created_folder: bool

    def release(self) -> None:
        holder = _read(self.path)
        if holder is not None and holder.get("token") == self.token:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        if self.created_folder:
            try:
                self.path.parent.rmdir()  # only when empty: a refusal before any write leaves no folder
            except OSError:
                pass


def _command() -> str:
    from catalog.redact import redact_url

    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]
    return redact_url(shlex.join(argv))[:500]


def acquire_run_lock(folder: str | os.PathLike[str], *, log: Callable[[str], None] = print,
                     error: type[Exception] = RunLockedError, enabled: bool = True) -> RunLock | None:
    """Create ``folder`` (when missing) and take its lock, or raise ``error`` naming the lock, its pid and host.
    A stale lock is taken over and said through ``log``. ``enabled=False`` (a torchrun rank other than 0) takes
    nothing and returns None."""
    if not enabled:
        return None
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    host = socket.gethostname()
    token = secrets.token_hex(8)
    record = {"pid": os.getpid(), "host": host,
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": _command(), "token": token}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None:  # released between our try and the read: try again
                continue
            if not _stale(holder, host):
                raise error(f"{path}: the run folder is locked by {_describe(holder)}. Another run is writing "
                            f"{folder}: wait for it to end or choose another --out (if no run is writing there, "
                            f"delete {path})") from None
            if _take_over(path, holder):
                log(f"{path}: taking over the stale lock of {_describe(holder)} (that process is gone)")
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return RunLock(path, token, created)
    raise error(f"{path}: could not take the run folder's lock (other runs keep taking it); try again")


def _take_over(path: Path, holder: dict[str, Any]) -> bool:
    """Remove the stale lock ``holder`` read at ``path``, unless another run replaced it meanwhile: it is first
    moved aside under a name of its own, then compared, and put back (never over a newer lock) when it is not the
    stale one. True when the stale lock was removed here."""
    aside = path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # another run took it over first
        return False
    if _read(aside) == holder:
        aside.unlink()
        return True
    try:
        os.link(aside, path)  # a live lock moved by mistake goes back, unless a newer one is there already
    except FileExistsError:
        pass
    aside.unlink()
    return False


@contextmanager
def run_lock(folder: str | os.PathLike[str], *, log: Callable[[str], None] = print,
             error: type[Exception] = RunLockedError, enabled: bool = True) -> Iterator[RunLock | None]:
    """:func:`acquire_run_lock` for the duration of a ``with`` block; released however the block ends."""
    lock = acquire_run_lock(folder, log=log, error=error, enabled=enabled)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
