"""The embedding step of an index run spread over torchrun ranks: rank 0 hands every rank a stable shard of the
files to embed (plan.shard_of: a hash of the path), each rank writes its results to a shard file (shardfile),
rank 0 merges every shard into the catalog in one transaction, then the run goes on (copies, FAISS).

A shard left by a killed run is merged by the next one (its records are all good: vectors are written before the
records naming them), so a rank that dies loses only the batch in flight; that run may use another rank count.

Vectors stay in the shard files, the catalog pointing at their rows, once the catalog's vectors would pass
VECTOR_FILES_ABOVE: past that size SQLite would be the bottleneck (rank 0 copies every vector into the one
writer's file; 100 M × 2048 float16 is 400 GB to copy, back up and checkpoint), while a memory-mapped file is read
as fast for re-ranking and export. Below it everything stays in the one catalog file, which is simplest to move.
"""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BtembedError, CatalogError
from .catalog import Catalog, VectorRef
from .plan import Entry, Plan, hash_file
from .ranks import RankGroup, RankLost
from .shardfile import RECORDS_SUFFIX, VECTOR_DIR, Shard, ShardWriter, shards_in

VECTOR_FILES_ABOVE = 4 << 30  # bytes of vectors: ≈ 1 M × 2048-d or 4 M × 512-d float16
TODO_SUFFIX = ".todo"
HASH_SUFFIX = ".hash"
HASH_THREADS = 4  # files read at once per rank: hashing waits on the disk (or network), not on a core


def keeps_vector_files(catalog: Catalog, new: int, above: int | None) -> bool:
    """True when the catalog's vectors, with `new` more, would pass `above` bytes (default VECTOR_FILES_ABOVE)."""
    limit = VECTOR_FILES_ABOVE if above is None else above
    per_vector = (catalog.dim or 0) * np.dtype(catalog.dtype).itemsize
    return (catalog.count() + new) * per_vector > limit


def _still_as_planned(path: str, size: int, mtime_ns: int) -> bool:
    """True when the file's size and mtime are those it was planned with (not rewritten while being read)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns) == (size, mtime_ns)


@dataclass
class Assignment:
    """What rank 0 tells every rank: the run's name, where the work lists and shard files are, which model."""

    run: str
    world: int
    folder: str  # the vectors folder of the live index folder (shared file system)
    model_path: str
    model_source: str
    model_revision: str | None
    model_sha256: str
    dtype: str
    dim: int
    header: dict
    precision: str = "fp32"  # rank 0's choice: every rank embeds at the catalog's precision

    def shard_name(self, rank: int) -> str:
        """The shard file name of a rank, without suffix."""
        return f"{self.run}-r{rank}of{self.world}"

    def todo_path(self, rank: int) -> Path:
        """The work list of a rank: one JSON line per file to embed."""
        return Path(self.folder) / (self.shard_name(rank) + TODO_SUFFIX)


def _load_model(a: Assignment):
    """The run's model on this rank: rank 0's folder when this node sees it, else resolved again; same weights."""
    from ..modelfolder import ModelFolder

    model = ModelFolder.resolve(a.model_path if Path(a.model_path).is_dir() else a.model_source,
                                revision=a.model_revision)
    if model.weights_sha256 != a.model_sha256:
        raise CatalogError(f"model {a.model_source} on this node has other weights ({model.weights_sha256[:12]}) "
                           f"than on rank 0 ({a.model_sha256[:12]}); give every node the same model files")
    return model


def embed_assignment(a: Assignment, rank: int, opts, device: str, progress: bool | None = False) -> dict:
    """Embed this rank's work list into its shard file -> {rank, embedded, failed}."""
    from ..embedder import Embedder

    todo = [json.loads(line) for line in a.todo_path(rank).read_text().splitlines() if line]
    writer = ShardWriter(Path(a.folder), a.shard_name(rank), a.header, a.dtype, a.dim)
    done = {"rank": rank, "embedded": 0, "failed": 0}
    if todo:
        embedder = Embedder.from_pretrained(_load_model(a), device=device, backend=opts.backend,
                                            precision=a.precision, load_async=True)
        by_file = {t["file"]: t for t in todo}
        for batch in embedder.embed_batches([t["file"] for t in todo], batch_size=opts.batch_size,
                                            num_workers=opts.workers, progress=progress):
            records, vectors = [], []
            for item, vector, error in zip(batch.items, batch.vectors, batch.errors):
                t = by_file[item]
                rec = {k: t[k] for k in ("path", "size", "mtime_ns", "phash")}
                if not _still_as_planned(item, t["size"], t["mtime_ns"]):
                    records.append({**rec, "skipped": "changed while being read; read again on the next run"})
                elif error is not None:
                    records.append({**rec, "error": error.cause})
                    done["failed"] += 1
                else:
                    records.append({**rec, "vector": len(vectors)})
                    vectors.append(vector)
                    done["embedded"] += 1
            writer.write(records, vectors)
    writer.close()
    return done


