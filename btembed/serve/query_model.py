"""The model uploaded photos are embedded with: the one the catalog was built with, loaded once and kept while the
index's generations come and go (reloaded only when a --rebuild changed the model)."""
from __future__ import annotations

import threading


class QueryModel:
    """Loads the catalog's model on the first upload (backend/device as `btembed serve` was told)."""

    def __init__(self, backend: str = "auto", device: str = "auto"):
        self.backend, self.device = backend, device
        self._lock = threading.Lock()
        self._embedder = None
        self._stamp = None

    def get(self, stamp, folder):
        """The Embedder for a catalog's ModelStamp (folder only names the index in errors)."""
        with self._lock:
            if self._embedder is None or self._stamp != stamp:
                self._embedder, self._stamp = self._load(stamp, folder), stamp
            return self._embedder

    def _load(self, stamp, folder):
        from ..search.search import indexed_model

        return indexed_model(stamp, folder, backend=self.backend, device=self.device)
