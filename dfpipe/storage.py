"""How bytes move: one fsspec layer for local paths, ``file://`` and ``s3://``.

Stages and jobs pass URIs around; this module turns a URI into a filesystem and a path.
Ray Data and pyarrow get the same fsspec filesystem wrapped for Arrow, because pyarrow's
native S3 client ignores ``AWS_ENDPOINT_URL`` and would silently break S3-compatible stores.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq


@dataclass(frozen=True)
class StorageOptions:
    """Overrides for object stores; credentials never live here (they come from the environment)."""

    endpoint_url: str | None = None
    region: str | None = None
    anon: bool = False

    def for_protocol(self, protocol: str) -> dict:
        if protocol != "s3":
            return {}
        endpoint = (
            self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        )
        client_kwargs: dict = {}
        if endpoint:
            client_kwargs["endpoint_url"] = endpoint
        if self.region:
            client_kwargs["region_name"] = self.region
        # botocore's "standard" retry mode: throttling (SlowDown) and 5xx answers are retried with
        # exponential backoff, up to 10 attempts (AWS_MAX_ATTEMPTS, AWS's own variable, sets another
        # count); at thousands of workers, throttling is routine.
        attempts = int(os.environ.get("AWS_MAX_ATTEMPTS") or 10)
        opts: dict = {
            "anon": self.anon,
            "config_kwargs": {"retries": {"max_attempts": attempts, "mode": "standard"}},
        }
        if client_kwargs:
            opts["client_kwargs"] = client_kwargs
        return opts


@dataclass(frozen=True)
class Folder:
    """A folder URI and the options to reach it, passed around as one (datatrove's ``DataFolder``)."""

    uri: str
    options: StorageOptions | None = None

    def join(self, *parts: str) -> str:
        return join(self.uri, *parts)

    def exists(self, *parts: str) -> bool:
        return exists(self.join(*parts) if parts else self.uri, self.options)

    def read_json(self, *parts: str):
        return read_json(self.join(*parts), self.options)

    def write_json(self, name: str, obj) -> None:
        write_json(self.join(name), obj, self.options)

    def delete(self, *parts: str) -> None:
        delete(self.join(*parts) if parts else self.uri, self.options)

    def read_bytes(self, *parts: str) -> bytes:
        return read_bytes(self.join(*parts), self.options)

    def write_bytes(self, name: str, data: bytes) -> None:
        write_bytes(self.join(name), data, self.options)

    def sub(self, *parts: str) -> Folder:
        """The folder ``parts`` below this one, reached the same way."""
        return Folder(self.join(*parts), self.options)

    def write_text(self, name: str, text: str) -> None:
        write_text(self.join(name), text, self.options)

    def read_parquet(
        self, *parts: str, columns: list[str] | None = None, schema: pa.Schema | None = None, file_column=None
    ) -> pa.Table:
        """Every Parquet file below this folder (or ``parts`` of it) as one table (:func:`read_parquet_dir`)."""
        uri = self.join(*parts) if parts else self.uri
        return read_parquet_dir(
            uri, columns=columns, schema=schema, options=self.options, file_column=file_column
        )

    def find(self) -> list[str]:
        """Every file below this folder as a full URI, sorted (:func:`find`)."""
        return find(self.uri, self.options)

    def write_parquet(self, name: str, table: pa.Table) -> None:
        write_parquet(table, self.join(name), self.options)


# Folders written in chunks: name -> (folder, schema), the last one the marker. A chunk's files
# share a name, and count only once the marker's exists.
ChunkFolders = dict[str, tuple[Folder, pa.Schema]]


def protocol_of(uri: str) -> str:
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", uri)
    return match.group(1).lower() if match else "file"


def is_local(uri: str) -> bool:
    return protocol_of(uri) == "file"


def strip_protocol(uri: str) -> str:
    if protocol_of(uri) == "file":
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        return os.path.abspath(os.path.expanduser(path))
    return uri.split("://", 1)[1].rstrip("/")


def normalize(uri: str) -> str:
    """A canonical form: absolute local paths without ``file://``, object-store URIs without a trailing slash."""
    if is_local(uri):
        return strip_protocol(uri)
    return f"{protocol_of(uri)}://{strip_protocol(uri)}"


def filesystem(uri: str, options: StorageOptions | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it."""
    protocol = protocol_of(uri)
    opts = (options or StorageOptions()).for_protocol(protocol)
    fs = fsspec.filesystem(protocol, **opts)
    return fs, strip_protocol(uri)


def arrow_filesystem(uri: str, options: StorageOptions | None = None):
    """A pyarrow filesystem over the same fsspec filesystem, plus the path, for Ray Data and pyarrow."""
    from pyarrow.fs import FSSpecHandler, LocalFileSystem, PyFileSystem

    if is_local(uri):
        return LocalFileSystem(), strip_protocol(uri)
    fs, path = filesystem(uri, options)
    return PyFileSystem(FSSpecHandler(fs)), path


def join(uri: str, *parts: str) -> str:
    if is_local(uri):
        return os.path.join(strip_protocol(uri), *parts)
    return posixpath.join(normalize(uri), *parts)


def with_protocol(uri_like: str, path: str) -> str:
    """Put the protocol of ``uri_like`` in front of a bare ``path`` returned by an fsspec listing."""
    if is_local(uri_like):
        return path
    return f"{protocol_of(uri_like)}://{path}"


def exists(uri: str, options: StorageOptions | None = None) -> bool:
    fs, path = filesystem(uri, options)
    return fs.exists(path)


def is_dir(uri: str, options: StorageOptions | None = None) -> bool:
    fs, path = filesystem(uri, options)
    return fs.isdir(path)


def size(uri: str, options: StorageOptions | None = None) -> int:
    fs, path = filesystem(uri, options)
    return int(fs.size(path))


def find(uri: str, options: StorageOptions | None = None) -> list[str]:
    """Every file below ``uri`` as a full URI, sorted, so listings are deterministic.

    Nothing of the listing stays behind: s3fs caches every folder a listing walks for the life of
    the process (about 1 KB a file: a GB on the driver for the catalog of a million videos), and a
    file that a worker writes after that listing is then missing to this process's next look."""
    fs, path = filesystem(uri, options)
    try:
        if not fs.exists(path):
            return []
        return sorted(with_protocol(uri, p) for p in fs.find(path))
    finally:
        _forget_listing(fs, path)


def iter_files(uri: str, options: StorageOptions | None = None) -> Iterator[list[str]]:
    """Every file below ``uri`` as a full URI, a folder at a time (sorted within it): for a
    listing too large to hold as Python strings, such as the input of a million videos. What
    fsspec caches of a folder is dropped as the walk leaves it."""
    fs, path = filesystem(uri, options)
    try:
        if not fs.exists(path):
            return
        for root, _folders, files in fs.walk(path):
            yield sorted(with_protocol(uri, posixpath.join(root, f)) for f in files)
            getattr(fs, "dircache", {}).pop(root, None)
    finally:
        _forget_listing(fs, path)


def _forget_listing(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Drop what fsspec cached of ``path``, its parents and every folder below it."""
    fs.invalidate_cache(path)  # the folder and its parents
    below = path.rstrip("/") + "/"
    for key in [k for k in getattr(fs, "dircache", {}) if k.startswith(below)]:
        fs.dircache.pop(key, None)


def read_bytes(uri: str, options: StorageOptions | None = None) -> bytes:
    fs, path = filesystem(uri, options)
    return fs.cat_file(path)


def read_text(uri: str, options: StorageOptions | None = None) -> str:
    return read_bytes(uri, options).decode("utf-8-sig")


_UMASK = os.umask(0o022)  # read once (setting it is the only way to read it) and put back at once
os.umask(_UMASK)


def write_bytes(uri: str, data: bytes, options: StorageOptions | None = None) -> None:
    """Write so that readers see the old object or the whole new one, never a partial file.

    Object stores publish an object only when its upload completes; on local disk we write a
    temporary file in the same folder and rename it into place.
    """
    fs, path = filesystem(uri, options)
    if is_local(uri):
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        try:
            # mkstemp makes the file private (0600); an output is shared like any file the user
            # writes (a review page served as a static site, a folder other accounts read).
            os.fchmod(fd, 0o666 & ~_UMASK)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    else:
        fs.pipe_file(path, data)


def write_text(uri: str, text: str, options: StorageOptions | None = None) -> None:
    write_bytes(uri, text.encode("utf-8"), options)


def write_json(uri: str, obj, options: StorageOptions | None = None) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", options)


def read_json(uri: str, options: StorageOptions | None = None):
    return json.loads(read_text(uri, options))


def write_parquet(table: pa.Table, uri: str, options: StorageOptions | None = None) -> None:
    """One Parquet file, written atomically (see :func:`write_bytes`)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    write_bytes(uri, buf.getvalue(), options)


READ_THREADS = 16  # files read_parquet_dir reads at once


def read_parquet_dir(
    uri: str,
    columns: list[str] | None = None,
    schema: pa.Schema | None = None,
    options: StorageOptions | None = None,
    file_column: str | None = None,
) -> pa.Table:
    """All ``*.parquet`` files below ``uri`` as one table (empty table of ``schema`` when none),
    with ``file_column`` holding each row's file name when given.

    For small tables (manifests, summaries, the keys of a marker folder); large ones go through Ray
    Data. The files are read ``READ_THREADS`` at a time: a marker folder holds a file per batch
    (125k for the embedding cache of a million videos), read one after another at a GET's latency
    each (``bench/marker_reads.py``).
    """
    files = [f for f in find(uri, options) if f.endswith(".parquet") and not _is_hidden(f)]

    def read(f: str) -> pa.Table:
        fs, path = filesystem(f, options)
        with fs.open(path, "rb") as fh:
            t = pq.read_table(fh, columns=columns, schema=schema)
        if file_column:
            t = t.append_column(file_column, pa.array([posixpath.basename(f)] * t.num_rows, pa.string()))
        return t

    with ThreadPoolExecutor(max(1, min(READ_THREADS, len(files))), thread_name_prefix="dfpipe-read") as pool:
        tables = list(pool.map(read, files))  # in the files' order
    if tables:
        return pa.concat_tables(tables, promote_options="default")
    if schema is None:
        return pa.table({})
    empty = schema.empty_table().select(columns) if columns else schema.empty_table()
    return empty.append_column(file_column, pa.array([], pa.string())) if file_column else empty


COMPACT_TABLES = 32  # pending tables a ChunkedParquetWriter joins into one


class ChunkedParquetWriter:
    """Buffers rows for one or more folders and writes them as Parquet chunks, each atomically.

    ``folders`` maps a name to ``(folder, schema)``; the last one is the marker. A flush writes
    one file per folder, all named by a hash of the sorted ``key`` values in the marker rows, and
    writes the marker's file last: a chunk counts as done only once its marker exists, and files
    without their marker are left-overs of a crash (:meth:`remove_orphans`). No name depends on
    time or chance (``salt`` separates chunks of the same keys, e.g. per model version). Flushes every ``flush_rows`` marker rows or ``flush_seconds`` seconds.
    """

    def __init__(
        self,
        folders: ChunkFolders,
        key: str,
        flush_rows: int = 500,
        flush_seconds: float = 60.0,
        salt: str = "",
    ):
        self.folders, self.key, self.salt = folders, key, salt
        self.marker = list(folders)[-1]
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self.pending: dict[str, list[pa.Table]] = {name: [] for name in folders}
        self.n_pending = 0
        self.written = 0
        self.last_flush = time.monotonic()

    def add(self, **tables: pa.Table) -> None:
        for name, table in tables.items():
            if table.num_rows:
                pending = self.pending[name]
                pending.append(table)
                if len(pending) >= COMPACT_TABLES:
                    # Into one table of its own: each small table streamed from Ray holds buffers
                    # (and object-store pages) of its own, tens of KB for a one-row manifest table.
                    self.pending[name] = [pa.concat_tables(pending).combine_chunks()]
        self.n_pending += tables[self.marker].num_rows
        due = time.monotonic() - self.last_flush > self.flush_seconds
        if self.n_pending >= self.flush_rows or (self.n_pending and due):
            self.flush()

    def flush(self) -> None:
        if not self.n_pending:
            return
        marker_rows = pa.concat_tables(self.pending[self.marker])
        name = chunk_name(marker_rows.column(self.key).to_pylist(), self.salt)
        write_chunk(self.folders, {k: v for k, v in self.pending.items() if v}, name)
        self.written += marker_rows.num_rows
        self.pending = {name: [] for name in self.folders}
        self.n_pending, self.last_flush = 0, time.monotonic()

    def remove_orphans(self) -> int:
        """Delete chunk files whose marker file is missing (a crash between the two); returns how many."""
        return remove_orphans(self.folders)


def chunk_name(keys, salt: str = "") -> str:
    """The file name of a chunk holding the rows of ``keys``: a hash of them (and ``salt``), so a
    rerun over the same keys writes the same name and nothing depends on time or chance."""
    parts = ([salt] if salt else []) + sorted(str(k) for k in keys)
    return f"part-{hashlib.sha256(chr(10).join(parts).encode()).hexdigest()[:20]}.parquet"


def write_chunk(folders: ChunkFolders, tables: dict[str, pa.Table | list[pa.Table]], name: str) -> None:
    """One file named ``name`` in every folder of ``folders`` (the last one, the marker, last), each
    atomically; a folder without rows gets an empty file, so the chunk is whole."""
    for key, (folder, schema) in folders.items():
        parts = tables.get(key)
        parts = [parts] if isinstance(parts, pa.Table) else list(parts or [])
        folder.write_parquet(name, pa.concat_tables(parts).cast(schema) if parts else schema.empty_table())


def remove_orphans(folders: ChunkFolders) -> int:
    """Delete chunk files whose marker file (same name in the last folder) is missing: the left-overs
    of a run that stopped between the two. Returns how many."""
    marker = list(folders.values())[-1][0]
    markers = {posixpath.basename(f) for f in marker.find()}
    removed = 0
    for folder, _ in list(folders.values())[:-1]:
        for f in folder.find():
            if f.endswith(".parquet") and posixpath.basename(f) not in markers:
                delete(f, folder.options)
                removed += 1
    return removed


def copy(src_uri: str, dst_uri: str, options: StorageOptions | None = None) -> None:
    write_bytes(dst_uri, read_bytes(src_uri, options), options)


def delete(uri: str, options: StorageOptions | None = None) -> None:
    fs, path = filesystem(uri, options)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def delete_all_but(uri: str, keep: set[str], options: StorageOptions | None = None) -> None:
    """Delete what is inside ``uri`` except the entries named in ``keep`` (e.g. ``logs``, where the
    running job is writing its log)."""
    fs, path = filesystem(uri, options)
    if not fs.exists(path):
        return
    for entry in fs.ls(path, detail=False):
        if entry.rstrip("/").rsplit("/", 1)[-1] not in keep:
            fs.rm(entry, recursive=True)


@contextmanager
def local_copy(uri: str, options: StorageOptions | None = None) -> Iterator[str]:
    """A local path holding ``uri``'s bytes: the file itself when local, else a temporary download."""
    if is_local(uri):
        yield strip_protocol(uri)
        return
    fs, path = filesystem(uri, options)
    suffix = os.path.splitext(path)[1]
    tmp = os.path.join(tempfile.gettempdir(), f"dfpipe-{uuid.uuid4().hex}{suffix}")
    try:
        fs.get_file(path, tmp)
        yield tmp
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def safe_name(key: str) -> str:
    """A file name derived from an id: stable, readable, and unable to leave its folder."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), key)
    if cleaned.startswith("."):
        cleaned = "%2E" + cleaned[1:]
    return cleaned or "_"


def _is_hidden(uri: str) -> bool:
    return posixpath.basename(uri).startswith((".", "_"))
