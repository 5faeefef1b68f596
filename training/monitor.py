"""Online kNN monitor: weighted kNN accuracy of the trunk's features on a small labeled folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from btembed.probe import knn_scores  # the same weighted kNN protocol btembed probe reports
from btembed.errors import ImageError
from btembed.images import find_images
from btembed.preprocess import PreprocessConfig, load_pixels

from .config import ConfigError, TrainConfig


def labeled_files(folder: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """Images under each class subfolder of folder → (paths, class indices, class names)."""
    folder = Path(folder)
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")) \
        if folder.is_dir() else []
    paths, labels = [], []
    for i, name in enumerate(classes):
        for p in find_images(folder / name):
            paths.append(p)
            labels.append(i)
    if len(classes) < 2 or not paths:
        raise ConfigError(f"{folder} must hold at least two class subfolders with images (one folder per label)")
    return paths, labels, classes


def split_every(labels: list[int], every: int = 5) -> np.ndarray:
    """Boolean mask of query samples: every `every`-th file of each class, and at least one per class of 2+."""
    labels = np.asarray(labels)
    mask = np.zeros(len(labels), dtype=bool)
    for y in np.unique(labels):
        where = np.flatnonzero(labels == y)
        if len(where) >= 2:
            mask[where[every - 1::every] if len(where) >= every else where[-1:]] = True
    return mask


class KnnMonitor:
    """Decodes the labeled folder once (center crops at the training size), then scores a trunk in seconds."""

    def __init__(self, folder: str | Path, config: TrainConfig):
        paths, labels, self.classes = labeled_files(folder)
        pre = PreprocessConfig(input_size=config.image_size, resize_size=round(config.image_size * 256 / 224),
                               mean=config.mean, std=config.std)
        pixels, keep = [], []
        for p, y in zip(paths, labels):
            try:
                pixels.append(load_pixels(p, pre))
                keep.append(y)
            except ImageError:
                continue
        self.pixels = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.tensor(keep)
        self.query = torch.from_numpy(split_every(keep))
        self.mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.std).view(1, 3, 1, 1)
        self.k = config.monitor_k
        self.channels_last = config.channels_last

    @torch.no_grad()
    def features(self, trunk, device, amp) -> torch.Tensor:
        """L2-normalized trunk features of every monitor image."""
        from .data import normalize_views

        out = []
        for i in range(0, len(self.pixels), 64):
            x = normalize_views(self.pixels[i:i + 64].to(device), self.mean.to(device), self.std.to(device),
                                self.channels_last)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                out.append(trunk(x).float().cpu())
        return F.normalize(torch.cat(out), dim=1)

    def __call__(self, trunk, device, amp) -> dict:
        """{'knn_top1': accuracy} of the trunk on the held-out fifth of each class."""
        was_training = trunk.training
        trunk.eval()
        try:
            f = self.features(trunk, device, amp)
        finally:
            trunk.train(was_training)
        q = self.query
        scores = knn_scores(f[~q].numpy(), self.labels[~q].numpy(), f[q].numpy(), len(self.classes), self.k)
        return {"knn_top1": float((scores.argmax(1) == self.labels[q].numpy()).mean())}
