"""Tier 2: the incremental step executor every job's step runs on (dfpipe.step), on a local Ray."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dfpipe import config as C
from dfpipe import storage
from dfpipe.stage import ContractError, Later, Resources
from dfpipe.step import ChunkWriter, Step, run_step

PAYLOAD = pa.schema([("video_id", pa.string()), ("i", pa.int32())])
MARKER = pa.schema([("video_id", pa.string()), ("n_rows", pa.int32()), ("config_hash", pa.string())])


@dataclass(frozen=True, kw_only=True)
class ToyConfig(C.RunOptions):
    output: str = C.option(help="output")
    rows: int = C.option(3, "payload rows per video (changes rows)")
    overwrite: bool = C.option(False, "redo")


@dataclass
class ToyStage:
    """Per video, ``rows`` payload rows and one marker row; the payload is nested, as the real
    stages nest windows under their video."""

    reads: ClassVar = ("video_id",)
    writes: ClassVar = None  # the marker columns and the nested payload

    rows: int
    digest: str
    resources: Resources = Resources(num_cpus=0.5, batch_size=2)

    def setup(self) -> None:
        pass

    def __call__(self, batch: pa.Table) -> pa.Table:
        vids = batch.column("video_id").to_pylist()
        return pa.table(
            {
                "video_id": vids,
                "n_rows": pa.array([self.rows] * len(vids), pa.int32()),
                "config_hash": [self.digest] * len(vids),
                "payload": pa.array([list(range(self.rows))] * len(vids), pa.list_(pa.int32())),
            }
        )


def toy_tables(out: pa.Table, batch: pa.Table) -> dict[str, pa.Table]:
    pairs = zip(out["video_id"].to_pylist(), out["payload"].to_pylist(), strict=True)
    rows = [{"video_id": v, "i": i} for v, items in pairs for i in items]
    return {"payload": pa.Table.from_pylist(rows, schema=PAYLOAD), "videos": out.drop(["payload"])}


def toy_step(cfg: ToyConfig, videos: list[str]) -> Step:
    out = cfg.folder(cfg.output)
    return Step(
        name="toy",
        cfg=cfg,
        todo=pa.table({"video_id": videos}),
        stage=ToyStage(cfg.rows, C.config_hash(cfg, ("rows",))),
        folders={"payload": (out.sub("payload"), PAYLOAD), "videos": (out.sub("videos"), MARKER)},
        fields=("rows",),
        split=toy_tables,
        sums=("n_rows",),
        rows_per_block=2,
    )


@pytest.fixture(autouse=True)
def _pickled_by_value():
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_a_step_writes_on_workers_skips_what_is_done_and_cleans_up_after_a_crash(ray_session, tmp_path):
    cfg = ToyConfig(output=str(tmp_path / "out"))
    videos = [f"v{i}" for i in range(7)]
    first = run_step(toy_step(cfg, videos))
    assert (first.processed, first.done_before, first.sums) == (7, 0, {"n_rows": 21})
    payload = sorted((tmp_path / "out" / "payload").glob("*.parquet"))
    markers = sorted((tmp_path / "out" / "videos").glob("*.parquet"))
    assert [p.name for p in payload] == [p.name for p in markers]  # one chunk, one name per folder
    assert storage.read_parquet_dir(str(tmp_path / "out" / "payload")).num_rows == 21

    # A rerun, and one with two new videos: only what is new is done.
    assert run_step(toy_step(cfg, videos)).processed == 0
    assert run_step(toy_step(cfg, [*videos, "v7", "v8"])).processed == 2

    # A run that stopped between a chunk's payload and its marker: the next run removes the
    # payload left without a marker and redoes those videos, with no duplicate rows.
    lost = markers[0]
    lost_here = pq.read_table(lost).column("video_id").to_pylist()
    lost.unlink()
    again = run_step(toy_step(cfg, [*videos, "v7", "v8"]))
    assert again.processed == len(lost_here) > 0
    rows = storage.read_parquet_dir(str(tmp_path / "out" / "payload")).to_pandas()
    assert len(rows) == 27 and not rows.duplicated().any()

    # Rows made with other settings are never mixed in: exit 2 naming the option, unless --overwrite.
    other = ToyConfig(output=str(tmp_path / "out"), rows=4)
    with pytest.raises(C.ConfigError, match=r"rows 3 -> 4.*--overwrite"):
        run_step(toy_step(other, videos))
    redone = run_step(toy_step(ToyConfig(output=str(tmp_path / "out"), rows=4, overwrite=True), videos))
    assert redone.processed == 7
    assert storage.read_parquet_dir(str(tmp_path / "out" / "payload")).num_rows == 28


def test_chunk_writer_returns_only_the_marker_rows(tmp_path):
    """What a worker hands back to the driver is the marker table alone, never the payload."""
    writer = ChunkWriter(
        ToyStage(5, "h"),
        {
            "payload": (storage.Folder(str(tmp_path / "p")), PAYLOAD),
            "videos": (storage.Folder(str(tmp_path / "m")), MARKER),
        },
        "video_id",
        toy_tables,
    )
    back = writer(pa.table({"video_id": ["a", "b"]}))
    assert back.column_names == ["video_id", "n_rows", "config_hash"] and back.num_rows == 2
    assert storage.read_parquet_dir(str(tmp_path / "p")).num_rows == 10


@dataclass
class BrokenNodeStage(ToyStage):
    """A stage whose actors fail to start with an import error: the first ``times`` of them (counted in
    ``flags``, a folder every actor sees), as a node whose copy of the job's package is incomplete."""

    flags: str = ""
    times: int = 1

    def setup(self) -> None:
        import os
        import uuid

        if len(os.listdir(self.flags)) < self.times:
            open(os.path.join(self.flags, uuid.uuid4().hex), "w").close()
            raise ImportError(
                "cannot import name 'records' from 'dfpipe' (a node's package folder half gone)"
            )


