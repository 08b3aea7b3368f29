"""An fsck for outputs: verify the invariants every dfpipe output promises, and list what breaks them.

``check_output(uri)`` finds the job outputs under ``uri`` by their ``config.json`` (a pipeline or
rescore root holds several) and checks each:

* extract: every catalog video is in the manifest exactly once; every face shard belongs to an
  ok manifest row and every ok row's shard exists; a shard has one row per (frame, track), its
  frame and flag counts are the manifest's; ``stats.json`` agrees with the rows;
* segment: one summary row per manifest video; unique window ids; every window covers face rows
  that exist, belong to its track and carry a usable flag; window counts and stats agree;
* score: every manifest video has exactly one score per model version; probabilities are finite
  and within the clip range; window scores are unique and refer to windows that exist;
* everywhere: no half-written temporary files are visible.

Reading is column-pruned, but it reads every shard: run it on a sample prefix for huge outputs.
"""

from __future__ import annotations

import math
import posixpath
from collections import Counter
from dataclasses import dataclass, field

import pyarrow.compute as pc
import pyarrow.parquet as pq

from dfpipe import outputs, storage
from dfpipe import records as R
from dfpipe.extract.catalog import build_catalog

MAX_LISTED = 20  # violations of one kind printed in full; the rest are counted


@dataclass
class Report:
    """What was checked and what is wrong; ``ok`` when nothing is."""

    checked: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def expect(self, where: str, bad: list[str], what: str) -> None:
        """Record ``bad`` items (ids, usually) as violations of ``what``, a few listed in full."""
        if bad:
            shown = ", ".join(map(str, bad[:MAX_LISTED]))
            more = f" and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
            self.violations.append(f"{where}: {what}: {len(bad)} ({shown}{more})")

    def format(self) -> str:
        lines = [f"checked {c}" for c in self.checked]
        lines += [f"VIOLATION {v}" for v in self.violations]
        lines.append("ok: no violations" if self.ok else f"{len(self.violations)} violation(s)")
        return "\n".join(lines)


def duplicates(values) -> list:
    return sorted(k for k, n in Counter(values).items() if n > 1)


def check_output(output: storage.Folder) -> Report:
    report = Report()
    found = find_outputs(output)
    if not found:
        report.violations.append(
            f"{output.uri}: no dfpipe output found (no config.json here or in sub-folders)"
        )
    for out, job in found:
        check = CHECKS.get(job)
        if check is not None:
            check(out, report)
            report.checked.append(f"{job} output {out.uri}")
    check_no_partial_files(output, report)
    return report


def find_outputs(root: storage.Folder, depth: int = 3) -> list[tuple[storage.Folder, str]]:
    """(output, job name) of every job output at or below ``root``, parents first."""
    found = []
    if root.exists("config.json"):
        found.append((root, root.read_json("config.json").get("job")))
    if depth and storage.is_dir(root.uri, root.options):
        fs, path = storage.filesystem(root.uri, root.options)
        for sub in sorted(fs.ls(path, detail=False)):
            name = posixpath.basename(sub.rstrip("/"))
            if fs.isdir(sub) and name not in (
                "faces",
                "windows",
                "tracks",
                "videos",
                "scores",
                "window_scores",
            ):
                found += find_outputs(root.sub(name), depth - 1)
    return found


def check_no_partial_files(output: storage.Folder, report: Report) -> None:
    leftovers = [f for f in output.find() if posixpath.basename(f).startswith(".tmp-")]
    report.expect(output.uri, leftovers, "half-written temporary files")


# --- extraction -------------------------------------------------------------------------------


