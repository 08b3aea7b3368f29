"""The catalog: one row per input video, built from a DFDC layout, a ``labels.csv`` or a bare folder.

Anything wrong with an entry (a missing file, a name that tries to leave the dataset, a duplicate
id, a malformed ``metadata.json``) becomes a row with ``error`` set, never an exception, so the
manifest can account for every video the dataset mentions.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
from dataclasses import dataclass

import pyarrow as pa

from dfpipe import records as R
from dfpipe import storage

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
LABELS = {"FAKE": R.LABEL_FAKE, "REAL": R.LABEL_REAL, "1": R.LABEL_FAKE, "0": R.LABEL_REAL}


@dataclass
class _Entry:
    video_id: str
    uri: str
    filename: str
    part: str
    label: int | None = None
    original: str | None = None
    error: str | None = None


def _relative_is_safe(name: str) -> bool:
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return False
    parts = name.replace("\\", "/").split("/")
    return ".." not in parts


def _stem(name: str) -> str:
    return posixpath.splitext(posixpath.basename(name.replace("\\", "/")))[0]


class _Builder:
    def __init__(self, root: str, options: storage.StorageOptions | None):
        self.root = storage.normalize(root)
        self.options = options
        files = storage.find(self.root, options)
        prefix = self.root.rstrip("/") + "/"
        # Relative names of every file below the root, from one listing (one LIST walk on S3).
        self.files = {f[len(prefix) :] if f.startswith(prefix) else f for f in files}
        self.entries: list[_Entry] = []
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
        rel = rel.replace("\\", "/")
        if error is None:
            error = self.check_inside(rel)
        if error is None and rel not in self.files:
            error = f"{R.REASON_MISSING_FILE}: {rel} is listed but not present"
        uri = self.uri_of(rel) if _relative_is_safe(rel) else rel
        self.entries.append(_Entry(_stem(rel), uri, posixpath.basename(rel), part, label, original, error))

    def videos_in(self, folder: str) -> list[str]:
        prefix = f"{folder}/" if folder else ""
        return sorted(
            f
            for f in self.files
            if f.startswith(prefix) and f.lower().endswith(VIDEO_EXTENSIONS) and "/" not in f[len(prefix) :]
        )

    def from_metadata(self, meta_rel: str) -> None:
        folder = posixpath.dirname(meta_rel)
        part = self.part_of(folder)
        listed: set[str] = set()
        try:
            # A byte-order mark (common from Windows tools) is not an error.
            meta = json.loads(storage.read_text(self.uri_of(meta_rel), self.options).lstrip("\ufeff"))
            if not isinstance(meta, dict):
                raise ValueError(f"top level is {type(meta).__name__}, expected an object")
        except (ValueError, UnicodeDecodeError) as exc:
            self.entries.append(
                _Entry(
                    f"{part}/metadata.json",
                    self.uri_of(meta_rel),
                    "metadata.json",
                    part,
                    error=f"{R.REASON_BAD_METADATA}: {exc}",
                )
            )
            meta = {}
        for name, info in sorted(meta.items()):
            rel = posixpath.join(folder, name) if folder else name
            listed.add(rel)
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
        for rel in self.videos_in(folder):
            if rel not in listed:
                self.add(rel, part)

    def from_labels_csv(self, csv_rel: str) -> None:
        text = storage.read_text(self.uri_of(csv_rel), self.options).lstrip("\ufeff")
        reader = csv.DictReader(io.StringIO(text))
        fields = {f.strip().lower(): f for f in (reader.fieldnames or [])}
        if "filename" not in fields:
            self.entries.append(
                _Entry(
                    csv_rel,
                    self.uri_of(csv_rel),
                    csv_rel,
                    self.top_part,
                    error=f"{R.REASON_BAD_METADATA}: {csv_rel} needs a 'filename' column (filename,label)",
                )
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

    def from_folder(self) -> None:
        for rel in sorted(f for f in self.files if f.lower().endswith(VIDEO_EXTENSIONS)):
            self.add(rel, self.part_of(posixpath.dirname(rel)))

    def table(self) -> pa.Table:
        seen: dict[str, str] = {}
        for e in self.entries:
            if e.error is None:
                if e.video_id in seen:
                    e.error = f"{R.REASON_DUPLICATE_ID}: {e.video_id} also at {seen[e.video_id]}"
                else:
                    seen[e.video_id] = e.uri
        # A failed entry can share an id with a good one; keep ids unique in the manifest.
        used: set[str] = set(seen)
        for e in self.entries:
            if e.error is not None:
                base, k = e.video_id, 1
                if e.video_id in used:
                    e.video_id = f"{base}@{e.part}"
                    while e.video_id in used:
                        k += 1
                        e.video_id = f"{base}@{e.part}#{k}"
                used.add(e.video_id)
        cols = {name: [getattr(e, name) for e in self.entries] for name in R.CATALOG_SCHEMA.names}
        return pa.table(cols, schema=R.CATALOG_SCHEMA)


def dataset_part(folder_uri: str) -> str:
    """The part of a video directly inside ``folder_uri``: the folder's own name."""
    return posixpath.basename(storage.strip_protocol(folder_uri).rstrip("/")) or "."


def build_catalog(input_uri: str, options: storage.StorageOptions | None = None) -> pa.Table:
    """Find the videos under ``input_uri``: DFDC ``metadata.json`` parts, else ``labels.csv``, else every video file."""
    if not storage.is_dir(input_uri, options):
        raise FileNotFoundError(
            f"input {input_uri!r} is not a folder: give the dataset folder (with metadata.json parts, "
            "a labels.csv, or plain video files)"
        )
    builder = _Builder(input_uri, options)
    metadata = sorted(f for f in builder.files if posixpath.basename(f) == "metadata.json")
    if metadata:
        for meta_rel in metadata:
            builder.from_metadata(meta_rel)
        # Video files outside any metadata part still count (as unlabelled).
        covered = {posixpath.dirname(m) for m in metadata}
        for rel in sorted(f for f in builder.files if f.lower().endswith(VIDEO_EXTENSIONS)):
            if posixpath.dirname(rel) not in covered:
                builder.add(rel, builder.part_of(posixpath.dirname(rel)))
    elif "labels.csv" in builder.files:
        builder.from_labels_csv("labels.csv")
    else:
        builder.from_folder()
    return builder.table()
