"""``--cache-features``: run the frozen ViT once per training image, keep its maps on disk,
and train the head from them. Valid only without augmentation (the features of an
augmented image differ every epoch)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .data import SegmentationDataset

logger = logging.getLogger(__name__)


def cache_key(model_config: dict, pairs: Sequence[tuple[Path, Path]]) -> str:
    """Hash of what the features depend on: encoder, backbone config, size and the files
    (path, size, mtime), so a stale cache is never reused."""
    files = [(str(p), os.path.getsize(p), os.path.getmtime(p)) for p, _ in pairs]
    text = json.dumps({"model": model_config, "files": files}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@torch.no_grad()
def compute_features(model, dataset: SegmentationDataset, *, device, batch_size: int, num_workers: int = 0,
                     progress: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every image's four ViT maps (stacked per level, on CPU) and its resized label map."""
    from tqdm import tqdm

    if dataset.augment:
        raise ValueError("--cache-features needs augmentation off: augmented images change every epoch")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    levels: list[list[torch.Tensor]] = [[], [], [], []]
    labels = []
    for images, masks, _ in tqdm(loader, desc="caching features", disable=not progress):
        maps = model.vit_features(images.to(device))
        for store, m in zip(levels, maps):
            store.append(m.cpu())
        labels.append(masks)
    return [torch.cat(s) for s in levels], torch.cat(labels)


def load_or_compute(path: Path, model, dataset: SegmentationDataset, **kwargs) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Read the cache at ``path`` or compute and write it (atomically)."""
    if path.is_file():
        data = torch.load(path, map_location="cpu", weights_only=True)
        logger.info("loaded cached features from %s", path)
        return list(data["levels"]), data["labels"]
    levels, labels = compute_features(model, dataset, **kwargs)
    from ..atomic import atomic_target

    with atomic_target(path) as tmp:
        torch.save({"levels": levels, "labels": labels}, tmp)
    return levels, labels


class CachedFeatures(Dataset):
    """Items ``(maps, labels, index)`` read from the cached tensors."""

    def __init__(self, levels: list[torch.Tensor], labels: torch.Tensor) -> None:
        self.levels = levels
        self.labels = labels

    def set_epoch(self, epoch: int) -> None:  # same interface as SegmentationDataset
        pass

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return [lv[index] for lv in self.levels], self.labels[index], index
