"""A picture of why a video got its score: face thumbnails per track along the timeline, frames
without a usable face marked, and the window probabilities under them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from dfpipe import records as R
from dfpipe.faces import decode_jpeg


def explain_png(faces: pa.Table, record: dict, window_frames: int, path: str, thumbs: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = faces.select(["frame_idx", "track_id", "flag", "face_jpeg"]).to_pandas()
    n_frames = int(df.frame_idx.max()) + 1 if len(df) else 1
    tracks = sorted(int(t) for t in df.track_id.dropna().unique())
    verdicts = {t["track_id"]: t for t in record.get("tracks", [])}

    def counted(t: int) -> bool:
        return verdicts.get(t, {}).get("counted", True)

    rows = max(1, len(tracks))
    fig = plt.figure(figsize=(12, 1.6 * rows + 3))
    grid = fig.add_gridspec(rows + 1, thumbs, height_ratios=[1.2] * rows + [2.2])
    for r, t in enumerate(tracks):
        tf = df[df.track_id == t].sort_values("frame_idx")
        picks = np.linspace(0, len(tf) - 1, min(thumbs, len(tf))).round().astype(int)
        for c, i in enumerate(picks):
            ax = fig.add_subplot(grid[r, c])
            row = tf.iloc[i]
            ax.imshow(decode_jpeg(row.face_jpeg))
            usable = row.flag in (R.FLAG_OK, R.FLAG_MULTI_FACE)
            ax.set_title(f"t{t} f{int(row.frame_idx)}", fontsize=7, color="black" if usable else "red")
            if c == 0:
                why = "counted" if counted(t) else f"not counted: {verdicts[t]['reason']}"
                ax.set_ylabel(f"track {t}\n{why}", fontsize=6, color="black" if counted(t) else "grey")
            for s in ax.spines.values():
                s.set_edgecolor("black" if usable else "red")
            ax.set_xticks([])
            ax.set_yticks([])
    ax = fig.add_subplot(grid[rows, :])
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
    fig.suptitle(
        f"{record['video_id']}: probability of FAKE {record['prob_fake']:.3f} ({record['n_windows']} windows)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
