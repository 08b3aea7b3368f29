"""The review page: ``report/index.html``, the flagged videos with their faces and timelines.

Built in two halves, as the scores are:

* on the workers, :class:`ReviewStage` reads the face crops, tracks and window scores of each video
  that gets a full row, writes one strip of face thumbnails per track under ``report/img/`` and
  returns the video's detail as an HTML fragment (the driver never reads a face crop);
* on the driver, :func:`page` writes one self-contained page: the metrics and plots at the top, then
  a table of videos with the most suspicious first, sorted and filtered by a few lines of plain
  JavaScript. No server, no CDN: the page and ``img/`` open from a disk or a static-site prefix.

The page is bounded whatever the input's size: :func:`selection` picks the videos that get full rows
(``review_top``) and :func:`listed` the ones in the table (``review_rows``); the rest are counted.

Every text that comes from the input (names, URIs, reasons, parts) is escaped here (:func:`_e`), and
the page's Content-Security-Policy runs only its own script: a video named
``<img src=x onerror=...>.mp4`` shows as text and runs nothing.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dfpipe import records as R
from dfpipe import storage
from dfpipe.extract.faces import decode_jpeg
from dfpipe.outputs import read_batch_rows
from dfpipe.score import report as rep
from dfpipe.stage import Resources

log = logging.getLogger(__name__)

IMAGES = "img"  # report/img/: thumbnail strips, named by a hash of the video id (never by its name)
THUMBS_PER_TRACK = 8
THUMB_PX = 48
STRIPS_PER_VIDEO = 4  # tracks with thumbnails; further tracks are listed in the track table only
UNUSABLE_RANGES = 12  # ranges of unusable frames listed per video; the rest are counted

# What the table of videos shows of each score row (the driver reads only these columns).
TABLE_COLUMNS = (
    "video_id",
    "uri",
    "filename",
    "part",
    "split",
    "prob_fake",
    "label",
    "n_windows",
    "n_tracks",
    "n_tracks_counted",
    "reason",
)
DETAIL_SCHEMA = pa.schema([("video_id", pa.string()), ("detail", pa.string()), ("images", pa.int32())])


def _e(text) -> str:
    """Input text as HTML text or attribute value: every ``<``, ``>``, ``&`` and quote escaped."""
    return html.escape("" if text is None else str(text), quote=True)


def image_key(video_id: str) -> str:
    """The file-name stem of a video's images: a hash, so no name ever becomes a path or markup."""
    return hashlib.sha256(video_id.encode()).hexdigest()[:20]


def is_wrong(prob: pa.Array, label: pa.Array) -> pa.Array:
    """Labelled videos on the wrong side of 0.5 (null where the label is unknown)."""
    return pc.not_equal(pc.greater_equal(prob, 0.5), pc.equal(label, R.LABEL_FAKE))


def _by_suspicion(scores: pa.Table) -> pa.Table:
    return scores.sort_by([("prob_fake", "descending"), ("video_id", "ascending")])


def selection(scores: pa.Table, top: int) -> pa.Table:
    """The videos that get a full row: the ``top`` most suspicious, then labelled mistakes at 0.5
    (the most confidently wrong first) up to ``top`` more; in the order of the table."""
    ranked = _by_suspicion(scores)
    chosen = ranked.slice(0, top)
    wrong = ranked.filter(pc.fill_null(is_wrong(ranked.column("prob_fake"), ranked.column("label")), False))
    wrong = wrong.filter(pc.invert(pc.is_in(wrong.column("video_id"), chosen.column("video_id"))))
    confidence = pc.abs(pc.subtract(wrong.column("prob_fake").cast(pa.float64()), 0.5))
    wrong = wrong.append_column("_c", confidence).sort_by([("_c", "descending"), ("video_id", "ascending")])
    wrong = wrong.drop_columns(["_c"]).slice(0, top)
    return _by_suspicion(pa.concat_tables([chosen, wrong]))


