"""Every output's folder layout and its readers, in one place.

Jobs write these folders and ``dfpipe check`` verifies them; both read them through here, so a
layout change is one edit and nothing imports a job module to find a file. Readers return whole
tables: use them for per-video tables (manifests, summaries, scores) and column-pruned reads;
per-window payloads (codes, crops) are streamed by the runner or read per chunk by a worker.

    extraction   OUTPUT/faces/<video>.parquet   one shard per video (frames, boxes, flags, crops)
                 OUTPUT/videos/part-*.parquet   the manifest: one row per input video (the marker)
    segmentation OUTPUT/windows/, tracks/, videos/ (the marker), chunk files of the same name
    embeddings   CACHE/windows/, videos/ (the marker), CACHE/cache.json
    score        OUTPUT/window_scores/, scores/ (the marker), submission.csv, report/, extract/,
                 segment-<hash>/
every output     OUTPUT/config.json, OUTPUT/stats.json, OUTPUT/logs/
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dfpipe import records as R
from dfpipe import storage


def _layout(output: str, *names: str) -> dict[str, str]:
    """``{"videos": OUTPUT/videos, "stats": OUTPUT/stats.json, ...}``: each name without its suffix."""
    return {name.split(".")[0]: storage.join(output, name) for name in names}


def extraction(output: str) -> dict[str, str]:
    return _layout(output, "faces", "videos", "stats.json", "config.json")


def segmentation(output: str) -> dict[str, str]:
    return _layout(output, "windows", "tracks", "videos", "stats.json", "config.json")


CACHE_META = "cache.json"  # an embedding cache's embedder, faces and blend


def scoring(output: str) -> dict[str, str]:
    names = ("extract", "scores", "window_scores", "submission.csv", "report", "stats.json", "config.json")
    return _layout(output, *names)


# Chunked folders (storage.ChunkFolders), marker last: a chunk's files share a name and count only
# once the marker's exists.
def segmentation_folders(output: storage.Folder) -> storage.ChunkFolders:
    return {
        "windows": (output.sub("windows"), R.WINDOWS_SCHEMA),
        "tracks": (output.sub("tracks"), R.TRACKS_SCHEMA),
        "videos": (output.sub("videos"), R.SEGMENTS_SCHEMA),
    }


def embedding_folders(cache: storage.Folder) -> storage.ChunkFolders:
    return {
        "windows": (cache.sub("windows"), R.EMBEDDINGS_SCHEMA),
        "videos": (cache.sub("videos"), R.EMBEDDED_VIDEOS_SCHEMA),
    }


def scoring_folders(output: storage.Folder) -> storage.ChunkFolders:
    return {
        "window_scores": (output.sub("window_scores"), R.WINDOW_SCORES_SCHEMA),
        "scores": (output.sub("scores"), R.SCORES_SCHEMA),
    }


# Readers take the output as a storage.Folder: its URI and the options that reach it, as one.
def _read(output: storage.Folder, name: str, schema: pa.Schema, columns: list[str] | None) -> pa.Table:
    return output.read_parquet(name, columns=columns, schema=schema)


def read_manifest(output: storage.Folder, columns: list[str] | None = None) -> pa.Table:
    return _read(output, "videos", R.VIDEOS_SCHEMA, columns)


def is_extraction(output: storage.Folder) -> bool:
    return output.exists("videos") and output.exists("config.json")


def read_summary(output: storage.Folder, columns: list[str] | None = None) -> pa.Table:
    return _read(output, "videos", R.SEGMENTS_SCHEMA, columns)


def read_windows(output: storage.Folder, columns: list[str] | None = None) -> pa.Table:
    return _read(output, "windows", R.WINDOWS_SCHEMA, columns)


def read_scores(output: storage.Folder, model_version: str | None = None, columns=None) -> pa.Table:
    t = _read(output, "scores", R.SCORES_SCHEMA, columns)
    if model_version is not None and t.num_rows:
        t = t.filter(pc.equal(t.column("model_version"), model_version))
    return t


def with_chunks(marker: storage.Folder, schema: pa.Schema, columns: list[str]) -> pa.Table:
    """The marker rows of a chunked folder (``columns`` of them) plus ``chunk``, the name of the
    file holding them: the same name holds their payload in the chunk's other folders, which is how
    a worker finds a video's windows or codes without the driver ever reading them."""
    return marker.read_parquet(columns=columns, schema=schema, file_column="chunk")


