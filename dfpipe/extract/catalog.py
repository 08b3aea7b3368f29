"""The catalog: one row per input video, built from a DFDC layout, a ``labels.csv`` or a bare folder.

Anything wrong with an entry (a missing file, a name that tries to leave the dataset, a duplicate
id, a malformed ``metadata.json``) becomes a row with ``error`` set, never an exception, so the
manifest can account for every video the dataset mentions.

The catalog is built in Arrow a chunk at a time (``CHUNK`` entries): no Python object per video
outlives its chunk, and the checks that must see every video (is the file there, is the id taken)
are joins on Arrow columns. A Python object per video was about 1 KB: 15 MB at 16,000 videos, a
gigabyte on the head at a million (``bench/scale.py``). The listing comes a folder at a time
(fsspec's ``find`` returned the whole dataset's names and details at once: about 870 MB of the
driver's peak at 100,000 videos). What is left per video is the catalog itself and the listing's
names, in Arrow: about 300 bytes a video.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dfpipe import records as R
from dfpipe import storage

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
LABELS = {"FAKE": R.LABEL_FAKE, "REAL": R.LABEL_REAL, "1": R.LABEL_FAKE, "0": R.LABEL_REAL}
CHUNK = 10_000  # entries gathered in Python before they become an Arrow table

# A chunk's columns: the catalog's, with each entry's name relative to the dataset root.
_CHUNK_SCHEMA = pa.schema([*R.CATALOG_SCHEMA, ("rel", pa.string())])


def _relative_is_safe(name: str) -> bool:
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return False
    parts = name.replace("\\", "/").split("/")
    return ".." not in parts


def _stem(name: str) -> str:
    return posixpath.splitext(posixpath.basename(name.replace("\\", "/")))[0]


def _is_video(names: pa.Array) -> pa.Array:
    pattern = r"(" + "|".join(e.replace(".", r"\.") for e in VIDEO_EXTENSIONS) + r")$"
    return pc.match_substring_regex(pc.utf8_lower(names), pattern)


class _Listing:
    """Every file below the dataset root (listed a folder at a time), as Arrow columns:
    ``rel`` (the name relative to the root), ``folder`` (its folder, ``""`` at the top) and
    ``video`` (a video file by its extension), sorted by name."""

    def __init__(self, root: storage.Folder):
        prefix = root.uri.rstrip("/") + "/"
        rel = pa.chunked_array(
            [
                pa.array([f[len(prefix) :] if f.startswith(prefix) else f for f in folder], pa.string())
                for folder in storage.iter_files(root.uri, root.options)  # a folder's names at a time
            ],
            pa.string(),
        ).combine_chunks()
        self.files = pa.table(
            {
                "rel": rel,
                "folder": pc.replace_substring_regex(rel, r"(^|/)[^/]*$", ""),
                "video": _is_video(rel),
            }
        ).sort_by("rel")
        videos = self.files.filter(self.files["video"]).sort_by(
            [("folder", "ascending"), ("rel", "ascending")]
        )
        self._videos = videos.column("rel")
        # Where each folder's videos lie in ``_videos``: a slice per folder, not a filter per part.
        counts = pc.value_counts(videos.column("folder"))
        self._folders: dict[str, tuple[int, int]] = {}
        start = 0
        for folder, count in zip(
            counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
        ):
            self._folders[folder] = (start, count)
            start += count

    def named(self, basename: str) -> list[str]:
        """The files called ``basename``, in any folder."""
        rel = self.files.column("rel")
        match = pc.or_(pc.equal(rel, basename), pc.ends_with(rel, "/" + basename))
        return rel.filter(match).to_pylist()

    def videos_in(self, folder: str) -> pa.ChunkedArray:
        """The videos directly in ``folder``, by name."""
        start, count = self._folders.get(folder, (0, 0))
        return self._videos.slice(start, count)

    def videos_outside(self, folders: set[str]) -> pa.ChunkedArray:
        """Every video not directly in one of ``folders``, by name."""
        videos = self.files.filter(self.files["video"])
        inside = pc.is_in(videos.column("folder"), value_set=pa.array(sorted(folders), pa.string()))
        return videos.column("rel").filter(pc.invert(inside))

    def missing(self, rel: pa.ChunkedArray) -> pa.ChunkedArray:
        """Whether each name in ``rel`` is absent from the listing."""
        return pc.invert(pc.is_in(rel, value_set=self.files.column("rel")))


def _chunks(names: pa.ChunkedArray):
    """The names of an Arrow column as Python strings, ``CHUNK`` at a time."""
    for start in range(0, len(names), CHUNK):
        yield names.slice(start, CHUNK).to_pylist()


class _Builder:
    def __init__(self, source: storage.Folder):
        self.root = storage.normalize(source.uri)
        self.options = source.options
        self.listing = _Listing(storage.Folder(self.root, self.options))
        self.tables: list[pa.Table] = []
        self.pending: list[tuple] = []
        # Videos at the top level belong to the part named after the dataset folder, so a DFDC part
        # given as the input names its videos' part as it would inside the whole dataset.
        self.top_part = dataset_part(self.root)

    def part_of(self, folder: str) -> str:
        return folder or self.top_part

    def uri_of(self, rel: str) -> str:
        return storage.join(self.root, rel)

    def check_inside(self, rel: str) -> str | None:
        """Why ``rel`` may not be read (``None`` when it may): it must stay inside the dataset root."""
        if not _relative_is_safe(rel):
            return f"{R.REASON_UNSAFE_PATH}: {rel!r} points outside the dataset folder"
        if storage.is_local(self.root):
            real = os.path.realpath(self.uri_of(rel))
            if os.path.commonpath([real, os.path.realpath(self.root)]) != os.path.realpath(self.root):
                return f"{R.REASON_UNSAFE_PATH}: {rel!r} is a link to {real}, outside the dataset folder"
        return None

    def add(
        self,
        rel: str,
        part: str,
        label: int | None = None,
        original: str | None = None,
        error: str | None = None,
    ):
        """One entry; whether its file is there is checked in Arrow, with its chunk's (:meth:`table`)."""
        rel = rel.replace("\\", "/")
        if error is None:
            error = self.check_inside(rel)
        uri = self.uri_of(rel) if _relative_is_safe(rel) else rel
        self.pending.append((_stem(rel), uri, posixpath.basename(rel), part, label, original, error, rel))
        if len(self.pending) >= CHUNK:
            self.flush()

    def add_failed(self, video_id: str, uri: str, filename: str, part: str, error: str) -> None:
        """An entry that names no video (a ``metadata.json`` or ``labels.csv`` that cannot be read)."""
        self.pending.append((video_id, uri, filename, part, None, None, error, None))

    def flush(self) -> None:
        if self.pending:
            columns = list(zip(*self.pending, strict=True))
            self.tables.append(
                pa.table(dict(zip(_CHUNK_SCHEMA.names, columns, strict=True)), schema=_CHUNK_SCHEMA)
            )
            self.pending = []

    def from_metadata(self, meta_rel: str) -> None:
        folder = posixpath.dirname(meta_rel)
        part = self.part_of(folder)
        listed: list[str] = []
        try:
            # A byte-order mark (common from Windows tools) is not an error.
            meta = json.loads(storage.read_text(self.uri_of(meta_rel), self.options).lstrip("\ufeff"))
            if not isinstance(meta, dict):
                raise ValueError(f"top level is {type(meta).__name__}, expected an object")
        except (ValueError, UnicodeDecodeError) as exc:
            self.add_failed(
                f"{part}/metadata.json",
                self.uri_of(meta_rel),
                "metadata.json",
                part,
                f"{R.REASON_BAD_METADATA}: {exc}",
            )
            meta = {}
        for name, info in sorted(meta.items()):
            rel = posixpath.join(folder, name) if folder else name
            listed.append(rel)
            label, original, error = None, None, None
            if not isinstance(info, dict):
                error = f"{R.REASON_BAD_METADATA}: entry for {name!r} is {type(info).__name__}, expected an object"
            else:
                raw = info.get("label")
                label = LABELS.get(str(raw).upper()) if raw is not None else None
                if raw is not None and label is None:
                    error = f"{R.REASON_BAD_LABEL}: {raw!r} is not REAL or FAKE"
                orig = info.get("original")
                original = _stem(orig) if isinstance(orig, str) and orig else None
            if not _relative_is_safe(name):
                error = f"{R.REASON_UNSAFE_PATH}: {name!r} points outside the dataset folder"
            self.add(rel, part, label, original, error)
        # Videos on disk that the metadata does not mention still get a row (label unknown).
        on_disk = self.listing.videos_in(folder)
        unlisted = on_disk.filter(pc.invert(pc.is_in(on_disk, value_set=pa.array(listed, pa.string()))))
        for names in _chunks(unlisted):
            for rel in names:
                self.add(rel, part)

    def from_labels_csv(self, csv_rel: str) -> None:
        text = storage.read_text(self.uri_of(csv_rel), self.options).lstrip("\ufeff")
        reader = csv.DictReader(io.StringIO(text))
        fields = {f.strip().lower(): f for f in (reader.fieldnames or [])}
        if "filename" not in fields:
            self.add_failed(
                csv_rel,
                self.uri_of(csv_rel),
                csv_rel,
                self.top_part,
                f"{R.REASON_BAD_METADATA}: {csv_rel} needs a 'filename' column (filename,label)",
            )
            return
        for row in reader:
            name = (row.get(fields["filename"]) or "").strip()
            raw = (row.get(fields["label"]) or "").strip() if "label" in fields else ""
            label = LABELS.get(raw.upper()) if raw else None
            error = (
                f"{R.REASON_BAD_LABEL}: {raw!r} is not REAL, FAKE, 1 or 0" if raw and label is None else None
            )
            original = (row.get(fields["original"]) or "").strip() if "original" in fields else ""
            self.add(
                name,
                self.part_of(posixpath.dirname(name)),
                label,
                _stem(original) if original else None,
                error,
            )

    def add_videos(self, names: pa.ChunkedArray) -> None:
        """Every video of ``names`` as an unlabelled entry of its folder's part."""
        for chunk in _chunks(names):
            for rel in chunk:
                self.add(rel, self.part_of(posixpath.dirname(rel)))

    def table(self) -> pa.Table:
        """The catalog: the chunks, with missing files and taken ids marked (in Arrow)."""
        self.flush()
        table = pa.concat_tables(self.tables) if self.tables else _CHUNK_SCHEMA.empty_table()
        rel = table.column("rel")
        missing = pc.and_kleene(
            pc.and_kleene(pc.is_null(table.column("error")), pc.is_valid(rel)), self.listing.missing(rel)
        )
        error = pc.if_else(
            missing,
            pc.binary_join_element_wise(f"{R.REASON_MISSING_FILE}: ", rel, " is listed but not present", ""),
            table.column("error"),
        )
        table = table.drop_columns(["rel"]).set_column(
            R.CATALOG_SCHEMA.get_field_index("error"), "error", error
        )
        return _unique_ids(_mark_duplicates(table))


