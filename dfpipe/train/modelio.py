"""Model directories: a plain state dict (``model.pt``) plus ``model.json`` saying how to rebuild it.

Loading always uses ``torch.load(..., weights_only=True)``: a model file that holds anything but
tensors and plain containers (a pickled object that could run code) is refused with a clear error.
"""

from __future__ import annotations

import io

import torch

from dfpipe import storage

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


def save_model(
    dir_uri: str, state_dict: dict, meta: dict, options: storage.StorageOptions | None = None
) -> None:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buf)
    storage.write_bytes(storage.join(dir_uri, "model.pt"), buf.getvalue(), options)
    storage.write_json(
        storage.join(dir_uri, "model.json"), {**meta, "format_version": FORMAT_VERSION}, options
    )


def read_meta(dir_uri: str, options: storage.StorageOptions | None = None) -> dict:
    uri = storage.join(dir_uri, "model.json")
    if not storage.exists(uri, options):
        raise ModelError(f"{dir_uri} is not a model directory (no model.json): train one first")
    meta = storage.read_json(uri, options)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{uri}: format_version {meta.get('format_version')} is not {FORMAT_VERSION}")
    return meta


def load_model(dir_uri: str, expected: str, options: storage.StorageOptions | None = None):
    """``(module in eval mode, meta)`` for a model directory whose architecture is ``expected``."""
    meta = read_meta(dir_uri, options)
    if meta.get("architecture") != expected:
        raise ModelError(f"{dir_uri} holds a {meta.get('architecture')!r} model, expected {expected!r}")
    state = load_state(
        storage.read_bytes(storage.join(dir_uri, "model.pt"), options), storage.join(dir_uri, "model.pt")
    )
    model = build(meta)
    model.load_state_dict(state)
    return model.eval(), meta


def build(meta: dict):
    """A fresh module from a ``model.json`` description."""
    arch = meta["architecture"]
    if arch == "face_embedder":
        from dfpipe.train.models.embedder import FaceEmbedder

        return FaceEmbedder(code_dim=meta["code_dim"], dropout=meta.get("dropout", 0.2))
    if arch == "window_classifier":
        from dfpipe.train.models.classifier import WindowClassifier

        return WindowClassifier(
            code_dim=meta["code_dim"],
            hidden_size=meta["hidden_size"],
            num_layers=meta["num_layers"],
            bidirectional=meta["bidirectional"],
            dropout=meta.get("dropout", 0.2),
        )
    raise ModelError(f"unknown architecture {arch!r}")


def model_version(dir_uri: str, options: storage.StorageOptions | None = None) -> str:
    """A content hash of the weights: names caches and scores by the exact model that made them."""
    import hashlib

    return hashlib.sha256(storage.read_bytes(storage.join(dir_uri, "model.pt"), options)).hexdigest()[:12]