def listed(scores: pa.Table, rows: int, chosen: pa.Table) -> pa.Table:
    """The videos in the page's table: the ``rows`` most suspicious and every video with a full row."""
    ranked = _by_suspicion(scores)
    first = ranked.slice(0, rows)
    extra = chosen.filter(pc.invert(pc.is_in(chosen.column("video_id"), first.column("video_id"))))
    return _by_suspicion(pa.concat_tables([first, extra.select(first.column_names)]))


# --- the workers' half ---------------------------------------------------------------------------


@dataclass
class ReviewStage:
    """Videos in (their score row's ``prob_fake``, the manifest's ``status``/``error``/``faces_uri``/
    ``frame_stride``, and the chunks of their tracks and window scores), one row out per video: its
    detail as an HTML fragment, and how many images it wrote under ``images``. A video whose faces
    cannot be read gets a detail that says why (bad input is never fatal)."""

    reads: ClassVar = (
        "video_id",
        "prob_fake",
        "status",
        "error",
        "faces_uri",
        "tracks_chunk",
        "scores_chunk",
    )
    writes: ClassVar = DETAIL_SCHEMA

    tracks: storage.Folder  # the segmentation's tracks/
    window_scores: storage.Folder  # the scoring output's window_scores/
    images: storage.Folder  # report/img/
    model_version: str
    window_len: int
    usable_flags: tuple[str, ...]
    aggregation: str
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1, batch_size=16))

    def setup(self) -> None:
        pass

    def __call__(self, batch: pa.Table) -> pa.Table:
        def by_video(table: pa.Table) -> dict[str, list[dict]]:
            out: dict[str, list[dict]] = {}
            for r in table.to_pylist():
                out.setdefault(r["video_id"], []).append(r)
            return out

        def chunk(name: str) -> pa.Table:
            return batch.select(["video_id", name]).rename_columns(["video_id", "chunk"])

        tracks = by_video(read_batch_rows(self.tracks, chunk("tracks_chunk"), R.TRACKS_SCHEMA))
        windows = read_batch_rows(self.window_scores, chunk("scores_chunk"), R.WINDOW_SCORES_SCHEMA)
        windows = by_video(windows.filter(pc.equal(windows.column("model_version"), self.model_version)))
        rows = []
        for video in batch.to_pylist():
            vid = video["video_id"]
            try:
                detail, n_images = self.detail(video, tracks.get(vid, []), windows.get(vid, []))
            except Exception as exc:  # noqa: BLE001 - one unreadable video never fails the page
                log.warning("review %s: %s", vid, exc)
                detail, n_images = f'<p class="why">No detail: {_e(type(exc).__name__)}: {_e(exc)}</p>', 0
            rows.append({"video_id": vid, "detail": detail, "images": n_images})
        return pa.Table.from_pylist(rows, schema=DETAIL_SCHEMA)

    def detail(self, video: dict, tracks: list[dict], windows: list[dict]) -> tuple[str, int]:
        if video.get("status") != R.STATUS_OK:
            return f'<p class="why">Extraction failed: {_e(video.get("error"))}. No faces to show.</p>', 0
        faces = self._faces(video["faces_uri"])
        frames = faces.column("frame_idx").to_numpy()
        n_frames = int(frames.max()) + 1 if len(frames) else 1
        window_frames = self.window_len * int(video.get("frame_stride") or 1)
        means = _track_means(windows)
        deciding = self._deciding(tracks, means)
        strips, n_images = self._strips(video["video_id"], faces, tracks)
        unusable = self._unusable(faces)
        parts = [
            _tracks_table(tracks, means, deciding, strips, self.aggregation),
            _timeline(windows, tracks, float(video["prob_fake"]), n_frames, window_frames, unusable),
            _unusable_list(unusable),
        ]
        return "\n".join(p for p in parts if p), n_images

    def _faces(self, uri: str) -> pa.Table:
        fs, path = storage.filesystem(uri, self.images.options)
        with fs.open(path, "rb") as fh:
            return pq.read_table(fh, columns=["frame_idx", "track_id", "flag", "face_jpeg"])

    def _deciding(self, tracks: list[dict], means: dict[int, float]) -> int | None:
        """The track whose windows decided the score (``max_track_mean``: the most suspicious counted one)."""
        counted = {t["track_id"] for t in tracks if t["counted"]} or set(means)
        candidates = {t: m for t, m in means.items() if t in counted}
        if self.aggregation != "max_track_mean" or not candidates:
            return None
        return max(candidates, key=lambda t: (candidates[t], -t))

    def _unusable(self, faces: pa.Table) -> list[tuple[int, int, int, str]]:
        return unusable_runs(
            faces.column("frame_idx").to_pylist(), faces.column("flag").to_pylist(), self.usable_flags
        )

    def _strips(self, video_id: str, faces: pa.Table, tracks: list[dict]) -> tuple[dict[int, str], int]:
        """One JPEG strip of up to ``THUMBS_PER_TRACK`` faces per shown track, written under ``images``;
        the image tags by track. Counted tracks first, then the longest."""
        import cv2

        shown = sorted(tracks, key=lambda t: (not t["counted"], -t["n_frames"], t["track_id"]))
        out: dict[int, str] = {}
        key = image_key(video_id)
        for t in shown[:STRIPS_PER_VIDEO]:
            tid = t["track_id"]
            rows = faces.filter(
                pc.and_(pc.equal(faces.column("track_id"), tid), pc.is_valid(faces.column("face_jpeg")))
            )
            if not rows.num_rows:
                continue
            rows = rows.sort_by("frame_idx")
            picks = np.unique(
                np.linspace(0, rows.num_rows - 1, min(THUMBS_PER_TRACK, rows.num_rows)).round().astype(int)
            )
            tiles, titles = [], []
            for i in picks:
                r = rows.slice(int(i), 1).to_pylist()[0]
                tile = cv2.resize(
                    decode_jpeg(r["face_jpeg"]), (THUMB_PX, THUMB_PX), interpolation=cv2.INTER_AREA
                )
                if r["flag"] not in self.usable_flags:  # a face the windows could not use: a red frame
                    cv2.rectangle(tile, (0, 0), (THUMB_PX - 1, THUMB_PX - 1), (220, 30, 30), 2)
                tiles.append(tile)
                titles.append(
                    f"{r['frame_idx']}" + ("" if r["flag"] in self.usable_flags else f" ({r['flag']})")
                )
            ok, jpeg = cv2.imencode(
                ".jpg", cv2.cvtColor(np.hstack(tiles), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 75]
            )
            if not ok:
                continue
            name = f"{key}-t{tid}.jpg"
            self.images.write_bytes(name, jpeg.tobytes())
            out[tid] = (
                f'<img class="strip" src="{IMAGES}/{name}" loading="lazy" width="{THUMB_PX * len(tiles)}" '
                f'height="{THUMB_PX}" alt="track {tid}, frames {_e(", ".join(titles))}" title="frames {_e(", ".join(titles))}">'
            )
        return out, len(out)


