"""Metric-learning losses on real/fake labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def batch_hard_triplet_loss(codes: torch.Tensor, labels: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017) with Euclidean distances.

    For each anchor: its farthest same-label code and its nearest other-label code;
    loss = mean(relu(d(a, p) - d(a, n) + margin)) over anchors that have both.
    """
    dist = torch.cdist(codes, codes)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=codes.device)
    pos_mask, neg_mask = same & ~eye, ~same
    valid = pos_mask.any(1) & neg_mask.any(1)
    if not valid.any():
        return codes.sum() * 0.0
    hardest_pos = torch.where(pos_mask, dist, torch.zeros_like(dist)).max(1).values
    hardest_neg = torch.where(neg_mask, dist, torch.full_like(dist, float("inf"))).min(1).values
    return F.relu(hardest_pos - hardest_neg + margin)[valid].mean()


def contrastive_l1_loss(codes: torch.Tensor, labels: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """The seed project's variant: over all pairs, L1 distance for same labels, relu(margin - L1) otherwise."""
    dist = torch.cdist(codes, codes, p=1)
    same = labels[:, None] == labels[None, :]
    off_diag = ~torch.eye(len(labels), dtype=torch.bool, device=codes.device)
    loss = torch.where(same, dist, F.relu(margin - dist))
    return loss[off_diag].mean() if off_diag.any() else codes.sum() * 0.0


LOSSES = {"triplet": batch_hard_triplet_loss, "contrastive_l1": contrastive_l1_loss}
