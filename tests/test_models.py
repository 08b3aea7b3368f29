"""Tier 1: losses, model shapes, metrics, model files and the training loops on a LocalContext (no Ray)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from dfpipe.storage import Folder
from dfpipe.train import metrics as M
from dfpipe.train import modelio
from dfpipe.train.loops import LocalContext, classifier_loop, embedder_loop
from dfpipe.train.models.classifier import WindowClassifier
from dfpipe.train.models.losses import batch_hard_triplet_loss, contrastive_l1_loss


def test_triplet_loss_hand_computed():
    codes = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.5], [0.0, 3.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # anchor 0: hardest pos d=1 (to 1), nearest neg d=1.5 (to 2) -> relu(1 - 1.5 + 1) = 0.5
    # anchor 1: pos 1, neg min(|(1,-1.5)|=1.803, |(1,-3)|=3.162) -> relu(1 - 1.803 + 1) = 0.197
    # anchor 2: pos 1.5 (to 3), neg 1.5 (to 0) -> 1.0 ; anchor 3: pos 1.5, neg 3 -> relu(1.5 - 3 + 1) = 0
    expected = (0.5 + (2 - np.sqrt(1 + 1.5**2)) + 1.0 + 0.0) / 4
    assert float(batch_hard_triplet_loss(codes, labels, margin=1.0)) == pytest.approx(expected, rel=1e-5)


def test_triplet_mining_picks_the_hardest_pair():
    codes = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [0.2, 0.0], [9.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 0, 1, 1])
    loss = batch_hard_triplet_loss(codes, labels, margin=0.5)
    loss.backward()
    # anchor 0's hardest positive is code 2 (d=5), its hardest negative code 3 (d=0.2): both get gradient
    assert codes.grad[2].abs().sum() > 0 and codes.grad[3].abs().sum() > 0
    anchor0 = 5.0 - 0.2 + 0.5
    assert float(loss) >= anchor0 / 5


def test_triplet_loss_without_both_classes_is_zero():
    codes = torch.randn(4, 8)
    assert float(batch_hard_triplet_loss(codes, torch.zeros(4))) == 0.0


def test_contrastive_l1_hand_computed():
    codes = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.5]])
    labels = torch.tensor([0, 0, 1])
    # pairs (ordered, off-diagonal): same (0,1),(1,0): L1=2 each; different: (0,2),(2,0): relu(1-0.5)=0.5; (1,2),(2,1): relu(1-1.5)=0
    assert float(contrastive_l1_loss(codes, labels, margin=1.0)) == pytest.approx((2 + 2 + 0.5 + 0.5) / 6)


@pytest.mark.parametrize("bidirectional,layers", [(True, 1), (False, 2)])
def test_window_classifier_shapes(bidirectional, layers):
    model = WindowClassifier(code_dim=16, hidden_size=8, num_layers=layers, bidirectional=bidirectional)
    assert model(torch.randn(5, 12, 16)).shape == (5,)


def test_embedder_output_is_unit_length():
    from dfpipe.train.models.embedder import FaceEmbedder

    model = FaceEmbedder(code_dim=16).eval()
    codes = model(torch.randn(2, 3, 80, 80))
    assert codes.shape == (2, 16)
    assert torch.allclose(codes.norm(dim=1), torch.ones(2), atol=1e-5)


def test_metrics():
    y = np.array([0, 0, 1, 1])
    assert M.roc_auc(y, [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert M.roc_auc(y, [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.5)
    assert M.accuracy(y, [0.1, 0.6, 0.7, 0.9]) == pytest.approx(0.75)
    assert M.log_loss([1, 0], [0.5, 0.5]) == pytest.approx(np.log(2))
    assert M.balanced_log_loss([1, 0, 0, 0], [0.9, 0.1, 0.1, 0.1]) == pytest.approx(-np.log(0.9))


def test_model_files_roundtrip_and_refuse_pickles(tmp_path):
    model = WindowClassifier(code_dim=4, hidden_size=3)
    meta = {
        "architecture": "window_classifier",
        "code_dim": 4,
        "hidden_size": 3,
        "num_layers": 1,
        "bidirectional": True,
    }
    modelio.save_model(Folder(str(tmp_path / "m")), model.state_dict(), meta)
    loaded, back = modelio.load_model(Folder(str(tmp_path / "m")), "window_classifier")
    assert back["code_dim"] == 4 and not loaded.training
    x = torch.randn(2, 5, 4)
    assert torch.allclose(loaded(x), model.eval()(x))
    with pytest.raises(modelio.ModelError, match="holds a 'window_classifier' model"):
        modelio.load_model(Folder(str(tmp_path / "m")), "face_embedder")

    class Evil:
        def __reduce__(self):
            return (print, ("this would have run",))

    buf = io.BytesIO()
    torch.save({"x": Evil()}, buf)
    (tmp_path / "m" / "model.pt").write_bytes(buf.getvalue())
    with pytest.raises(modelio.ModelError, match="weights_only"):
        modelio.load_model(Folder(str(tmp_path / "m")), "window_classifier")
    with pytest.raises(modelio.ModelError, match="not a model directory"):
        modelio.load_model(Folder(str(tmp_path / "nothing")), "window_classifier")


def _toy_windows(n: int, rng) -> dict:
    """Windows whose FAKE codes jitter frame to frame and REAL codes drift smoothly."""
    labels = rng.integers(0, 2, n)
    base = rng.normal(size=(n, 1, 8))
    noise = rng.normal(size=(n, 6, 8)) * np.where(labels[:, None, None] == 1, 1.0, 0.05)
    codes = (base + noise).astype(np.float32).reshape(n, -1)
    return {
        "codes": codes,
        "label": labels.astype(np.float32),
        "video_id": np.array([f"v{i // 2}" for i in range(n)]),
    }


def test_classifier_loop_learns_and_resumes():
    rng = np.random.default_rng(0)
    meta = {
        "architecture": "window_classifier",
        "code_dim": 8,
        "n_frames": 6,
        "hidden_size": 16,
        "num_layers": 1,
        "bidirectional": True,
        "dropout": 0.0,
    }
    cfg = {
        "meta": meta,
        "lr": 1e-2,
        "weight_decay": 0.0,
        "epochs": 6,
        "batch_size": 32,
        "steps_per_epoch": 20,
        "seed": 0,
        "pos_weight": 1.0,
        "stop_after_epochs": 3,
        "lr_schedule": "cosine",  # the jobs' default: a constant 1e-2 overfits this toy task by epoch 6
        "warmup_epochs": 1,
    }
    ctx = LocalContext({"train": _toy_windows(256, rng), "val": _toy_windows(64, rng)})
    classifier_loop(cfg, ctx)
    assert [r["epoch"] for r in ctx.reports] == [0, 1, 2], "stopped after 3 epochs"
    classifier_loop(cfg, ctx)  # the rerun resumes at the next epoch
    assert [r["epoch"] for r in ctx.reports] == [0, 1, 2, 3, 4, 5]
    assert len(ctx.state["history"]) == 6
    assert ctx.reports[-1]["train_loss"] < ctx.reports[0]["train_loss"]
    # The toy task tops out near 0.75 window accuracy in 6 short epochs, with or without standardised codes.
    assert ctx.reports[-1]["val_acc"] > 0.7 and ctx.reports[-1]["val_loss"] < ctx.reports[0]["val_loss"]


def _faces(n: int, fake: bool, rng) -> dict:
    """JPEG face crops of the astronaut; FAKE ones carry a colour cast on the face, as the sample swaps do."""
    import cv2
    from skimage import data

    from dfpipe.extract.faces import encode_jpeg

    face = data.astronaut()[40:200, 150:300]
    out = []
    for _ in range(n):
        img = face.astype(np.float32) * rng.uniform(0.9, 1.1)
        if fake:
            img[40:130, 30:120] *= np.array([1.25, 0.85, 0.8])
        out.append([encode_jpeg(cv2.resize(np.clip(img, 0, 255).astype(np.uint8), (80, 80)))])
    return {
        "faces": np.array(out, dtype=object),
        "label": np.full(n, 1 if fake else 0, np.int8),
        "video_id": np.array([f"{'fake' if fake else 'real'}{i % 4}" for i in range(n)]),
    }


def test_embedder_loop_loss_goes_down():
    rng = np.random.default_rng(0)
    meta = {"architecture": "face_embedder", "code_dim": 16, "face_size": 80, "dropout": 0.0}
    val = {
        k: np.concatenate([a[k], b[k]]) for a, b in [(_faces(8, False, rng), _faces(8, True, rng))] for k in a
    }
    ctx = LocalContext(
        {"train_real": _faces(16, False, rng), "train_fake": _faces(16, True, rng), "val": val}
    )
    cfg = {
        "meta": meta,
        "lr": 1e-3,
        "weight_decay": 0.0,
        "loss": "triplet",
        "margin": 0.5,
        "epochs": 3,
        "batch_size": 8,
        "steps_per_epoch": 4,
        "seed": 0,
        "face_size": 80,
    }
    embedder_loop(cfg, ctx)
    losses = [r["train_loss"] for r in ctx.reports]
    assert losses[-1] < losses[0], losses
    assert ctx.reports[-1]["val_auc"] > 0.5


def test_training_curves_give_each_kind_of_quantity_its_own_panel():
    """Counts (val_faces: hundreds) never share an axis with AUC (0..1)."""
    import matplotlib.pyplot as plt

    from dfpipe.train.loops import curves_figure

    history = [
        {
            "epoch": e,
            "train_loss": 0.7 - 0.1 * e,
            "val_loss": 0.6,
            "val_auc": 0.8,
            "val_video_acc": 0.75,
            "val_faces": 128,
            "train_per_s": 40.0 + e,
            "seconds": 3.0,
        }  # fmt: skip
        for e in range(3)
    ]
    fig = curves_figure(history, "embedder")
    panels = {ax.get_title(): sorted(line.get_label() for line in ax.lines) for ax in fig.axes}
    plt.close(fig)
    assert panels == {
        "loss": ["train_loss", "val_loss"],
        "AUC and accuracy": ["val_auc", "val_video_acc"],
        "throughput (items/s)": ["train_per_s"],
        "validation counts": ["val_faces"],
    }


def _stream(videos: int, per: int, rng, chunk: int = 16) -> dict:
    """Rows of ``videos`` videos, ``per`` each, stored video by video (as shards are)."""
    ids = np.repeat([f"v{i:02d}" for i in range(videos)], per)
    return {"video_id": ids, "row": np.arange(len(ids)), "faces": np.array([[b"x"]] * len(ids), dtype=object)}


def _passes(data: dict, n: int, rng, chunk: int = 16):
    for _ in range(n):
        order = rng.permutation(len(data["row"]))
        yield [{k: v[order[i : i + chunk]] for k, v in data.items()} for i in range(0, len(order), chunk)]


def test_video_batches_draw_each_batch_from_many_videos_and_use_every_row():
    from dfpipe.train.sampler import video_batches

    data = _stream(10, 13, None)
    batches = list(video_batches(_passes(data, 1, np.random.default_rng(0)), 16, 2, np.random.default_rng(1)))
    rows = np.concatenate([b["row"] for b in batches])
    assert sorted(rows.tolist()) == list(range(130)), "a finite pass: every row exactly once"
    assert [len(b["row"]) for b in batches[:-1]] == [16] * 8 and len(batches[-1]["row"]) == 2
    full = batches[:-1]
    assert all(len(set(b["video_id"])) >= 8 for b in full), [len(set(b["video_id"])) for b in full]
    assert batches[0]["faces"].dtype == object and list(batches[0]["faces"][0]) == [b"x"]


def test_video_batches_keep_a_bounded_buffer_and_mix_a_stream_stored_video_by_video():
    """A stream in storage order (one video after another) still gives batches of many videos once the
    buffer holds them; the buffer never grows past its bound plus one chunk."""
    from dfpipe.train import sampler as sampling

    data = _stream(40, 20, None)
    chunks = [{k: v[i : i + 16] for k, v in data.items()} for i in range(0, 800, 16)]
    seen: list[int] = []
    real_add = sampling._Buffer.add

    def add(self, chunk):
        real_add(self, chunk)
        seen.append(self.rows)

    sampling._Buffer.add = add
    try:
        batches = list(sampling.video_batches([chunks], 16, 2, np.random.default_rng(0), buffer_rows=200))
    finally:
        sampling._Buffer.add = real_add
    assert max(seen) < 200 + 16
    assert all(len(set(b["video_id"])) >= 8 for b in batches[:40])


def test_video_batches_are_reproducible_by_seed_and_differ_between_passes():
    from dfpipe.train.sampler import video_batches

    data = _stream(12, 10, None)

    def order(seed: int) -> list[list[int]]:
        gen = video_batches(_passes(data, 2, np.random.default_rng(seed)), 16, 2, np.random.default_rng(seed))
        return [b["row"].tolist() for b in gen]

    first, again, other = order(3), order(3), order(4)
    assert first == again and first != other
    one = [r for b in first[:7] for r in b]  # 120 rows: 7 full batches, 8 rows carried over
    two = [r for b in first[7:14] for r in b]
    assert one != two, "the second pass comes in another order"


def test_training_batches_span_videos_on_a_local_context():
    """The loops' own batches (both classes, P x K): a local worker reads its datasets through the sampler."""
    from dfpipe.train.loops import _train_batches

    rng = np.random.default_rng(0)
    ctx = LocalContext({"train_real": _faces(24, False, rng) | {"video_id": np.repeat(list("abcdef"), 4)}})
    gen = _train_batches(ctx, "train_real", 8, {"seed": 0, "per_video": 2}, 0)
    for _ in range(10):
        assert len(set(next(gen)["video_id"])) == 4


