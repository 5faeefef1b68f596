"""FAISS tiers side by side at archive scale on vectors that look like real embeddings: build time, peak RAM, disk,
recall@10 against exact search, single-query single-thread latency p50/p99 — flat, IVF, IVF-PQ, IVF-PQ on disk.

    nice python bench/ann_scale.py                      # 1M vectors at 512-d and 2048-d (the issue's size)
    nice python bench/ann_scale.py --n 250000 --dims 512

Vectors: a few thousand real photos and crops of them (scikit-image's and scikit-learn's bundled photos, plus
devdata.procedural images) are embedded — 512-d with the embedded default model, 2048-d with a RANDOMLY
INITIALISED ResNet-50 (no trained one is reachable offline), whose nearly parallel features get their common
mean shrunk until random pairs sit at the trained default's cosine (match_spread). A Gaussian mixture with few
components and full covariances (heavily overlapping) is fitted to each set in its top PCA dimensions, sampled,
mapped back with Gaussian noise of the variance the PCA left out, and L2-normalised. Held-out queries come from
the same mixture. Every tier is built by btembed.search.ann.build, the code `btembed index` runs, in its own
process (so its peak RAM is its own). IVF-PQ tiers re-score candidates from a memory-mapped float16 file, as the
catalog's vector files are. Latency is wall time and this thread's CPU time (the second ignores preemption by
other jobs on a shared machine).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results_io import machine, write_result  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TIERS = ("flat", "ivf", "ivfpq", "ondisk")


# --- realistic vectors ------------------------------------------------------------------------------------------
def source_images(procedural: int, crops: int, seed: int = 0) -> list[np.ndarray]:
    """Bundled photos (skimage, sklearn) and procedural images, each with `crops` random crops (uint8 RGB)."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    from devdata.procedural import procedural_image

    photos = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field", "horse", "cat",
                 "motorcycle_left", "motorcycle_right", "immunohistochemistry", "colorwheel", "page", "camera",
                 "coins", "moon", "text", "clock", "brick", "grass", "gravel", "logo", "microaneurysms"):
        try:
            img = np.asarray(getattr(data, name)())
        except Exception:  # noqa: BLE001 - a name this skimage fetches from the network: skipped offline
            continue
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        img = img[..., :3] if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
        photos.append(np.ascontiguousarray(img.astype(np.uint8)))
    photos += [np.asarray(i) for i in load_sample_images().images]
    photos += [procedural_image(seed, i, size=256)[1] for i in range(procedural)]
    rng = np.random.default_rng(seed)
    out = []
    for img in photos:
        out.append(img)
        h, w = img.shape[:2]
        for _ in range(crops):
            ch, cw = int(h * rng.uniform(0.3, 0.9)), int(w * rng.uniform(0.3, 0.9))
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            crop = img[y:y + ch, x:x + cw]
            out.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    return out


def real_embeddings(dim: int, work: Path, procedural: int, crops: int) -> np.ndarray:
    """Embeddings of source_images: the embedded default (512-d) or a random-init ResNet-50 (2048-d); cached."""
    cache = work / f"real-{dim}.npy"
    if cache.exists():
        return np.load(cache)
    from btembed.embedder import Embedder
    from btembed.model import Encoder

    if dim == 512:
        embedder = Embedder.from_pretrained(None, device="cpu")
    else:
        import torch

        torch.manual_seed(0)
        folder = work / "resnet50-random"
        Encoder.from_config({"architecture": "resnet50", "name": "bench/resnet50-random-init"}).save_pretrained(folder)
        embedder = Embedder.from_pretrained(str(folder), device="cpu")
    if embedder.dim != dim:
        raise SystemExit(f"the {dim}-d model gives {embedder.dim}-d vectors")
    images = source_images(procedural, crops)
    t = time.perf_counter()
    vecs = embedder.embed(images, batch_size=32, num_workers=0)
    print(f"embedded {len(images)} images at {dim}-d in {time.perf_counter() - t:.0f} s", flush=True)
    np.save(cache, vecs)
    return vecs


def match_spread(x: np.ndarray, target: float, sample: int = 1000) -> np.ndarray:
    """x with its common mean shrunk until random pairs have mean cosine `target`, L2-normalised.

    A randomly initialised ResNet-50's features are nearly parallel (random pairs at cosine ≈ 0.998), unlike a
    trained model's; only their differences carry the images' structure."""
    mean = x.mean(axis=0)
    rng = np.random.default_rng(0)
    pick = x[rng.choice(len(x), min(sample, len(x)), replace=False)] - mean

    def spread(alpha: float) -> float:
        y = pick + alpha * mean
        y /= np.linalg.norm(y, axis=1, keepdims=True)
        sims = y @ y.T
        return float(sims[~np.eye(len(y), dtype=bool)].mean())

    lo, hi = 0.0, 1.0
    for _ in range(40):  # spread() grows with alpha
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if spread(mid) < target else (lo, mid)
    y = x - mean + lo * mean
    return y / np.linalg.norm(y, axis=1, keepdims=True)


