"""An index folder's vectors and file facts in the layout clip-retrieval's inference writes and autofaiss reads:
OUT/img_emb/img_emb_N.npy and OUT/metadata/metadata_N.parquet (or .jsonl), row k of one the file of row k of the
other, in catalog order."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BtembedError, CatalogError
from ..names import path_fields, shown
from .catalog import CATALOG_FILE, Catalog
from .store import STORE_DIR, ReaderPin, locate_store

FORMATS = ("parquet", "jsonl")
ROWS_PER_FILE = 1_000_000  # clip-retrieval writes one pair per batch of this order; autofaiss reads any count


@dataclass
class ExportReport:
    """What an export wrote."""

    out: str
    format: str
    rows: int = 0
    files: list = field(default_factory=list)  # [[img_emb file, metadata file, rows]]
    dim: int = 0
    dtype: str = ""
    model: str = ""


def _parquet_writer():
    """pyarrow, or a one-line error naming the extra."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise BtembedError("writing parquet needs pyarrow: pip install 'btembed[parquet]', or pass --format "
                           "jsonl") from None
    return pyarrow, pyarrow.parquet


# --out names a folder (img_emb/ + metadata/, one pair per --rows-per-file rows): a new one named like a data file
# was surely meant as a file, so it is refused rather than made into a folder of that name.
FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".pq", ".npy", ".npz", ".csv", ".tsv", ".txt")


def check_out(out: Path) -> None:
    """Refuse an out that is not a new or empty folder in an existing one (an export must not mix into other files),
    and a new one named like a file (ex.jsonl)."""
    if not os.path.lexists(out) and out.suffix.lower() in FILE_SUFFIXES:
        raise BtembedError(f"--out {shown(out)} looks like a file name, but export-index writes a folder "
                           f"(img_emb/*.npy + metadata/*.parquet|jsonl); give a folder, e.g. "
                           f"--out {shown(out.with_suffix(''))}")
    if out.is_dir():
        if any(out.iterdir()):
            raise BtembedError(f"{shown(out)} is not empty; give --out a new or empty folder")
    elif os.path.lexists(out):
        raise BtembedError(f"{shown(out)} is a file; give --out a new or empty folder")
    elif not out.absolute().parent.is_dir():
        raise BtembedError(f"the folder {shown(out.absolute().parent)} (the parent of --out) does not exist; "
                           "create it or give --out a folder inside an existing one")


def _prepare_out(out: Path) -> None:
    """Create OUT/img_emb and OUT/metadata in the folder check_out accepted."""
    check_out(out)  # again: the folder may have filled while the catalog was opened
    out.mkdir(exist_ok=True)
    for sub in ("img_emb", "metadata"):
        (out / sub).mkdir()


def _write_metadata(path: Path, columns: dict, fmt: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "parquet":
        pa, pq = _parquet_writer()
        pq.write_table(pa.table(columns), tmp)
    else:
        with open(tmp, "w", encoding="utf-8") as f:
            for k in range(len(columns["image_path"])):
                row = {name: values[k] for name, values in columns.items()}
                if row["image_path_bytes"] is None:
                    del row["image_path_bytes"]
                f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def export_index(path: str | os.PathLike, out: str | os.PathLike, fmt: str = "parquet", *,
                 db: str | os.PathLike | None = None, rows_per_file: int = ROWS_PER_FILE) -> ExportReport:
    """Write the indexed folder's good rows (vectors in the catalog's dtype + image_path, size, mtime_ns, hash,
    model) to out; reads the catalog read-only."""
    if fmt not in FORMATS:
        raise BtembedError(f"unknown format {fmt!r}; use parquet or jsonl")
    if fmt == "parquet":
        _parquet_writer()
    check_out(Path(out))
    store = locate_store(path, db)
    pin = ReaderPin(store)
    try:
        if not (pin.folder / CATALOG_FILE).is_file():
            raise CatalogError(f"{shown(path)} has no btembed index; run `btembed index {shown(path)}` first")
        catalog = Catalog.open(pin.folder / CATALOG_FILE, read_only=True)
        try:
            # PHOTOS/.btembed travels with its folder: paths are under where it is now.
            root = Path(path) if db is None and store == Path(path) / STORE_DIR else Path(
                catalog.get("root") or store.parent)
            return _export(catalog, root.absolute(), Path(out), fmt, rows_per_file)
        finally:
            catalog.close()
    finally:
        pin.release()


def _export(catalog: Catalog, root: Path, out: Path, fmt: str, rows_per_file: int) -> ExportReport:
    dtype, model = np.dtype(catalog.dtype), catalog.get("model_id", "")
    report = ExportReport(str(out), fmt, dim=catalog.dim or 0, dtype=dtype.name, model=model)
    _prepare_out(out)
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    held = 0

    def flush(take: int) -> None:
        nonlocal pending, held
        ids = np.concatenate([i for i, _ in pending])
        vecs = np.concatenate([v for _, v in pending])
        part, rest = (ids[:take], vecs[:take]), (ids[take:], vecs[take:])
        pending, held = ([rest] if len(rest[0]) else []), len(rest[0])
        _write_pair(catalog, root, out, fmt, len(report.files), *part, dtype, model, report)

    for ids, vecs in catalog.chunks():
        pending.append((ids, vecs))
        held += len(ids)
        while held >= rows_per_file:
            flush(rows_per_file)
    if held:
        flush(held)
    return report


def _write_pair(catalog, root, out, fmt, n, ids, vecs, dtype, model, report) -> None:
    """img_emb_N.npy + metadata_N.*: the vectors of ids and their files' facts, same order."""
    rows = catalog.rows_by_id(ids)
    names = [path_fields(str(root / rows[int(i)].path)) for i in ids]
    columns = {"image_path": [f["path"] for f in names],
               "image_path_bytes": [f.get("path_bytes") for f in names],
               "size": [rows[int(i)].size for i in ids], "mtime_ns": [rows[int(i)].mtime_ns for i in ids],
               "hash": [rows[int(i)].phash for i in ids], "model": [model] * len(ids)}
    emb = out / "img_emb" / f"img_emb_{n}.npy"
    tmp = emb.with_name(emb.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, vecs.astype(dtype))
    os.replace(tmp, emb)
    meta = out / "metadata" / f"metadata_{n}.{fmt}"
    _write_metadata(meta, columns, fmt)
    report.files.append([str(emb), str(meta), len(ids)])
    report.rows += len(ids)
