"""Embedder: from_pretrained(...) then embed(...) — batching, decode workers, progress, bad-file handling."""
from __future__ import annotations

import copy
import dataclasses
import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .backends import load_backend
from .config import ModelConfig
from .errors import ImageError, ModelError
from .modelfolder import ModelFolder
from .preprocess import PreprocessConfig, load_pixels

# Show a progress bar by default only for jobs this long, and only on a terminal.
PROGRESS_MIN_ITEMS = 256


@dataclass
class EmbeddedBatch:
    """One batch of results in input order: a vector row per item, NaN rows where errors[i] is set."""

    items: list
    vectors: np.ndarray
    errors: list  # ImageError or None per item


class _DecodeDataset:
    """Items → (position, uint8 pixels or None, error cause or None); runs in DataLoader workers."""

    def __init__(self, items: Sequence, preprocess: PreprocessConfig):
        self.items, self.preprocess = items, preprocess

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        try:
            return i, load_pixels(self.items[i], self.preprocess), None
        except ImageError as e:
            # Exceptions with custom constructors do not survive pickling between processes: send text.
            return i, None, (e.path, e.cause)


def _stack(pixels: list):
    """One batch from per-item pixels: numpy arrays, or torch tensors left on their device (device decode)."""
    if pixels and type(pixels[0]).__module__.startswith("torch"):
        import torch

        return torch.stack(pixels)
    return np.stack(pixels)


def _collate(samples):
    """Keep the batch as a plain list; stacking happens after bad items are dropped."""
    return samples


def _lower_priority(nice: int) -> None:
    """Make the calling thread yield to the model's threads (Linux: nice is per thread); best effort."""
    import threading

    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except (AttributeError, OSError):
        pass


def _threaded_batches(dataset: _DecodeDataset, batch_size: int, workers: int, prefetch: int,
                      nice: int = 0) -> Iterator[list]:
    """Batches decoded by a thread pool, at most prefetch batches ahead of the consumer, in order."""
    from collections import deque

    starts = iter(range(0, len(dataset), batch_size))
    pool = ThreadPoolExecutor(workers, thread_name_prefix="btembed-decode",
                              initializer=_lower_priority if nice else None, initargs=(nice,) if nice else ())
    pending: deque = deque()

    def submit() -> None:
        start = next(starts, None)
        if start is not None:
            stop = min(start + batch_size, len(dataset))
            pending.append([pool.submit(dataset.__getitem__, i) for i in range(start, stop)])

    try:
        for _ in range(max(1, prefetch)):
            submit()
        while pending:
            futures = pending.popleft()
            submit()  # keep the workers busy while the consumer runs the model on this batch
            yield [f.result() for f in futures]
    finally:
        # A consumer that stops early (error, break) must not leave decodes running in the background.
        pool.shutdown(wait=True, cancel_futures=True)


def default_num_workers(n_items: int, batch_size: int) -> int:
    """Decode in worker processes only when there is enough work to amortise starting them."""
    if n_items <= batch_size:
        return 0
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


