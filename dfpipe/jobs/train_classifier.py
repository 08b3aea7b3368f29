"""Train the LSTM window classifier on cached face-code sequences (Ray Train)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dfpipe import config as C
from dfpipe import console, runner, storage
from dfpipe import records as R
from dfpipe.jobs import _codes, recipe
from dfpipe.jobs import _training as T
from dfpipe.jobs._codes import cache_for, embed_videos, faces_version, segmented_videos
from dfpipe.score.embed import codes_array
from dfpipe.train import modelio
from dfpipe.train.calibration import CALIBRATED_PRIOR, fit_calibration
from dfpipe.train.loops import classifier_loop, window_logits

NAME = "train_classifier"
RAY = True  # runs on Ray: as a process, its Ray output goes to OUTPUT/logs/ (dfpipe.cli.run_job)
SUMMARY = (
    "Embed every window with the trained embedder (cached) and train the LSTM window classifier (Ray Train)."
)


@dataclass(frozen=True, kw_only=True)
class TrainClassifierConfig(C.RunOptions, T.FakesOptions, T.ScheduleOptions, T.TrainingRunOptions):
    input: str = C.option(help="a segmenter output URI (windows/ with train and val splits)", rows=True)
    embedder: str = C.option(help="the embedder's model directory (from train_embedder)", rows=True)
    output: str = C.option(
        help="model directory URI: model.pt, model.json, metrics.json, curves.png", rows=True
    )
    embeddings_cache: str | None = C.option(
        None,
        "where window codes are cached (default: INPUT/embeddings/<embedder version>/, shared by every classifier run)",
        rows=True,
    )
    hidden_size: int = C.option(64, "LSTM hidden size", rows=True)
    num_layers: int = C.option(1, "LSTM layers", rows=True)
    bidirectional: bool = C.option(True, "bidirectional LSTM", rows=True)
    dropout: float = C.option(0.2, "dropout (between LSTM layers and before the head)", rows=True)
    lr: float = C.option(3e-3, "Adam learning rate", rows=True)
    epochs: int = C.option(20, "epochs", rows=True)
    batch_size: int = C.option(64, "windows per step and worker", rows=True)
    steps_per_epoch: int | None = C.option(
        None, "steps per epoch (default: one pass over the train windows)", rows=True
    )
    windows_per_video: int = C.option(
        2,
        "windows of one video in a batch: each batch holds batch_size/windows_per_video videos",
        rows=True,
    )
    aggregation: Literal["max_track_mean", "mean", "confident"] = C.option(
        "max_track_mean",
        "window -> video rule of validation (checkpoint choice, temperature); recorded for scoring to use",
        rows=True,
    )
    min_loss_drop: float = C.option(
        0.1,
        "how far below a constant answer's loss (the class-balanced ln 2) the best train loss must fall for "
        "the model to be saved: a classifier that learnt nothing fails the job with its figures; 0 saves any",
    )
    embed_batch_faces: int = C.option(128, "faces per embedder forward pass", rows=True)

    def __post_init__(self):
        for name in ("hidden_size", "num_layers", "epochs", "batch_size", "windows_per_video"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        super().__post_init__()


def run(cfg: TrainClassifierConfig) -> dict:
    return ClassifierTraining(cfg).run()


class ClassifierTraining(T.Training):
    """Every window embedded once (cached by embedder version), the LSTM trained on the codes, its
    temperature fitted on the val videos; the model directory carries its embedder."""

    job, run_name, title = NAME, "classifier", "window classifier"

    def check(self) -> None:
        cfg = self.cfg
        self.segment, self.embedder = cfg.folder(cfg.input), cfg.folder(cfg.embedder)
        self.embedder_meta = modelio.read_meta(self.embedder)
        if self.embedder_meta.get("architecture") != "face_embedder":
            raise C.ConfigError(
                f"--embedder {cfg.embedder} holds a {self.embedder_meta.get('architecture')} model, not a face_embedder"
            )
        self.windows = T.load_windows(self.segment, ("train", "val"), fakes=cfg.fakes)
        self.data_recipe = T.data_recipe(self.segment)
        self.blend = cfg.self_blend(self.data_recipe["extract"]["crop_margin"])
        lengths = set(self.windows.column("n_frames").to_pylist())
        if len(lengths) != 1:
            raise C.ConfigError(
                f"windows of several lengths {sorted(lengths)} in {cfg.input}; segment with one window_len"
            )
        self.n_frames = lengths.pop()

    def plan(self, use_gpu: bool) -> T.Plan:
        cfg, windows, n_frames = self.cfg, self.windows, self.n_frames
        segment, embedder = self.segment, self.embedder
        cache = cfg.folder(cfg.embeddings_cache) if cfg.embeddings_cache else cache_for(segment, embedder)
        videos = segmented_videos(segment, pc.unique(windows.column("video_id")))
        faces = faces_version(segment)
        rows, embedded = embed_videos(videos, segment, embedder, cache, use_gpu, cfg.embed_batch_faces, faces)
        # The FAKE windows: the labelled ones, and/or the self-blended copies of the REAL ones.
        self.codes = [_codes.Codes(rows, sources=cfg.fakes == "sbi")]
        train = windows.filter(pc.equal(windows.column("split"), "train"))
        n_fake = int(pc.sum(pc.equal(train.column("label"), R.LABEL_FAKE)).as_py() or 0)
        n_real = train.num_rows - n_fake
        if self.blend is not None:
            real = windows.filter(pc.equal(windows.column("label"), R.LABEL_REAL))
            sources = segmented_videos(segment, pc.unique(real.column("video_id")))
            sbi_cache = _codes.sbi_cache(cache, self.blend)
            blended_rows, blended = embed_videos(
                sources, segment, embedder, sbi_cache, use_gpu, cfg.embed_batch_faces, faces, self.blend
            )
            self.codes.append(_codes.Codes(blended_rows))
            embedded += blended
            n_fake += n_real  # one self-blended copy of every REAL window
        steps = cfg.steps_per_epoch or max(1, -(-(n_real + n_fake) // (cfg.num_workers * cfg.batch_size)))
        # The code sequences, read once before training (on a cluster into the run's storage, so they
        # outlive any node, and read from there every epoch); the training split shuffled once (seeded).
        datasets = {
            "train": runner.training_input(
                runner.shuffled(_codes.read_split(self.codes, "train"), cfg.seed), T.input_dir(cfg, "train")
            ),
            "val": runner.training_input(_codes.read_split(self.codes, "val"), T.input_dir(cfg, "val")),
        }
        kind = {"labels": "", "sbi": " (self-blended REAL windows)", "both": " (labelled and self-blended)"}
        console.say(
            f"train_classifier: train windows REAL {n_real}, FAKE {n_fake}{kind[cfg.fakes]} "
            f"(pos_weight {n_real / n_fake:.3f}); {steps} steps per epoch on {cfg.num_workers} worker(s)"
        )
        meta = {
            "architecture": "window_classifier",
            "code_dim": self.embedder_meta["code_dim"],
            "n_frames": n_frames,
            "hidden_size": cfg.hidden_size,
            "num_layers": cfg.num_layers,
            "bidirectional": cfg.bidirectional,
            "dropout": cfg.dropout,
            "embedder_version": modelio.model_version(embedder),
            "embedder": storage.normalize(cfg.embedder),
            "face_size": self.embedder_meta["face_size"],
            "window_len": n_frames,
            "frame_stride": int(pc.max(windows.column("frame_stride")).as_py()),
            "prior_fake": n_fake / max(1, train.num_rows),
            "aggregation": cfg.aggregation,
            "recipe": {**self.data_recipe, "train": cfg.fakes_recipe()},
            "embeddings_cache": cache.uri,
            "train_windows": {"REAL": n_real, "FAKE": n_fake},
            "windows_embedded_this_run": embedded,
        }
        # The loop reads its settings from the job's config as it is (lr, epochs, aggregation, ...),
        # plus what the job worked out.
        loop_cfg = {
            **C.to_dict(cfg),
            "meta": meta,
            "steps_per_epoch": steps,
            "per_video": cfg.windows_per_video,
            "pos_weight": n_real / max(1, n_fake),
        }
        shown = ("train_loss", "val_loss", "val_video_loss", "val_video_acc")
        # The video-level log loss under the scoring rule picks the epoch.
        return T.Plan(classifier_loop, loop_cfg, datasets, meta, shown, select_by="val_video_loss")

    def finish(self, best: dict, history: list[dict], meta: dict) -> None:
        cfg = self.cfg
        learnt(history, meta["train_windows"], cfg.min_loss_drop, self.embedder_meta)
        meta.update(calibrate(best["model"], meta, self.codes).as_meta())
        meta["calibrated_prior"] = CALIBRATED_PRIOR
        segment_cfg = self.segment.read_json("config.json")
        meta["segment"] = {
            "uri": storage.normalize(cfg.input),
            "config_hash": segment_cfg.get("config_hash"),
            "usable_flags": segment_cfg["config"]["usable_flags"],
            # Scoring assigns the same splits, so its report can single out held-out videos.
            "split": {k: segment_cfg["config"][k] for k in recipe.SPLIT_OPTIONS},
        }
        # The classifier directory carries its embedder, so it can be copied and scored anywhere.
        carried = cfg.folder(cfg.output).sub("embedder")
        for name in ("model.pt", "model.json"):
            carried.write_bytes(name, self.embedder.read_bytes(name))


def learnt(history: list[dict], windows: dict, min_drop: float, embedder: dict) -> None:
    """Fail the job, with the figures, when the train loss never fell ``min_drop`` below a constant
    answer's: such a model answers about 0.5 to every video, whatever its val AUC says."""
    import math

    n_real, n_fake = windows["REAL"], windows["FAKE"]
    # BCE with pos_weight REAL/FAKE weighs both classes alike: the best constant answer is 0.5.
    constant = math.log(2) * 2 * n_real / max(1, n_real + n_fake)
    losses = [h["train_loss"] for h in history]
    if min_drop <= 0 or min(losses) < (1 - min_drop) * constant:
        return
    last = history[-1]
    codes = embedder.get("best_metrics", {}).get("val_auc")
    raise C.JobError(
        f"train_classifier: the classifier did not learn: its train loss stayed at {min(losses):.3f}-{max(losses):.3f} "
        f"over {len(history)} epochs, where answering 0.5 to every window scores {constant:.3f} (asked: below "
        f"{(1 - min_drop) * constant:.3f}, min_loss_drop={min_drop}); its last epoch's val videos: accuracy "
        f"{last.get('val_video_acc', float('nan')):.3f}, AUC {last.get('val_video_auc', float('nan')):.3f}"
        + (f"; the embedder's val AUC was {codes:.3f}" if codes is not None else "")
        + ". No model was saved. Retrain the embedder (more epochs, another seed) or give the classifier more "
        "steps (epochs, steps_per_epoch, lr); min_loss_drop=0 saves it anyway"
    )