def hash_share(folder: str, name: str, rank: int) -> dict:
    """Hash the files of this rank's hash list (NAME-rR.hash) into NAME-rR.hash.out -> {rank, hashed}."""
    from concurrent.futures import ThreadPoolExecutor

    work = Path(folder) / f"{name}-r{rank}{HASH_SUFFIX}"
    todo = [json.loads(line) for line in work.read_text().splitlines() if line]
    with ThreadPoolExecutor(HASH_THREADS) as pool:
        hashed = list(pool.map(lambda t: hash_file(Path(t["file"]), t["size"]), todo))
    lines = [json.dumps({"path": t["path"], "phash": h, "error": err}) for t, (h, err) in zip(todo, hashed)]
    out = work.with_name(work.name + ".out")
    out.write_text("".join(line + "\n" for line in lines))
    return {"rank": rank, "hashed": len(todo)}


def hash_across(group: RankGroup, folder: Path):
    """make_plan's hash_many for rank 0: every rank hashes the new files of its own shard (the ones it will embed,
    so their bytes may still be in its node's page cache), instead of rank 0 reading all of them alone."""
    def hash_many(entries: list[Entry]) -> None:
        todo = [e for e in entries if e.error is None]
        if not todo:
            return
        name = secrets.token_hex(4)
        folder.mkdir(parents=True, exist_ok=True)
        split = Plan(embed=todo)
        for rank in range(group.world):
            lines = [json.dumps({"path": e.rel, "file": os.path.abspath(e.path), "size": e.size})
                     for e in split.shard(rank, group.world).embed]
            (folder / f"{name}-r{rank}{HASH_SUFFIX}").write_text("".join(line + "\n" for line in lines))
        group.broadcast({"kind": "hash", "folder": os.path.abspath(folder), "name": name})
        try:
            mine = hash_share(str(folder), name, 0)
        except Exception as e:  # noqa: BLE001 - the other ranks still wait for rank 0 in gather
            mine = {"rank": 0, "error": str(e)}
        bad = [r for r in group.gather(mine) if r.get("error")]
        by_rel = {e.rel: e for e in todo}
        for rank in range(group.world):
            work = folder / f"{name}-r{rank}{HASH_SUFFIX}"
            out = work.with_name(work.name + ".out")
            if out.exists():
                for line in out.read_text().splitlines():
                    got = json.loads(line)
                    by_rel[got["path"]].phash, by_rel[got["path"]].error = got["phash"], got["error"]
            work.unlink(missing_ok=True)
            out.unlink(missing_ok=True)
        if bad:
            raise CatalogError(f"rank {bad[0]['rank']} could not hash its files: {bad[0]['error']}; nothing was "
                               "indexed: run the same command again")
    return hash_many


def serve_rank(group: RankGroup, opts) -> int:
    """A rank other than 0: hash and embed each share rank 0 hands out until it says the run is over."""
    while True:
        message = group.broadcast()
        if message.get("kind") not in ("hash", "embed"):
            return 0
        try:
            if message["kind"] == "hash":
                result = hash_share(message["folder"], message["name"], group.rank)
            else:
                result = embed_assignment(Assignment(**message["assignment"]), group.rank, opts, group.device)
        except BtembedError as e:
            result = {"rank": group.rank, "error": str(e)}
        except Exception as e:  # noqa: BLE001 - reported by rank 0 as one line; this rank keeps its place
            result = {"rank": group.rank, "error": f"{type(e).__name__}: {e}"}
        group.gather(result)


