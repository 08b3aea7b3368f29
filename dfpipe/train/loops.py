"""Training loops for the embedder and the window classifier, free of Ray.

A loop gets its data, checkpoints and collective operations through a :class:`TrainContext`; the
runner supplies one backed by Ray Train (``TorchTrainer``), tests can supply :class:`LocalContext`.
Every worker runs exactly ``steps_per_epoch`` steps, so DDP workers never wait on each other.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import numpy as np
import torch

from dfpipe import records as R
from dfpipe import runner
from dfpipe.faces.tensors import FaceTensors
from dfpipe.train import metrics as M
from dfpipe.train import modelio
from dfpipe.train.calibration import video_probs
from dfpipe.train.models.losses import LOSSES
from dfpipe.train.sampler import video_batches
from dfpipe.train.sbi import SelfBlend

log = logging.getLogger(__name__)


class TrainContext(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def batches(
        self, name: str, batch_size: int, shuffle: bool = False, seed: int | None = None
    ) -> Iterator[dict[str, np.ndarray]]:
        """One pass over this worker's share of dataset ``name`` (shuffled locally, by ``seed``, if asked)."""

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module: ...

    def latest_checkpoint(self) -> dict | None: ...

    def report(self, metrics: dict, state: dict | None) -> None: ...

    def all_gather(self, obj: Any) -> list: ...


class LocalContext:
    """One in-process worker over in-memory datasets (dicts of numpy arrays)."""

    rank, world_size = 0, 1

    def __init__(self, datasets: dict[str, dict[str, np.ndarray]], seed: int = 0):
        self.datasets, self.device = datasets, torch.device("cpu")
        self.reports: list[dict] = []
        self.state: dict | None = None
        self.rng = np.random.default_rng(seed)

    def batches(self, name, batch_size, shuffle=False, seed=None):
        data = self.datasets[name]
        n = len(next(iter(data.values())))
        rng = self.rng if seed is None else np.random.default_rng(seed)
        order = rng.permutation(n) if shuffle else np.arange(n)
        for i in range(0, n, batch_size):
            yield {k: v[order[i : i + batch_size]] for k, v in data.items()}

    def prepare(self, model):
        return model.to(self.device)

    def latest_checkpoint(self):
        return self.state

    def report(self, metrics, state):
        print(epoch_line(metrics), flush=True)
        self.reports.append(metrics)
        if state is not None:
            self.state = state

    def all_gather(self, obj):
        return [obj]


READ_ROWS = 256  # rows per read from a worker's shard, before the sampler mixes them


def _train_batches(ctx: TrainContext, name: str, size: int, cfg: dict, start: int) -> Iterator[dict]:
    """Endless training batches of dataset ``name`` on this worker, each from ``size // per_video``
    distinct videos (:func:`dfpipe.train.sampler.video_batches`), in a new order every pass.

    Seeded by the run's seed, the worker's rank, the epoch it starts at and the dataset: a run is
    reproducible on the same machine (the runner keeps Ray Data's split of the shards in order).
    """
    rng = np.random.default_rng([cfg["seed"], ctx.rank, start, zlib.crc32(name.encode())])

    def one_pass(counted: list[int]) -> Iterator[dict]:
        seed = int(rng.integers(2**31))
        for chunk in ctx.batches(name, READ_ROWS, shuffle=True, seed=seed):
            counted.append(len(next(iter(chunk.values()))))
            if counted[-1]:
                yield chunk

    def passes() -> Iterator[Iterator[dict]]:
        while True:
            counted: list[int] = []
            yield one_pass(counted)
            if not sum(counted):
                raise ValueError(f"dataset {name!r} is empty on worker {ctx.rank}")

    return video_batches(passes(), size, cfg.get("per_video", 2), rng)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _seed(seed: int, rank: int) -> None:
    torch.manual_seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)


def _resume(ctx: TrainContext, model, optimizer) -> tuple[int, list[dict]]:
    state = ctx.latest_checkpoint()
    if not state:
        return 0, []
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if ctx.rank == 0:
        print(f"resuming from the checkpoint of epoch {state['epoch']}", flush=True)
    return int(state["epoch"]) + 1, list(state["history"])


def _autocast(ctx: TrainContext):
    """bf16 autocast on GPU (mixed precision); a no-op on CPU."""
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=ctx.device.type == "cuda")


