"""Unlabeled image folder → pairs of augmented views (the paper's asymmetric pipeline), resumable sampling."""
from __future__ import annotations

import hashlib
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from PIL import Image, ImageFilter
from torchvision.transforms import v2
from tqdm.auto import tqdm

from btembed.errors import BtembedError, ImageError
from btembed.images import find_images, open_image

from .config import TrainConfig

_INTERPOLATION = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}


class DataError(BtembedError):
    """A training folder that cannot be used."""


class PILGaussianBlur(v2.Transform):
    """Pillow's GaussianBlur with radius σ ~ U(sigma), as the official code; ~10x faster than a conv blur on CPU."""

    def __init__(self, sigma: tuple[float, float]):
        super().__init__()
        self.sigma = sigma

    def make_params(self, flat_inputs):
        return {"sigma": float(torch.empty(1).uniform_(self.sigma[0], self.sigma[1]))}

    def transform(self, inpt, params):
        if not isinstance(inpt, Image.Image):
            raise TypeError(f"PILGaussianBlur works on PIL images, got {type(inpt).__name__}")
        return inpt.filter(ImageFilter.GaussianBlur(radius=params["sigma"]))


def view_transform(config: TrainConfig, view: int) -> v2.Compose:
    """The augmentation of view 0 (A: always blurred, never solarized) or 1 (B), on PIL in, uint8 CHW out.

    Every step works on the PIL image, as the official code does; the float conversion and normalization
    happen on the training device (see `normalize_views`).
    """
    return _augment(config, config.image_size, config.crop_scale, config.blur_p[view], config.solarize_p[view])


def local_transform(config: TrainConfig) -> v2.Compose:
    """The augmentation of a multi-crop small view: a small crop at local_size, never solarized."""
    return _augment(config, config.local_size, config.local_scale, config.local_blur_p, 0.0)


def _augment(config: TrainConfig, size: int, scale, blur_p: float, solarize_p: float) -> v2.Compose:
    """Crop → flip → colour jitter → grayscale → blur → solarize on PIL, then uint8 CHW."""
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=tuple(scale), interpolation=_INTERPOLATION[config.interpolation],
                             antialias=True),
        v2.RandomHorizontalFlip(p=config.flip_p),
        v2.RandomApply([v2.ColorJitter(*config.jitter)], p=config.jitter_p),
        v2.RandomGrayscale(p=config.grayscale_p),
        v2.RandomApply([PILGaussianBlur(tuple(config.blur_sigma))], p=blur_p),
        v2.RandomSolarize(threshold=128, p=solarize_p),
        v2.PILToTensor(),
    ])