def calibrate(state: dict, meta: dict, codes: list[_codes.Codes]):
    """The calibration of the window logits (:func:`dfpipe.train.calibration.fit_calibration`: a
    temperature and an offset), fitted on the val split's *video* probabilities under the model's
    aggregation over counted windows, so calibration holds for what is reported. The loss is
    balanced over the classes, as the training loss is (``pos_weight``): the probabilities assume a
    prior of 0.5 (``dfpipe.train.calibration.prior_shift``). Trained on self-blends, the val FAKE
    videos are self-blended too: the calibration then fits those, the only fakes the model has seen."""
    model = modelio.build(meta)
    model.load_state_dict(state)
    shape = (meta["n_frames"], meta["code_dim"])
    logits, labels, videos, tracks = window_logits(model, val_batches(codes, shape), shape, "cpu")
    how = meta["aggregation"]
    fit = fit_calibration(logits, labels, videos, tracks, how, balanced=True)
    console.say(
        f"train_classifier: calibration on val videos ({how}, log loss balanced over the classes, probabilities "
        f"assume {CALIBRATED_PRIOR:.0%} FAKE): {fit.describe()}"
    )
    return fit


def val_batches(codes: list[_codes.Codes], shape: tuple[int, int]):
    """The counted val windows' codes, one cache file at a time (only their rows are read), so the
    driver holds one file's codes and every val window's logit, never every code."""
    for c in codes:
        for f in c.windows.find():
            if not f.endswith(".parquet"):
                continue
            fs, path = storage.arrow_filesystem(f, c.windows.options)
            columns = ["video_id", "track_id", "label", "codes"]
            table = c.labelled(pq.read_table(path, filesystem=fs, columns=columns, filters=c.where("val")))
            if table.num_rows:
                yield {
                    "codes": codes_array(table, *shape),
                    "label": np.asarray(table.column("label").to_pylist()),
                    "video_id": np.asarray(table.column("video_id").to_pylist()),
                    "track_id": np.asarray(table.column("track_id").to_pylist()),
                }


def format_summary(meta: dict) -> str:
    m = meta.get("best_metrics", {})

    def f(k):
        v = m.get(k)
        return "n/a" if v is None else f"{v:.4f}"

    return (
        f"classifier: {meta['epochs_trained']} epochs, kept epoch {meta['best_epoch'] + 1}, temperature "
        f"{meta.get('temperature', 1.0):.3f}, offset {meta.get('offset', 0.0):+.3f}\n"
        f"  val windows: log loss {f('val_loss')}, accuracy {f('val_acc')}, AUC {f('val_auc')}\n"
        f"  val videos:  log loss {f('val_video_loss')}, accuracy {f('val_video_acc')}, AUC {f('val_video_auc')}"
    )