def _mark_duplicates(table: pa.Table) -> pa.Table:
    """A usable entry whose id an earlier usable entry has becomes a failed one (``duplicate_id``).

    Sorted kernels and numpy, not a group-by and a join: Acero's threads took tens of MB for the
    catalog of 16,000 videos."""
    table = table.combine_chunks()
    if not table.num_rows:
        return table
    error = table.column("error").chunk(0)
    usable = np.flatnonzero(pc.is_null(error).to_numpy(zero_copy_only=False))
    ids = table.column("video_id").chunk(0).take(usable)
    order = pc.sort_indices(ids).to_numpy()  # stable: among equal ids, the earlier entry first
    sorted_ids = ids.take(order)
    repeat = np.zeros(len(order), dtype=bool)
    if len(order) > 1:
        repeat[1:] = pc.equal(sorted_ids.slice(1), sorted_ids.slice(0, len(order) - 1)).to_numpy(
            zero_copy_only=False
        )
    if not repeat.any():
        return table
    # Each repeat's first entry: the last entry before it that is not a repeat.
    first = np.flatnonzero(~repeat)[np.cumsum(~repeat) - 1]
    rows, firsts = usable[order[repeat]], usable[order[first[repeat]]]
    by_row = np.argsort(rows)
    rows, firsts = rows[by_row], firsts[by_row]
    uris = table.column("uri").chunk(0)
    reasons = pc.binary_join_element_wise(
        f"{R.REASON_DUPLICATE_ID}: ",
        ids.take(pa.array(order[repeat][by_row])),
        " also at ",
        uris.take(firsts),
        "",
    )
    mask = np.zeros(table.num_rows, dtype=bool)
    mask[rows] = True
    error = pc.replace_with_mask(error, pa.array(mask), reasons)
    return table.set_column(table.schema.get_field_index("error"), "error", error)