def test_an_actor_that_cannot_start_on_its_node_is_started_again(ray_session, tmp_path):
    """An import that fails in a stage's actor (its node's copy of the package half gone, issue 38) ends
    that actor's process once, and Ray starts it again: the step completes, nothing lost. An actor
    that fails so again is the step's error, with the import's message (never a loop)."""
    flags = tmp_path / "flags"
    flags.mkdir()
    cfg = ToyConfig(output=str(tmp_path / "out"))
    step = toy_step(cfg, [f"v{i}" for i in range(5)])
    step.stage = BrokenNodeStage(cfg.rows, "x", flags=str(flags), times=1)
    assert run_step(step).processed == 5
    assert storage.read_parquet_dir(str(tmp_path / "out" / "payload")).num_rows == 15
    assert len(list(flags.iterdir())) == 1

    always = toy_step(ToyConfig(output=str(tmp_path / "again")), ["v0", "v1"])
    always.stage = BrokenNodeStage(cfg.rows, "x", flags=str(flags), times=10**6)
    with pytest.raises(Exception, match="cannot import name 'records'"):
        run_step(always)


@dataclass
class UnplaceableStage(ToyStage):
    """Actors of 3 CPUs on the session's 2-CPU Ray: as a cluster whose nodes are gone."""

    resources: Resources = Resources(num_cpus=3, batch_size=2, max_workers=1)


def test_a_step_with_no_capacity_fails_within_the_wait_saying_why(ray_session, tmp_path):
    """Where no actor can be started (the nodes lost, none back), a step fails after capacity_wait_s with
    a message naming the cause and the fix, instead of waiting forever."""
    import time

    cfg = ToyConfig(output=str(tmp_path / "out"), capacity_wait_s=5)
    step = toy_step(cfg, ["v0", "v1"])
    step.stage = UnplaceableStage(cfg.rows, "x")
    from ray.data import DataContext

    before = DataContext.get_current().execution_no_progress_timeout_s
    started = time.monotonic()
    try:
        with pytest.raises(
            C.JobError, match=r"no progress for 5 s: the cluster has no capacity.*capacity_wait_s"
        ):
            run_step(step)
    finally:  # the bound is the process's: the session's later datasets get the default again
        DataContext.get_current().execution_no_progress_timeout_s = before
    assert time.monotonic() - started < 90
    assert not list((tmp_path / "out").glob("*/*.parquet")), "nothing written"


def test_a_step_whose_rows_lack_a_column_its_stage_reads_is_refused_when_built(tmp_path):
    """The chain is checked when a step is declared, before Ray or any write: rows without a column
    the stage reads are refused naming the stage and the columns, for a stage made later (once Ray
    is joined) too, without making it."""
    from dfpipe.extract.stage import FaceExtractStage
    from dfpipe.segment.stage import SegmentStage

    todo = pa.table({"video_id": ["a"], "label": pa.array([0], pa.int8())})
    folders = {"videos": (storage.Folder(str(tmp_path / "out" / "videos")), MARKER)}
    cfg = ToyConfig(output=str(tmp_path / "out"))
    expected = "segment: SegmentStage reads part, original, status, frame_stride, faces_uri, which its input rows lack"
    with pytest.raises(ContractError, match=expected):
        Step(name="segment", cfg=cfg, todo=todo, stage=SegmentStage(), folders=folders)
    made = []
    with pytest.raises(
        ContractError, match="extract: FaceExtractStage reads uri, filename, part, original, error"
    ):
        Step(
            name="extract",
            cfg=cfg,
            todo=todo,
            stage=Later(FaceExtractStage, lambda: made.append(1)),
            folders=folders,
        )
    assert not made and not (tmp_path / "out").exists()
    # Rows holding every column it reads (and more) pass.
    Step(name="toy", cfg=cfg, todo=todo, stage=ToyStage(1, "h"), folders=folders)


def test_every_stage_declares_what_it_reads_and_writes():
    from dfpipe.extract.stage import FaceExtractStage
    from dfpipe.faces.crops import FaceCropsStage, SampledFacesStage
    from dfpipe.score.embed import VideoEmbedStage, WindowEmbedStage
    from dfpipe.score.stage import VideoScoreStage, WindowLogitsStage, WindowScoreStage
    from dfpipe.segment.stage import SegmentStage

    stages = (FaceExtractStage, SegmentStage, FaceCropsStage, WindowEmbedStage, VideoEmbedStage,
              SampledFacesStage, WindowScoreStage, VideoScoreStage, WindowLogitsStage)  # fmt: skip
    for stage in stages:
        assert isinstance(stage.reads, tuple) and stage.reads and len(set(stage.reads)) == len(stage.reads), (
            stage
        )
        assert stage.writes is None or isinstance(stage.writes, pa.Schema), stage
    # Each job's step hands its stage rows of a known schema: the chains hold.
    from dfpipe import records as R

    assert set(FaceExtractStage.reads) <= set(R.CATALOG_SCHEMA.names)
    assert set(SegmentStage.reads) <= set(R.VIDEOS_SCHEMA.names)
