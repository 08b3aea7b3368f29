"""Window codes shared by training and scoring: embed once per embedder version, cache as Parquet."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from dfpipe import config as C
from dfpipe import console, outputs, runner, storage
from dfpipe import records as R
from dfpipe.score.embed import VideoEmbedStage, embedded_videos
from dfpipe.stage import Resources
from dfpipe.step import Step, run_step
from dfpipe.train import modelio, sbi
from dfpipe.train.sbi import SelfBlend


def cache_for(segment: storage.Folder, embedder: storage.Folder) -> storage.Folder:
    """The default cache: beside the windows it embeds, named by the embedder's content hash."""
    return segment.sub("embeddings", modelio.model_version(embedder))


def faces_version(segment: storage.Folder) -> str | None:
    """The config hash of the extraction whose faces a segmentation's windows point at (None when
    unknown): cached codes are valid only for faces made with those options."""
    if not segment.exists("config.json"):
        return None
    extraction = storage.Folder(segment.read_json("config.json")["config"]["input"], segment.options)
    return (
        extraction.read_json("config.json").get("config_hash") if extraction.exists("config.json") else None
    )


def embed_videos(
    videos: pa.Table,
    segment: storage.Folder,
    embedder: storage.Folder,
    cache: storage.Folder,
    use_gpu: bool,
    batch_faces: int,
    faces: str | None = None,
    blend: SelfBlend | None = None,
) -> tuple[storage.Folder, int]:
    """Codes for every window of ``videos`` (``video_id`` and ``chunk``, their segmentation chunk:
    :func:`segmented_videos`), cached in ``cache`` (named by the embedder's version).

    Videos already in the cache are not embedded again, so retraining the LSTM costs no embedding.
    Workers read the windows and crops and write the codes (one chunk per batch of videos); the
    driver sees one small row per video. ``faces`` is the extraction's config hash
    (:func:`faces_version`): codes cached from faces extracted with other options (``extract
    --overwrite`` with new options) are dropped and made again. Returns the cache's code rows URI and
    how many windows were embedded now.

    With ``blend``, the codes are those of the self-blended copies of the videos' REAL (and
    unlabelled) windows (:class:`dfpipe.score.embed.WindowEmbedStage`), kept in a cache of their own
    (:func:`sbi_cache`): the blends are made on the workers, and only their codes are stored.
    """
    version = modelio.model_version(embedder)
    folders = outputs.embedding_folders(cache)
    if cache.exists(outputs.CACHE_META):
        cached = cache.read_json(outputs.CACHE_META)
        if cached.get("embedder_version") != version:
            raise C.ConfigError(
                f"embeddings_cache {cache.uri} holds codes of another embedder; give another embeddings_cache"
            )
        if cached.get("faces_config_hash") != faces and cache.exists("windows"):
            console.say(
                f"embed: the cached codes in {cache.uri} were made from faces extracted with other options "
                f"(extraction {cached.get('faces_config_hash')}, now {faces}): embedding every window again"
            )
            for folder, _ in folders.values():
                folder.delete()
    meta = {
        "embedder": storage.normalize(embedder.uri),
        "embedder_version": version,
        "faces_config_hash": faces,
        **(
            {"sbi": {"seed": blend.seed, "version": sbi.VERSION, "crop_margin": blend.margin}}
            if blend
            else {}
        ),
    }
    cache.write_json(outputs.CACHE_META, meta)
    run = run_step(
        Step(
            name="embed",
            output=cache,
            cfg=None,
            todo=videos.sort_by("chunk"),  # a batch's windows come from few chunk files
            stage=VideoEmbedStage(
                segment.sub("windows"),
                embedder,
                device="cuda" if use_gpu else "cpu",
                batch_faces=batch_faces,
                blend=blend,
                resources=Resources(num_cpus=1, num_gpus=1.0 if use_gpu else 0.0, batch_size=8),
            ),
            folders=folders,
            split=embedded_videos,
            sums=("n_windows",),
            rows_per_block=8,
            config=meta,
            say=lambda total, done, todo, _: (
                f"{total} videos with {'REAL windows to self-blend' if blend else 'windows'}, "
                f"{done} embedded before, {todo} to embed"
            ),
        )
    )
    return cache.sub("windows"), run.sums["n_windows"]


def segmented_videos(segment: storage.Folder, video_ids: pa.Array | None = None) -> pa.Table:
    """``video_id`` and ``chunk`` of the videos of a segmentation that have windows (of ``video_ids``
    only, when given): the input of :func:`embed_videos`."""
    table = outputs.with_chunks(segment.sub("videos"), R.SEGMENTS_SCHEMA, ["video_id", "n_windows"])
    table = table.filter(pc.greater(table.column("n_windows"), 0))
    if video_ids is not None:
        table = table.filter(pc.is_in(table.column("video_id"), video_ids))
    return table.select(["video_id", "chunk"])


def sbi_cache(cache: storage.Folder, blend: SelfBlend) -> storage.Folder:
    """Where the codes of the self-blended windows of ``blend`` are kept: inside the embedder's cache,
    by blend version and seed (a new seed or a changed blend makes new codes, never mixes them)."""
    return cache.sub(f"sbi-v{sbi.VERSION}-seed{blend.seed}")


@dataclass(frozen=True)
class Codes:
    """Cached code rows a training reads (``windows``: an embedding cache's), and whether it takes only
    a self-blend's sources from them (REAL and unlabelled windows, labelled REAL)."""

    windows: storage.Folder
    sources: bool = False

    def where(self, split: str):
        """The rows of ``split`` it takes, whose tracks count."""
        rows = (pc.field("split") == split) & (pc.field("counted").is_null() | pc.field("counted"))
        return rows & sbi.sources() if self.sources else rows

    def labelled(self, table: pa.Table) -> pa.Table:
        """``table`` with the sources' missing labels set REAL."""
        return sbi.as_real(table) if self.sources else table


def read_split(codes: list[Codes], split: str):
    """A Ray dataset of the cached code sequences of one split (streamed from Parquet), from every
    cache in ``codes``."""
    columns = ["window_id", "video_id", "track_id", "label", "split", "counted", "codes"]
    parts = [
        runner.read_parquet(c.windows, columns=columns, where=c.where(split)).map_batches(
            c.labelled, batch_size=None, batch_format="pyarrow"
        )
        for c in codes
    ]
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
