"""A run lock beside the outputs, so two overlapping scheduled runs cannot both write.

Local roots use an exclusive create (``O_EXCL``), which is atomic. Object stores have no portable
create-if-absent, so there the lock is written with a random token and read back after a pause:
a weaker guard that is enough for cron-spaced runs. While a run holds the lock a heartbeat thread
rewrites its ``beat`` time (every quarter of ``stale_after_s``, at most every minute); a lock whose
last beat is older than ``stale_after_s`` is taken over, so a run killed without cleaning up blocks
nothing for long, and a long run is never joined by a second one.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager

from dfpipe import storage

log = logging.getLogger(__name__)


class LockHeld(RuntimeError):
    """Another run holds the lock."""


def _holder() -> dict:
    now = time.time()
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": now,
        "beat": now,
        "token": uuid.uuid4().hex,
    }


def _holder_gone(holder: dict) -> str | None:
    """Why the run that holds a lock is provably gone, or None: it ran on this machine, and its process
    has ended, or its pid now belongs to a process started after the lock was taken. A holder on
    another machine (a head node lost, say) cannot be seen from here: its heartbeat must go stale."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid():
        return None
    started = _process_start(pid)
    if started is None:
        return f"pid {pid} on this machine, has ended"
    if started > float(holder.get("since", 0)) + 1:
        return f"pid {pid} on this machine, has ended (the pid is another process's now)"
    return None


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None if there is no such process."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        boot = next(float(x.split()[1]) for x in open("/proc/stat") if x.startswith("btime"))
    except FileNotFoundError:
        return None
    except (OSError, StopIteration, IndexError, ValueError):  # no /proc (macOS): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0.0
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _last_beat(holder: dict) -> float:
    return float(holder.get("beat", holder.get("since", 0)))


@contextmanager
def run_lock(folder: storage.Folder, name: str, stale_after_s: float = 6 * 3600):
    """Hold the lock file ``name`` in ``folder`` while the block runs (a LockHeld when another live run
    holds it), with a heartbeat; a stale one, or one whose holder is provably gone, is taken over."""
    uri, options = folder.join(name), folder.options
    me = _holder()
    if storage.exists(uri, options):
        try:
            other = storage.read_json(uri, options)
        except (ValueError, OSError):
            other = {"since": 0}
        age = time.time() - _last_beat(other)
        gone = _holder_gone(other)
        if age < stale_after_s and not gone:
            held = time.time() - float(other.get("since", 0))
            raise LockHeld(
                f"{uri} is held by {other.get('host')} pid {other.get('pid')} for {held:.0f} s "
                f"(last heartbeat {age:.0f} s ago). If that run is gone (its machine lost, the head "
                f"node with it), the lock is taken over once its heartbeat is stale_lock_s="
                f"{stale_after_s:.0f} s old, in {stale_after_s - age:.0f} s; to take it over now, "
                f"rerun with stale_lock_s={max(1, int(age))}"
            )
        if gone:
            log.warning("taking over lock %s: its holder, %s", uri, gone)
        else:
            log.warning("taking over a stale lock %s (no heartbeat for %.0f s)", uri, age)
        storage.delete(uri, options)
    if storage.is_local(uri):
        path = storage.strip_protocol(uri)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            raise LockHeld(f"{uri} was taken by another run just now") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
    else:
        storage.write_json(uri, me, options)
        time.sleep(1.0)
        if storage.read_json(uri, options).get("token") != me["token"]:
            raise LockHeld(f"{uri} was taken by another run just now")
    stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat, args=(folder, name, me, min(60.0, stale_after_s / 4), stop), daemon=True
    )
    beat.start()
    try:
        yield me
    finally:
        stop.set()
        beat.join()
        try:
            if storage.read_json(uri, options).get("token") == me["token"]:
                storage.delete(uri, options)
        except (OSError, ValueError):
            log.warning("could not release lock %s", uri)


def _heartbeat(folder: storage.Folder, name: str, me: dict, every: float, stop: threading.Event) -> None:
    """Refresh the lock's ``beat`` until ``stop``; stop beating if another run took the lock over."""
    uri, options = folder.join(name), folder.options
    while not stop.wait(every):
        try:
            if storage.read_json(uri, options).get("token") != me["token"]:
                log.warning("lock %s was taken over by another run; no longer refreshing it", uri)
                return
            me["beat"] = time.time()
            storage.write_json(uri, me, options)
        except (OSError, ValueError) as exc:  # a missed beat is retried; only many make the lock stale
            log.warning("could not refresh lock %s: %s", uri, exc)
