"""Reading a marker folder of many small Parquet files from S3, one at a time and ``READ_THREADS`` at once.

    python bench/marker_reads.py [--files 1000] [--json]

Every step reads the keys of its marker folder before it works (the anti-join): a file per batch,
so a million videos leave 2,000 manifest files, 31k segmentation chunks, 125k embedding-cache chunks
and 16k score chunks. This writes ``--files`` one-row files to a moto S3 server (a real HTTP
endpoint) and reads them back with ``dfpipe.storage.read_parquet_dir``, first with one thread (the
code before issue 35), then with ``READ_THREADS``, side by side in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=1000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import pyarrow as pa

    from dfpipe import storage

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            os.environ.setdefault(key, "testing")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        opts = storage.StorageOptions(endpoint_url=f"http://127.0.0.1:{port}")
        fs, _ = storage.filesystem("s3://bench-markers", opts)
        fs.mkdir("bench-markers")
        for i in range(args.files):
            table = pa.table({"video_id": [f"v{i:07d}"], "n": [i]})
            storage.write_parquet(table, f"s3://bench-markers/m/part-{i:07d}.parquet", opts)
        threads = storage.READ_THREADS
        seconds = {}
        for n in (1, threads):
            storage.READ_THREADS = n
            start = time.perf_counter()
            table = storage.read_parquet_dir("s3://bench-markers/m", options=opts)
            seconds[n] = round(time.perf_counter() - start, 2)
            assert table.column("n").to_pylist() == list(range(args.files)), "rows out of the files' order"
        storage.READ_THREADS = threads
    finally:
        server.terminate()
        server.wait()
    report = {
        "files": args.files,
        "seconds": {str(k): v for k, v in seconds.items()},
        "x_one_thread": round(seconds[1] / seconds[threads], 2),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for n, s in seconds.items():
            print(f"{args.files} files, {n:>2} thread(s): {s:.2f} s ({1000 * s / args.files:.1f} ms a file)")
        print(f"{threads} threads: {report['x_one_thread']}x faster than one")
    return 0


if __name__ == "__main__":
    sys.exit(main())
