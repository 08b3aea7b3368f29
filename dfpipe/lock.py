"""A run lock beside the outputs, so two overlapping scheduled runs cannot both write.

Local roots use an exclusive create (``O_EXCL``), which is atomic. Object stores have no portable
create-if-absent, so there the lock is written with a random token and read back after a pause:
a weaker guard that is enough for cron-spaced runs. A lock older than ``stale_after_s`` is taken
over, so a run killed without cleaning up blocks nothing for long.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from contextlib import contextmanager

from dfpipe import storage

log = logging.getLogger(__name__)


class LockHeld(RuntimeError):
    """Another run holds the lock."""


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "token": uuid.uuid4().hex}


@contextmanager
def run_lock(uri: str, options: storage.StorageOptions | None = None, stale_after_s: float = 6 * 3600):
    me = _holder()
    if storage.exists(uri, options):
        try:
            other = storage.read_json(uri, options)
        except (ValueError, OSError):
            other = {"since": 0}
        age = time.time() - float(other.get("since", 0))
        if age < stale_after_s:
            raise LockHeld(f"{uri} is held by {other.get('host')} pid {other.get('pid')} for {age:.0f} s")
        log.warning("taking over a stale lock %s (%.0f s old)", uri, age)
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
    try:
        yield me
    finally:
        try:
            if storage.read_json(uri, options).get("token") == me["token"]:
                storage.delete(uri, options)
        except (OSError, ValueError):
            log.warning("could not release lock %s", uri)
