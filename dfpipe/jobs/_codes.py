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


def embed_windows(
    windows: pa.Table, embedder_dir: str, cache_uri: str, opts, use_gpu: bool, batch_faces: int
) -> tuple[str, int]:
    """Codes for every window, cached under ``cache_uri`` (named by the embedder's version).

    Windows already in the cache are not embedded again, so retraining the LSTM costs no embedding.
    Returns the cache's rows URI and how many windows were embedded now.
    """
    version = modelio.model_version(embedder_dir, opts)
    meta_uri = storage.join(cache_uri, "cache.json")
    if (
        storage.exists(meta_uri, opts)
        and storage.read_json(meta_uri, opts).get("embedder_version") != version
    ):
        raise C.ConfigError(
            f"embeddings_cache {cache_uri} holds codes of another embedder; give another embeddings_cache"
        )
    storage.write_json(
        meta_uri, {"embedder": storage.normalize(embedder_dir), "embedder_version": version}, opts
    )
    rows_uri = storage.join(cache_uri, "windows")
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
