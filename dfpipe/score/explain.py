"""A picture of why a video got its score: face thumbnails per track along the timeline, frames
without a usable face marked, and the window probabilities under them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from dfpipe import records as R
from dfpipe.extract.faces import decode_jpeg


def explain_png(faces: pa.Table, record: dict, window_frames: int, path: str, thumbs: int = 10) -> None:
    import matplotlib.pyplot as plt

    fig = explain_figure(faces, record, window_frames, thumbs)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def explain_figure(faces: pa.Table, record: dict, window_frames: int, thumbs: int = 10):
    """The figure: tracks that count towards the score on top, those that do not (posters,
    background faces: ``record["tracks"]``) in a panel of their own below, then the timeline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = faces.select(["frame_idx", "track_id", "flag", "face_jpeg"]).to_pandas()
    n_frames = int(df.frame_idx.max()) + 1 if len(df) else 1
    tracks = sorted(int(t) for t in df.track_id.dropna().unique())
    verdicts = {t["track_id"]: t for t in record.get("tracks", [])}

    def counted(t: int) -> bool:
        return verdicts.get(t, {}).get("counted", True)

    groups = [
        (
            f"tracks counted towards the score ({sum(map(counted, tracks))})",
            [t for t in tracks if counted(t)],
        ),
        ("tracks not counted", [t for t in tracks if not counted(t)]),
    ]
    groups = [(title, ts) for title, ts in groups if ts]
    heights = [1.5 * len(ts) + 0.4 for _, ts in groups] + [2.6]
    fig = plt.figure(figsize=(12, sum(heights) + 0.6), layout="constrained")
    fig.suptitle(
        f"{record['video_id']}: probability of FAKE {record['prob_fake']:.3f} ({record['n_windows']} windows)"
    )
    panels = fig.subfigures(len(heights), 1, height_ratios=heights, squeeze=False)[:, 0]
    for panel, (title, ts) in zip(panels, groups, strict=False):
        panel.suptitle(title, fontsize=9, x=0.01, ha="left", color="black" if counted(ts[0]) else "grey")
        axes = panel.subplots(len(ts), thumbs, squeeze=False)
        for row, t in zip(axes, ts, strict=True):
            _track_row(row, df[df.track_id == t].sort_values("frame_idx"), t, verdicts.get(t), counted(t))
    _timeline(panels[-1].subplots(), df, record, tracks, counted, n_frames, window_frames)
    return fig


def _track_row(axes, tf, t: int, verdict: dict | None, counted: bool) -> None:
    picks = np.linspace(0, len(tf) - 1, min(len(axes), len(tf))).round().astype(int)
    for ax in axes:
        ax.set_axis_off()
    for c, i in enumerate(picks):
        ax = axes[c]
        ax.set_axis_on()
        row = tf.iloc[i]
        ax.imshow(decode_jpeg(row.face_jpeg), alpha=1.0 if counted else 0.45)
        usable = row.flag in (R.FLAG_OK, R.FLAG_MULTI_FACE)
        ax.set_title(f"t{t} f{int(row.frame_idx)}", fontsize=7, color="black" if usable else "red")
        if c == 0:
            why = "counted" if counted else f"not counted:\n{verdict['reason']}"
            ax.set_ylabel(f"track {t}\n{why}", fontsize=6, color="black" if counted else "grey")
        for spine in ax.spines.values():
            spine.set_edgecolor("black" if usable else "red")
        ax.set_xticks([])
        ax.set_yticks([])


def _timeline(ax, df, record: dict, tracks: list[int], counted, n_frames: int, window_frames: int) -> None:
    usable_frames = set(df[df.flag.isin([R.FLAG_OK, R.FLAG_MULTI_FACE])].frame_idx)
    bad = [f for f in range(n_frames) if f not in usable_frames]
    if bad:
        ax.scatter(bad, [0.02] * len(bad), marker="|", color="red", s=80, label="no usable face")
    for t in tracks:
        w = [x for x in record["windows"] if x["track_id"] == t]
        if w:
            ax.plot(
                [x["start_frame"] + window_frames / 2 for x in w],
                [x["prob_fake"] for x in w],
                marker="o",
                ls="-" if counted(t) else ":",
                alpha=1.0 if counted(t) else 0.5,
                label=f"track {t} windows" + ("" if counted(t) else " (not counted)"),
            )
    ax.axhline(record["prob_fake"], color="black", ls="--", label=f"video {record['prob_fake']:.3f}")
    ax.set(xlim=(0, n_frames), ylim=(0, 1), xlabel="frame", ylabel="probability of FAKE")
    ax.legend(fontsize=8, loc="upper right")