def check_extract(output: storage.Folder, report: Report) -> None:
    out, options = output.uri, output.options  # the URI names it in findings

    paths = outputs.extraction(out)
    manifest = outputs.read_manifest(output)
    ids = manifest.column("video_id").to_pylist()
    report.expect(out, duplicates(ids), "videos in the manifest more than once")

    config = storage.read_json(paths["config"], options)["config"]
    try:
        catalog = set(build_catalog(storage.Folder(config["input"], options)).column("video_id").to_pylist())
    except Exception as exc:  # noqa: BLE001 - an unreadable input is itself the finding
        report.violations.append(f"{out}: cannot rebuild the catalog of {config['input']}: {exc}")
    else:
        report.expect(out, sorted(catalog - set(ids)), "catalog videos missing from the manifest")
        report.expect(out, sorted(set(ids) - catalog), "manifest videos not in the catalog")

    rows = manifest.to_pylist()
    ok_rows = {r["faces_uri"]: r for r in rows if r["status"] == R.STATUS_OK}
    statuses = {R.STATUS_OK, R.STATUS_FAILED}
    report.expect(out, [r["video_id"] for r in rows if r["status"] not in statuses], "unknown status")
    report.expect(
        out,
        [r["video_id"] for r in rows if r["status"] == R.STATUS_FAILED and not r["error"]],
        "failed without a reason",
    )
    shards = {storage.normalize(f) for f in output.sub("faces").find() if f.endswith(".parquet")}
    known = {storage.normalize(u) for u in ok_rows}
    report.expect(out, sorted(shards - known), "face shards of no ok video")
    missing, wrong = [], []
    for uri, row in ok_rows.items():
        if storage.normalize(uri) not in shards:
            missing.append(row["video_id"])
            continue
        fs, path = storage.filesystem(uri, options)
        with fs.open(path, "rb") as f:
            problem = _shard_problem(pq.ParquetFile(f), row)
        if problem:
            wrong.append(f"{row['video_id']} {problem}")
    report.expect(out, missing, "ok videos whose face shard is missing")
    report.expect(out, wrong, "face shards that disagree with their manifest row")

    if storage.exists(paths["stats"], options):
        written = storage.read_json(paths["stats"], options)
        fresh = outputs.extraction_stats(output, written["videos"]["catalog"])
        bad = [k for k in ("videos", "frames", "tracks") if not _agrees(written.get(k), fresh[k])]
        report.expect(out, bad, "stats.json sections that disagree with the rows")


def _agrees(written, fresh) -> bool:
    """Whether every count ``written`` holds equals the fresh one (counts added later are not required)."""
    if isinstance(written, dict) and isinstance(fresh, dict):
        return all(k in fresh and _agrees(v, fresh[k]) for k, v in written.items())
    return written == fresh


def _shard_problem(shard: pq.ParquetFile, row: dict) -> str | None:
    """What is wrong with a face shard (opened) against its manifest ``row``; None when nothing is."""
    marked = "landmarks" in shard.schema_arrow.names  # shards from before landmarks were kept lack them
    t = shard.read(columns=["video_id", "frame_idx", "track_id", "flag", "box_x1", *(["landmarks"] * marked)])
    if set(t.column("video_id").to_pylist()) - {row["video_id"]}:
        return "holds rows of another video"
    keys = list(zip(t.column("frame_idx").to_pylist(), t.column("track_id").to_pylist(), strict=True))
    if duplicates(keys):
        return f"duplicate (frame, track) rows {duplicates(keys)[:3]}"
    frames = len(set(t.column("frame_idx").to_pylist()))
    if frames != row["n_frames"]:
        return f"{frames} frames, manifest says {row['n_frames']}"
    flags = Counter(t.column("flag").to_pylist())
    off = [f for f in R.FRAME_FLAGS if flags.get(f, 0) != row[f"n_{f}"]]
    if off:
        return f"flag counts differ for {off}"
    return _landmarks_problem(t) if marked else None


# How far outside its box a landmark may lie, in box sides (MTCNN's can sit a little outside it).
LANDMARK_SLACK = 0.5


def _landmarks_problem(t) -> str | None:
    """Landmarks on every face row and on no other, finite, near their box (``records.FACES_SCHEMA``)."""
    boxed = t.column("box_x1").is_valid().to_pylist()
    marks = t.column("landmarks").to_pylist()
    frames = t.column("frame_idx").to_pylist()
    if any(b != (m is not None) for b, m in zip(boxed, marks, strict=True)):
        bad = [f for f, b, m in zip(frames, boxed, marks, strict=True) if b != (m is not None)]
        return f"landmarks missing on a face row or set on a row without a box (frames {bad[:3]})"
    far = [
        f
        for f, m in zip(frames, marks, strict=True)
        if m is not None
        and not all(math.isfinite(v) and -LANDMARK_SLACK <= v <= 1 + LANDMARK_SLACK for v in m)
    ]
    if far:
        return f"landmarks not finite or far outside their box (frames {far[:3]})"
    return None


# --- segmentation -----------------------------------------------------------------------------