def embedder_loop(cfg: dict, ctx: TrainContext) -> None:
    """Triplet (or contrastive) training on class-balanced batches: half REAL, half FAKE faces."""
    _seed(cfg["seed"], ctx.rank)
    model = modelio.build(cfg["meta"])
    if cfg.get("init_state"):
        model.load_state_dict(cfg["init_state"], strict=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    start, history = _resume(ctx, model, optimizer)
    model = ctx.prepare(model)
    loss_fn = LOSSES[cfg["loss"]]
    half = max(1, cfg["batch_size"] // 2)
    tensors = _face_tensors(cfg, augment=True, seed=cfg["seed"] + ctx.rank)

    labelled, blended = fake_halves(cfg.get("fakes", "labels"), half)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        # Half REAL faces; the FAKE half labelled fakes, self-blends of the REAL half's own faces (a
        # face and its fake side by side, as the SBI paper pairs them: only the blend tells them
        # apart), or some of each.
        raw = next(real)
        parts = [tensors["train_real"](raw)]
        if labelled:
            parts.append(tensors["train_fake"](next(fake)))
        if blended:
            parts.append(tensors["train_sbi"]({k: v[:blended] for k, v in raw.items()}))
        x = torch.from_numpy(np.concatenate([p["image"] for p in parts])).to(ctx.device)
        y = torch.from_numpy(np.concatenate([p["label"] for p in parts])).to(ctx.device)
        return x, y

    def step() -> torch.Tensor:
        x, y = batch()
        with _autocast(ctx):
            codes = model(x)
        return loss_fn(codes.float(), y, cfg["margin"])

    real = _train_batches(ctx, "train_real", half, cfg, start)
    fake = _train_batches(ctx, "train_fake", labelled, cfg, start) if labelled else None

    def validate(m) -> dict:
        if cfg.get("batchnorm_batches"):
            recalibrate_batchnorm(m, (batch() for _ in range(cfg["batchnorm_batches"])))
        return _validate_embedder(m, ctx, cfg, loss_fn)

    _fit(ctx, cfg, model, optimizer, start, history, step, validate)


def recalibrate_batchnorm(
    model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> None:
    """BatchNorm statistics of the current weights: reset, then a cumulative average over
    ``batches`` of ``(x, y)`` in train mode (no gradients). Running averages of a few steps lag
    weights that move fast, and a model evaluated with them is not the model that was trained."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
    model.train()
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum


def fake_halves(fakes: str, half: int) -> tuple[int, int]:
    """How many of a batch's ``half`` FAKE faces are labelled fakes and how many self-blends of its
    REAL faces: all of one kind, or (``both``) half each."""
    if fakes == "labels":
        return half, 0
    if fakes == "sbi":
        return 0, half
    return max(1, half // 2), max(1, half - half // 2)


def _face_tensors(cfg: dict, augment: bool, seed: int = 0) -> dict[str, FaceTensors]:
    """The embedder's decoding of each dataset's faces: REAL sources of a self-blend labelled REAL
    (a bare dump has none), self-blends made from them labelled FAKE."""
    size, blend = cfg["face_size"], self_blend(cfg)
    sources = R.LABEL_REAL if cfg.get("fakes", "labels") == "sbi" else None
    return {
        "train_real": FaceTensors(size, augment, seed, label=sources),
        "train_fake": FaceTensors(size, augment, seed),
        "train_sbi": FaceTensors(size, augment, seed, blend=blend),
        "val": FaceTensors(size, augment, seed, label=sources),
    }


def self_blend(cfg: dict) -> SelfBlend | None:
    """The self-blend a training's config asks for (``fakes`` sbi or both), or None."""
    if cfg.get("fakes", "labels") == "labels":
        return None
    return SelfBlend(cfg["sbi_seed"], cfg["crop_margin"])


def _validate_embedder(model, ctx: TrainContext, cfg: dict, loss_fn) -> dict:
    """Validation faces (and, training on self-blends, a self-blended copy of each REAL one) ->
    the loss on class-balanced batches and how far the classes' codes lie apart."""
    model.eval()
    codes, labels = [], []
    tensors = _face_tensors(cfg, augment=False)
    fakes = cfg.get("fakes", "labels")
    with torch.inference_mode():
        for raw in ctx.batches("val", cfg["batch_size"]):
            batches = [tensors["val"](raw)]
            if fakes != "labels":  # the self-blends of its sources (every row, training on sbi alone)
                rows = np.array(
                    [i for i, y in enumerate(raw["label"]) if fakes == "sbi" or y == R.LABEL_REAL], int
                )
                batches.append(tensors["train_sbi"]({k: np.asarray(v)[rows] for k, v in raw.items()}))
            for batch in batches:
                if len(batch["label"]):
                    x = torch.from_numpy(batch["image"]).to(ctx.device)
                    codes.append(model(x).float().cpu().numpy())
                    labels.append(batch["label"])
    gathered = ctx.all_gather(
        (np.concatenate(codes) if codes else None, np.concatenate(labels) if labels else None)
    )
    c = (
        np.concatenate([g[0] for g in gathered if g[0] is not None])
        if any(g[0] is not None for g in gathered)
        else None
    )
    if c is None:
        return {"val_loss": float("nan"), "val_auc": float("nan")}
    y = np.concatenate([g[1] for g in gathered if g[1] is not None])
    val_loss = _balanced_batch_loss(c, y, cfg["batch_size"], loss_fn, cfg["margin"])
    # How well codes separate the classes: AUC of the distance to the REAL centroid (FAKE = far).
    real = c[y == 0]
    auc = M.roc_auc(y, np.linalg.norm(c - real.mean(0), axis=1)) if len(real) else float("nan")
    return {"val_loss": val_loss, "val_auc": auc, "val_faces": int(len(y))}


def _balanced_batch_loss(
    codes: np.ndarray, labels: np.ndarray, batch_size: int, loss_fn, margin: float
) -> float:
    """The training objective on validation data: the mean loss over class-balanced batches of
    ``batch_size`` (a fixed shuffle). Mining over the whole validation set at once would score
    every model by its single hardest pair and favour collapsed codes."""
    rng = np.random.default_rng(0)
    real, fake = rng.permutation(np.nonzero(labels == 0)[0]), rng.permutation(np.nonzero(labels == 1)[0])
    half = max(1, batch_size // 2)
    n = min(len(real), len(fake)) // half
    if n == 0:
        return float("nan")
    losses = []
    for i in range(n):
        idx = np.concatenate([real[i * half : (i + 1) * half], fake[i * half : (i + 1) * half]])
        losses.append(float(loss_fn(torch.from_numpy(codes[idx]), torch.from_numpy(labels[idx]), margin)))
    return float(np.mean(losses))


def classifier_loop(cfg: dict, ctx: TrainContext) -> None:
    """LSTM over windows of codes with BCE (``pos_weight`` balances FAKE against REAL)."""
    _seed(cfg["seed"], ctx.rank)
    model = modelio.build(cfg["meta"])
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    start, history = _resume(ctx, model, optimizer)
    shape = (cfg["meta"]["n_frames"], cfg["meta"]["code_dim"])
    if start == 0:  # a resumed run has them in its checkpoint
        model.set_code_statistics(*code_statistics(ctx, "train", shape))
    model = ctx.prepare(model)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(cfg["pos_weight"], device=ctx.device))

    def step() -> torch.Tensor:
        b = next(batches)
        x = torch.from_numpy(_codes(b, shape)).to(ctx.device)
        y = torch.from_numpy(np.asarray(b["label"], np.float32)).to(ctx.device)
        with _autocast(ctx):
            logits = model(x)
        return loss_fn(logits.float(), y)

    batches = _train_batches(ctx, "train", cfg["batch_size"], cfg, start)
    _fit(ctx, cfg, model, optimizer, start, history, step, lambda m: _validate_classifier(m, ctx, cfg, shape))


def code_statistics(
    ctx: TrainContext, name: str, shape: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of each code component over every frame of dataset ``name``, one pass
    over each worker's share, combined across workers (every worker gets the same figures)."""
    total = np.zeros(shape[1]), np.zeros(shape[1]), 0
    for b in ctx.batches(name, READ_ROWS):
        if len(b["label"]):
            frames = _codes(b, shape).reshape(-1, shape[1]).astype(np.float64)
            total = total[0] + frames.sum(0), total[1] + (frames**2).sum(0), total[2] + len(frames)
    parts = ctx.all_gather(total)
    n = max(1, sum(p[2] for p in parts))
    mean = sum(p[0] for p in parts) / n
    var = sum(p[1] for p in parts) / n - mean**2
    return torch.from_numpy(mean).float(), torch.from_numpy(var).float()


def _fit(
    ctx: TrainContext, cfg: dict, model, optimizer, start: int, history: list[dict], step, validate
) -> None:
    """The epoch loop both models share: ``steps_per_epoch`` optimiser steps, validation, a checkpoint
    per epoch, and an optional early stop of this invocation (``stop_after_epochs``; a rerun resumes)."""
    steps, total = cfg["steps_per_epoch"], cfg["epochs"] * cfg["steps_per_epoch"]
    warmup = round(cfg.get("warmup_epochs", 0) * steps)
    for epoch in range(start, cfg["epochs"]):
        started = time.perf_counter()
        model.train()
        losses = []
        for i in range(steps):
            lr = cfg["lr"] * lr_factor(epoch * steps + i, total, warmup, cfg.get("lr_schedule", "constant"))
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = step()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))  # also waits for the GPU: the time below is real
        train_seconds = time.perf_counter() - started
        metrics = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)),
            "lr": lr,
            # Items (faces or windows) per second of this worker's optimiser steps, validation aside.
            "train_per_s": round(cfg["steps_per_epoch"] * cfg["batch_size"] / max(train_seconds, 1e-9), 1),
        }
        metrics.update(validate(_unwrap(model)))
        metrics["selection"] = selection_score(metrics, cfg.get("select_by", "val_loss"))
        metrics["seconds"] = round(time.perf_counter() - started, 3)
        history.append(metrics)
        # The driver says so when workers carried on from a checkpoint (a rerun, or a restart after
        # a lost worker); the history itself stays one plain record per epoch.
        resumed = {"resumed_from": start - 1} if epoch == start and start > 0 else {}
        _report(ctx, {**metrics, **resumed}, model, optimizer, epoch, history)
        stop = cfg.get("stop_after_epochs")
        if stop and epoch + 1 - start >= stop and epoch + 1 < cfg["epochs"]:
            break


