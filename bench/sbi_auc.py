"""Does a model trained on self-blended fakes alone (``fakes=sbi``) find fakes it never saw?

    python bench/sbi_auc.py [--videos 40] [--frames 40] [--seed 0] [--sbi-epochs 20] [--workdir out/sbi]
                            [--real ../shared/data] [--json]

Side by side, on the same generated data (``python -m dfpipe.sampledata``, 5 parts; part 3 validates,
part 4 is held out, as in ``make demo``), the whole pipeline (``jobs/run.py --config configs/demo.yaml``)
twice, each in its own process:

* ``labels`` (the baseline): both trainings learn from the videos labelled FAKE;
* ``sbi``: both trainings learn from the REAL videos alone, their fakes self-blended
  (``train_embedder.fakes=sbi train_classifier.fakes=sbi``): no FAKE clip is ever read in training.
  The embedder trains for ``--sbi-epochs`` (20) instead of the demo's 6: a self-blend is a subtler
  fake than the generator's, and at 6 epochs the embedder had not learnt it (val AUC 0.56, every
  video scored 0.498-0.501).

Each model then scores (``jobs/score.py``) two generated datasets of other identities: one with the
same (standard) swaps, one whose fakes are made the other way (``--swap matched``: colour-matched,
feathered swaps). Printed: the video AUC of each model on the held-out part of the training dataset
and on the two other datasets, with the numbers of REAL and FAKE videos and a bootstrap 95% interval.

``--real DIR`` (``../shared/data``) adds the real-footage figure: an ``sbi`` model trained on the
REAL clips available (the generated REAL clips and facenet-pytorch's example video, which shows real
people) scores the labelled real clips of ``DIR`` (the DFDC fakes present and the FaceForensics++
real/fake pair). A handful of clips says little either way: the interval says how little.

A second run reuses datasets and finished runs (delete ``--workdir`` to start again). About 25
minutes on 2 CPU cores at the defaults (40 clips a dataset), 10 more with ``--real``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stability import ROOT, dataset, write_result  # noqa: E402

from dfpipe.storage import Folder  # noqa: E402

MODES = ("labels", "sbi")


def pipeline(data: str, out: str, fakes: str, extra: list[str]) -> None:
    """The whole pipeline, its trainings in mode ``fakes``, in its own process (its own local Ray)."""
    subprocess.run(
        [sys.executable, "jobs/run.py", "--input", data, "--output", out, "--config", "configs/demo.yaml",
         f"train_embedder.fakes={fakes}", f"train_classifier.fakes={fakes}", *extra],
        check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def score(data: str, model: str, out: str) -> None:
    subprocess.run(
        [sys.executable, "jobs/score.py", "--input", data, "--model", model, "--output", out],
        check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def scores(out: str, split: str | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """``(labels, prob_fake, fallbacks)`` of the labelled videos scored in ``out`` (of ``split`` only,
    when given); fallbacks: videos with no usable window, scored by the fallback probability."""
    from dfpipe import outputs

    t = outputs.read_scores(Folder(out)).to_pylist()
    rows = [r for r in t if r["label"] is not None and (split is None or r["split"] == split)]
    y = np.array([r["label"] for r in rows], np.int8)
    p = np.array([r["prob_fake"] for r in rows], np.float64)
    return y, p, sum(1 for r in rows if r["reason"])


def auc_with_interval(y: np.ndarray, p: np.ndarray, draws: int = 2000, seed: int = 0) -> dict:
    """The AUC and a 95% percentile bootstrap interval (videos resampled within each class, so each
    draw has both)."""
    from dfpipe.train.metrics import roc_auc

    real, fake = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    out = {"real": int(len(real)), "fake": int(len(fake))}
    if not len(real) or not len(fake):
        return {**out, "auc": None, "low": None, "high": None}
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(draws):
        idx = np.concatenate([rng.choice(real, len(real)), rng.choice(fake, len(fake))])
        boot.append(roc_auc(y[idx], p[idx]))
    low, high = np.percentile(boot, [2.5, 97.5])
    return {**out, "auc": float(roc_auc(y, p)), "low": float(low), "high": float(high)}


def real_footage(workdir: str, generated: str, shared: str) -> tuple[str, str]:
    """Two labels.csv folders of hard links: the REAL clips to train on (the generated REAL clips, by
    part, and facenet-pytorch's example video in part ``footage``) and the labelled real clips to
    score (:func:`real_footage_test`)."""
    example = [(os.path.join(shared, "misc", "facenet_pytorch_example.mp4"), "footage", "REAL")]
    train = labelled_folder(os.path.join(workdir, "real-train"), _generated_real(generated) + example)
    return train, real_footage_test(workdir, shared)


def real_footage_test(workdir: str, shared: str) -> str:
    """A labels.csv folder of the labelled real clips of ``shared`` (``../shared/data``): the DFDC
    clips present, with their metadata's labels, and the FaceForensics++ pair."""
    return labelled_folder(os.path.join(workdir, "real-test"), _shared_labelled(shared))


def labelled_folder(folder: str, rows: list[tuple[str, str, str]]) -> str:
    """A labels.csv dataset of ``(path, part, label)`` rows whose clips exist, as hard links (a
    symbolic link out of a dataset is refused as ``unsafe_path``; a copy where the clips are on
    another disk)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "labels.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "label"])
        for path, part, label in rows:
            if not os.path.exists(path):
                continue
            name = f"{part}/{os.path.basename(path)}"
            os.makedirs(os.path.join(folder, part), exist_ok=True)
            link = os.path.join(folder, name)
            if not os.path.lexists(link):
                try:
                    os.link(path, link)
                except OSError:
                    shutil.copyfile(path, link)
            w.writerow([name, label])
    return folder


def _generated_real(generated: str) -> list[tuple[str, str, str]]:
    rows = []
    for part in sorted(os.listdir(generated)):
        meta = os.path.join(generated, part, "metadata.json")
        if os.path.exists(meta):
            for name, entry in json.load(open(meta)).items():
                if entry["label"] == "REAL":
                    rows.append((os.path.join(generated, part, name), part, "REAL"))
    return rows


def _shared_labelled(shared: str) -> list[tuple[str, str, str]]:
    rows = []
    dfdc = os.path.join(shared, "dfdc")
    for part in sorted(os.listdir(dfdc)) if os.path.isdir(dfdc) else []:
        meta = os.path.join(dfdc, part, "metadata.json")
        if os.path.exists(meta):
            for name, entry in json.load(open(meta)).items():
                rows.append((os.path.join(dfdc, part, name), part, entry["label"]))
    ffpp = os.path.join(shared, "ffpp")
    for name in sorted(os.listdir(ffpp)) if os.path.isdir(ffpp) else []:
        if name.endswith(".mp4"):
            rows.append((os.path.join(ffpp, name), "ffpp", "REAL" if "_real" in name else "FAKE"))
    return rows


def line(name: str, r: dict, fallbacks: int) -> str:
    if r["auc"] is None:
        return f"| {name} | {r['real']} | {r['fake']} | n/a | | {fallbacks} |"
    return f"| {name} | {r['real']} | {r['fake']} | {r['auc']:.3f} | {r['low']:.2f}-{r['high']:.2f} | {fallbacks} |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--videos", type=int, default=40, help="clips per generated dataset (40: 8 in the held-out part)"
    )
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sbi-epochs", type=int, default=20, help="the embedder's epochs with fakes=sbi")
    p.add_argument("--workdir", default="out/sbi")
    p.add_argument("--real", default=None, help="../shared/data: add the real-footage figure")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    sbi_options = [f"train_embedder.epochs={args.sbi_epochs}"]
    standard = dataset(args.workdir, args.seed, args.videos, args.frames, "standard")
    others = {
        "standard": dataset(args.workdir, args.seed + 2, args.videos, args.frames, "standard"),
        "matched": dataset(args.workdir, args.seed + 1, args.videos, args.frames, "matched"),
    }
    result: dict = {
        "videos": args.videos,
        "frames": args.frames,
        "seed": args.seed,
        "sbi_epochs": args.sbi_epochs,
    }
    result["rows"] = {}
    table = [
        "| model, scored on | REAL videos | FAKE videos | AUC | 95% interval | no usable window |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        run = os.path.join(args.workdir, f"run-{mode}")
        pipeline(standard, run, mode, sbi_options * (mode == "sbi"))
        scored = {f"{mode}: held-out part, standard swaps": scores(os.path.join(run, "score"), "test")}
        for swap, data in others.items():
            out = os.path.join(args.workdir, f"score-{swap}-{mode}")
            score(data, os.path.join(run, "models", "classifier"), out)
            scored[f"{mode}: other identities, {swap} swaps"] = scores(out)
        for name, (y, prob, fallbacks) in scored.items():
            r = auc_with_interval(y, prob)
            result["rows"][name] = {**r, "fallbacks": fallbacks}
            table.append(line(name, r, fallbacks))
            print(table[-1], flush=True)
    if args.real:
        train, test = real_footage(args.workdir, standard, args.real)
        run = os.path.join(args.workdir, "run-real-sbi")
        # The generated REAL clips of part 3 validate, those of part 4 are held out, the rest and
        # the real clip train.
        pipeline(train, run, "sbi", sbi_options)
        out = os.path.join(args.workdir, "score-real")
        score(test, os.path.join(run, "models", "classifier"), out)
        y, prob, fallbacks = scores(out)
        r = auc_with_interval(y, prob)
        name = "sbi on real REAL footage + generated REAL: real labelled clips"
        result["rows"][name] = {
            **r,
            "fallbacks": fallbacks,
            "probs": prob.round(3).tolist(),
            "labels": y.tolist(),
        }
        table.append(line(name, r, fallbacks))
    print("\n".join(table))
    write_result(os.path.join(args.workdir, "sbi_auc.json"), result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
