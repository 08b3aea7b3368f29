"""Evaluation report: metric tables and plots from scores (Ray-free)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from dfpipe.train import metrics as M

HEADLINE = ("n", "log_loss", "balanced_log_loss", "accuracy", "roc_auc", "average_precision", "eer")


UNSPLIT = "unsplit"  # videos the model never saw in training, validation or testing (a new dump)
SPLIT_NOTES = {
    "test": "held out",
    "val": "chose the epoch and calibration",
    "train": "trained on",
    UNSPLIT: "not in the model's data",
}


def evaluate(videos: pd.DataFrame, windows: pd.DataFrame) -> dict:
    """Video- and window-level metrics, per part and per split, from labelled rows.

    The headline is what tells how the model does on videos it never learned from: the held-out
    test split when there is one, else the unsplit videos (another dataset, a new dump); only when
    every video was in training or validation is it all of them, and it says so.
    """
    v = videos[videos.label.notna()].assign(split=lambda d: d.split.fillna(UNSPLIT))
    w = windows[windows.label.notna()]
    headline_split = next((s for s in ("test", UNSPLIT) if (v.split == s).any()), None)
    head = v[v.split == headline_split] if headline_split else v
    report = {
        "headline": {
            "name": f"{headline_split} ({SPLIT_NOTES[headline_split]})"
            if headline_split
            else "all (train and val)",
            "split": headline_split,
            **M.summary(head.label.to_numpy(int), head.prob_fake.to_numpy(float)),
        },
        "video": M.summary(v.label.to_numpy(int), v.prob_fake.to_numpy(float)),
        "window": M.summary(w.label.to_numpy(int), w.prob_fake.to_numpy(float)) if len(w) else None,
        "by_part": {
            str(k): M.summary(g.label.to_numpy(int), g.prob_fake.to_numpy(float))
            for k, g in v.groupby("part")
        },
        "by_split": {
            str(k): M.summary(g.label.to_numpy(int), g.prob_fake.to_numpy(float))
            for k, g in v.groupby("split")
        },
        "unlabelled_videos": int(videos.label.isna().sum()),
        "fallback_videos": int(videos.reason.notna().sum()),
    }
    return _finite(report)


def _finite(obj):
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def rows(report: dict) -> list[tuple[str, dict | None]]:
    """The metric table's rows, (name, summary): the headline first, then rows that mix in training
    or validation videos, labelled so, then each split and part."""
    head = report.get("headline") or {"name": "all", "split": None, **report["video"]}
    mixed = set(report["by_split"]) - {head["split"]}
    everything = f"all ({', '.join(sorted(mixed))} included)" if mixed else "all"
    out = [(f"video, {head['name']}", head)]
    if mixed and head["split"]:
        out += [(f"video, {everything}", report["video"])]
    out += [(f"window, {everything}", report["window"])]
    out += [
        (f"video, split {k} ({SPLIT_NOTES.get(k, k)})", s)
        for k, s in sorted(report["by_split"].items(), key=lambda kv: _split_order(kv[0]))
        if k != head["split"]
    ]
    out += [(f"video, part {k}", s) for k, s in report["by_part"].items()]
    return out


def table(report: dict) -> str:
    """The metric table (:func:`rows`), as Markdown."""
    lines = ["| level | " + " | ".join(HEADLINE) + " |", "|---|" + "---|" * len(HEADLINE)]
    for name, s in rows(report):
        if s:
            lines.append(f"| {name} | " + " | ".join(fmt(s.get(k)) for k in HEADLINE) + " |")
    return "\n".join(lines)


def _split_order(split: str) -> int:
    return list(SPLIT_NOTES).index(split) if split in SPLIT_NOTES else len(SPLIT_NOTES)


def markdown(report: dict, model_version: str) -> str:
    head = report.get("headline") or {"name": "all", **report["video"]}
    c = head["confusion"]
    return "\n".join(
        [
            f"# Evaluation of model {model_version}",
            "",
            table(report),
            "",
            f"Video confusion matrix at 0.5, {head['name']} (rows: truth, columns: prediction):",
            "",
            "| | REAL | FAKE |",
            "|---|---|---|",
            f"| REAL | {c['true_real']} | {c['false_fake']} |",
            f"| FAKE | {c['false_real']} | {c['true_fake']} |",
            "",
            f"Unlabelled videos: {report['unlabelled_videos']}; videos scored with the fallback probability: {report['fallback_videos']}.",
            "",
            "Plots: roc.png, histogram.png, reliability.png.",
            "",
        ]
    )


def plots(videos: pd.DataFrame, folder: str) -> list[str]:
    """ROC curve, score histograms by class and a reliability curve, as PNGs in ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = videos[videos.label.notna()]
    y, p = v.label.to_numpy(int), v.prob_fake.to_numpy(float)
    paths = []

    fig, ax = plt.subplots(figsize=(5, 5))
    if len(np.unique(y)) == 2:
        fpr, tpr = M.roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"AUC {M.roc_auc(y, p):.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (videos)")
    ax.legend(loc="lower right")
    paths.append(_save(fig, folder, "roc.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 21)
    ax.hist(p[y == 0], bins=bins, alpha=0.6, label="REAL")
    ax.hist(p[y == 1], bins=bins, alpha=0.6, label="FAKE")
    ax.set(xlabel="probability of FAKE", ylabel="videos", title="Scores by class")
    ax.legend()
    paths.append(_save(fig, folder, "histogram.png"))

    fig, ax = plt.subplots(figsize=(5, 5))
    edges = np.linspace(0, 1, 11)
    idx = np.clip(np.digitize(p, edges) - 1, 0, 9)
    xs = [p[idx == b].mean() for b in range(10) if (idx == b).any()]
    ys = [y[idx == b].mean() for b in range(10) if (idx == b).any()]
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.plot(xs, ys, marker="o")
    ax.set(xlabel="mean predicted probability", ylabel="share FAKE", title="Reliability (videos)")
    paths.append(_save(fig, folder, "reliability.png"))
    return paths


def _save(fig, folder: str, name: str) -> str:
    import matplotlib.pyplot as plt

    path = os.path.join(folder, name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