def check_segment(output: storage.Folder, report: Report) -> None:
    out, options = output.uri, output.options  # the URI names it in findings

    config = storage.read_json(outputs.segmentation(out)["config"], options)["config"]
    usable = set(config["usable_flags"])
    manifest = outputs.read_manifest(storage.Folder(config["input"], options), columns=["video_id"])
    summary = outputs.read_summary(output, columns=["video_id", "n_windows"])
    ids = summary.column("video_id").to_pylist()
    report.expect(out, duplicates(ids), "videos summarised more than once")
    report.expect(
        out,
        sorted(set(manifest.column("video_id").to_pylist()) - set(ids)),
        "manifest videos with no summary row",
    )
    windows = outputs.read_windows(output)
    report.expect(out, duplicates(windows.column("window_id").to_pylist()), "duplicate window ids")
    per_video = Counter(windows.column("video_id").to_pylist())
    counts = dict(zip(ids, summary.column("n_windows").to_pylist(), strict=True))
    report.expect(
        out,
        sorted(v for v, n in counts.items() if (n or 0) != per_video.get(v, 0)),
        "n_windows that disagree with windows/",
    )
    report.expect(out, sorted(set(per_video) - set(ids)), "windows of videos with no summary row")

    bad = []
    for faces_uri, group in _group_by(windows.to_pylist(), "faces_uri").items():
        fs, path = storage.filesystem(faces_uri, options)
        if not fs.exists(path):
            bad += [w["window_id"] + " (face shard missing)" for w in group]
            continue
        with fs.open(path, "rb") as f:
            t = pq.read_table(f, columns=["frame_idx", "track_id", "flag"])
        rows = {
            (fr, tr): fl
            for fr, tr, fl in zip(
                *(t.column(c).to_pylist() for c in ("frame_idx", "track_id", "flag")), strict=True
            )
        }
        for w in group:
            frames = range(w["start_frame"], w["end_frame"] + 1, w["frame_stride"])
            if len(frames) != w["n_frames"]:
                bad.append(f"{w['window_id']} (n_frames {w['n_frames']} but spans {len(frames)})")
            elif any(rows.get((fr, w["track_id"])) not in usable for fr in frames):
                bad.append(f"{w['window_id']} (a frame is missing or unusable)")
    report.expect(out, bad, "windows not backed by usable face rows")


def _group_by(rows: list[dict], key: str) -> dict:
    groups: dict = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r)
    return groups


# --- scoring ----------------------------------------------------------------------------------


def check_score(output: storage.Folder, report: Report) -> None:
    out, options = output.uri, output.options  # the URI names it in findings

    paths = outputs.scoring(out)
    config = storage.read_json(paths["config"], options)["config"]
    extract_uri = (
        config["input"]
        if outputs.is_extraction(storage.Folder(config["input"], options))
        else paths["extract"]
    )
    videos = set(
        outputs.read_manifest(storage.Folder(extract_uri, options), columns=["video_id"])
        .column("video_id")
        .to_pylist()
    )
    scores = outputs.read_scores(output)
    for version in sorted(set(scores.column("model_version").to_pylist())):
        mine = scores.filter(pc.equal(scores.column("model_version"), version))
        ids = mine.column("video_id").to_pylist()
        where = f"{out} (model {version})"
        report.expect(where, duplicates(ids), "videos scored more than once")
        report.expect(where, sorted(videos - set(ids)), "videos with no score")
        report.expect(where, sorted(set(ids) - videos), "scores of videos not in the manifest")
        lo, hi = config.get("clip_low", 0.0), config.get("clip_high", 1.0)
        probs = zip(ids, mine.column("prob_fake").to_pylist(), strict=True)
        report.expect(
            where,
            [v for v, p in probs if p is None or not math.isfinite(p) or not lo - 1e-6 <= p <= hi + 1e-6],
            f"probabilities missing or outside [{lo}, {hi}]",
        )
    window_scores = storage.read_parquet_dir(
        paths["window_scores"], schema=R.WINDOW_SCORES_SCHEMA, options=options
    )
    keys = zip(*(window_scores.column(c).to_pylist() for c in ("window_id", "model_version")), strict=True)
    report.expect(out, duplicates(keys), "windows scored more than once by one model")
    known: set[str] = set()
    for sub, job in find_outputs(output, depth=1):
        if job == "segment":
            known |= set(outputs.read_windows(sub, columns=["window_id"]).column("window_id").to_pylist())
    report.expect(
        out,
        sorted(set(window_scores.column("window_id").to_pylist()) - known),
        "window scores of unknown windows",
    )


CHECKS = {"extract": check_extract, "segment": check_segment, "score": check_score}
