"""One rank's share of an index run on disk, in the index folder's vectors/: its vectors as raw float16 (the
catalog's dtype) appended batch by batch, and a JSON-lines file of one record per file naming its row.

Vectors are written before the records that name them, so a killed rank leaves records that are all good (a torn
last line is ignored). Rank 0 merges the records into the catalog; the vector file then either goes (small
catalogs keep vectors in SQLite) or stays, the catalog pointing at its rows.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

VECTOR_DIR = "vectors"
RECORDS_SUFFIX = ".jsonl"
_SUFFIXES = {"float16": ".f16", "float32": ".f32"}


def vector_suffix(dtype) -> str:
    """.f16 or .f32: the file name says how its rows are stored."""
    return _SUFFIXES[np.dtype(dtype).name]


def open_vectors(path: str | os.PathLike, dtype, dim: int) -> np.ndarray:
    """A vector file memory-mapped read-only as [rows, dim] (whole rows only: a torn tail is left out)."""
    dtype = np.dtype(dtype)
    rows = os.path.getsize(path) // (dtype.itemsize * dim)
    if rows == 0:
        return np.zeros((0, dim), dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(rows, dim))


def _fsync(f) -> None:
    f.flush()
    os.fsync(f.fileno())


class ShardWriter:
    """Appends one rank's results: write(records, vectors) per batch, close() when the shard is done."""

    def __init__(self, folder: Path, name: str, header: dict, dtype, dim: int):
        folder.mkdir(parents=True, exist_ok=True)
        self.dtype, self.dim, self.rows = np.dtype(dtype), dim, 0
        self.vector_path = folder / f"{name}{vector_suffix(dtype)}"
        self.records_path = folder / f"{name}{RECORDS_SUFFIX}"
        self._vectors = open(self.vector_path, "wb")
        self._records = open(self.records_path, "w", encoding="utf-8")
        self._records.write(json.dumps({"header": {**header, "dtype": self.dtype.name, "dim": dim}}) + "\n")
        _fsync(self._records)

    def write(self, records: list[dict], vectors: list[np.ndarray]) -> None:
        """One batch: records of ok files carry "vector": k, the index into vectors, replaced by its row here."""
        if vectors:
            self._vectors.write(np.ascontiguousarray(np.stack(vectors), dtype=self.dtype).tobytes())
            self._vectors.flush()  # before the records that name these rows: a killed process loses neither
        lines = []
        for rec in records:
            if "vector" in rec:
                rec = {**{k: v for k, v in rec.items() if k != "vector"}, "row": self.rows + rec["vector"]}
            lines.append(json.dumps(rec) + "\n")
        self.rows += len(vectors)
        self._records.write("".join(lines))
        self._records.flush()

    def close(self) -> None:
        """Mark the shard complete, durably."""
        self._records.write(json.dumps({"done": True, "rows": self.rows}) + "\n")
        _fsync(self._vectors)
        _fsync(self._records)
        self._vectors.close()
        self._records.close()


@dataclass
class Shard:
    """A shard file as read back: its header, its records (whole lines only) and whether it was completed."""

    records_path: Path
    vector_path: Path
    header: dict
    records: list = field(default_factory=list)
    done: bool = False

    def vectors(self) -> np.ndarray:
        """Its vectors, memory-mapped."""
        return open_vectors(self.vector_path, self.header["dtype"], int(self.header["dim"]))

    def remove(self) -> None:
        """Delete both files."""
        self.vector_path.unlink(missing_ok=True)
        self.records_path.unlink(missing_ok=True)


def read_shard(records_path: Path) -> Shard | None:
    """A shard from its records file, or None when even its header is unreadable."""
    try:
        lines = records_path.read_text(encoding="utf-8").split("\n")
        header = json.loads(lines[0])["header"]
        vector_path = records_path.with_name(records_path.name[:-len(RECORDS_SUFFIX)] + vector_suffix(
            header["dtype"]))
    except (OSError, ValueError, KeyError, IndexError):
        return None
    shard = Shard(records_path, vector_path, header)
    rows = open_vectors(vector_path, header["dtype"], int(header["dim"])).shape[0] if vector_path.exists() else 0
    for line in lines[1:]:
        try:
            rec = json.loads(line)
        except ValueError:
            break  # a torn last line (or the empty string after the final newline)
        if rec.get("done"):
            shard.done = True
            break
        if rec.get("row", -1) < rows:
            shard.records.append(rec)
    return shard


def shards_in(folder: Path) -> list[Shard]:
    """Every shard in a vectors folder whose records have not been merged yet (their records file remains)."""
    found = (read_shard(p) for p in sorted(Path(folder).glob(f"*{RECORDS_SUFFIX}")))
    return [s for s in found if s is not None]
