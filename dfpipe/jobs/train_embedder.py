"""Train the face embedder (InceptionResnetV1 -> 128-d) with a triplet loss on Ray Train."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import pyarrow.compute as pc

from dfpipe import config as C
from dfpipe import console, outputs, runner, storage
from dfpipe import records as R
from dfpipe.faces.crops import SampledFacesStage
from dfpipe.jobs import _training as T
from dfpipe.jobs._codes import segmented_videos
from dfpipe.train import sbi
from dfpipe.train.loops import embedder_loop, fake_halves
from dfpipe.train.modelio import load_state
from dfpipe.train.models.embedder import MIN_FACE_SIZE, FaceEmbedder, load_vggface2_backbone

NAME = "train_embedder"
RAY = True  # runs on Ray: as a process, its Ray output goes to OUTPUT/logs/ (dfpipe.cli.run_job)
SUMMARY = "Train the triplet-loss face embedder on the train split's face crops (Ray Train)."


@dataclass(frozen=True, kw_only=True)
class TrainEmbedderConfig(C.RunOptions, T.FakesOptions, T.ScheduleOptions, T.TrainingRunOptions):
    input: str = C.option(help="a segmenter output URI (windows/ with train and val splits)", rows=True)
    output: str = C.option(
        help="model directory URI: model.pt, model.json, metrics.json, curves.png", rows=True
    )
    init: str = C.option(
        "random",
        "initial weights: random (offline), vggface2 (downloads facenet-pytorch's weights), or a state-dict URI",
        rows=True,
    )
    code_dim: int = C.option(128, "size of the face code", rows=True)
    face_size: int = C.option(
        160,
        f"side of the faces fed to the network (crops are resized; >= {MIN_FACE_SIZE})",
        rows=True,
    )
    dropout: float = C.option(0.2, "dropout before the backbone's last layer", rows=True)
    loss: Literal["triplet", "contrastive_l1"] = C.option(
        "triplet",
        "triplet: batch-hard triplet loss (default: mines the hardest pair per anchor, so it keeps learning once easy "
        "pairs are solved); contrastive_l1: the seed project's pairwise L1 contrastive loss, for comparison",
        rows=True,
    )
    margin: float = C.option(0.5, "margin of the loss", rows=True)
    lr: float = C.option(3e-4, "Adam learning rate", rows=True)
    epochs: int = C.option(5, "epochs", rows=True)
    batch_size: int = C.option(32, "faces per step and worker: half REAL, half FAKE (see fakes)", rows=True)
    steps_per_epoch: int | None = C.option(
        None, "steps per epoch (default: one pass over the smaller class)", rows=True
    )
    batchnorm_batches: int = C.option(
        8,
        "training batches the BatchNorm statistics are measured on, with each epoch's weights, before it is "
        "validated and saved (0: the running averages of training, which lag weights that move fast)",
        rows=True,
    )
    faces_per_window: int = C.option(
        4,
        "faces sampled per window (evenly spaced; overlapping windows share faces)",
        rows=True,
    )
    faces_per_video: int = C.option(
        2,
        "faces of one video in a batch: each batch holds batch_size/2/faces_per_video videos per class",
        rows=True,
    )

    def __post_init__(self):
        if self.face_size < MIN_FACE_SIZE:
            raise ValueError(
                f"face_size must be >= {MIN_FACE_SIZE} for InceptionResnetV1, got {self.face_size}"
            )
        for name in ("code_dim", "epochs", "faces_per_window", "faces_per_video"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.batchnorm_batches < 0:
            raise ValueError("batchnorm_batches must be >= 0")
        if self.batch_size < 4:
            raise ValueError("batch_size must be >= 4 (two faces of each class at least)")
        super().__post_init__()


def initial_state(cfg: TrainEmbedderConfig) -> dict | None:
    if cfg.init == "random":
        return None
    if cfg.init == "vggface2":
        model = FaceEmbedder(cfg.code_dim, cfg.dropout)
        load_vggface2_backbone(model)
        return model.state_dict()
    if not storage.exists(cfg.init, cfg.storage_options):
        raise C.ConfigError(f"init: {cfg.init!r} is neither random, vggface2 nor an existing weights file")
    state = load_state(storage.read_bytes(cfg.init, cfg.storage_options), cfg.init)
    state = state.get("model", state)
    # A bare InceptionResnetV1 state dict initialises the backbone only.
    if not any(k.startswith(("backbone.", "head.")) for k in state):
        state = {f"backbone.{k}": v for k, v in state.items() if not k.startswith("logits.")}
    return state


def run(cfg: TrainEmbedderConfig) -> dict:
    return EmbedderTraining(cfg).run()


class EmbedderTraining(T.Training):
    """Faces sampled from the training windows (REAL and FAKE apart), the triplet loop over them."""

    job, run_name, title = NAME, "embedder", "face embedder"

    def check(self) -> None:
        cfg = self.cfg
        self.segment = cfg.folder(cfg.input)
        # Checks the splits (a few columns a window) for the FAKE faces this mode takes.
        T.load_windows(self.segment, ("train", "val"), fakes=cfg.fakes)
        # A self-blend finds the face in a crop from the extraction's margin.
        self.margin = T.data_recipe(self.segment)["extract"]["crop_margin"] if cfg.fakes != "labels" else None
        self.init_state = initial_state(cfg)

    def plan(self, use_gpu: bool) -> T.Plan:
        cfg = self.cfg
        # One row per video with windows (its split, label and segmentation chunk); the workers read
        # its windows, sample faces and read their crops (with each face's box and landmarks when
        # self-blends are made of them, on the training workers, fresh in every batch).
        summary = outputs.read_summary(self.segment, columns=["video_id", "split", "label"])
        videos = segmented_videos(self.segment).join(summary, "video_id").sort_by("chunk")
        stage = SampledFacesStage(
            self.segment.sub("windows"), cfg.faces_per_window, geometry=cfg.fakes != "labels"
        )
        label = pc.field("label")
        sources = sbi.sources() if cfg.fakes == "sbi" else label == R.LABEL_REAL
        chosen = {
            "train_real": ("train", sources),
            "train_fake": ("train", label == R.LABEL_FAKE),
            "val": ("val", sources if cfg.fakes == "sbi" else label.is_valid()),
        }
        if cfg.fakes == "sbi":
            del chosen["train_fake"]  # FAKE labels ignored
        datasets, counts = {}, {}
        for name, (split, which) in chosen.items():
            rows = videos.filter((pc.field("split") == split) & which)
            # JPEG crops are small: sample them once, before training (into the run's storage on a
            # cluster, so the input outlives any node), so the data stages never compete with the
            # training workers for CPUs; decoding and augmentation happen in the loop, fresh each
            # epoch. Shuffled once (seeded) so each worker's stream mixes all videos; the loop's
            # sampler then builds every batch from many videos (dfpipe.train.sampler).
            faces = runner.map_stage(
                runner.dataset_from_table(rows, rows_per_block=16), stage, n_rows=rows.num_rows
            )
            datasets[name] = runner.training_input(runner.shuffled(faces, cfg.seed), T.input_dir(cfg, name))
            counts[name] = datasets[name].count()
        half = cfg.batch_size // 2
        labelled, blended = fake_halves(cfg.fakes, half)
        # An epoch: one pass over the smaller of the REAL faces and the labelled FAKE ones (the
        # self-blends are made of the REAL faces of each batch).
        passes = [counts["train_real"] / half] + ([counts["train_fake"] / labelled] if labelled else [])
        steps = cfg.steps_per_epoch or max(1, math.ceil(min(passes) / cfg.num_workers))
        kinds = [f"REAL {counts['train_real']}"]
        if labelled:
            kinds.append(f"FAKE {counts['train_fake']}")
        if blended:
            kinds.append(f"self-blended: {blended} of every {half} REAL faces")
        console.say(
            f"train_embedder: faces train {', '.join(kinds)}, val {counts['val']}; "
            f"{steps} steps per epoch on {cfg.num_workers} worker(s){' with GPUs' if use_gpu else ''}"
        )
        meta = {
            "architecture": "face_embedder",
            "code_dim": cfg.code_dim,
            "face_size": cfg.face_size,
            "dropout": cfg.dropout,
            "loss": cfg.loss,
            "margin": cfg.margin,
            "train": cfg.fakes_recipe(),
        }
        # The loop reads its settings from the job's config as it is (lr, loss, margin, epochs, ...),
        # plus what the job worked out.
        loop_cfg = {
            **C.to_dict(cfg),
            "meta": meta,
            "init_state": self.init_state,
            "steps_per_epoch": steps,
            "per_video": cfg.faces_per_video,
            "crop_margin": self.margin,
        }
        self.counts = counts
        # The epoch whose codes separate the val split's REAL and FAKE faces best is the one kept:
        # that is what the classifier needs of it (the triplet loss on val does not follow it).
        shown = ("train_loss", "val_loss", "val_auc", "train_per_s")
        return T.Plan(embedder_loop, loop_cfg, datasets, meta, shown, select_by="val_auc")

    def finish(self, best: dict, history: list[dict], meta: dict) -> None:
        meta["faces"] = self.counts


def format_summary(meta: dict) -> str:
    m = meta.get("best_metrics", {})
    return (
        f"embedder: {meta['epochs_trained']} epochs, kept epoch {meta['best_epoch'] + 1}: "
        f"val_loss {m.get('val_loss', float('nan')):.4f}, val AUC (distance to REAL centroid) {m.get('val_auc', float('nan')):.3f}"
    )
