"""Window codes shared by training and scoring: embed once per embedder version, cache as Parquet."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from dfpipe import config as C
from dfpipe import console, modelio, runner, storage
from dfpipe import records as R
from dfpipe.embed import FaceCropsStage, WindowEmbedStage, with_frames
from dfpipe.extract import Resources


def cache_uri_for(segment_output: str, embedder_dir: str, opts) -> str:
    """The default cache: beside the windows it embeds, named by the embedder's content hash."""
    return storage.join(segment_output, "embeddings", modelio.model_version(embedder_dir, opts))


def faces_version(segment_output: str, opts) -> str | None:
    """The config hash of the extraction whose faces a segmentation's windows point at (None when
    unknown): cached codes are valid only for faces made with those options."""
    seg_cfg = storage.join(segment_output, "config.json")
    if not storage.exists(seg_cfg, opts):
        return None
    ext_cfg = storage.join(storage.read_json(seg_cfg, opts)["config"]["input"], "config.json")
    return storage.read_json(ext_cfg, opts).get("config_hash") if storage.exists(ext_cfg, opts) else None


def embed_windows(
    windows: pa.Table,
    embedder_dir: str,
    cache_uri: str,
    opts,
    use_gpu: bool,
    batch_faces: int,
    faces: str | None = None,
) -> tuple[str, int]:
    """Codes for every window, cached under ``cache_uri`` (named by the embedder's version).

    Windows already in the cache are not embedded again, so retraining the LSTM costs no embedding.
    ``faces`` is the extraction's config hash (:func:`faces_version`): codes cached from faces
    extracted with other options (``extract --overwrite`` with new options) are dropped and made
    again. Returns the cache's rows URI and how many windows were embedded now.
    """
    version = modelio.model_version(embedder_dir, opts)
    meta_uri = storage.join(cache_uri, "cache.json")
    rows_uri = storage.join(cache_uri, "windows")
    if storage.exists(meta_uri, opts):
        cached = storage.read_json(meta_uri, opts)
        if cached.get("embedder_version") != version:
            raise C.ConfigError(
                f"embeddings_cache {cache_uri} holds codes of another embedder; give another embeddings_cache"
            )
        if cached.get("faces_config_hash") != faces and storage.exists(rows_uri, opts):
            console.say(
                f"embed: the cached codes in {cache_uri} were made from faces extracted with other options "
                f"(extraction {cached.get('faces_config_hash')}, now {faces}): embedding every window again"
            )
            storage.delete(rows_uri, opts)
    storage.write_json(
        meta_uri,
        {
            "embedder": storage.normalize(embedder_dir),
            "embedder_version": version,
            "faces_config_hash": faces,
        },
        opts,
    )
    done = storage.read_parquet_dir(rows_uri, columns=["window_id"], schema=R.EMBEDDINGS_SCHEMA, options=opts)
    todo = windows.filter(pc.invert(pc.is_in(windows.column("window_id"), done.column("window_id"))))
    console.say(
        f"embed: {windows.num_rows} windows, {done.num_rows} embeddings cached, {todo.num_rows} to embed"
    )
    if todo.num_rows:
        num_gpus = 1.0 if use_gpu else 0.0
        crops = runner.map_stage(
            runner.dataset_from_table(with_frames(todo), rows_per_block=32),
            FaceCropsStage(storage_options=opts),
        )
        stage = WindowEmbedStage(
            embedder_dir,
            device="cuda" if use_gpu else "cpu",
            batch_faces=batch_faces,
            storage_options=opts,
            resources=Resources(num_cpus=1, num_gpus=num_gpus, batch_size=32),
        )
        writer = storage.ChunkedParquetWriter(
            {"windows": (rows_uri, R.EMBEDDINGS_SCHEMA)}, "window_id", opts, flush_rows=5000
        )
        progress = console.Progress("embed", todo.num_rows, "windows")
        for table in runner.iter_tables(runner.map_stage(crops, stage, num_gpus=num_gpus)):
            writer.add(windows=table)
            progress.update(progress.done + table.num_rows)
        progress.close()
        writer.flush()
    return rows_uri, todo.num_rows


def read_split(rows_uri: str, split: str, opts):
    """A Ray dataset of the cached code sequences of one split whose tracks count (streamed from Parquet)."""
    ds = runner.read_parquet(
        rows_uri, opts, columns=["window_id", "video_id", "track_id", "label", "split", "counted", "codes"]
    )
    return ds.filter(lambda row: row["split"] == split and (row["counted"] is None or bool(row["counted"])))
