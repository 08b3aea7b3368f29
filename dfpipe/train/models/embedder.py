"""Face embedder: facenet-pytorch's InceptionResnetV1 backbone -> ``code_dim``, L2-normalised."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MIN_FACE_SIZE = 80  # InceptionResnetV1's stride-2 stages need at least this many pixels per side


class FaceEmbedder(nn.Module):
    """Maps ``(N, 3, S, S)`` face crops (facenet normalisation: ``(x - 127.5) / 128``) to unit ``code_dim`` codes.

    The backbone starts from random weights: facenet-pytorch's pretrained weights are a download,
    so loading them (``vggface2``) is the caller's explicit choice, never a side effect here.
    """

    def __init__(self, code_dim: int = 128, dropout: float = 0.2):
        super().__init__()
        from facenet_pytorch import InceptionResnetV1

        self.backbone = InceptionResnetV1(pretrained=None, classify=False, dropout_prob=dropout)
        self.head = nn.Linear(512, code_dim)
        self.code_dim = code_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.backbone(x)), dim=1)


def load_vggface2_backbone(model: FaceEmbedder) -> None:
    """Downloads facenet-pytorch's VGGFace2 weights into the backbone (needs internet)."""
    from facenet_pytorch import InceptionResnetV1

    pretrained = InceptionResnetV1(pretrained="vggface2", classify=False)
    model.backbone.load_state_dict(pretrained.state_dict(), strict=False)
