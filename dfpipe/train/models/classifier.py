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
        # Unit-length codes have tiny components; normalising each frame's code gives the LSTM
        # inputs of unit scale, which trains in tens of steps instead of hundreds.
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

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(self.norm(codes))
        directions = 2 if self.lstm.bidirectional else 1
        last = torch.cat([h[-d] for d in range(directions, 0, -1)], dim=1)  # last layer, every direction
        return self.head(self.dropout(last)).squeeze(1)
