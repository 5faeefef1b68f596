"""Linear evaluation, the paper's protocol: frozen trunk, a linear classifier trained with SGD + cosine."""
from __future__ import annotations

import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from btembed import Encoder
from btembed.config import ModelConfig
from btembed.errors import ImageError, ModelError
from btembed.modelfiles import shared_location
from btembed.modelfolder import ModelFolder
from btembed.images import open_image
from btembed.preprocess import load_pixels

from .config import ConfigError
from .data import normalize_views
from .distributed import training_device
from .loop import amp_dtype
from .monitor import labeled_files


@dataclass
class LinearEvalConfig:
    """The paper's settings (ImageNet: 100 epochs, batch 256, lr 0.3, weight decay 1e-6, SGD momentum 0.9)."""

    epochs: int = 100
    batch_size: int = 256
    lr: float = 0.3
    weight_decay: float = 1e-6
    momentum: float = 0.9
    num_workers: int = 4
    augment: bool = True  # RandomResizedCrop + flip per epoch; False: center-crop features computed once
    val_fraction: float = 0.2
    seed: int = 0


class _Labeled(Dataset):
    """(path, label) → (uint8 CHW, label), train-augmented or center-cropped as the model's preprocessing."""

    def __init__(self, items, model_config: ModelConfig, train: bool):
        self.items, self.pre, self.train = items, model_config.preprocess, train
        self.augment = v2.Compose([v2.RandomResizedCrop(self.pre.input_size, antialias=True),
                                   v2.RandomHorizontalFlip(), v2.PILToTensor()])

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        try:
            if self.train:
                return self.augment(open_image(path, min_size=self.pre.resize_size)), label
            return torch.from_numpy(load_pixels(path, self.pre)).permute(2, 0, 1), label
        except ImageError:
            return None, label


def _collate(samples):
    good = [(x, y) for x, y in samples if x is not None]
    if not good:
        return None, None
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good])


def split_data(data: str | Path, val: str | Path | None, fraction: float, seed: int):
    """(train items, val items, class names): --val folder, data/train + data/val, or a per-class split."""
    data = Path(data)
    if val is None and (data / "train").is_dir() and (data / "val").is_dir():
        data, val = data / "train", data / "val"
    paths, labels, classes = labeled_files(data)
    items = list(zip(paths, labels))
    if val is not None:
        vpaths, vlabels, vclasses = labeled_files(val)
        index = {c: i for i, c in enumerate(classes)}
        missing = sorted(set(vclasses) - set(classes))
        if missing:
            raise ConfigError(f"validation classes {', '.join(missing)} in {val} have no training folder in {data}")
        return items, [(p, index[vclasses[y]]) for p, y in zip(vpaths, vlabels)], classes
    rng = random.Random(seed)
    train, held = [], []
    for c in range(len(classes)):
        group = [it for it in items if it[1] == c]
        rng.shuffle(group)
        n_val = max(1, round(len(group) * fraction)) if len(group) > 1 else 0
        held += group[:n_val]
        train += group[n_val:]
    return train, held, classes


@torch.no_grad()
def _features(trunk, x, mean, std, amp, device):
    x = normalize_views(x.to(device, non_blocking=True), mean, std, channels_last=True)
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        return trunk(x).float()


def _loader(items, model_config, train, config, shuffle, generator=None):
    return DataLoader(_Labeled(items, model_config, train), batch_size=config.batch_size, shuffle=shuffle,
                      num_workers=config.num_workers, collate_fn=_collate, generator=generator,
                      persistent_workers=False)