class Embedder:
    """Turns images into L2-normalized float32 vectors with a pretrained Barlow Twins encoder."""

    # How decoding overlaps the model (bench/pipeline.py measured both on 2 cores, see bench/README.md):
    # "thread" (Pillow and onnxruntime release the GIL; no torch import, no pickling of pixels) or "process"
    # (torch DataLoader workers) or "device" (TorchCodec's, else torchvision's, decode_jpeg + resize on the torch
    # backend's device: nvjpeg on a GPU). prefetch = batches decoded ahead, which bounds memory by batch size.
    # decode_nice > 0 lowers the decode threads' priority so the model's threads are never the ones waiting.
    decode_pool = "thread"
    prefetch = 2
    decode_nice = 0

    def __init__(self, backend, config: ModelConfig, folder: Path | None = None,
                 model_folder: ModelFolder | None = None):
        # backend may be a Future (from_pretrained(load_async=True)): it is resolved on first use.
        self._backend = backend
        self.config = config
        self.folder = folder
        self.model_folder = model_folder  # the ModelFolder it was loaded from (None for an in-memory encoder)

    @property
    def backend(self):
        """The inference backend (waits for a background load to finish; its errors are raised here)."""
        if isinstance(self._backend, Future):
            self._backend = self._backend.result()
        return self._backend

    @classmethod
    def from_pretrained(cls, name_or_path=None, *, revision: str | None = None, device: str = "auto",
                        backend: str = "auto", precision: str = "auto", load_async: bool = False) -> "Embedder":
        """Load a model: a ModelFolder (used as it is), None → embedded default, a folder, a registry name, or a
        Hugging Face repo id.

        load_async=True builds the backend (ONNX session, first-use export) in a background thread, so a
        caller can start decoding images meanwhile; backend errors then surface on first use.
        precision="auto": int8 on a CPU where the model's parity record vouches for its model.int8.onnx, else fp32
        (btembed.backends.precision; `embedder.backend.precision_choice` says which and why).
        """
        if isinstance(name_or_path, ModelFolder):
            model = name_or_path
        else:
            model = ModelFolder.resolve(name_or_path, revision=revision)
        config = copy.copy(model.config)  # the name set below is this embedder's, not the folder's
        if not config.name:
            config.name = model.name or model.path.name
        model = dataclasses.replace(model, config=config)
        if not load_async:
            return cls(load_backend(backend, model, device=device, precision=precision), config, model.path, model)
        pool = ThreadPoolExecutor(1, thread_name_prefix="btembed-load")
        future = pool.submit(load_backend, backend, model, device=device, precision=precision)
        pool.shutdown(wait=False)  # the load runs on; nothing else is ever submitted
        return cls(future, config, model.path, model)

    @property
    def dim(self) -> int:
        """Embedding width."""
        return self.config.embedding_dim

    @property
    def model_id(self) -> str:
        """The model's name as recorded in its config."""
        return self.config.name

    def embed_batches(self, items: Iterable, batch_size: int = 64, num_workers: int | None = None,
                      progress: bool | None = None, normalize: bool = True) -> Iterator[EmbeddedBatch]:
        """Stream results batch by batch, in input order; bad items carry an ImageError instead of a vector."""
        from tqdm.auto import tqdm

        items = list(items)
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        workers = default_num_workers(len(items), batch_size) if num_workers is None else num_workers
        if progress is None:
            progress = len(items) >= PROGRESS_MIN_ITEMS and sys.stderr.isatty()
        batches = self._decoded_batches(_DecodeDataset(items, self.config.preprocess), batch_size, workers)
        with tqdm(total=len(items), disable=not progress, unit="img", file=sys.stderr, desc="embedding") as bar:
            for samples in batches:
                positions = [i for i, _, _ in samples]
                good = [k for k, (_, pixels, _) in enumerate(samples) if pixels is not None]
                vectors = np.full((len(samples), self.dim), np.nan, dtype=np.float32)
                if good:
                    vectors[good] = self.backend(_stack([samples[k][1] for k in good]), normalize=normalize)
                errors = [ImageError(*cause) if cause else None for _, _, cause in samples]
                bar.update(len(samples))
                yield EmbeddedBatch([items[i] for i in positions], vectors, errors)

    def _decoded_batches(self, dataset: _DecodeDataset, batch_size: int, workers: int) -> Iterator[list]:
        """Decoded samples in batches: inline for small jobs, else decode workers running ahead of the model."""
        if self.decode_pool == "device":
            yield from self._device_batches(dataset, batch_size)
            return
        if workers == 0:
            # No torch import on this path: a one-image search with the ONNX backend starts fast.
            for start in range(0, len(dataset), batch_size):
                yield [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            return
        if self.decode_pool == "thread":
            yield from _threaded_batches(dataset, batch_size, workers, self.prefetch, self.decode_nice)
            return
        import torch.utils.data

        yield from torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate,
            pin_memory=self.backend.device.startswith("cuda"), prefetch_factor=self.prefetch)

    def _device_batches(self, dataset: _DecodeDataset, batch_size: int) -> Iterator[list]:
        """Batches decoded and resized as tensors on the torch backend's device (GPU path; runs on CPU too)."""
        if getattr(self.backend, "name", "") != "torch":
            raise ModelError("decode_pool='device' needs the torch backend; load the model with backend='torch'")
        from .device_decode import DeviceDecoder

        decoder = DeviceDecoder(dataset.preprocess, self.backend.torch_device)
        for start in range(0, len(dataset), batch_size):
            positions = range(start, min(start + batch_size, len(dataset)))
            decoded = decoder([dataset.items[i] for i in positions])
            yield [(i, None, (d.path, d.cause)) if isinstance(d, ImageError) else (i, d, None)
                   for i, d in zip(positions, decoded)]

    def embed_files(self, items: Iterable, **kwargs) -> Iterator[tuple]:
        """Yield (item, vector or ImageError) per item, in order; one bad file never stops the stream."""
        for batch in self.embed_batches(items, **kwargs):
            for item, vector, error in zip(batch.items, batch.vectors, batch.errors):
                yield item, (error if error is not None else vector)

    def embed(self, items, batch_size: int = 64, num_workers: int | None = None, progress: bool | None = None,
              normalize: bool = True) -> np.ndarray:
        """Embed paths, PIL images or uint8 arrays (mixed) → float32 [N, D]; raises ImageError on a bad item."""
        if isinstance(items, np.ndarray) and items.ndim == 4:
            items = list(items)  # a stacked uint8 batch [N, H, W, C]
        elif isinstance(items, (str, os.PathLike, np.ndarray)) or not hasattr(items, "__iter__"):
            items = [items]
        rows = []
        for batch in self.embed_batches(items, batch_size=batch_size, num_workers=num_workers,
                                        progress=progress, normalize=normalize):
            for error in batch.errors:
                if error is not None:
                    raise error
            rows.append(batch.vectors)
        return np.concatenate(rows) if rows else np.zeros((0, self.dim), dtype=np.float32)