def _unique_ids(table: pa.Table) -> pa.Table:
    """Failed entries renamed ``id@part`` (then ``id@part#2``, ...) where their id is taken by a usable
    entry or an earlier failed one, so the manifest's ids stay unique. Only the failed entries are
    looked at one by one."""
    table = table.combine_chunks()
    failed = pc.is_valid(table.column("error")).chunk(0) if table.num_rows else pa.array([], pa.bool_())
    if not pc.any(failed).as_py():
        return table
    ids = table.column("video_id").chunk(0)
    usable_ids = ids.filter(pc.invert(failed))
    # Renamed ids hold an "@": only the usable ids that do can be taken by a renaming.
    taken = set(usable_ids.filter(pc.match_substring(usable_ids, "@")).to_pylist())
    failed_ids = ids.filter(failed)
    clashes = pc.is_in(failed_ids, value_set=usable_ids).to_pylist()
    parts = table.column("part").chunk(0).filter(failed).to_pylist()
    new_ids = []
    for base, part, clash in zip(failed_ids.to_pylist(), parts, clashes, strict=True):
        video_id = base
        if clash or video_id in taken:
            video_id, k = f"{base}@{part}", 1
            while video_id in taken:
                k += 1
                video_id = f"{base}@{part}#{k}"
        taken.add(video_id)
        new_ids.append(video_id)
    renamed = pc.replace_with_mask(ids, failed, pa.array(new_ids, pa.string()))
    return table.set_column(0, "video_id", renamed)


def dataset_part(folder_uri: str) -> str:
    """The part of a video directly inside ``folder_uri``: the folder's own name."""
    return posixpath.basename(storage.strip_protocol(folder_uri).rstrip("/")) or "."


def build_catalog(source: storage.Folder) -> pa.Table:
    """Find the videos under ``source``: DFDC ``metadata.json`` parts, else ``labels.csv``, else every video file."""
    if not storage.is_dir(source.uri, source.options):
        raise FileNotFoundError(
            f"input {source.uri!r} is not a folder: give the dataset folder (with metadata.json parts, "
            "a labels.csv, or plain video files)"
        )
    builder = _Builder(source)
    metadata = builder.listing.named("metadata.json")
    if metadata:
        for meta_rel in metadata:
            builder.from_metadata(meta_rel)
        # Video files outside any metadata part still count (as unlabelled).
        builder.add_videos(builder.listing.videos_outside({posixpath.dirname(m) for m in metadata}))
    elif "labels.csv" in builder.listing.named("labels.csv"):
        builder.from_labels_csv("labels.csv")
    else:
        builder.add_videos(builder.listing.videos_outside(set()))
    return builder.table()
