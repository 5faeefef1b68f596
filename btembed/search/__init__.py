"""The index of a photo folder, in the order a run flows: plan -> apply -> catalog (all the SQL) -> ann (FAISS)
-> search / dedup; store says where an index lives, lock keeps to one writer, refresh keeps FAISS in step."""
from .apply import IndexOptions, IndexReport, index_folder
from .search import Hit, ImageIndex, stored_vectors

__all__ = ["Hit", "ImageIndex", "IndexOptions", "IndexReport", "index_folder", "stored_vectors"]
