"""The measuring pieces of bench/pipeline.py: child commands with their peak RSS, the naive loop, decode cost,
model-only speed, cold `btembed index` and `btembed search`, memory."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline_levers import onnx_session

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
PY = sys.executable
# (name, --backend, --precision, model folder under --work): the default and the other candidate paths of
# `btembed index`. r50 holds the int8 file `btembed export --int8` made (its search ran on random weights, which
# no stage can rescue, so it keeps the most fp32 it may); r50-plain the whole trunk in int8: int8's full speed.
PATHS = [("auto (default)", "auto", "auto", "r50"), ("onnxruntime fp32", "onnx", "fp32", "r50"),
         ("torch channels_last bf16", "torch", "bf16", "r50"), ("onnxruntime int8 (forced)", "onnx", "int8", "r50"),
         ("onnxruntime int8, whole trunk (forced)", "onnx", "int8", "r50-plain")]
BEFORE = "onnxruntime fp32, DataLoader processes (before)"
SPINNING = "torch channels_last bf16, libgomp default spin-wait (before)"
# `btembed` sets OMP_WAIT_POLICY=PASSIVE unless told otherwise; libgomp's behaviour with the variable unset is
# ACTIVE with a 300,000-spin count (its documented default), so this environment reproduces the old default.
SPINNING_ENV = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "300000"}
INDEX_BATCH = 64  # `btembed index --batch-size` default
# Runs a btembed command in a fresh process with the old DataLoader decode (for the "before" row).
WITH_PROCESSES = ("import sys; from btembed.embedder import Embedder; Embedder.decode_pool = 'process'; "
                  "from btembed.cli import main; sys.exit(main(sys.argv[1:]))")
# Runs a btembed command and reports on stderr whether torch was imported.
TORCH_PROBE = ("import sys; from btembed.cli import main; code = main(sys.argv[1:]); "
               "print('TORCH_IMPORTED', 'torch' in sys.modules, file=sys.stderr); sys.exit(code)")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cores() -> int:
    return len(os.sched_getaffinity(0))


# The child's own peak RSS: measured by a small go-between process, because a child forked straight from this
# big process starts with our RSS as its high-water mark (Linux carries it across exec into ru_maxrss).
GO_BETWEEN = ("import json, os, subprocess, sys; p = subprocess.Popen(sys.argv[2:]); _, st, ru = os.wait4(p.pid, 0); "
              "open(sys.argv[1], 'w').write(json.dumps([os.waitstatus_to_exitcode(st), ru.ru_maxrss])); "
              "sys.exit(os.waitstatus_to_exitcode(st))")


def run_child(cmd: list[str], env: dict | None = None) -> dict:
    """Run a command to completion: wall seconds, its own peak RSS (MiB), stdout, stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(suffix=".json") as usage:
        t = time.perf_counter()
        p = subprocess.run([PY, "-S", "-c", GO_BETWEEN, usage.name, *cmd], stdout=out, stderr=err,
                           env={**os.environ, **(env or {})})
        wall = time.perf_counter() - t
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
        code, maxrss_kib = json.loads(Path(usage.name).read_text() or "[1, 0]")
    if p.returncode != 0 or code != 0:
        last = stderr.strip().splitlines()[-1:] or ["(no message)"]
        raise RuntimeError(f"`{shown(cmd)}` failed ({code}): {last[0]}")
    # ru_maxrss: the largest RSS of the command or of any of its own waited-for children (not their sum).
    return {"seconds": wall, "peak_rss_mib": maxrss_kib / 1024, "stdout": stdout, "stderr": stderr}


def link_folder(folder: Path, files: list[Path]) -> Path:
    """A folder of symbolic links to files (a subset without copying)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        link = folder / f"{i:05d}{f.suffix}"
        if not link.exists():
            link.symlink_to(f)
    return folder


def naive(files: list[Path], folder: Path, batch: int = 16) -> dict:
    """PIL full decode + torchvision Resize/CenterCrop/ToTensor/Normalize + eager fp32 NCHW, batch 16."""
    import torch
    from PIL import Image
    from torchvision import transforms

    from btembed import Encoder

    model = Encoder.from_pretrained(folder).eval()
    pre = model.config.preprocess
    tf = transforms.Compose([transforms.Resize(pre.resize_size), transforms.CenterCrop(pre.input_size),
                             transforms.ToTensor(), transforms.Normalize(pre.mean, pre.std)])
    decode = compute = 0.0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(files), batch):
            t = time.perf_counter()
            x = torch.stack([tf(Image.open(f).convert("RGB")) for f in files[start:start + batch]])
            t2 = time.perf_counter()
            torch.nn.functional.normalize(model(x), dim=1)
            decode, compute = decode + t2 - t, compute + time.perf_counter() - t2
    wall = time.perf_counter() - t0
    return {"img_per_s": len(files) / wall, "seconds": wall, "decode_share": decode / wall}


def decode_costs(files: list[Path], cfg) -> dict:
    """Core-milliseconds per image on one thread: btembed's draft decode vs full decode (+ resize/crop)."""
    from PIL import Image

    from btembed.preprocess import load_pixels, resize_and_crop

    def per_image(fn):
        t = time.thread_time()
        for f in files:
            fn(f)
        return 1000 * (time.thread_time() - t) / len(files)

    return {"draft_decode_resize_core_ms": per_image(lambda f: load_pixels(f, cfg)),
            "full_decode_resize_core_ms": per_image(lambda f: resize_and_crop(Image.open(f).convert("RGB"), cfg))}