def unusable_runs(
    frames: list[int], flags: list[str], usable: tuple[str, ...]
) -> list[tuple[int, int, int, str]]:
    """Runs of consecutive frames with no usable face, each as (first frame, last frame, frames, why):
    a frame is usable when any of its rows (faces) has a usable flag; a usable frame ends a run."""
    why: dict[int, str | None] = {}
    for f, flag in zip(frames, flags, strict=True):
        if flag in usable:
            why[f] = None
        else:
            why.setdefault(f, flag)
    runs: list[list] = []
    in_run = False
    for f in sorted(why):
        if why[f] is None:
            in_run = False
            continue
        if in_run and runs[-1][3] == why[f]:
            runs[-1][1], runs[-1][2] = f, runs[-1][2] + 1
        else:
            runs.append([f, f, 1, why[f]])
        in_run = True
    return [tuple(r) for r in runs]


def _track_means(windows: list[dict]) -> dict[int, float]:
    by: dict[int, list[float]] = {}
    for w in windows:
        by.setdefault(w["track_id"], []).append(float(w["prob_fake"]))
    return {t: float(np.mean(p)) for t, p in by.items()}


def _tracks_table(tracks, means, deciding, strips, aggregation) -> str:
    if not tracks:
        return '<p class="why">No face track: nothing to show.</p>'
    rows = []
    for t in sorted(tracks, key=lambda t: (not t["counted"], t["track_id"])):
        tid = t["track_id"]
        mean = means.get(tid)
        if t["counted"]:
            verdict = "counted" + ("; <b>decided the score</b>" if tid == deciding else "")
        else:
            verdict = f"not counted: {_e(t['reason'])}"
        rows.append(
            f'<tr class="{"counted" if t["counted"] else "aside"}"><td>{tid}</td><td>{t["n_frames"]}</td>'
            f"<td>{t['face_px']:.0f}</td><td>{t['share']:.2f}</td><td>{t['n_windows']}</td>"
            f"<td>{'' if mean is None else f'{mean:.3f}'}</td><td>{verdict}</td><td>{strips.get(tid, '')}</td></tr>"
        )
    rule = (
        ""
        if deciding is not None or aggregation == "max_track_mean"
        else f'<p class="why">Rule {_e(aggregation)}: every counted track\'s windows decide together.</p>'
    )
    return (
        '<table class="tracks"><thead><tr><th>track</th><th>frames</th><th>face px</th><th>share</th>'
        "<th>windows</th><th>mean P(FAKE)</th><th>verdict</th><th>faces (sampled frames)</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
        + rule
    )


COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _timeline(windows, tracks, prob, n_frames, window_frames, unusable) -> str:
    """The window probabilities along the video's frames (one line per track; dotted where it does not
    count), the video's probability, and the unusable frames in red: an inline SVG, numbers only."""
    w, h, left, top, bottom, right = 700, 130, 34, 8, 22, 68  # the track names in the right margin
    pw, ph = w - left - right, h - top - bottom

    def x(frame: float) -> float:
        return left + pw * min(max(frame, 0), n_frames) / max(n_frames, 1)

    def y(p: float) -> float:
        return top + ph * (1 - p)

    counted = {t["track_id"]: t["counted"] for t in tracks}
    out = [
        f'<svg class="timeline" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>',
        f'<line x1="{left}" x2="{left + pw}" y1="{y(0.5):.1f}" y2="{y(0.5):.1f}" stroke="#bbb" stroke-dasharray="2 3"/>',
        f'<line x1="{left}" x2="{left + pw}" y1="{y(prob):.1f}" y2="{y(prob):.1f}" stroke="#000" stroke-dasharray="6 3">'
        f"<title>video {prob:.3f}</title></line>",
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">1</text>'
        f'<text x="{left - 4}" y="{top + ph}" text-anchor="end">0</text>'
        f'<text x="{left}" y="{h - 6}">frame 0</text><text x="{left + pw}" y="{h - 6}" text-anchor="end">{n_frames}</text>',
    ]
    for a, b, n, _ in unusable:
        out.append(
            f'<rect class="unusable" x="{x(a):.1f}" y="{top + ph - 5}" width="{max(x(b + 1) - x(a), 1.5):.1f}" '
            f'height="5" fill="#d62728"><title>frames {a}-{b}: {n} unusable</title></rect>'
        )
    by_track: dict[int, list[tuple[float, float]]] = {}
    for win in sorted(windows, key=lambda r: (r["track_id"], r["start_frame"])):
        by_track.setdefault(win["track_id"], []).append(
            (win["start_frame"] + window_frames / 2, float(win["prob_fake"]))
        )
    for i, (tid, pts) in enumerate(sorted(by_track.items())):
        colour = COLOURS[i % len(COLOURS)]
        dash = "" if counted.get(tid, True) else ' stroke-dasharray="3 3" opacity="0.6"'
        points = " ".join(f"{x(f):.0f},{y(p):.0f}" for f, p in pts)  # whole pixels: bytes count
        out.append(
            f'<polyline class="track" fill="none" stroke="{colour}" stroke-width="2"{dash} points="{points}">'
            f"<title>track {tid}: {len(pts)} windows</title></polyline>"
        )
        if len(pts) == 1:
            out.append(f'<circle cx="{x(pts[0][0]):.1f}" cy="{y(pts[0][1]):.1f}" r="3" fill="{colour}"/>')
        out.append(f'<text x="{left + pw + 6}" y="{top + 10 + 12 * i}" fill="{colour}">track {tid}</text>')
    out.append("</svg>")
    return '<div class="timeline">' + "".join(out) + "</div>"


