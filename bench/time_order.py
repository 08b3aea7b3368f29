"""Does the window classifier use the order of a window's frames? The held-out AUC of a trained model
with each window's codes in order, reversed, shuffled, and without the LSTM at all.

    python bench/time_order.py --run out/demo/run [--real ../shared/data] [--split test] [--seed 0]
                               [--workdir out/time-order] [--json]

The idea this project comes from assumes that fakes show distortions between adjacent frames, so a
sequence model should read the order of the frames. For the classifier of a finished ``dfpipe run``
(``--run``: its models and its embedding cache), on the held-out test split's counted windows:

- **in order**: the windows as scored;
- **reversed**: each window's codes back to front;
- **shuffled**: each window's codes in a random order (seeded, one permutation per window);
- **mean, no LSTM**: a logistic regression on each window's mean code (standardised by the train
  windows' statistics), fitted on the train split's windows: a model that cannot see order at all.

Each case's window probabilities go to videos by the model's own aggregation; the table gives the
video and the window AUC. If reversing or shuffling costs nothing and the mean does as well, the
LSTM is not using temporal order on this data. ``--real DIR`` (``../shared/data``) scores the labelled
real clips present with the same model (``dfpipe score``) and adds their rows: a handful of clips
of another domain, so it says little either way.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sbi_auc import real_footage_test  # noqa: E402
from stability import ROOT, write_result  # noqa: E402

from dfpipe.score.embed import codes_array  # noqa: E402
from dfpipe.storage import Folder  # noqa: E402
from dfpipe.train import metrics as M  # noqa: E402
from dfpipe.train import modelio  # noqa: E402
from dfpipe.train.calibration import model_probs, video_probs  # noqa: E402

CASES = ("in order", "reversed", "shuffled", "mean, no LSTM")


def windows(cache: str, shape: tuple[int, int], split: str | None) -> dict:
    """The counted, labelled windows of an embedding cache (of ``split``, or all): codes (N, T, D),
    labels, videos and tracks."""
    columns = ["video_id", "track_id", "label", "split", "counted", "codes"]
    table = pq.read_table(os.path.join(cache, "windows"), columns=columns)
    keep = pc.and_(pc.is_valid(table.column("label")), pc.fill_null(table.column("counted"), True))
    if split is not None:
        keep = pc.and_(keep, pc.equal(table.column("split"), split))
    table = table.filter(keep)
    return {
        "codes": codes_array(table, *shape),
        "label": np.asarray(table.column("label").to_pylist(), float),
        "video_id": np.asarray(table.column("video_id").to_pylist()),
        "track_id": np.asarray(table.column("track_id").to_pylist()),
    }


def scoring_cache(score_output: str) -> str:
    """The embedding cache a ``dfpipe score`` output made (``segment-*/embeddings/<embedder>/``)."""
    found = sorted(glob.glob(os.path.join(score_output, "segment-*", "embeddings", "*", "windows")))
    if not found:
        raise SystemExit(f"{score_output} holds no embedding cache: is it a dfpipe score output?")
    return os.path.dirname(found[0])


def lstm_logits(model, codes: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(np.array(codes, np.float32))).numpy().astype(float)


def mean_code_model(train: dict, steps: int = 500, seed: int = 0):
    """Logistic regression on the standardised mean code of a window, classes weighted alike (as the
    classifier's pos_weight weighs them): ``codes (N, T, D) -> logits``."""
    x = train["codes"].mean(1)
    mean, std = x.mean(0), x.std(0) + 1e-6 * x.std(0).mean() + 1e-12
    torch.manual_seed(seed)
    xt = torch.from_numpy((x - mean) / std).float()
    y = torch.from_numpy(train["label"]).float()
    n_fake = max(1.0, float(y.sum()))
    linear = torch.nn.Linear(x.shape[1], 1)
    optimizer = torch.optim.Adam(linear.parameters(), lr=1e-2, weight_decay=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(y) - n_fake) / n_fake))
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(linear(xt).squeeze(1), y).backward()
        optimizer.step()

    def logits(codes: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            z = torch.from_numpy((codes.mean(1) - mean) / std).float()
            return linear(z).squeeze(1).numpy().astype(float)

    return logits


def ablation(model, meta: dict, train: dict, test: dict, seed: int) -> dict:
    """Video and window AUC of each case on ``test``."""
    rng = np.random.default_rng(seed)
    codes = test["codes"]
    shuffled = np.stack([w[rng.permutation(len(w))] for w in codes]) if len(codes) else codes
    logits = {
        "in order": lstm_logits(model, codes),
        "reversed": lstm_logits(model, codes[:, ::-1]),
        "shuffled": lstm_logits(model, shuffled),
        "mean, no LSTM": mean_code_model(train, seed=seed)(codes),
    }
    out = {}
    for case, z in logits.items():
        # The LSTM's cases under the model's calibration (what scoring writes); the mean model's own logits.
        probs = model_probs(z, meta) if case != "mean, no LSTM" else M.sigmoid(z)
        vp, vy = video_probs(probs, test["label"], test["video_id"], test["track_id"], meta["aggregation"])
        out[case] = {
            "video_auc": M.roc_auc(vy, vp),
            "video_accuracy": M.accuracy(vy, vp),
            "window_auc": M.roc_auc(test["label"], probs),
            "videos": int(len(vy)),
            "windows": int(len(probs)),
        }
    return out


def table(name: str, result: dict) -> list[str]:
    return [
        f"| {name} | {case} | {r['videos']} | {r['windows']} | {r['video_auc']:.3f} | {r['video_accuracy']:.3f} | "
        f"{r['window_auc']:.3f} |"
        for case, r in result.items()
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a finished `dfpipe run` output (models/, segment/)")
    p.add_argument("--real", default=None, help="../shared/data: add the labelled real clips")
    p.add_argument("--split", default="test", help="the held-out split scored (test; a run without one: val)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="out/time-order")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    model_dir = os.path.join(args.run, "models", "classifier")
    model, meta = modelio.load_model(Folder(model_dir), "window_classifier")
    shape = (meta["n_frames"], meta["code_dim"])
    train = windows(meta["embeddings_cache"], shape, "train")
    held_out = windows(scoring_cache(os.path.join(args.run, "score")), shape, args.split)
    result = {"run": args.run, "held_out": ablation(model, meta, train, held_out, args.seed)}
    lines = [
        "| data | case | videos | windows | video AUC | video accuracy | window AUC |",
        "|---|---|---:|---:|---:|---:|---:|",
        *table(f"generated, {args.split} split", result["held_out"]),
    ]
    if args.real:
        data = real_footage_test(args.workdir, args.real)
        out = os.path.join(args.workdir, "score-real")
        subprocess.run(
            [sys.executable, "jobs/score.py", "--input", data, "--model", model_dir, "--output", out],
            check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        result["real"] = ablation(model, meta, train, windows(scoring_cache(out), shape, None), args.seed)
        lines += table("../shared/data, labelled clips", result["real"])
    print("\n".join(lines))
    write_result(os.path.join(args.workdir, "time_order.json"), result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