class ShardedEmbed:
    """Rank 0's side (or a single process keeping vector files): plan the shards, embed its own, merge them all."""

    def __init__(self, group: RankGroup | None):
        self.group = group

    def run(self, catalog: Catalog, entries: list[Entry], model, opts, gen: int, report) -> None:
        """Embed entries into catalog (generation gen) across the ranks, counting into report."""
        folder = catalog.path.parent / VECTOR_DIR
        keep = keeps_vector_files(catalog, len(entries), opts.vector_files_above)
        header = {"catalog_uuid": catalog.get("catalog_uuid"), "model_sha256": model.weights_sha256}
        planned = {e.rel: e for e in entries}
        for shard in shards_in(folder):  # left by a killed run: what still matches is kept (not embedded again)
            self._merge(catalog, shard, planned, gen, keep, report, embedded_now=False)
        todo = [e for e in entries if e.rel in planned]
        world = self.group.world if self.group else 1
        # Absolute paths: ranks on other nodes see the same shared file system, maybe from another working folder.
        a = Assignment(secrets.token_hex(4), world, os.path.abspath(folder), os.path.abspath(model.path),
                       model.identity()["model_source"], model.revision, model.weights_sha256,
                       np.dtype(catalog.dtype).name, catalog.dim or model.config.embedding_dim, header,
                       precision=opts.precision)
        folder.mkdir(parents=True, exist_ok=True)
        split = Plan(embed=todo)
        for rank in range(world):
            lines = [json.dumps({"path": e.rel, "file": os.path.abspath(e.path), "size": e.size,
                                 "mtime_ns": e.mtime_ns, "phash": e.phash}) for e in split.shard(rank, world).embed]
            a.todo_path(rank).write_text("".join(line + "\n" for line in lines))
        try:
            results, failure = self._embed_everywhere(a, opts)
        except RankLost as e:  # a rank died (torchrun stops the rest soon): merge what is there first
            results, failure = [], e
        for rank in range(world):
            a.todo_path(rank).unlink(missing_ok=True)
            shard = next((s for s in shards_in(folder) if s.records_path.name.startswith(a.shard_name(rank) + ".")),
                         None)
            if shard is not None:
                self._merge(catalog, shard, planned, gen, keep, report, embedded_now=True)
        collect_vector_files(catalog)
        bad = [r for r in results if r.get("error")]
        if failure is not None:
            raise failure
        if bad:
            raise CatalogError(f"rank {bad[0]['rank']} failed: {bad[0]['error']}; the shards that were embedded "
                               "are in the catalog: run the same command again to finish")

    def _embed_everywhere(self, a: Assignment, opts) -> tuple[list[dict], BaseException | None]:
        """Every rank embeds its shard (rank 0 here); their results, and rank 0's own exception if any."""
        if self.group is not None:
            self.group.broadcast({"kind": "embed", "assignment": a.__dict__})
        failure = None
        device = self.group.device if self.group else opts.device
        try:
            mine = embed_assignment(a, 0, opts, device, progress=opts.progress)
        except Exception as e:  # noqa: BLE001 - the other ranks still wait for rank 0 in gather
            mine, failure = {"rank": 0, "error": str(e)}, e
        return (self.group.gather(mine) if self.group else [mine]), failure

    @staticmethod
    def _merge(catalog: Catalog, shard: Shard, planned: dict, gen: int, keep: bool, report,
               embedded_now: bool) -> None:
        """Write a shard's records that still match the plan into the catalog, in one transaction; report counts
        the files embedded by this run's ranks (not those a killed run had embedded)."""
        head = shard.header
        if head.get("catalog_uuid") != catalog.get("catalog_uuid") or head.get("model_sha256") != (
                catalog.get("model_sha256")) or int(head.get("dim", -1)) != (catalog.dim or -1):
            _discard(catalog, shard)  # another catalog or model: of no use
            return
        vectors = shard.vectors()
        with catalog.transaction():
            file_id = (catalog.add_vector_file(f"{VECTOR_DIR}/{shard.vector_path.name}", head["dtype"],
                                               int(head["dim"])) if keep else None)
            for rec in shard.records:
                e = planned.get(rec["path"])
                if e is None or (e.size, e.mtime_ns, e.phash) != (rec["size"], rec["mtime_ns"], rec["phash"]):
                    continue  # changed or done since this shard was written
                del planned[rec["path"]]
                if "skipped" in rec:
                    report.skipped.append({"path": rec["path"], "reason": rec["skipped"]})
                elif "error" in rec:
                    catalog.put(e.rel, e.size, e.mtime_ns, e.phash, gen, error=rec["error"])
                else:
                    vector = VectorRef(file_id, rec["row"]) if keep else catalog.encode(vectors[rec["row"]])
                    catalog.put(e.rel, e.size, e.mtime_ns, e.phash, gen, vector=vector)
                    report.embedded += embedded_now
        del vectors
        _discard(catalog, shard)


def _discard(catalog: Catalog, shard: Shard) -> None:
    """Forget a merged (or useless) shard: its records file, and its vectors unless the catalog points at them."""
    shard.records_path.unlink(missing_ok=True)
    if f"{VECTOR_DIR}/{shard.vector_path.name}" not in catalog.vector_files().values():
        shard.vector_path.unlink(missing_ok=True)


def collect_vector_files(catalog: Catalog) -> list[str]:
    """Delete vector files no row points to any more, and strays no record names (left by killed runs); the
    caller holds the writer lock, so no rank of another run is writing."""
    folder = catalog.path.parent / VECTOR_DIR
    unused = catalog.vector_files(unused=True)
    if unused:
        with catalog.transaction():
            catalog.forget_vector_files(unused)
    keep = {Path(name).name for name in catalog.vector_files().values()}
    pending = {p.name[:-len(RECORDS_SUFFIX)] for p in folder.glob(f"*{RECORDS_SUFFIX}")}
    gone = []
    for f in folder.glob("*") if folder.is_dir() else []:
        if f.name not in keep and f.stem not in pending and f.suffix != RECORDS_SUFFIX:
            f.unlink(missing_ok=True)
            gone.append(f.name)
    return gone