def read_batch_rows(folder: storage.Folder, batch: pa.Table, schema: pa.Schema) -> pa.Table:
    """The rows under ``folder`` of the videos of ``batch`` (its ``video_id`` and ``chunk`` columns:
    :func:`with_chunks`; a null chunk has none), each chunk file read once. Read by a worker."""
    by_chunk: dict[str, list[str]] = {}
    for vid, chunk in zip(
        batch.column("video_id").to_pylist(), batch.column("chunk").to_pylist(), strict=True
    ):
        if chunk is not None:
            by_chunk.setdefault(chunk, []).append(vid)
    tables = []
    for chunk, ids in sorted(by_chunk.items()):
        fs, path = storage.filesystem(folder.join(chunk), folder.options)
        with fs.open(path, "rb") as fh:
            t = pq.read_table(fh, schema=schema)
        tables.append(t.filter(pc.is_in(t.column("video_id"), pa.array(ids, pa.string()))))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def extraction_stats(output: storage.Folder, catalog_rows: int) -> dict:
    """Counts over the whole manifest, so stats always agree with the rows on disk."""
    cols = ["video_id", "status", "error", "n_frames", "n_detected", "n_tracks", "n_one_frame_tracks"]
    cols += [f"n_{f}" for f in R.FRAME_FLAGS]
    m = read_manifest(output, columns=cols).to_pandas()
    failed = m[m.status == R.STATUS_FAILED]
    reasons = failed.error.map(R.reason_of).value_counts().to_dict()
    frag = sorted(m.video_id[fragmented(m.n_tracks, m.n_one_frame_tracks)].tolist())
    return {
        "videos": {
            "catalog": int(catalog_rows),
            "manifest": int(len(m)),
            "unique": int(m.video_id.nunique()),
            "ok": int((m.status == R.STATUS_OK).sum()),
            "failed": int(len(failed)),
            "failed_by_reason": {str(k): int(v) for k, v in sorted(reasons.items())},
        },
        "frames": {
            "decoded": int(m.n_frames.sum()),
            "detected": int(m.n_detected.fillna(0).sum()),
            **{flag: int(m[f"n_{flag}"].sum()) for flag in R.FRAME_FLAGS},
        },
        "tracks": int(m.n_tracks.sum()),
        "fragmented_tracks": {"videos": len(frag), "examples": frag[:10]},
    }


def fragmented(n_tracks, n_one_frame_tracks):
    """Videos whose tracks are mostly one frame long: faces were found but not followed between
    frames (sampling too sparse for the motion, or a gap rule that cannot bridge the stride)."""
    return (n_tracks >= 3) & (n_one_frame_tracks.fillna(0) * 2 > n_tracks)


def segmentation_stats(output: storage.Folder) -> dict:
    s = read_summary(output).to_pandas()
    w = read_windows(output, columns=["window_id", "video_id", "split", "label"]).to_pandas()
    reasons = s.reason.dropna().map(lambda r: r.split(":", 1)[0]).value_counts().to_dict()
    splits = {}
    for split in R.SPLITS:
        sv, sw = s[s.split == split], w[w.split == split]
        splits[split] = {
            "videos": int(len(sv)),
            "videos_with_windows": int((sv.n_windows > 0).sum()),
            "fake": int((sv.label == R.LABEL_FAKE).sum()),
            "real": int((sv.label == R.LABEL_REAL).sum()),
            "windows": int(len(sw)),
        }
    return {
        "videos": int(len(s)),
        "videos_with_windows": int((s.n_windows > 0).sum()),
        "no_window_by_reason": {str(k): int(v) for k, v in sorted(reasons.items())},
        "windows": int(len(w)),
        "tracks": int(s.n_tracks.sum()),
        "tracks_counted": int(s.n_tracks_counted.fillna(0).sum()),
        "runs": int(s.n_runs.sum()),
        "short_runs": int(s.n_short_runs.sum()),
        "frames_dropped": {r: int(s[f"dropped_{r}"].sum()) for r in R.DROP_REASONS},
        "splits": splits,
    }
