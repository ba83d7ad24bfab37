"""Classification losses: cross-entropy, optionally class-weighted, and focal loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ntclass.errors import NtclassError
from ntclass.settings import Loss


class FocalLoss(torch.nn.Module):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_true)^gamma, so that
    easy, confidently right samples count less. gamma = 0 is cross-entropy."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1)
        log_p_true = log_p.gather(1, target[:, None])[:, 0]
        loss = -((1 - log_p_true.exp()) ** self.gamma) * log_p_true
        if self.weight is not None:
            w = self.weight[target]
            return (w * loss).sum() / w.sum()
        return loss.mean()


def build_loss(settings: Loss, classes: Sequence[str]) -> torch.nn.Module:
    """The loss the config names: `type` cross_entropy or focal, `gamma`, `class_weights`."""
    weights = settings.class_weights
    weight = None
    if weights is not None:
        if len(weights) != len(classes):
            raise NtclassError(f"training.loss.class_weights has {len(weights)} values, "
                               f"expected one per class ({len(classes)})")
        weight = torch.tensor(weights, dtype=torch.float32)
    if settings.type == "focal":
        return FocalLoss(settings.gamma, weight)
    return torch.nn.CrossEntropyLoss(weight=weight)