class Mixture:
    """The real vectors' distribution, roughly: a full-covariance Gaussian mixture in their top PCA dimensions,
    independent Gaussians with the PCA's variances in the next ones, isotropic noise for what is left."""

    def __init__(self, real: np.ndarray, components: int, mixture_dims: int, pca_dims: int = 256, seed: int = 0):
        from sklearn.decomposition import PCA
        from sklearn.mixture import GaussianMixture

        self.pca = PCA(n_components=min(pca_dims, len(real) - 1, real.shape[1]), random_state=seed).fit(real)
        z = self.pca.transform(real)
        self.top = min(mixture_dims, z.shape[1])
        self.gmm = GaussianMixture(components, covariance_type="full", reg_covar=1e-6, random_state=seed).fit(
            z[:, :self.top])
        self.rest_std = z[:, self.top:].std(axis=0).astype(np.float32)
        left = real.var(axis=0).sum() - z.var(axis=0).sum()
        self.noise = float(np.sqrt(max(left, 0.0) / real.shape[1]))

    def sample(self, n: int, seed: int) -> np.ndarray:
        """n L2-normalised float32 vectors."""
        self.gmm.random_state = seed
        top, _ = self.gmm.sample(n)
        rng = np.random.default_rng(seed)
        rest = self.rest_std * rng.standard_normal((n, len(self.rest_std)), dtype=np.float32)
        x = self.pca.inverse_transform(np.hstack([top.astype(np.float32), rest])).astype(np.float32)
        x += self.noise * rng.standard_normal(x.shape, dtype=np.float32)
        x = x[rng.permutation(n)]  # gmm.sample returns the components in order
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def neighbour_profile(x: np.ndarray, k: int = 10) -> dict:
    """Mean cosine to the 1st and k-th neighbour and to a random vector: how clustered a set is."""
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    top = -np.sort(-sims, axis=1)
    rand = sims[np.isfinite(sims)]
    return {"top1": round(float(top[:, 0].mean()), 4), f"top{k}": round(float(top[:, k - 1].mean()), 4),
            "random_pair": round(float(rand.mean()), 4)}