def _unusable_list(unusable) -> str:
    if not unusable:
        return '<p class="why">Every sampled frame had a usable face.</p>'
    total = sum(n for _, _, n, _ in unusable)
    items = [
        f"<li>frame {a}: {_e(why)}</li>" if a == b else f"<li>frames {a}-{b} ({n}): {_e(why)}</li>"
        for a, b, n, why in unusable[:UNUSABLE_RANGES]
    ]
    more = len(unusable) - UNUSABLE_RANGES
    if more > 0:
        items.append(f"<li>and {more} more runs</li>")
    return (
        f'<div class="unusable"><b>{total} frames without a usable face:</b><ul>{"".join(items)}</ul></div>'
    )


# --- the driver's half ---------------------------------------------------------------------------

SCRIPT = """
(function () {
  "use strict";
  var table = document.getElementById("videos");
  var bodies = Array.prototype.slice.call(table.tBodies);
  var get = function (id) { return document.getElementById(id); };
  var boxes = ["f-label", "f-part", "f-split", "f-reason", "f-wrong", "f-text"].map(get).filter(Boolean);
  function keep(d, b) {
    var v = function (id) { var el = get(id); return !el ? "" : el.type === "checkbox" ? el.checked : el.value; };
    var text = String(v("f-text")).toLowerCase();
    return (!v("f-label") || d.label === v("f-label")) && (!v("f-part") || d.part === v("f-part")) &&
      (!v("f-split") || d.split === v("f-split")) && (!v("f-reason") || d.reason === "1") &&
      (!v("f-wrong") || d.wrong === "1") && (!text || name(b).toLowerCase().indexOf(text) >= 0);
  }
  function name(b) { return b.querySelector("td.name").textContent; }
  function filter() {
    var shown = 0;
    bodies.forEach(function (b) { b.hidden = !keep(b.dataset, b); if (!b.hidden) shown++; });
    get("shown").textContent = shown;
  }
  var key = "p", dir = -1;
  function sort(th) {
    var k = th.dataset.sort, numeric = th.dataset.type === "num", column = th.cellIndex;
    dir = k === key ? -dir : (numeric ? -1 : 1);
    key = k;
    var value = function (b) { return k in b.dataset ? b.dataset[k] : b.rows[0].cells[column].textContent; };
    bodies.sort(function (a, b) {
      var x = value(a), y = value(b);
      var c = numeric ? (parseFloat(x) || 0) - (parseFloat(y) || 0) : x.localeCompare(y);
      return c * dir || a.dataset.rank - b.dataset.rank;
    });
    bodies.forEach(function (b) { table.appendChild(b); });
    Array.prototype.forEach.call(table.tHead.querySelectorAll("th[data-sort]"), function (h) {
      h.setAttribute("aria-sort", h === th ? (dir > 0 ? "ascending" : "descending") : "none");
    });
  }
  boxes.forEach(function (el) { el.addEventListener("input", filter); el.addEventListener("change", filter); });
  table.tHead.addEventListener("click", function (e) {
    var th = e.target.closest("th[data-sort]");
    if (th) sort(th);
  });
  table.addEventListener("click", function (e) {
    var button = e.target.closest("button.open");
    if (!button) return;
    var detail = button.closest("tbody").querySelector("tr.detail");
    detail.hidden = !detail.hidden;
    button.setAttribute("aria-expanded", String(!detail.hidden));
    button.textContent = detail.hidden ? "\\u25b8" : "\\u25be";
  });
  filter();
})();
"""

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.5em; }
table { border-collapse: collapse; } th, td { padding: 3px 8px; text-align: left; vertical-align: top; }
table.metrics td, table.metrics th { border-bottom: 1px solid #eee; }
#videos { width: 100%; } #videos > thead th { position: sticky; top: 0; background: #f4f4f4; }
#videos th[data-sort] { cursor: pointer; text-decoration: underline dotted; }
#videos > tbody > tr:first-child:hover { background: #f7f7ff; }
#videos > tbody > tr:first-child > td { border-top: 1px solid #eee; }
#videos > tbody > tr:first-child > td:nth-child(2) { font-variant-numeric: tabular-nums; font-weight: 600; }
#videos > tbody > tr:first-child > td:nth-child(8) { color: #666; } td.name { word-break: break-all; }
tr.detail > td { background: #fbfbfb; padding: 8px 16px 16px; }
button.open { border: 0; background: none; cursor: pointer; font-size: 1em; width: 1.5em; }
.label-FAKE { color: #b00; } .label-REAL { color: #070; } .wrong { background: #fee; }
.why { color: #666; } tr.aside td { color: #888; } img.strip { image-rendering: auto; border: 1px solid #ddd; }
.plots img { height: 220px; width: auto; margin-right: 1em; } .filters label { margin-right: 1em; }
svg.timeline text { font-size: 10px; fill: #555; } .unusable ul { margin: 0.2em 0; columns: 2; }
.note { color: #555; }
"""


def _hash_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _link(uri: str | None, text: str | None = None) -> str:
    """``text`` (default: the URI) as a link to the video's URI where it names a file or an object,
    escaped either way; anything else (``javascript:``, a relative path) stays text, with the URI
    beside it when the text is not the URI."""
    shown = _e(uri if text is None else text)
    if not uri:
        return shown
    scheme = storage.protocol_of(uri)
    if scheme == "file" and uri.startswith(("/", "file://")):  # never a relative path or "javascript:"
        href = "file://" + quote(storage.strip_protocol(uri))
    elif scheme in LINKED_SCHEMES:
        href = uri
    else:
        return shown if text is None else f"{shown} <small>{_e(uri)}</small>"
    return f'<a href="{_e(href)}">{shown}</a>'


# Object stores' addresses are shown as links too: a browser extension or a console opens them.
LINKED_SCHEMES = ("http", "https", "s3", "gs", "gcs", "az", "abfs")


def _label(value) -> str:
    return {R.LABEL_FAKE: "FAKE", R.LABEL_REAL: "REAL"}.get(value, "")


def _metrics(report: dict | None) -> str:
    if not report:
        return '<p class="note">No evaluation: the videos are not labelled with both classes.</p>'
    head = "".join(f"<th>{_e(k)}</th>" for k in rep.HEADLINE)
    rows = "".join(
        f"<tr><th>{_e(name)}</th>"
        + "".join(f"<td>{_e(rep.fmt(s.get(k)))}</td>" for k in rep.HEADLINE)
        + "</tr>"
        for name, s in rep.rows(report)
        if s
    )
    plots = "".join(
        f'<img src="{name}" alt="{name[:-4]}">' for name in ("roc.png", "histogram.png", "reliability.png")
    )
    return (
        f'<table class="metrics"><thead><tr><th>level</th>{head}</tr></thead><tbody>{rows}</tbody></table>'
        f'<div class="plots">{plots}</div>'
    )


def _row(rank: int, v: dict, detail: str | None, labelled: bool) -> str:
    label = _label(v["label"])
    wrong = labelled and label != "" and (v["prob_fake"] >= 0.5) != (v["label"] == R.LABEL_FAKE)
    name = v["filename"] or v["video_id"]
    data = {
        "rank": rank,
        "p": f"{v['prob_fake']:.4f}",
        "label": label or "none",
        "part": v["part"] or "",
        "split": v["split"] or "",
        "reason": "1" if v["reason"] else "0",
        "wrong": "1" if wrong else "0",
    }
    attrs = " ".join(f'data-{k}="{_e(val)}"' for k, val in data.items())
    toggle = (
        '<button class="open" aria-expanded="false" title="show the faces and timeline">&#9656;</button>'
        if detail
        else ""
    )
    # Cells without classes but the label's and the name's (the CSS finds them by position): a row is
    # repeated up to review_rows times, and every byte of it counts at that scale.
    cells = (
        f"<td>{toggle}</td><td>{v['prob_fake']:.3f}</td>"
        f'<td class="label-{label or "none"}">{label or "?"}</td><td>{_e(v["part"])}</td><td>{_e(v["split"] or "")}</td>'
        f"<td>{v['n_tracks_counted'] or 0} / {v['n_tracks'] or 0}</td><td>{v['n_windows'] or 0}</td>"
        f'<td>{_e(v["reason"] or "")}</td><td class="name">{_link(v["uri"], name)}</td>'
    )
    out = f'<tbody class="video{" wrong" if wrong else ""}" {attrs}><tr>{cells}</tr>'
    if detail:
        out += f'<tr class="detail" hidden><td colspan="{COLUMNS}">{detail}</td></tr>'
    return out + "</tbody>"


COLUMNS = 9


def _options(values: Iterable[str]) -> str:
    return "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in sorted({v for v in values if v}))


def page(
    *,
    model_version: str,
    recipe: dict,
    counts: dict,
    report: dict | None,
    rows: pa.Table,
    details: dict[str, str],
    left_out: int,
    top: int,
) -> str:
    """The review page. ``rows``: the listed score rows (:data:`TABLE_COLUMNS`, the most suspicious
    first); ``details``: the HTML fragment of each video with a full row (:class:`ReviewStage`);
    ``counts``: the run's counts, shown as given; ``left_out``: scored videos not listed."""
    videos = rows.to_pylist()
    labelled = any(v["label"] is not None for v in videos)
    body = "".join(_row(i, v, details.get(v["video_id"]), labelled) for i, v in enumerate(videos))
    wrong = '<label><input type="checkbox" id="f-wrong"> wrong at 0.5</label>' if labelled else ""
    count_items = "".join(f"<li>{_e(k)}: {_e(v)}</li>" for k, v in counts.items())
    missing = (
        f'<p class="note">{left_out} more scored videos are not listed here (the page lists the '
        f"{len(videos)} most suspicious and every labelled mistake it shows): all are in scores/ and "
        "submission.csv.</p>"
        if left_out
        else ""
    )
    csp = (
        f"default-src 'none'; img-src 'self' data:; style-src {_hash_source(STYLE)}; "
        f"script-src {_hash_source(SCRIPT)}; base-uri 'none'; form-action 'none'"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dfpipe review: model {_e(model_version)}</title>
<style>{STYLE}</style></head>
<body>
<h1>Review: model {_e(model_version)}</h1>
<h2>Metrics</h2>
{_metrics(report)}
<h2>This run</h2>
<ul class="counts">{count_items}</ul>
<details><summary>The model's recipe (the options that made its rows)</summary><pre>{_e(json.dumps(recipe, indent=2, sort_keys=True, default=str))}</pre></details>
<h2>Videos, the most suspicious first</h2>
<p class="note">Rows with &#9656; open to the faces of each track, which track decided the score, the window
probabilities along the video and the frames with no usable face: the {top} most suspicious videos and
every labelled mistake, up to {top} more.</p>
{missing}
<div class="filters">
<label>label <select id="f-label"><option value="">all</option><option>FAKE</option><option>REAL</option><option value="none">unlabelled</option></select></label>
<label>part <select id="f-part"><option value="">all</option>{_options(v["part"] for v in videos)}</select></label>
<label>split <select id="f-split"><option value="">all</option>{_options(v["split"] for v in videos)}</select></label>
<label><input type="checkbox" id="f-reason"> has a reason</label>
{wrong}
<label>name <input type="search" id="f-text" placeholder="contains"></label>
<span><span id="shown">{len(videos)}</span> of {len(videos)} shown</span>
</div>
<table id="videos"><thead><tr><th></th><th data-sort="p" data-type="num" aria-sort="descending">P(FAKE)</th>
<th data-sort="label">label</th><th data-sort="part">part</th><th data-sort="split">split</th>
<th data-sort="tracks" data-type="num">tracks counted / all</th><th data-sort="windows" data-type="num">windows</th>
<th>reason</th><th data-sort="name" data-type="text">video (a link to its URI)</th></tr></thead>
{body}
</table>
<script>{SCRIPT}</script>
</body></html>
"""