def model_only(folder: Path | None, pixels: np.ndarray, backend: str, precision: str, batch: int,
               threads: int | None = None) -> tuple[float, str]:
    """(img/s, precision run) of a backend on pre-decoded uint8 batches (one warm-up batch first), on `threads`
    threads; folder None: the embedded default."""
    import torch

    from btembed.backends import load_backend
    from btembed.modelfolder import ModelFolder

    model = ModelFolder.resolve(folder)
    b = load_backend(backend, model, model.config, device="cpu", precision=precision)
    threads = threads or cores()
    if hasattr(b, "session"):
        b.session = onnx_session(b.path, threads, spinning=True)
    torch.set_num_threads(threads)
    try:
        b(pixels[:batch])
        t = time.perf_counter()
        for start in range(0, len(pixels), batch):
            b(pixels[start:start + batch])
        return len(pixels) / (time.perf_counter() - t), b.precision
    finally:
        torch.set_num_threads(cores())


def index_cmd(folder: Path, db: Path, model: Path | None, backend: str, precision: str,
              batch: int = INDEX_BATCH, extra: tuple = ()) -> list[str]:
    """A `btembed index` command line (model None: the embedded default)."""
    chosen = ["--model", str(model)] if model is not None else []
    return [PY, "-m", "btembed", "index", str(folder), "--db", str(db), *chosen, "--backend", backend,
            "--precision", precision, "--batch-size", str(batch), "--json", *extra]


def shown(cmd: list[str]) -> str:
    """A command as a reader would type it."""
    text = " ".join(cmd).replace(PY + " -m btembed", "btembed")
    return text.replace(f"{PY} -c {WITH_PROCESSES}", "<Embedder.decode_pool='process'> btembed")


def e2e(name: str, cmd: list[str], n: int, db: Path, env: dict | None = None) -> dict:
    """A cold `btembed index` run over a fresh --db."""
    import shutil

    shutil.rmtree(db, ignore_errors=True)
    r = run_child(cmd, env)
    report = json.loads(r["stdout"])
    if report["embedded"] != n:
        raise RuntimeError(f"{name}: embedded {report['embedded']} of {n}")
    return {"path": name, "command": shown(cmd), "seconds": r["seconds"], "img_per_s": n / r["seconds"],
            "peak_rss_mib": r["peak_rss_mib"], "index_report_seconds": report["seconds"],
            "precision": report.get("precision")}


def device_decode_cpu(folder: Path, files: list[Path]) -> float:
    """In-process img/s of the GPU input path run on this CPU (btembed.device_decode + resize, torch bf16)."""
    from btembed import Embedder

    emb = Embedder.from_pretrained(folder, backend="torch", device="cpu", precision="bf16")
    emb.decode_pool = "device"
    list(emb.embed_batches(files[:INDEX_BATCH], batch_size=INDEX_BATCH))  # warm-up
    t = time.perf_counter()
    for b in emb.embed_batches(files, batch_size=INDEX_BATCH, progress=False):
        assert not any(b.errors)
    return len(files) / (time.perf_counter() - t)


def search_cold(folder: Path, db: Path | None, query: Path, repeat: int) -> dict:
    """Cold `btembed search` wall time (median) for a query outside the folder; and whether torch was imported."""
    from btembed.images import find_images

    where = ["--db", str(db)] if db is not None else []
    cmd = [PY, "-m", "btembed", "search", str(folder), str(query), "-k", "10", "--json", *where]
    walls = [run_child(cmd)["seconds"] for _ in range(repeat)]
    probe = run_child([PY, "-c", TORCH_PROBE, *cmd[3:]])
    inside = next(iter(find_images(folder)))
    walls_in = [run_child([*cmd[:5], str(inside), *cmd[6:]])["seconds"] for _ in range(repeat)]
    imp = run_child([PY, "-c", "import torch"])["seconds"]
    return {"command": shown(cmd), "median_seconds": statistics.median(walls), "runs": walls,
            "query_inside_folder_median_seconds": statistics.median(walls_in),
            "torch_imported": "TORCH_IMPORTED True" in probe["stderr"], "import_torch_seconds": imp,
            "goal_seconds": 2.0}


def memory(small: Path, work: Path) -> list[dict]:
    """Peak RSS of `btembed index` on 1k vs all files of the small-file folder, at two batch sizes."""
    from btembed.images import find_images

    files = sorted(find_images(small))
    model = small.parent / "model" if (small.parent / "model" / "config.json").exists() else None
    sub = link_folder(work / "small-1000", files[:1000])
    rows = []
    for folder, n, batch in ((sub, min(1000, len(files)), 64), (small, len(files), 64), (small, len(files), 256)):
        db = work / "db-memory"
        cmd = index_cmd(folder, db, model, "auto", "auto", batch)
        row = e2e(f"{n} files, batch {batch}", cmd, n, db)
        rows.append({"files": n, "batch_size": batch, **{k: row[k] for k in
                                                          ("command", "seconds", "peak_rss_mib")}})
    return rows


def defaults() -> dict:
    """The decode settings `btembed index` runs with in this checkout."""
    from btembed.backends.onnx import available_cores
    from btembed.embedder import Embedder, default_num_workers

    return {"decode_pool": Embedder.decode_pool, "decode_workers": default_num_workers(10 ** 6, INDEX_BATCH),
            "read_ahead_batches": Embedder.prefetch, "decode_nice": Embedder.decode_nice,
            "onnx_intra_op_threads": available_cores()}