def make_vectors(dim: int, n: int, queries: int, work: Path, args) -> dict:
    """Write work/vectors-DIM.npy (n float16 rows) and queries-DIM.npy; returns how they were made."""
    real = real_embeddings(dim, work, args.procedural, args.crops)
    if dim != 512:  # the random-init ResNet-50: given the trained default's spread (see match_spread)
        real = match_spread(real, target=neighbour_profile(real_embeddings(512, work, args.procedural,
                                                                           args.crops)[:3000])["random_pair"])
    mix = Mixture(real, args.components, args.mixture_dims)
    mm = np.lib.format.open_memmap(work / f"vectors-{dim}.npy", "w+", np.float16, (n, dim))
    for s in range(0, n, 100_000):
        mm[s:s + 100_000] = mix.sample(min(100_000, n - s), seed=1 + s // 100_000)
    mm.flush()
    np.save(work / f"queries-{dim}.npy", mix.sample(queries, seed=10_000))
    m = min(len(real), 3000)
    summary = {"real_vectors": len(real), "components": args.components, "mixture_dims": args.mixture_dims,
            "pca_variance_kept": round(float(mix.pca.explained_variance_ratio_.sum()), 4),
            "real_profile": neighbour_profile(real[:m]), "synthetic_profile": neighbour_profile(np.asarray(mm[:m],
                                                                                                      np.float32))}
    (work / f"data-{dim}.json").write_text(json.dumps(summary))
    return summary


class MemmapSource:
    """btembed.search.ann.VectorSource over a float16 .npy file: ids are row numbers."""

    def __init__(self, path: Path, chunk: int = 65536):
        self.mm = np.load(path, mmap_mode="r")
        self.count, self.dim = self.mm.shape
        self.chunk = chunk

    def chunks(self):
        for s in range(0, self.count, self.chunk):
            yield np.arange(s, min(s + self.chunk, self.count), dtype=np.int64), np.asarray(
                self.mm[s:s + self.chunk], np.float32)

    def sample(self, n, seed=0):
        rows = np.arange(self.count) if n >= self.count else np.sort(
            np.random.default_rng(seed).choice(self.count, n, replace=False))
        return rows.astype(np.int64), np.asarray(self.mm[rows], np.float32)

    def fetch(self, ids):
        return np.asarray(self.mm[np.asarray(ids, np.int64)], np.float32)


# --- one tier, in its own process ---------------------------------------------------------------------------------
def _status(key: str) -> int:
    """A /proc/self/status figure in bytes (RssAnon, RssFile, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


class PeakAnon:
    """Samples RssAnon every 20 ms: the peak of memory the process itself holds (file pages excluded)."""

    def __enter__(self):
        self.peak, self.stop = _status("RssAnon"), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, _status("RssAnon"))

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def build_worker(tier: str, dim: int, work: Path) -> dict:
    """Build one tier and save it: build time, peak RAM, disk."""
    import faiss

    from btembed.search.ann import AnnConfig, build, choose_ondisk_m

    src = MemmapSource(work / f"vectors-{dim}.npy")
    n = src.count
    cfg = {"flat": AnnConfig(flat_max_floats=n * dim), "ivf": AnnConfig(flat_max_floats=0),
           # the budget that gives IVF-PQ in RAM the on-disk tier's codes: the same index, held in RAM or mapped
           "ivfpq": AnnConfig(flat_max_floats=0, max_memory=n * (choose_ondisk_m(dim, AnnConfig()) + 8)),
           "ondisk": AnnConfig(flat_max_floats=0, on_disk=True)}[tier]
    folder = work / f"index-{tier}-{dim}"
    folder.mkdir(exist_ok=True)
    for f in folder.iterdir():
        f.unlink()
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    base = _status("RssAnon")
    with PeakAnon() as peak:
        t = time.perf_counter()
        ann = build(src, cfg, progress=lambda m: print("  " + m, file=sys.stderr, flush=True), folder=folder)
        build_s = time.perf_counter() - t
        ann.save(folder / "index.faiss", {"bench": True})
    return {"tier": tier, "dim": dim, "n": n, "build_s": round(build_s, 1),
            "build_peak_anon_mib": round((peak.peak - base) / 2**20, 1),
            "disk_mib": round(sum(f.stat().st_size for f in folder.iterdir()) / 2**20, 1),
            **{k: ann.info.get(k) for k in ("nlist", "nprobe", "pq_m", "pq_nbits", "rerank")}}


def measure_worker(tier: str, dim: int, work: Path, args) -> dict:
    """Open a saved tier in a fresh process and measure it: RAM it holds, pages it maps, recall, latency."""
    import faiss

    from btembed.search.ann import AnnIndex, recall_at_k

    src = MemmapSource(work / f"vectors-{dim}.npy")
    queries = np.load(work / f"queries-{dim}.npy")
    truth = np.load(work / f"truth-{dim}.npy")
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    before, file_before = _status("RssAnon"), _status("RssFile")
    ann, _ = AnnIndex.load(work / f"index-{tier}-{dim}" / "index.faiss")
    index_anon = _status("RssAnon") - before
    _, found = ann.search(queries, 10, fetch=src.fetch)
    recall = recall_at_k(found, truth, 10)
    faiss.omp_set_num_threads(1)
    reps = args.latency_queries if tier != "flat" else min(args.latency_queries, 60)
    times, cpu = [], []  # wall, and this thread's CPU time (what the query cost without other jobs' preemption)
    for q in queries[:reps]:
        t, c = time.perf_counter(), time.thread_time()
        ann.search(q[None], 10, fetch=src.fetch)
        times.append((time.perf_counter() - t) * 1000)
        cpu.append((time.thread_time() - c) * 1000)
    return {"index_ram_mib": round(index_anon / 2**20, 1),
            "mapped_pages_touched_mib": round((_status("RssFile") - file_before) / 2**20, 1),
            "recall_at_10": round(recall, 4), "p50_ms": round(float(np.percentile(times, 50)), 3),
            "p99_ms": round(float(np.percentile(times, 99)), 3), "latency_queries": reps,
            "p50_cpu_ms": round(float(np.percentile(cpu, 50)), 3),
            "p99_cpu_ms": round(float(np.percentile(cpu, 99)), 3)}


# --- the run ------------------------------------------------------------------------------------------------------
def ground_truth(dim: int, work: Path) -> float:
    """Exact top-10 of the held-out queries over every vector -> work/truth-DIM.npy; returns seconds."""
    from btembed.search.ann import exact_knn

    t = time.perf_counter()
    _, truth = exact_knn(MemmapSource(work / f"vectors-{dim}.npy"), np.load(work / f"queries-{dim}.npy"), 10)
    np.save(work / f"truth-{dim}.npy", truth)
    return time.perf_counter() - t


def table(result: dict) -> str:
    """The markdown table of a result, ratios to the flat tier of the same width side by side."""
    lines = [f"FAISS tiers on {result['n']:,} mixture-sampled embedding-like vectors, recall@10 vs exact on "
             f"{result['queries']} held-out queries, latency one query at a time on one thread", "",
             "| dim | tier | build s | build peak MiB | index RAM MiB | RAM / flat | disk MiB | recall@10 | p50 ms | "
             "p99 ms | p99 CPU ms | nlist | nprobe | PQ bytes×bits | rerank |", "|" + "---|" * 15]
    for dim, rows in result["tiers"].items():
        flat = next((r for r in rows if r["tier"] == "flat"), None)
        for r in rows:
            ratio = f"{r['index_ram_mib'] / flat['index_ram_mib']:.3f}" if flat and flat["index_ram_mib"] else "-"
            pq = f"{r['pq_m']}×{r['pq_nbits']}" if r.get("pq_m") else "-"
            lines.append(f"| {dim} | {r['tier']} | {r['build_s']} | {r['build_peak_anon_mib']} | {r['index_ram_mib']}"
                         f" | {ratio} | {r['disk_mib']} | {r['recall_at_10']} | {r['p50_ms']} | {r['p99_ms']} | "
                         f"{r.get('p99_cpu_ms', '-')} | "
                         f"{r['nlist'] or '-'} | {r['nprobe'] or '-'} | {pq} | {r['rerank'] or '-'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dims", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--tiers", nargs="+", default=list(TIERS), choices=TIERS)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--latency-queries", type=int, default=300)
    ap.add_argument("--procedural", type=int, default=600, help="procedural images beside the bundled photos")
    ap.add_argument("--crops", type=int, default=4, help="random crops per image")
    ap.add_argument("--components", type=int, default=24, help="mixture components (few: heavily overlapping)")
    ap.add_argument("--mixture-dims", type=int, default=32, help="top PCA dimensions the mixture models jointly")
    ap.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "btembed-ann-scale"))
    ap.add_argument("--table", metavar="JSON", help="print the table of an earlier result and exit")
    ap.add_argument("--reuse-data", action="store_true",
                    help="use the vectors and ground truth already in --work; rows of tiers not run are kept from "
                         "the earlier result file")
    ap.add_argument("--build-worker", nargs=2, metavar=("TIER", "DIM"), help=argparse.SUPPRESS)
    ap.add_argument("--measure-worker", nargs=2, metavar=("TIER", "DIM"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.build_worker:
        print(json.dumps(build_worker(args.build_worker[0], int(args.build_worker[1]), work)), flush=True)
        return
    if args.measure_worker:
        print(json.dumps(measure_worker(args.measure_worker[0], int(args.measure_worker[1]), work, args)),
              flush=True)
        return
    import faiss

    t0 = time.perf_counter()
    result = {"n": args.n, "queries": args.queries, "data": {}, "tiers": {}}
    stem = RESULTS / f"ann_scale_{args.n // 1000}k"
    earlier = json.loads(stem.with_suffix(".json").read_text()) if args.reuse_data else {}
    for dim in args.dims:
        t = time.perf_counter()
        if args.reuse_data and (work / f"data-{dim}.json").exists():
            result["data"][dim] = json.loads((work / f"data-{dim}.json").read_text())
        else:
            result["data"][dim] = make_vectors(dim, args.n, args.queries, work, args)
            result["data"][dim]["sample_s"] = round(time.perf_counter() - t, 1)
            result["data"][dim]["exact_ground_truth_s"] = round(ground_truth(dim, work), 1)
        print(json.dumps({dim: result["data"][dim]}), flush=True)
        rows = []
        for tier in args.tiers:
            row = {"measured": time.strftime("%Y-%m-%dT%H:%M")}
            for job in ("--build-worker", "--measure-worker"):
                p = subprocess.run([sys.executable, __file__, job, tier, str(dim), "--work", str(work),
                                    "--latency-queries", str(args.latency_queries)], stdout=subprocess.PIPE, text=True)
                if p.returncode != 0:
                    row = {"tier": tier, "dim": dim, "failed": f"{job} exit {p.returncode}"}
                    break
                row.update(json.loads(p.stdout.strip().splitlines()[-1]))
            rows.append(row)
            print(json.dumps(row), flush=True)
        kept = [r for r in earlier.get("tiers", {}).get(str(dim), []) if r["tier"] not in args.tiers]
        fresh = [r for r in rows if "failed" not in r]
        result["tiers"][dim] = sorted(kept + fresh, key=lambda r: TIERS.index(r["tier"]))
        result.setdefault("failed", []).extend(r for r in rows if "failed" in r)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["machine"] = machine(faiss=faiss.__version__, numpy=np.__version__)
    write_result(stem.with_suffix(".json"), result)
    text = table(result)
    stem.with_suffix(".md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
