"""Model directories: a plain state dict (``model.pt``) plus ``model.json`` saying how to rebuild it.

Loading always uses ``torch.load(..., weights_only=True)``: a model file that holds anything but
tensors and plain containers (a pickled object that could run code) is refused with a clear error.
"""

from __future__ import annotations

import io

import torch

from dfpipe import storage
from dfpipe.train.models.classifier import WindowClassifier
from dfpipe.train.models.embedder import FaceEmbedder

FORMAT_VERSION = 1


class ModelError(ValueError):
    """A model directory that cannot be used; the message says why."""


def load_state(data: bytes, source: str) -> dict:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for refused or broken files
        raise ModelError(
            f"{source}: refused to load ({type(exc).__name__}): only plain tensors are accepted "
            f"(weights_only=True); this file holds something else or is damaged"
        ) from None


def save_model(model: storage.Folder, state_dict: dict, meta: dict) -> None:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buf)
    model.write_bytes("model.pt", buf.getvalue())
    model.write_json("model.json", {**meta, "format_version": FORMAT_VERSION})


def read_meta(model: storage.Folder) -> dict:
    if not model.exists("model.json"):
        raise ModelError(f"{model.uri} is not a model directory (no model.json): train one first")
    meta = model.read_json("model.json")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{model.join('model.json')}: format_version {meta.get('format_version')} is not {FORMAT_VERSION}"
        )
    return meta


def load_model(model: storage.Folder, expected: str):
    """``(module in eval mode, meta)`` for a model directory whose architecture is ``expected``."""
    meta = read_meta(model)
    if meta.get("architecture") != expected:
        raise ModelError(f"{model.uri} holds a {meta.get('architecture')!r} model, expected {expected!r}")
    state = load_state(model.read_bytes("model.pt"), model.join("model.pt"))
    net = build(meta)
    if hasattr(net, "upgrade_state"):  # a model saved by an earlier version of its architecture
        state = net.upgrade_state(state)
    net.load_state_dict(state)
    return net.eval(), meta


def build(meta: dict):
    """A fresh module from a ``model.json`` description."""
    arch = meta["architecture"]
    if arch == "face_embedder":
        return FaceEmbedder(code_dim=meta["code_dim"], dropout=meta.get("dropout", 0.2))
    if arch == "window_classifier":
        return WindowClassifier(
            code_dim=meta["code_dim"],
            hidden_size=meta["hidden_size"],
            num_layers=meta["num_layers"],
            bidirectional=meta["bidirectional"],
            dropout=meta.get("dropout", 0.2),
        )
    raise ModelError(f"unknown architecture {arch!r}")


def model_version(model: storage.Folder) -> str:
    """A content hash of the weights: names caches and scores by the exact model that made them."""
    import hashlib

    return hashlib.sha256(model.read_bytes("model.pt")).hexdigest()[:12]