def _classifier_cfg(**over) -> dict:
    meta = {"architecture": "window_classifier", "code_dim": 8, "n_frames": 6, "hidden_size": 16,
            "num_layers": 1, "bidirectional": True, "dropout": 0.0}  # fmt: skip
    return {"meta": meta, "lr": 3e-3, "weight_decay": 0.0, "epochs": 4, "batch_size": 32, "steps_per_epoch": 10,
            "seed": 0, "pos_weight": 1.0, **over}  # fmt: skip


def test_the_classifier_learns_from_codes_that_all_lie_near_one_point():
    """An embedder's codes may all lie within 0.01 of one point (unit codes of an early epoch): the
    classes differ in the thousandths. Standardising each component by the training windows'
    spread lets the classifier learn them; normalising each frame's code alone left it at a
    constant answer (train loss ln 2, every window 0.5) whatever the ranking."""
    rng = np.random.default_rng(0)
    point, direction = rng.normal(size=8) * 10, rng.normal(size=8)

    def windows(n):
        labels = rng.integers(0, 2, n)
        codes = point + 1e-3 * (
            np.where(labels == 1, 1.0, -1.0)[:, None, None] * direction + rng.normal(size=(n, 6, 8)) * 0.3
        )
        return {"codes": codes.astype(np.float32).reshape(n, -1), "label": labels.astype(np.float32),
                "video_id": np.array([f"v{i // 2}" for i in range(n)])}  # fmt: skip

    ctx = LocalContext({"train": windows(256), "val": windows(64)})
    classifier_loop(_classifier_cfg(), ctx)
    assert ctx.reports[-1]["train_loss"] < 0.5 * np.log(2), [r["train_loss"] for r in ctx.reports]
    assert ctx.reports[-1]["val_acc"] > 0.9
    state = ctx.state["model"]
    assert float(state["code_scale"].min()) > 100, "components scaled up by their (small) spread"


