"""Window classifier: an LSTM over a window of face codes -> one logit (FAKE) per window."""

from __future__ import annotations

import torch
from torch import nn


class WindowClassifier(nn.Module):
    """``(B, T, code_dim)`` -> ``(B,)`` logits, from the LSTM's last hidden state of each direction."""

    def __init__(
        self,
        code_dim: int = 128,
        hidden_size: int = 64,
        num_layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.2,
    ):
        super().__init__()
        # Each code component standardised by its mean and spread over the training windows
        # (set_code_statistics): an embedder's codes may all lie within 0.01 of one point, and
        # what separates them is then lost in the common part. The defaults (0, 1) leave codes as they are.
        self.register_buffer("code_mean", torch.zeros(code_dim))
        self.register_buffer("code_scale", torch.ones(code_dim))
        # Then each frame's code normalised, so the LSTM gets inputs of unit scale.
        self.norm = nn.LayerNorm(code_dim)
        self.lstm = nn.LSTM(
            code_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        out = hidden_size * (2 if bidirectional else 1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(out, 1)

    def set_code_statistics(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Standardise codes by these per-component statistics (of the training windows' frames).
        A component with (next to) no spread is scaled as one with a thousandth of the mean spread,
        so float noise is not blown up."""
        std = var.clamp(min=0).sqrt()
        floor = 1e-3 * float(std.mean()) + 1e-12
        self.code_mean.copy_(mean)
        self.code_scale.copy_(1.0 / std.clamp(min=floor))

    @staticmethod
    def upgrade_state(state: dict) -> dict:
        """A state dict saved before codes were standardised: codes taken as they are."""
        code_dim = state["norm.weight"].shape[0]
        return {"code_mean": torch.zeros(code_dim), "code_scale": torch.ones(code_dim), **state}

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        codes = (codes - self.code_mean) * self.code_scale
        _, (h, _) = self.lstm(self.norm(codes))
        directions = 2 if self.lstm.bidirectional else 1
        last = torch.cat([h[-d] for d in range(directions, 0, -1)], dim=1)  # last layer, every direction
        return self.head(self.dropout(last)).squeeze(1)
