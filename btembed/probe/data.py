"""Labeled image folders for the probe: layout detection, class checks, and features (model, raw32, random-init)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BtembedError, ImageError
from ..images import os_cause, scan_folder
from ..names import shown
from ..preprocess import PreprocessConfig, load_pixels

SPLIT_NAMES = ("train", "val")
FEATURE_KINDS = ("model", "raw32", "random-init")
RAW_SIZE = 32


@dataclass
class LabeledFolder:
    """Image paths with class names; split is 'train'/'val' per path in the train/val layout, else None."""

    root: Path
    layout: str  # "folds" or "train/val"
    paths: list
    labels: list  # class name per path
    splits: list | None = None
    ignored: list = field(default_factory=list)  # image files outside any class folder
    unreadable: list = field(default_factory=list)  # (path, cause): folders not listable, files never opened

    def relative(self, path) -> str:
        """A path relative to the dataset root, as shown in reports."""
        return os.path.relpath(path, self.root)


def _class_folders(folder: Path) -> list[Path]:
    """Non-hidden subfolders, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan(folder: Path) -> tuple[list, list, list, list]:
    """(paths, class names, stray images, unreadable (path, cause)) of a DIR/<class>/* folder."""
    paths, labels, unreadable = [], [], []
    try:
        class_dirs = _class_folders(folder)
        names = sorted(os.listdir(folder))
        st = os.stat(folder)
    except OSError as e:
        raise BtembedError(f"{shown(folder)}: cannot list this folder ({os_cause(e)})") from None
    seen = {(st.st_dev, st.st_ino)}  # a link from a class folder back up to DIR is a loop, cut at once
    for class_dir in class_dirs:
        scan = scan_folder(class_dir, seen=seen)
        paths += scan.files
        labels += [shown(class_dir.name)] * len(scan.files)  # class names are text (JSON, labels.json)
        unreadable += [(p, f"cannot list this folder ({why})") for p, why in scan.failed.items()]
        unreadable += list(scan.skipped.items())
    stray = [folder / n for n in names if (folder / n).is_file() and not n.startswith(".")]
    return paths, labels, stray, unreadable


def scan_labeled_folder(root: str | os.PathLike) -> LabeledFolder:
    """Read DIR/<class>/* or DIR/train/<class>/* + DIR/val/<class>/*; images may sit in nested subfolders."""
    root = Path(root)
    try:
        is_dir = root.is_dir()
    except OSError as e:
        raise BtembedError(f"{shown(root)}: {os_cause(e)} (a folder on its way cannot be entered)") from None
    if not is_dir:
        raise BtembedError(f"{shown(root)}: not a folder; give a folder of class subfolders (DIR/<class>/*)")
    if all((root / s).is_dir() for s in SPLIT_NAMES):
        paths, labels, splits, ignored, unreadable = [], [], [], [], []
        for split in SPLIT_NAMES:
            p, lab, stray, bad = _scan(root / split)
            paths += p
            labels += lab
            splits += [split] * len(p)
            ignored += stray
            unreadable += bad
        data = LabeledFolder(root, "train/val", paths, labels, splits, ignored, unreadable)
    else:
        paths, labels, stray, unreadable = _scan(root)
        data = LabeledFolder(root, "folds", paths, labels, None, stray, unreadable)
    if not data.paths:
        raise BtembedError(f"{shown(root)}: no images in class subfolders; expected DIR/<class>/*.jpg "
                           "or DIR/train/<class>/* and DIR/val/<class>/*")
    return data


def class_check(labels: list, splits: list | None, folds: int) -> tuple[list, dict]:
    """(usable classes, {class: reason}) — a class needs `folds` images for k-fold, or 1 train image."""
    names = sorted(set(labels))
    excluded = {}
    for name in names:
        if splits is None:
            count = sum(1 for lab in labels if lab == name)
            if count < folds:
                excluded[name] = (f"{count} usable image{'s' * (count != 1)}, fewer than the {folds} folds; "
                                  "add images or lower --folds")
        elif not any(lab == name and s == "train" for lab, s in zip(labels, splits)):
            excluded[name] = "no usable images in train/; its val images cannot be scored"
    return [n for n in names if n not in excluded], excluded


class RawPixels:
    """Baseline features: the image resized and center-cropped to 32x32 RGB, flattened to [0, 1] floats."""

    model_id = f"raw{RAW_SIZE}"
    dim = RAW_SIZE * RAW_SIZE * 3
    config = None

    def __init__(self):
        self.preprocess = PreprocessConfig(input_size=RAW_SIZE, resize_size=RAW_SIZE, interpolation="bilinear")

    def embed_files(self, items, **_):
        """Yield (item, vector or ImageError) per item, in order, like Embedder.embed_files."""
        for item in items:
            try:
                yield item, load_pixels(item, self.preprocess).reshape(-1).astype(np.float32) / 255.0
            except ImageError as e:
                yield item, e


def random_init_embedder(config, seed: int = 0, device: str = "auto", precision: str = "fp32"):
    """An Embedder with the architecture and preprocessing of a ModelConfig but torchvision's random init."""
    import copy

    import torch

    from ..backends.torch import TorchBackend
    from ..embedder import Embedder
    from ..model import Encoder

    config = copy.deepcopy(config)
    config.name = f"random-init/{config.architecture}/seed{seed}"
    config.files = {}
    torch.manual_seed(seed)
    backend = TorchBackend.from_encoder(Encoder(config), device=device, precision=precision)
    return Embedder(backend, config)


def feature_identity(source) -> dict:
    """What produced the features: kind, model id, dim, the weights' sha256 (when there are weights) and the
    precision they are embedded at."""
    if isinstance(source, RawPixels):
        return {"kind": "raw32", "model": source.model_id, "dim": source.dim, "sha256": None}
    files = source.config.files or {}
    kind = "random-init" if source.model_id.startswith("random-init/") else "model"
    return {"kind": kind, "model": source.model_id, "dim": source.dim,
            "sha256": files.get("model.safetensors"), "architecture": source.config.architecture,
            "precision": source.backend.precision}


def catalog_vectors(root: Path, identity: dict, paths: list) -> tuple[dict, str]:
    """{position: vector} for paths that `btembed index root` already holds, unchanged, for the same model.

    Returns ({}, why) when there is no usable catalog (why is '' when there is none at all).
    """
    from ..search import stored_vectors

    if identity.get("kind") != "model":
        return {}, ""
    return stored_vectors(root, paths, weights_sha256=identity.get("sha256") or "", dim=identity["dim"],
                          model_id=identity["model"], precision=identity.get("precision"))


def extract_features(source, paths: list, batch_size: int = 64, num_workers: int | None = None,
                     cached: dict | None = None):
    """(features [N_ok, D], kept positions, failures [(path, cause)]) — bad images are skipped, never fatal.

    cached: {position: vector} already known (from an index catalog); only the other paths are embedded.
    """
    cached = cached or {}
    todo = [i for i in range(len(paths)) if i not in cached]
    fresh = source.embed_files([paths[i] for i in todo], batch_size=batch_size, num_workers=num_workers)
    results = dict(cached)
    for i, (_, result) in zip(todo, fresh):
        results[i] = result
    rows, kept, failures = [], [], []
    for i in range(len(paths)):
        result = results[i]
        if isinstance(result, BtembedError):
            failures.append((str(paths[i]), getattr(result, "cause", str(result))))
        else:
            rows.append(result)
            kept.append(i)
    features = np.stack(rows).astype(np.float32) if rows else np.zeros((0, source.dim), np.float32)
    return features, kept, failures
