"""What the two training jobs share: their skeleton (:class:`Training`), reading windows, guarding
the output, exporting the model."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from dfpipe import __version__, console, outputs, runner, storage
from dfpipe import config as C
from dfpipe import records as R
from dfpipe.jobs import recipe
from dfpipe.train import sbi
from dfpipe.train.loops import AUC_DECIMALS, HOOKS, SELECT_BY, epoch_line, metric_kind, plot_curves
from dfpipe.train.modelio import save_model
from dfpipe.train.sbi import SelfBlend

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """What a training job hands the skeleton once its inputs are ready."""

    loop: Callable  # the per-worker loop (dfpipe.train.loops), run by Ray Train
    loop_cfg: dict  # the loop's settings (plain values: they travel to every worker)
    datasets: dict  # name -> Ray dataset the loop reads
    meta: dict  # the model's model.json so far
    shown: tuple[str, ...]  # the metrics on the console's progress line
    select_by: str = "val_loss"  # the metric whose best epoch is the exported model (loops.SELECT_BY)


class Training:
    """The sequence both trainings follow, written once; a job fills in its three steps:

    1. :meth:`check` (before Ray starts): read and check the inputs, so a wrong one fails in seconds;
    2. :meth:`plan` (Ray joined, GPUs known): build the datasets, the loop's settings and the meta;
    3. :meth:`finish` (after training, before the export; optional): what needs the best weights.

    :meth:`run` returns a finished model as it is, resumes an interrupted one from its last
    checkpoint (Ray Train, same storage path and name), and exports the best epoch.
    """

    job: str  # the job's name, on the console and in config.json
    run_name: str  # Ray Train's run name under OUTPUT/_train (a resumed run must keep it)
    title: str  # the curves' title

    def __init__(self, cfg):
        self.cfg = cfg

    def check(self) -> None:
        """Read and check the inputs (no Ray yet); keep what :meth:`plan` needs on ``self``."""

    def plan(self, use_gpu: bool) -> Plan:
        raise NotImplementedError

    def finish(self, best: dict, history: list[dict], meta: dict) -> None:
        """Check the run (``history``: every epoch's metrics) and add to ``meta`` (or beside the model)
        what needs the best epoch's weights (``best["model"]``)."""

    def run(self) -> dict:
        cfg = self.cfg
        done = prepare_output(cfg, self.job)
        if done:
            console.say(
                f"{self.job}: {cfg.output} already holds a model trained for {done['epochs_trained']} epochs"
            )
            return done
        self.check()
        runner.ensure_ray(cfg.ray_address, cfg.capacity_wait_s)
        use_gpu = runner.use_gpus(cfg.use_gpu)
        plan = self.plan(use_gpu)
        progress = EpochReport(self.job, cfg, plan.shown)
        best, latest = runner.fit(
            plan.loop,
            {**plan.loop_cfg, "select_by": plan.select_by},
            plan.datasets,
            hooks=HOOKS,
            num_workers=cfg.num_workers,
            use_gpu=use_gpu,
            checkpoints=cfg.folder(train_dir(cfg)),
            name=self.run_name,
            max_failures=cfg.max_failures,
            capacity_wait_s=cfg.capacity_wait_s,
            on_report=progress,
        )
        progress.close()
        self.finish(best, latest["history"], plan.meta)
        meta = export(cfg, best, latest, {**plan.meta, "selected_by": plan.select_by}, self.title)
        console.say(f"{self.job}: {kept_epoch(meta, latest['history'])}")
        return meta


class EpochReport:
    """The driver's record of a training run, fed by ``runner.fit(on_report=...)`` as epochs end:
    every epoch's metrics in the log, as TensorBoard scalars under ``OUTPUT/tensorboard`` (local
    or ``s3://``; grouped by kind: loss, quality, throughput, counts), and a progress line on the
    console now and then."""

    def __init__(self, job: str, cfg, shown: tuple[str, ...]):
        from torch.utils.tensorboard import SummaryWriter

        self.job, self.shown = job, shown
        self.progress = console.Progress(job, cfg.epochs, "epochs")
        self.board = cfg.folder(cfg.output).sub("tensorboard")
        local = storage.is_local(self.board.uri)
        self.folder = (
            storage.strip_protocol(self.board.uri) if local else tempfile.mkdtemp(prefix="dfpipe-tb-")
        )
        self.remote = not local
        self.writer = SummaryWriter(log_dir=self.folder)

    def __call__(self, metrics: dict) -> None:
        metrics = dict(metrics)
        epoch = int(metrics.get("epoch", 0))
        resumed = metrics.pop("resumed_from", None)
        if resumed is not None:  # a rerun, or workers restarted after one was lost with its node
            console.say(f"{self.job}: resuming from the checkpoint of epoch {resumed}")
        elif epoch < self.progress.done:  # workers restarted before the first checkpoint was recorded
            console.say(f"{self.job}: training workers restarted with no checkpoint yet: from epoch 0 again")
        log.info("%s: %s", self.job, epoch_line(metrics))
        for key, value in metrics.items():
            if key != "epoch" and isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(f"{metric_kind(key)}/{key}", value, epoch)
        self.writer.flush()
        if self.remote:
            self._upload()
        self.progress.update(epoch + 1, detail=epoch_line(metrics, self.shown))

    def close(self) -> None:
        self.progress.close()
        self.writer.close()
        if self.remote:
            self._upload()
            shutil.rmtree(self.folder, ignore_errors=True)

    def _upload(self) -> None:
        for name in os.listdir(self.folder):
            with open(os.path.join(self.folder, name), "rb") as f:
                self.board.write_bytes(name, f.read())


def training_hash(cfg) -> str:
    """The hash of the options that change the model (declared ``rows=True``); the others (workers,
    GPUs, retries, where it runs) may change between a run and its resumption."""
    return C.config_hash(cfg, C.row_fields(type(cfg)))


# What the classifier's checks and counts read of each window (never the whole row).
COUNT_COLUMNS = ("video_id", "label", "split", "counted", "n_frames", "frame_stride")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScheduleOptions(C.Options):
    """How the optimiser steps over a training run (both trainings take these; ``lr`` is each one's
    own: their defaults differ)."""

    weight_decay: float = C.option(1e-5, "Adam weight decay", rows=True)
    lr_schedule: Literal["cosine", "constant"] = C.option(
        "cosine",
        "cosine: after the warm-up, the learning rate decays to 0 by the last step, so the last epochs "
        "settle; constant: it stays at lr",
        rows=True,
    )
    warmup_epochs: float = C.option(
        1.0, "epochs over which the learning rate rises linearly from 0 to lr", rows=True
    )

    def check(self) -> None:
        if self.warmup_epochs < 0:
            raise ValueError("warmup_epochs must be >= 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingRunOptions(C.Options):
    """How a training run runs and resumes (both trainings take these; ``epochs`` is each one's own:
    their defaults differ)."""

    overwrite: bool = C.option(False, "start again, deleting what the output holds")
    seed: int = C.option(
        0, "random seed of initialisation and data order (recorded in model.json)", rows=True
    )
    num_workers: int = C.option(2, "Ray Train workers (one DDP process each)")
    use_gpu: bool | None = C.option(
        None,
        "use GPUs to train (the classifier's run embeds its windows on them too; default: when the cluster has them)",
    )
    max_failures: int = C.option(
        1, "worker failures Ray Train recovers from by restarting at the last checkpoint"
    )
    stop_after_epochs: int | None = C.option(
        None, "stop this invocation after this many epochs; a rerun resumes"
    )

    def check(self) -> None:
        if self.num_workers < 1:
            raise ValueError("num_workers must be >= 1")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FakesOptions(C.Options):
    """Where a training's FAKE examples come from (both trainings take these)."""

    fakes: Literal["labels", "sbi", "both"] = C.option(
        "labels",
        "labels: the videos labelled FAKE; sbi: self-blended copies of the REAL (and unlabelled) videos' "
        "faces, FAKE labels ignored (learns from real footage alone: docs/train.md); both: the two together",
        rows=True,
    )
    sbi_seed: int = C.option(
        0, "seed of the self-blended fakes: the same seed makes the same fakes", rows=True
    )

    def self_blend(self, margin: float) -> SelfBlend | None:
        """The self-blend of this mode (None for ``labels``), for crops cut with ``margin``."""
        return None if self.fakes == "labels" else SelfBlend(self.sbi_seed, margin)

    def fakes_recipe(self) -> dict:
        """What a model records of its fakes (``model.json`` -> ``recipe.train``)."""
        out = {"fakes": self.fakes}
        if self.fakes != "labels":
            out["sbi"] = {"seed": self.sbi_seed, "version": sbi.VERSION}
        return out


def load_windows(
    segment: storage.Folder,
    splits: tuple[str, ...],
    columns: tuple[str, ...] | None = COUNT_COLUMNS,
    fakes: str = "labels",
) -> pa.Table:
    """Counted windows of ``splits`` a training of mode ``fakes`` learns from, checked: each split
    non-empty, and holding both classes where the FAKE ones come from labels.

    ``labels`` and ``both`` take the labelled windows; ``sbi`` the windows a self-blend may use
    (REAL and unlabelled: :func:`dfpipe.train.sbi.sources`), labelled REAL. Windows of tracks
    that do not count (posters, background faces: ``windows.TrackRule``) are left out: they carry
    the video's label without showing its manipulated face.
    """
    if not segment.exists("windows"):
        raise C.ConfigError(
            f"{segment.uri!r} is not a segmenter output (no windows/): run 'dfpipe segment' first"
        )
    windows = outputs.read_windows(segment, columns=list(columns) if columns else None)
    if fakes == "sbi":
        windows = sbi.as_real(windows.filter(sbi.sources()))
    windows = windows.filter(pc.is_valid(windows.column("label")))
    windows = windows.filter(pc.fill_null(windows.column("counted"), True))
    needed = {R.LABEL_REAL, R.LABEL_FAKE} if fakes == "labels" else {R.LABEL_REAL}
    for split in splits:
        part = windows.filter(pc.equal(windows.column("split"), split))
        if part.num_rows == 0:
            raise C.ConfigError(
                f"the {split} split has no {'usable' if fakes == 'sbi' else 'labelled'} windows in {segment.uri}; "
                "re-run 'dfpipe segment' with val_parts/test_parts or val_fraction/test_fraction that give it videos"
            )
        classes = set(part.column("label").to_pylist())
        if not needed <= classes:
            if fakes == "labels":
                only = "REAL" if classes == {R.LABEL_REAL} else "FAKE"
                raise C.ConfigError(
                    f"the {split} split holds only {only} windows; it needs both REAL and FAKE videos"
                    + (
                        " (or train with fakes=sbi: self-blended fakes from REAL videos)"
                        if only == "REAL"
                        else ""
                    )
                )
            raise C.ConfigError(
                f"the {split} split holds no REAL windows: fakes={fakes} blends fakes from REAL videos"
            )
    return windows.filter(pc.is_in(windows.column("split"), pa.array(list(splits))))


def data_recipe(segment: storage.Folder) -> dict:
    """The recipe (:mod:`dfpipe.jobs.recipe`) of the rows in ``segment``: its segmentation options and
    those of the extraction it read, which must not have changed since."""
    seg = segment.read_json("config.json")
    source = seg.get("source") or {}
    extraction = storage.Folder(source["uri"], segment.options) if source.get("uri") else None
    if extraction is None or not extraction.exists("config.json"):
        raise C.ConfigError(
            f"{segment.uri} does not say which extraction it read, or that extraction's config.json is gone: "
            "the model could not record how its rows were made; segment the extraction output again"
        )
    ext = extraction.read_json("config.json")
    if ext.get("config_hash") != source.get("config_hash"):
        raise C.ConfigError(
            f"the extraction {source['uri']} was re-run with other options after {segment.uri} was made "
            "from it; segment it again (--overwrite) so the windows and the recipe agree"
        )
    try:
        return recipe.build(ext["config"], seg["config"])
    except recipe.RecipeError as exc:
        raise C.ConfigError(str(exc)) from None


def prepare_output(cfg, job: str) -> dict | None:
    """Guard the model directory: returns the existing model.json if training already finished."""
    out = cfg.folder(cfg.output)
    if cfg.overwrite:
        storage.delete_all_but(out.uri, {"logs"}, out.options)  # this run's log is being written there
    digest = training_hash(cfg)
    if out.exists("config.json"):
        previous = out.read_json("config.json")
        if previous.get("config_hash") != digest:
            raise C.ConfigError(
                f"{cfg.output} holds a {previous.get('job')} run with other settings; pass --overwrite to start "
                "again, or choose another output"
            )
        if out.exists("model.json"):
            meta = out.read_json("model.json")
            if meta.get("epochs_trained", 0) >= cfg.epochs:
                return meta
    out.write_json("config.json", {"job": job, "config": C.to_dict(cfg), "config_hash": digest})
    return None


def export(cfg, best: dict, latest: dict, meta: dict, title: str) -> dict:
    """Write model.pt/model.json (best checkpoint), metrics.json (every epoch) and curves.png."""
    out = cfg.folder(cfg.output)
    history = latest["history"]
    best_epoch = int(best["epoch"])
    meta = {
        **meta,
        "dfpipe_version": __version__,
        "epochs_trained": len(history),
        "best_epoch": best_epoch,
        "best_metrics": next((h for h in history if h["epoch"] == best_epoch), {}),
        "seed": cfg.seed,
    }
    save_model(out, best["model"], meta)
    out.write_json("metrics.json", {"epochs": history})
    with tempfile.TemporaryDirectory() as tmp:
        png = os.path.join(tmp, "curves.png")
        plot_curves(history, png, title)
        with open(png, "rb") as f:
            out.write_bytes("curves.png", f.read())
    return meta


def kept_epoch(meta: dict, history: list[dict]) -> str:
    """Which epoch the model is, and why when it is not the last (epochs counted from 1, as the
    progress lines count them)."""
    by, kept, last = meta.get("selected_by", "val_loss"), int(meta["best_epoch"]), history[-1]
    order, tie = SELECT_BY.get(by, ("min", None))
    better = "highest" if order == "max" else "lowest"
    value = meta["best_metrics"].get(by, float("nan"))
    if kept == int(last["epoch"]):
        return f"kept the last epoch, {kept + 1} ({by} {value:.4g})"
    why = f"its {by} {value:.4g} is the {better}"
    if tie:
        why += f" (to {AUC_DECIMALS} decimals; then the lowest {tie}, {meta['best_metrics'].get(tie, float('nan')):.4g})"
    return (
        f"kept epoch {kept + 1} of {len(history)}: {why}; the last epoch, {int(last['epoch']) + 1}, had "
        f"{by} {last.get(by, float('nan')):.4g}"
        + (f", {tie} {last.get(tie, float('nan')):.4g}" if tie else "")
    )


def train_dir(cfg) -> str:
    return storage.join(cfg.output, "_train")


def input_dir(cfg, name: str) -> storage.Folder:
    """Where a training run keeps its dataset ``name`` (``runner.staged``), beside its checkpoints."""
    return cfg.folder(storage.join(train_dir(cfg), "input", name))
