"""The model uploaded photos are embedded with: the one the catalog was built with, loaded once and kept while the
index's generations come and go (reloaded only when a --rebuild changed the model)."""
from __future__ import annotations

import threading

from ..errors import CatalogError, ModelError


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
        from ..embedder import Embedder
        from ..search.catalog import ModelStamp

        try:
            embedder = Embedder.from_pretrained(stamp.model_source, revision=stamp.model_revision,
                                                backend=self.backend, device=self.device)
        except ModelError as e:
            raise ModelError(f"the model {folder} was indexed with cannot be loaded any more ({e}); re-index the "
                             "folder with `btembed index --rebuild --model M`") from None
        if not stamp.same_model(ModelStamp(**embedder.model_folder.identity())):
            raise CatalogError(f"the model at {stamp.model_source} changed since {folder} was indexed; re-run "
                               "`btembed index --rebuild` or serve with the original model")
        return embedder