def test_a_classifier_saved_before_codes_were_standardised_still_loads(tmp_path):
    from dfpipe.train import modelio

    model = WindowClassifier(code_dim=4, hidden_size=3)
    old = {k: v for k, v in model.state_dict().items() if not k.startswith("code_")}
    meta = {"architecture": "window_classifier", "code_dim": 4, "hidden_size": 3, "num_layers": 1,
            "bidirectional": True}  # fmt: skip
    modelio.save_model(Folder(str(tmp_path)), old, meta)
    loaded, _ = modelio.load_model(Folder(str(tmp_path)), "window_classifier")
    x = torch.randn(2, 5, 4)
    model.eval()
    assert torch.allclose(loaded(x), model(x))


def test_batchnorm_statistics_measured_again_make_eval_codes_those_of_training():
    """A few fast optimiser steps leave BatchNorm's running averages behind the weights: evaluated
    with them, the embedder's codes differ from what it computes in training (they collapse onto
    one point). Measured again with the current weights, eval gives the training codes back."""
    from dfpipe.train.loops import recalibrate_batchnorm
    from dfpipe.train.models.embedder import FaceEmbedder
    from dfpipe.train.models.losses import batch_hard_triplet_loss

    torch.manual_seed(0)
    model = FaceEmbedder(code_dim=16, dropout=0.0)
    x = torch.randn(16, 3, 80, 80)
    y = torch.arange(16) % 2
    x[y == 1] += 0.5
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(3):
        loss = batch_hard_triplet_loss(model(x), y, 0.5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def codes(train_mode: bool):
        model.train(train_mode)
        with torch.no_grad():
            return model(x)

    trained = codes(True)
    assert (codes(False) - trained).norm(dim=1).mean() > 0.1, "the lag this test is about"
    recalibrate_batchnorm(model, [(x, y)])
    assert (codes(False) - trained).norm(dim=1).mean() < 0.05
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_an_epoch_is_kept_by_the_metric_the_next_step_needs_and_the_console_says_which():
    """The embedder keeps its epoch of highest val AUC, not of lowest val loss; AUCs equal to two
    decimals (1.0 comes early, on codes that barely separate) go to the lower val loss, then the
    later epoch. The line says which epoch, counted from 1 as the progress lines count, and why."""
    from dfpipe.jobs._training import kept_epoch
    from dfpipe.train.loops import selection_score

    history = [{"epoch": 0, "val_loss": 0.51, "val_auc": 0.59}, {"epoch": 1, "val_loss": 0.50, "val_auc": 0.84},
               {"epoch": 2, "val_loss": 0.79, "val_auc": 0.99}, {"epoch": 3, "val_loss": 0.70, "val_auc": 0.99},
               {"epoch": 4, "val_loss": 0.92, "val_auc": 0.77}]  # fmt: skip
    best = min(history, key=lambda h: selection_score(h, "val_auc"))
    assert best["epoch"] == 3
    assert min(history, key=lambda h: selection_score(h, "val_loss"))["epoch"] == 1
    assert selection_score({"epoch": 0, "val_auc": float("nan")}, "val_auc") == float("inf")
    line = kept_epoch({"selected_by": "val_auc", "best_epoch": 3, "best_metrics": best}, history)
    assert line.startswith(
        "kept epoch 4 of 5: its val_auc 0.99 is the highest (to 2 decimals; then the lowest val_loss, 0.7)"
    )
    assert line.endswith("the last epoch, 5, had val_auc 0.77, val_loss 0.92")
    last = kept_epoch({"selected_by": "val_auc", "best_epoch": 4, "best_metrics": history[-1]}, history)
    assert last.startswith("kept the last epoch, 5")
    # A perfect AUC at epoch 1 on codes that barely separate (val loss at the margin) loses to a
    # tighter epoch whose AUC is as good to two decimals; a later equal one wins a full tie.
    saturated = [{"epoch": 0, "val_loss": 0.56, "val_auc": 1.0}, {"epoch": 1, "val_loss": 0.21, "val_auc": 0.9961},
                 {"epoch": 2, "val_loss": 0.20, "val_auc": 0.9944}, {"epoch": 3, "val_loss": 0.21, "val_auc": 0.9961}]  # fmt: skip
    assert min(saturated, key=lambda h: selection_score(h, "val_auc"))["epoch"] == 3


def test_a_classifier_that_learnt_nothing_fails_the_job_with_its_figures():
    from dfpipe.config import JobError
    from dfpipe.jobs.train_classifier import learnt

    windows = {"REAL": 100, "FAKE": 80}  # a constant answer scores ln 2 * 2 * 100 / 180 = 0.770
    flat = [{"epoch": e, "train_loss": 0.77 + 0.01 * (e % 2), "val_video_acc": 0.5, "val_video_auc": 0.94}
            for e in range(20)]  # fmt: skip
    with pytest.raises(
        JobError, match=r"did not learn.*0\.770-0\.780 over 20 epochs.*scores 0\.770.*AUC 0\.940"
    ):
        learnt(flat, windows, 0.1, {"best_metrics": {"val_auc": 0.59}})
    learnt(flat, windows, 0.0, {})  # min_loss_drop=0 saves anyway
    learnt(flat[:-1] + [{**flat[-1], "train_loss": 0.2}], windows, 0.1, {})


def test_the_learning_rate_warms_up_then_decays_to_zero_by_the_last_step():
    from dfpipe.train.loops import lr_factor

    f = [lr_factor(s, 100, 10, "cosine") for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and max(f) == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[9:], f[10:], strict=False)) and f[-1] < 0.001
    assert [lr_factor(s, 100, 0, "constant") for s in (0, 50, 99)] == [1.0, 1.0, 1.0]
