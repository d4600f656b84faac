"""The Noisy Student training step as a timm classification task.

One step sees a labeled batch and, for a student, a pseudo-labeled batch
``unlabeled_ratio`` times larger. The loss is the mean soft-target cross
entropy over all images of the step (paper, section 2), so every image weighs
the same and the pseudo-labeled part's weight grows with the ratio.
"""

from __future__ import annotations

import torch
from timm.loss import SoftTargetCrossEntropy
from timm.task import ClassificationTask
from torch import nn

from noisy_student.models import model_noise_off

# (images (B, C, H, W) float 0..1 on the device, targets (B, K) summing to 1 per row)
Batch = tuple[torch.Tensor, torch.Tensor]


def joint_loss(
    logits_labeled: torch.Tensor,
    targets_labeled: torch.Tensor,
    logits_unlabeled: torch.Tensor | None = None,
    targets_unlabeled: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean soft-target cross entropy over the concatenated batch (paper, section 2).

    Logits ``(B_l, K)`` / ``(B_u, K)``, targets of the same shapes summing to 1
    per row (one-hot for labeled and hard pseudo labels, a distribution for
    soft ones). Every image weighs the same: ``(sum CE_l + sum CE_u) / (B_l + B_u)``,
    so the unlabeled part's weight grows with the batch ratio.
    """
    logits = [logits_labeled] if logits_unlabeled is None else [logits_labeled, logits_unlabeled]
    targets = [targets_labeled] if targets_unlabeled is None else [targets_labeled, targets_unlabeled]
    logits_all, targets_all = torch.cat(logits), torch.cat(targets)
    per_image = -(targets_all * torch.log_softmax(logits_all.float(), dim=-1)).sum(dim=-1)
    return per_image.mean()


class NoisyStudentTask(ClassificationTask):
    """A :class:`timm.task.ClassificationTask` whose step takes a labeled and a pseudo-labeled batch.

    ``unlabeled_model_noise=False`` is Table 6's ablation: the pseudo-labeled
    images get their own forward pass with dropout and stochastic depth off
    (batch norm still in training mode); otherwise both parts go through one
    forward pass over the concatenated batch. ``forward_module`` (e.g. a
    ``torch.compile`` wrapper of ``model``) runs the forward passes while the
    task keeps the plain module for its state dict and EMA.

    With several training processes the loop calls timm's
    :meth:`~timm.task.ClassificationTask.prepare_distributed`: ``trainable_module``
    becomes a DDP wrapper of ``model`` that every forward pass (both of Table 6's)
    goes through, while timm unwraps it for state dicts and EMA updates.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        unlabeled_model_noise: bool = True,
        forward_module: nn.Module | None = None,
        device: torch.device | None = None,
    ) -> None:
        super().__init__(model, criterion=SoftTargetCrossEntropy(), device=device, verbose=False)
        self.unlabeled_model_noise = unlabeled_model_noise
        self.forward_module = forward_module

    def forward(self, labeled: Batch | None, unlabeled: Batch | None = None) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """``{"loss": scalar}`` of one step; either batch may be absent (teacher: no ``unlabeled``;
        Table 13's pretraining: no ``labeled``)."""
        parts = [b for b in (labeled, unlabeled) if b is not None]
        if not parts:
            raise ValueError("a training step needs a labeled or a pseudo-labeled batch")
        if unlabeled is None or self.unlabeled_model_noise:
            x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
            if self.forward_module is None:
                return super().forward(x, y)
            logits = self.forward_module(x)
            return {"loss": self.criterion(logits, y), "output": logits}
        forward = self.forward_module or self.trainable_module
        logits_l = forward(labeled[0]) if labeled is not None else None
        with model_noise_off(self.trainable_module):
            logits_u = forward(unlabeled[0])
        if labeled is None:
            return {"loss": joint_loss(logits_u, unlabeled[1])}
        return {"loss": joint_loss(logits_l, labeled[1], logits_u, unlabeled[1])}
