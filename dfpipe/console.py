"""What a job shows a person, and where everything else goes.

A job's own lines (a start line per step, a progress line now and then, a finish line, the summary,
warnings and errors) go to the console through :func:`say` and :func:`shout`. Everything else the
process prints (Ray's progress blocks and INFO lines, the output Ray forwards from its workers,
its C++ core's log lines, library warnings) goes to a log file under the job's output while
:func:`log_file` is active: file descriptors 1 and 2 themselves point there, so nothing written by
C or C++ code escapes. ``--verbose`` leaves the descriptors alone and everything is printed as before.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TextIO

from dfpipe import storage

_out: TextIO | None = None  # the console while the process's own stdout/stderr go to a log file
_err: TextIO | None = None


def out() -> TextIO:
    return _out or sys.stdout


def err() -> TextIO:
    return _err or sys.stderr


def say(text: str = "") -> None:
    """A line for the person running the job (and for the log file, when there is one)."""
    _tell(text, out(), 1)


def shout(text: str) -> None:
    """An error or warning line for the person running the job (standard error; and the log)."""
    _tell(text, err(), 2)


def _tell(text: str, stream: TextIO, fd: int) -> None:
    print(text, file=stream, flush=True)
    if _out is not None:  # descriptors 1 and 2 are the log file
        os.write(fd, (text + "\n").encode("utf-8", "replace"))


def log_name(job: str, now: datetime | None = None) -> str:
    return f"{job}-{(now or datetime.now(UTC)).strftime('%Y%m%dT%H%M%SZ')}.log"


@contextmanager
def log_file(folder: storage.Folder, name: str) -> Iterator[str]:
    """Send everything the process prints to the file ``name`` in ``folder`` (local, or uploaded at the
    end when remote); :func:`say` and :func:`shout` still reach the console. Yields the path being written."""
    global _out, _err

    uri, options = folder.join(name), folder.options
    if storage.is_local(uri):
        path = storage.strip_protocol(uri)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    else:
        fd, path = tempfile.mkstemp(prefix="dfpipe-", suffix=".log")
        os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = os.dup(1), os.dup(2)
    _out, _err = _console_stream(sys.stdout, saved[0]), _console_stream(sys.stderr, saved[1])
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    warnings_here = logging.StreamHandler(_err)
    warnings_here.setLevel(logging.WARNING)
    warnings_here.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logging.getLogger("dfpipe").addHandler(warnings_here)
    try:
        yield path
    except BaseException:
        os.write(2, traceback.format_exc().encode())  # into the log; the caller reports it on the console
        raise
    finally:
        logging.getLogger("dfpipe").removeHandler(warnings_here)
        for stream in (sys.stdout, sys.stderr, _out, _err):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for stream in (_out, _err):
            if stream not in (sys.stdout, sys.stderr):
                stream.close()  # closes its own duplicate of the saved descriptor
        for fd in saved:
            os.close(fd)
        _out = _err = None
        if not storage.is_local(uri):
            try:
                storage.copy(path, uri, options)
                os.unlink(path)
            except OSError as exc:
                shout(f"could not upload the log to {uri} ({exc}); it is at {path}")


def _console_stream(current: TextIO, saved_fd: int) -> TextIO:
    """Where console lines go while descriptors 1 and 2 point at the log: a stream on the saved
    descriptor, unless ``current`` is not on a descriptor at all (pytest's capsys), then itself."""
    try:
        current.fileno()
    except (OSError, ValueError, AttributeError):
        return current
    return os.fdopen(os.dup(saved_fd), "w", buffering=1, encoding="utf-8", errors="replace")


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Progress of a long step, readable wherever it is printed.

    On a terminal, one line rewritten in place. Elsewhere (CI, ``ray job submit``, a cron log) a
    line now and then: after ``first_s`` seconds, then whenever a tenth of the time so far has
    passed, at least every ``max_s``; a 10-hour run prints about a hundred lines, a minute-long one
    two or three. ``close()`` prints the last state once more (ending the terminal line).
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        unit: str,
        *,
        stream: TextIO | None = None,
        first_s: float = 15.0,
        max_s: float = 300.0,
        now: Callable[[], float] = time.monotonic,
    ):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or out()
        self.live = _is_terminal(self.stream)
        self.first_s, self.max_s, self.now = first_s, max_s, now
        self.start = self.last = now()
        self.printed = 0
        self.done, self.shown, self.counts, self.detail = 0, -1, {}, ""

    def update(self, done: int, detail: str = "", **counts: float) -> None:
        """``done`` items of ``total`` so far; ``counts`` are totals shown as rates (frames=...)."""
        self.done, self.detail, self.counts = done, detail, counts
        t = self.now()
        if self.live:
            if t - self.last >= 0.5:
                self._print("\r" + self.line(t) + "\033[K", end="")
                self.last = t
            return
        elapsed = t - self.start
        due = self.first_s if not self.printed else min(self.max_s, max(self.first_s, elapsed / 10))
        if t - self.last >= due:
            self._print(self.line(t))
            self.last, self.shown = t, done

    def close(self) -> None:
        """End the progress: the final state, unless it is already the last line printed (or
        nothing was ever printed: a step that ends in seconds needs only its finish line)."""
        if self.live:
            self._print("\r" + self.line(self.now()) + "\033[K")
        elif self.printed and self.shown != self.done:
            self._print(self.line(self.now()))

    def line(self, t: float) -> str:
        elapsed = max(t - self.start, 1e-9)
        parts = [f"{self.done}/{self.total} {self.unit}" if self.total else f"{self.done} {self.unit}"]
        parts += [f"{n / elapsed:.1f} {name}/s" for name, n in self.counts.items()]
        parts.append(f"{clock(elapsed)} elapsed")
        if self.total and 0 < self.done < self.total:
            parts.append(f"ETA {clock(elapsed * (self.total - self.done) / self.done)}")
        text = f"{self.label}: " + ", ".join(parts)
        return f"{text}; {self.detail}" if self.detail else text

    def _print(self, text: str, end: str = "\n") -> None:
        print(text, file=self.stream, end=end, flush=True)
        self.printed += 1


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError, AttributeError):
        return False