# The metrics an epoch may be chosen by: whether higher is better, and the loss that breaks ties.
SELECT_BY = {
    "val_loss": ("min", None),
    "val_video_loss": ("min", None),
    "val_auc": ("max", "val_loss"),
    "val_video_auc": ("max", "val_video_loss"),
}
AUC_DECIMALS = 2  # an AUC on a few hundred val items moves by about 0.01 from sampling alone


def selection_score(metrics: dict, select_by: str) -> float:
    """One number per epoch, lower is better, that the runner keeps the best checkpoint by: the
    metric ``select_by`` (a missing or NaN one last). A loss is compared as it is. An AUC is compared
    to ``AUC_DECIMALS`` decimals, the precision a val set of a few hundred items gives it (it
    saturates at 1.0 early, on codes that barely separate); among equal ones, the lower tie-breaking
    loss (the triplet loss on val: how tight the classes are), then the later epoch."""
    value = metrics.get(select_by)
    if value is None or value != value:
        return float("inf")
    order, tie = SELECT_BY[select_by]
    if order == "min":
        return float(value)
    step = 10.0**-AUC_DECIMALS
    loss = metrics.get(tie) if tie else None
    loss = 0.0 if loss is None or loss != loss else max(0.0, float(loss))
    # Each term stays below the step of the one before it.
    return (
        -round(float(value), AUC_DECIMALS)
        + 0.1 * step * loss / (1 + loss)
        - 1e-9 * int(metrics.get("epoch", 0))
    )


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The learning rate of optimiser step ``step`` of ``total``, as a share of the configured one:
    a linear warm-up over the first ``warmup`` steps, then constant or (``cosine``) decaying to 0.
    A function of the step alone, so a resumed run continues the schedule where it stopped."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    done = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, done)))


