"""Fault injection helpers: an HTTP proxy in front of the moto server that fails requests on purpose,
and process helpers to kill a Ray actor or a whole job mid-run."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import signal
import socketserver
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

SLOW_DOWN = (
    503,
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>",
)
INTERNAL = (
    500,
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message></Error>",
)


class FaultyS3Proxy:
    """Forwards S3 requests to ``upstream``; ``fail(method, path, n)`` decides which fail, and how.

    ``fail`` gets the HTTP method, the path and the request's sequence number, and returns None
    (forward it) or a (status, body) pair to answer with instead. Counts are kept per outcome.
    """

    def __init__(self, upstream: str, fail: Callable[[str, str, int], tuple[int, bytes] | None]):
        self.upstream = urlsplit(upstream)
        self.fail = fail
        self.requests = 0
        self.failed = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    n = proxy.requests
                    proxy.requests += 1
                verdict = proxy.fail(self.command, self.path, n)
                if verdict is not None:
                    with proxy._lock:
                        proxy.failed += 1
                    status, payload = verdict
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = proxy.upstream.netloc
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                # A HEAD answer has no body but tells the object's size: pass that on.
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultyS3Proxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def processes(pattern: str) -> list[int]:
    """Pids whose command line contains ``pattern``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if pattern in cmd:
            found.append(int(name))
    return found


def wait_for(predicate: Callable[[], bool], timeout: float, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


def kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def assert_check_names_a_broken_copy(output: Path, tmp_path: Path, ok_video: str) -> None:
    """A copy of the extraction ``output`` with every row of a manifest chunk twice, ``ok_video``'s face
    shard gone, a half-written file and a wrong count in stats.json: `dfpipe check` names each."""
    from dfpipe.cli import main
    from dfpipe.invariants import check_output
    from dfpipe.storage import Folder

    broken = tmp_path / "broken"
    shutil.copytree(output, broken)
    chunk = sorted((broken / "videos").glob("*.parquet"))[0]
    shutil.copy(chunk, broken / "videos" / "part-duplicate.parquet")  # every row of a chunk twice
    (broken / "faces" / f"{ok_video}.parquet").unlink()  # an ok video loses its faces
    (broken / "faces" / ".tmp-abc").write_bytes(b"half")  # a crash mid-write
    stats = json.loads((broken / "stats.json").read_text())
    stats["frames"]["ok"] += 1
    (broken / "stats.json").write_text(json.dumps(stats))
    report = check_output(Folder(str(broken)))
    text = "\n".join(report.violations)
    for needle in ("more than once", "face shard is missing", "temporary files", "stats.json"):
        assert needle in text, report.format()
    assert main(["check", str(broken)]) == 1
