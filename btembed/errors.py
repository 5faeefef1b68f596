"""Errors a user can cause: each carries one clear sentence meant for a human."""


class BtembedError(Exception):
    """Base class of errors shown to users as one line (the CLI exits with status 1)."""


class ImageError(BtembedError):
    """An image file that cannot be used: missing, unreadable, truncated, not an image, or too large."""

    def __init__(self, path, cause: str):
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")


class ModelError(BtembedError):
    """A model that cannot be found, downloaded, verified or loaded."""


class CatalogError(BtembedError):
    """An index folder that cannot be used as asked (wrong model, locked, damaged)."""