def linear_eval(model, data, val=None, config: LinearEvalConfig | None = None, device: str = "auto",
                record: bool = False) -> dict:
    """Train a linear classifier on frozen trunk features; returns top-1/top-5 on the validation images."""
    config = config or LinearEvalConfig()
    record_to = _record_folder(model) if record else None  # refused before hours of evaluation, not after
    torch.manual_seed(config.seed)
    dev = training_device(device)
    encoder = Encoder.from_pretrained(model)
    trunk = encoder.to(dev).to(memory_format=torch.channels_last).eval()
    for p in trunk.parameters():
        p.requires_grad_(False)
    mc = encoder.config
    mean = torch.tensor(mc.preprocess.mean, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(mc.preprocess.std, device=dev).view(1, 3, 1, 1)
    amp = amp_dtype("auto", dev)
    train_items, val_items, classes = split_data(data, val, config.val_fraction, config.seed)
    if not val_items:
        raise ConfigError(f"{data}: no validation images (each class needs at least two images)")
    classifier = nn.Linear(mc.embedding_dim, len(classes)).to(dev)
    classifier.weight.data.normal_(mean=0.0, std=0.01)  # as the official evaluate.py
    classifier.bias.data.zero_()
    optimizer = torch.optim.SGD(classifier.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs)
    criterion = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(config.seed)
    if config.augment:
        batches = _loader(train_items, mc, True, config, shuffle=True, generator=gen)
    else:  # features of the center crops once, then epochs over the cached features
        feats, ys = [], []
        for x, y in _loader(train_items, mc, False, config, shuffle=False):
            if x is not None:
                feats.append(_features(trunk, x, mean, std, amp, dev))
                ys.append(y.to(dev))
        cached_x, cached_y = torch.cat(feats), torch.cat(ys)
    for _ in range(config.epochs):
        if config.augment:
            epoch_batches = ((_features(trunk, x, mean, std, amp, dev), y.to(dev)) for x, y in batches
                             if x is not None)
        else:
            order = torch.randperm(len(cached_y), generator=gen).to(dev)
            epoch_batches = ((cached_x[order[i:i + config.batch_size]], cached_y[order[i:i + config.batch_size]])
                             for i in range(0, len(order), config.batch_size))
        for f, y in epoch_batches:
            loss = criterion(classifier(f), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
    correct1 = correct5 = total = 0
    k = min(5, len(classes))
    with torch.no_grad():
        for x, y in _loader(val_items, mc, False, config, shuffle=False):
            if x is None:
                continue
            top = classifier(_features(trunk, x, mean, std, amp, dev)).topk(k, dim=1).indices.cpu()
            correct1 += int((top[:, 0] == y).sum())
            correct5 += int((top == y[:, None]).any(1).sum())
            total += len(y)
    result = {"top1": correct1 / max(total, 1), "top5": correct5 / max(total, 1), "classes": len(classes),
              "train_images": len(train_items), "val_images": total, "model": str(model),
              "data": str(Path(data).resolve()), "config": asdict(config),
              "protocol": "linear eval, frozen trunk (Zbontar et al. 2021): SGD momentum 0.9, cosine, "
                          + ("RandomResizedCrop+flip" if config.augment else "center crops only")}
    if record:
        _record(record_to, result)
    return result


def _record_folder(model) -> Path:
    """The model folder --record may write into: a folder of the user's own, never a shared copy."""
    folder = ModelFolder.resolve(model).path
    where = shared_location(folder)
    if where:
        raise ModelError(f"--record would write into {folder}, which is {where} and must stay as published; "
                         f"pass a local model folder of your own instead (a copy: `cp -rL {folder} DIR`, or "
                         "Encoder.from_pretrained(...).save_pretrained(DIR), or `python -m training export`)")
    return folder


def _record(folder: Path, result: dict) -> None:
    """Add the result to config.json's metrics and to a generated card (weights and their hashes stay untouched)."""
    from btembed.card import render_card

    mc = ModelConfig.load(folder)
    card = folder / "README.md"
    generated = card.is_file() and card.read_text() == render_card(mc)
    name = Path(result["data"]).name
    mc.metrics[f"linear_top1_{name}"] = {"value": round(result["top1"], 4), "dataset": result["data"],
                                         "protocol": f"{result['protocol']}, {result['config']['epochs']} epochs"}
    mc.save(folder)
    if generated:
        card.write_text(render_card(mc))
    elif card.is_file():  # a hand-written or custom card is the author's to edit
        print(f"note: {card} was not generated from config.json, so it was left as it is; add "
              f"linear_top1_{name} to it before publishing", file=sys.stderr)