def file_list_digest(root: Path, files: list) -> str:
    """blake2b of the sorted relative file names: which images a run trains on, cheap even for ImageNet."""
    h = hashlib.blake2b(digest_size=16)
    for f in files:
        h.update(Path(f).relative_to(root).as_posix().encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A per-(run seed, epoch, sample) RNG seed: augmentations do not depend on workers or on resuming."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63 - 1)


def decode_file(path: Path, decode_size: int) -> Image.Image:
    """One training image, JPEG draft-decoded down to decode_size (0: full decode); raises ImageError."""
    return open_image(path, min_size=decode_size or None)


def decode_files(files: list[Path], decode_size: int, threads: int) -> list:
    """Every file decoded as the loader would (uint8 HxWx3 arrays), or (path, cause) for a bad one."""
    def decode(path):
        try:
            return np.asarray(decode_file(path, decode_size))
        except ImageError as e:
            return str(e.path), e.cause

    # Pillow releases the GIL while decoding, so threads use every core.
    with ThreadPoolExecutor(max(1, threads)) as pool:
        return list(tqdm(pool.map(decode, files), total=len(files), desc="decoding into RAM", unit="img",
                         disable=None))


class TwoViewDataset(Dataset):
    """(epoch, index) → (uint8 view A, view B, small views...) of file index % n, or an error cause for a bad file."""

    def __init__(self, files: list[Path], config: TrainConfig, decoded: list | None = None):
        self.files = files
        self.config = config
        self.transforms = (view_transform(config, 0), view_transform(config, 1),
                           *[local_transform(config)] * config.local_crops)
        # Built before the loader forks its workers, so they share these pages instead of copying them.
        self.decoded = decoded

    def __len__(self):
        return len(self.files) * self.config.repeats

    def _image(self, index: int):
        """The PIL image of file index, decoded now or taken from the RAM cache; or raises ImageError."""
        if self.decoded is None:
            return decode_file(self.files[index], self.config.decode_size)
        entry = self.decoded[index]
        if isinstance(entry, tuple):
            raise ImageError(*entry)
        return Image.fromarray(entry)

    def __getitem__(self, key):
        epoch, index = key
        try:
            image = self._image(index % len(self.files))
        except ImageError as e:
            return None, (e.path, e.cause)  # plain text: custom exceptions do not pickle across workers
        in_worker = torch.utils.data.get_worker_info() is not None
        # In a worker the global RNG is ours; in the main process keep the caller's stream untouched.
        with torch.random.fork_rng(devices=[], enabled=not in_worker):
            torch.manual_seed(sample_seed(self.config.seed, epoch, index))
            views = tuple(transform(image) for transform in self.transforms)
        return views, None


def collate_views(samples):
    """Stack the good samples into one uint8 batch per view (A, B, small views...); bad files are dropped and reported.

    Returns (views, bad): views is a tuple of batches, or None when every file of the batch was bad.
    """
    good = [views for views, error in samples if views is not None]
    bad = [error for views, error in samples if views is None]
    if not good:
        return None, bad
    return tuple(torch.stack(batch) for batch in zip(*good)), bad


class ResumableSampler(DistributedSampler):
    """DistributedSampler that yields (epoch, index) keys and can start part-way into an epoch."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.start = 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        """Shuffle for epoch, skipping this rank's first `start` samples (already trained on)."""
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self):
        indices = list(super().__iter__())
        return iter([(self.epoch, i) for i in indices[self.start:]])

    def __len__(self):
        return self.num_samples - self.start


def list_images(folder: str | Path) -> list[Path]:
    """All image files under folder (recursive, sorted), or a clear error."""
    try:
        files = list(find_images(folder))
    except ImageError as e:
        raise DataError(f"training data {folder} cannot be used: {e.cause}; pass a folder of images") from None
    if not files:
        raise DataError(f"training data {folder} holds no image files; pass a folder of images "
                        "(searched recursively)")
    return files


def make_loader(files: list[Path], config: TrainConfig, rank: int, world_size: int,
                pin_memory: bool) -> tuple[DataLoader, ResumableSampler]:
    """The per-process loader of local batches (batch_size // world_size), dropping an incomplete last one."""
    decoded = decode_files(files, config.decode_size, config.num_workers) if config.decode_cache else None
    dataset = TwoViewDataset(files, config, decoded)
    sampler = ResumableSampler(dataset, world_size, rank, config.seed)
    local_batch = config.batch_size // world_size
    if local_batch < 2 or local_batch * world_size != config.batch_size:
        raise DataError(f"batch_size {config.batch_size} must split into equal parts of at least 2 over "
                        f"{world_size} processes")
    if sampler.num_samples < local_batch:
        raise DataError(f"{len(files)} images x {config.repeats} repeats are fewer than one batch per process "
                        f"({local_batch}); lower batch_size or raise repeats")
    workers = config.num_workers
    loader = DataLoader(dataset, batch_size=local_batch, sampler=sampler, num_workers=workers,
                        collate_fn=collate_views, pin_memory=pin_memory, drop_last=True,
                        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)
    return loader, sampler


def stop_loader_workers(loader: DataLoader) -> None:
    """Stop a loader's persistent workers now (a no-op if none are running)."""
    # The training loop's workers ignore SIGTERM (the main process checkpoints first and then stops them), so the
    # terminate() multiprocessing sends its children at interpreter exit cannot stop them. A run that raised
    # (disk full, a bug) would otherwise wait on its workers forever instead of exiting with its traceback.
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
        loader._iterator = None


def steps_per_epoch(n_files: int, config: TrainConfig, world_size: int) -> int:
    """Optimizer steps in one epoch (every process does the same number)."""
    per_rank = math.ceil(n_files * config.repeats / world_size)
    return per_rank // (config.batch_size // world_size)


def normalize_views(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 NCHW on the device → normalized float, channels_last if asked."""
    x = x.float().div_(255.0).sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