def _codes(batch: dict, shape: tuple[int, int]) -> np.ndarray:
    """The batch's code sequences as (B, T, D) float32, whether stored flat per row or already stacked."""
    codes = batch["codes"]
    if isinstance(codes, np.ndarray) and codes.dtype != object:
        return codes.astype(np.float32).reshape(-1, *shape)
    return np.stack([np.asarray(c, np.float32) for c in codes]).reshape(-1, *shape)


def window_logits(
    model, batches: Iterator[dict], shape: tuple[int, int], device
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(logits, labels, video_ids, track_ids)`` of every window in ``batches`` (track 0 where absent)."""
    model.eval()
    logits, labels, videos, tracks = [], [], [], []
    with torch.inference_mode():
        for b in batches:
            if len(b["label"]):
                x = torch.from_numpy(_codes(b, shape)).to(device)
                logits.append(model(x).float().cpu().numpy())
                labels.append(np.asarray(b["label"], np.float32))
                videos.append(np.asarray(b["video_id"]))
                tracks.append(np.asarray(b.get("track_id", np.zeros(len(b["label"]), np.int32))))
    if not logits:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=object), np.zeros(0, np.int32)
    return tuple(np.concatenate(x) for x in (logits, labels, videos, tracks))


def _validate_classifier(model, ctx: TrainContext, cfg: dict, shape) -> dict:
    found = window_logits(model, ctx.batches("val", cfg["batch_size"]), shape, ctx.device)
    parts = ctx.all_gather(found)
    logits, labels, videos, tracks = (np.concatenate([p[k] for p in parts]) for k in range(4))
    if not len(labels):
        return {"val_loss": float("nan")}
    probs = M.sigmoid(logits)
    vp, vy = video_probs(probs, labels, videos, tracks, cfg.get("aggregation", "max_track_mean"))
    return {
        "val_loss": M.log_loss(labels, probs),
        "val_acc": M.accuracy(labels, probs),
        "val_auc": M.roc_auc(labels, probs),
        "val_video_loss": M.log_loss(vy, vp),
        "val_video_acc": M.accuracy(vy, vp),
        "val_video_auc": M.roc_auc(vy, vp),
        "val_windows": int(len(labels)),
        "val_videos": int(len(vy)),
    }


def _report(ctx: TrainContext, metrics: dict, model, optimizer, epoch: int, history: list[dict]) -> None:
    state = None
    if ctx.rank == 0:
        state = {
            "model": _unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "history": history,
        }
    ctx.report({k: v for k, v in metrics.items()}, state)


def epoch_line(metrics: dict, keys: tuple[str, ...] | None = None) -> str:
    """``epoch 3: train_loss 0.6880, val_auc 0.8220, ...`` (epochs counted from 1), for logs and progress."""
    shown = [k for k in (keys or metrics) if k != "epoch" and metrics.get(k) is not None]

    def fmt(v):
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4g}"
        return str(v)

    return f"epoch {int(metrics.get('epoch', 0)) + 1}: " + ", ".join(f"{k} {fmt(metrics[k])}" for k in shown)


CURVE_PANELS = (  # one panel per kind of quantity: (kind, title, test on the metric's name)
    ("loss", "loss", lambda k: "loss" in k),
    ("quality", "AUC and accuracy", lambda k: k.endswith(("auc", "acc", "accuracy"))),
    ("throughput", "throughput (items/s)", lambda k: k.endswith("per_s")),
    ("lr", "learning rate", lambda k: k in ("lr", "learning_rate")),
    ("counts", "validation counts", lambda k: k.endswith(("faces", "windows", "videos"))),
)


def metric_kind(key: str) -> str:
    """``loss``, ``quality``, ``throughput``, ``lr``, ``counts`` or ``other``: metrics of one kind share
    a scale (a panel of curves.png, a TensorBoard group)."""
    return next((kind for kind, _, test in CURVE_PANELS if test(key)), "other")


def plot_curves(history: list[dict], path: str, title: str) -> None:
    """A PNG of the training curves (see :func:`curves_figure`)."""
    import matplotlib.pyplot as plt

    fig = curves_figure(history, title)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curves_figure(history: list[dict], title: str):
    """Training curves, one panel per kind of quantity (losses, AUC and accuracy, throughput,
    learning rate, counts), so no two scales share an axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    panels: dict[str, list[str]] = {}
    for key in sorted({k for h in history for k in h} - {"epoch", "seconds"}):
        values = [h.get(key) for h in history]
        if all(isinstance(v, float | int) for v in values):
            panels.setdefault(metric_kind(key), []).append(key)
    titles = {kind: title for kind, title, _ in CURVE_PANELS} | {"other": "other"}
    order = [kind for kind in titles if kind in panels]
    fig, axes = plt.subplots(1, max(1, len(order)), figsize=(4.2 * max(1, len(order)), 3.8), squeeze=False)
    for ax, kind in zip(axes[0], order, strict=False):
        for key in panels[kind]:
            ax.plot(epochs, [h[key] for h in history], marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_title(titles[kind])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# What the runner needs from training, handed to ``runner.fit`` (the runner never imports training).
HOOKS = runner.TrainingHooks(load_state=modelio.load_state, epoch_line=epoch_line)
