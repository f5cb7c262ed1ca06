"""Training losses. Label 255 is ignored: it contributes neither to the loss nor to the
matching (pixel-wise CE uses ``ignore_index``; Mask2Former's mask losses are computed on the
valid pixels only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .matcher import hungarian_match
from .metrics import IGNORE_INDEX


def pixel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``(B, K, h, w)`` logits (upsampled bilinearly to the target) vs ``(B, H, W)`` labels."""
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    if (target != ignore_index).sum() == 0:
        return logits.sum() * 0.0  # all pixels ignored: a zero that keeps the graph
    return F.cross_entropy(logits.float(), target, ignore_index=ignore_index)


def semantic_targets(mask: torch.Tensor, num_classes: int, size: tuple[int, int],
                     ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's ``(H, W)`` label map -> (classes ``(T,)``, binary masks ``(T, h*w)``,
    valid-pixel mask ``(h*w,)``) at the prediction size (nearest downsampling)."""
    small = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long().flatten()
    valid = small != ignore_index
    classes = torch.unique(small[valid])
    classes = classes[classes < num_classes]
    masks = (small[None, :] == classes[:, None]).float()
    return classes, masks, valid


class Mask2FormerLoss(nn.Module):
    """Hungarian-matched class CE (no-object weight ``eos_coef``) + mask BCE + dice, on the
    final prediction and every auxiliary one, normalised by the number of targets."""

    def __init__(self, num_classes: int, class_weight: float = 2.0, mask_weight: float = 5.0,
                 dice_weight: float = 5.0, eos_coef: float = 0.1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.weights = (class_weight, mask_weight, dice_weight)
        empty = torch.ones(num_classes + 1)
        empty[-1] = eos_coef
        self.register_buffer("class_balance", empty, persistent=False)

    def _single(self, class_logits: torch.Tensor, mask_logits: torch.Tensor, targets) -> torch.Tensor:
        wc, wm, wd = self.weights
        batch, queries = class_logits.shape[:2]
        target_classes = torch.full((batch, queries), self.num_classes, dtype=torch.long, device=class_logits.device)
        mask_terms, dice_terms, count = [], [], 0
        for b, (classes, masks, valid) in enumerate(targets):
            logits = mask_logits[b].flatten(1)[:, valid]
            masks = masks[:, valid]
            rows, cols = hungarian_match(class_logits[b], logits, classes, masks,
                                         class_weight=wc, mask_weight=wm, dice_weight=wd)
            rows, cols = rows.to(class_logits.device), cols.to(class_logits.device)
            target_classes[b, rows] = classes[cols]
            if len(rows):
                pred, tgt = logits[rows].float(), masks[cols]
                mask_terms.append(F.binary_cross_entropy_with_logits(pred, tgt, reduction="none").mean(1))
                probs = pred.sigmoid()
                dice_terms.append(1 - (2 * (probs * tgt).sum(1) + 1) / (probs.sum(1) + tgt.sum(1) + 1))
                count += len(rows)
        loss = wc * F.cross_entropy(class_logits.float().transpose(1, 2), target_classes, weight=self.class_balance)
        if count:
            loss = loss + wm * torch.cat(mask_terms).sum() / count + wd * torch.cat(dice_terms).sum() / count
        else:
            loss = loss + mask_logits.sum() * 0.0
        return loss

    def forward(self, outputs: dict, labels: torch.Tensor) -> torch.Tensor:
        size = outputs["mask_logits"].shape[-2:]
        targets = [semantic_targets(m, self.num_classes, size) for m in labels]
        loss = self._single(outputs["class_logits"], outputs["mask_logits"], targets)
        for cls, masks in outputs.get("aux", []):
            loss = loss + self._single(cls, masks, targets)
        return loss
