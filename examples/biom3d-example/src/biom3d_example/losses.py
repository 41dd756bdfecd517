"""The example loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def build_focal(params, ctx):
    return FocalLoss(params.gamma)


class FocalLoss(torch.nn.Module):
    def __init__(self, gamma: float):
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.long().squeeze(1) if target.dim() == logits.dim() else target.long()
        logp = F.log_softmax(logits.float(), dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
        return (-((1 - logp.exp()) ** self.gamma) * logp).mean()
