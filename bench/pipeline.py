"""Pipeline speed of `btembed index` on hi-res JPEGs, side by side in one run: naive loop, model-only, end to end.

    python bench/pipeline.py [--photos ../data/bench-photos] [--small ../data/bench_reindex/photos10000]
                             [--work ../data/bench-pipeline] [--limit N] [--out bench/results/pipeline.json]

(a) naive loop: PIL full decode + torchvision Resize/CenterCrop/Normalize + eager fp32 NCHW torch, batch 16;
(b) model-only img/s of each backend path on pre-decoded uint8 NHWC batches (same batch size as the index), on
    2 threads and on 1 (its core cost, for the core-cost bound: 2 cores / (model + decode core-ms));
(c) `btembed index` as a whole cold command (subprocess, fresh --db) per path, its wall time and peak RSS;
    (b) and (c) alternate round by round, and each figure is the median of --repeat rounds;
levers: decode threads/processes vs onnxruntime threads, spinning, batch size, read-ahead (in-process, warm);
(d) cold `btembed search DIR QUERY` on the indexed 10k-file folder, and whether it imported torch;
(e) peak RSS of `btembed index` on 1k vs 10k files and at two batch sizes.
ResNet-50@224 (resize 256, bilinear), random-init weights (seed 0): speed does not depend on the weights.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
PY = sys.executable
# (name, --backend, --precision): the default and the other candidate paths of `btembed index`.
PATHS = [("onnxruntime fp32 (default)", "auto", "fp32"), ("torch channels_last bf16", "torch", "bf16"),
         ("onnxruntime int8", "onnx", "int8")]
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
    import tempfile

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
        raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n{stderr[-3000:]}")
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


def setup_model(work: Path, calibration: list[Path]) -> Path:
    """Random-init ResNet-50@224 folder with its fp32 ONNX export cached and a model.int8.onnx beside it."""
    folder = work / "r50"
    if not (folder / "config.json").exists():
        import torch

        from btembed import Encoder

        torch.manual_seed(0)
        Encoder.from_config({"architecture": "resnet50", "name": "bench/random-r50"}).save_pretrained(folder)
    from btembed.backends.onnx import INT8_FILE, OnnxBackend
    from btembed.config import ModelConfig
    from btembed.backends.int8 import quantize_int8
    from btembed.preprocess import load_pixels

    config = ModelConfig.load(folder)
    fp32 = OnnxBackend(folder, config, device="cpu")  # exports once into r50/.onnx-cache (not timed)
    if not (folder / INT8_FILE).exists():
        pixels = np.stack([load_pixels(p, config.preprocess) for p in calibration])
        quantize_int8(fp32.path, folder / INT8_FILE, pixels, config)
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


def model_only(folder: Path, pixels: np.ndarray, backend: str, precision: str, batch: int,
               threads: int | None = None) -> float:
    """img/s of the backend on pre-decoded uint8 batches (one warm-up batch first), on `threads` threads."""
    import torch

    from btembed.backends import load_backend
    from btembed.config import ModelConfig

    b = load_backend(backend, folder, ModelConfig.load(folder), device="cpu", precision=precision)
    threads = threads or cores()
    if hasattr(b, "session"):
        b.session = onnx_session(b.path, threads, spinning=True)
    torch.set_num_threads(threads)
    try:
        b(pixels[:batch])
        t = time.perf_counter()
        for start in range(0, len(pixels), batch):
            b(pixels[start:start + batch])
        return len(pixels) / (time.perf_counter() - t)
    finally:
        torch.set_num_threads(cores())


def index_cmd(folder: Path, db: Path, model: Path, backend: str, precision: str, batch: int = INDEX_BATCH,
              extra: tuple = ()) -> list[str]:
    return [PY, "-m", "btembed", "index", str(folder), "--db", str(db), "--model", str(model), "--backend",
            backend, "--precision", precision, "--batch-size", str(batch), "--json", *extra]


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
        raise SystemExit(f"{name}: embedded {report['embedded']} of {n}")
    return {"path": name, "command": shown(cmd), "seconds": r["seconds"], "img_per_s": n / r["seconds"],
            "peak_rss_mib": r["peak_rss_mib"], "index_report_seconds": report["seconds"]}


def onnx_session(path: Path, threads: int, spinning: bool):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


LEVERS = [  # (label, decode pool, decode workers, onnx threads, spinning, batch, prefetch[, decode nice])
    ("inline decode, onnx 2 thr", "thread", 0, 2, True, 64, 2),
    ("inline decode, onnx 2 thr, no spin", "thread", 0, 2, False, 64, 2),
    ("1 decode thread + onnx 2 thr", "thread", 1, 2, True, 64, 2),
    ("2 decode threads + onnx 2 thr", "thread", 2, 2, True, 64, 2),
    ("2 decode threads + onnx 2 thr, no spin", "thread", 2, 2, False, 64, 2),
    ("2 decode threads at nice +10 + onnx 2 thr", "thread", 2, 2, True, 64, 2, 10),
    ("2 decode threads at nice +10 + onnx 2 thr, no spin", "thread", 2, 2, False, 64, 2, 10),
    ("2 decode threads + onnx 1 thr", "thread", 2, 1, True, 64, 2),
    ("1 decode thread + onnx 1 thr", "thread", 1, 1, True, 64, 2),
    ("3 decode threads + onnx 2 thr", "thread", 3, 2, True, 64, 2),
    ("2 DataLoader processes + onnx 2 thr", "process", 2, 2, True, 64, 2),
    ("1 DataLoader process + onnx 2 thr", "process", 1, 2, True, 64, 2),
    ("2 decode threads, batch 16", "thread", 2, 2, True, 16, 2),
    ("2 decode threads, batch 32", "thread", 2, 2, True, 32, 2),
    ("2 decode threads, batch 128", "thread", 2, 2, True, 128, 2),
    ("2 decode threads, read-ahead 1", "thread", 2, 2, True, 64, 1),
    ("2 decode threads, read-ahead 4", "thread", 2, 2, True, 64, 4),
]


def levers(folder: Path, files: list[Path], repeat: int) -> list[dict]:
    """Warm in-process embedding of all files (onnxruntime fp32) under each setting; median of `repeat`."""
    from btembed import Embedder

    base = Embedder.from_pretrained(folder, backend="onnx", device="cpu")
    sessions = {}
    times: dict = {lv[0]: [] for lv in LEVERS}
    for _ in range(repeat):  # rounds interleave the settings so outside load hits them alike
        for label, pool, workers, threads, spin, batch, prefetch, *nice in LEVERS:
            key = (threads, spin)
            if key not in sessions:
                sessions[key] = onnx_session(base.backend.path, threads, spin)
            base.backend.session = sessions[key]
            emb = Embedder(base.backend, base.config)
            emb.decode_pool, emb.prefetch, emb.decode_nice = pool, prefetch, (nice or [0])[0]
            t = time.perf_counter()
            for b in emb.embed_batches(files, batch_size=batch, num_workers=workers, progress=False):
                assert not any(b.errors)
            times[label].append(time.perf_counter() - t)
    return [{"setting": lv[0], "decode_pool": lv[1], "decode_workers": lv[2], "onnx_threads": lv[3],
             "spinning": lv[4], "batch_size": lv[5], "read_ahead": lv[6], "decode_nice": (lv[7:] or (0,))[0],
             "img_per_s": len(files) / statistics.median(times[lv[0]])} for lv in LEVERS]


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


def search_cold(small: Path, query: Path, repeat: int) -> dict:
    """Cold `btembed search` wall time (median) for a query outside the folder; and whether torch was imported."""
    cmd = [PY, "-m", "btembed", "search", str(small), str(query), "-k", "10", "--json"]
    walls = [run_child(cmd)["seconds"] for _ in range(repeat)]
    probe = run_child([PY, "-c", TORCH_PROBE, "search", str(small), str(query), "-k", "10", "--json"])
    inside = next(iter(sorted(small.rglob("*.png"))))
    walls_in = [run_child([*cmd[:5], str(inside), *cmd[6:]])["seconds"] for _ in range(repeat)]
    imp = run_child([PY, "-c", "import torch"])["seconds"]
    return {"command": shown(cmd), "median_seconds": statistics.median(walls), "runs": walls,
            "query_inside_folder_median_seconds": statistics.median(walls_in),
            "torch_imported": "TORCH_IMPORTED True" in probe["stderr"], "import_torch_seconds": imp,
            "goal_seconds": 2.0}


def memory(small: Path, work: Path) -> list[dict]:
    """Peak RSS of `btembed index` on 1k vs all files of the small-file folder, at two batch sizes."""
    files = sorted(p for p in small.rglob("*") if p.suffix == ".png")
    model = small.parent / "model"
    sub = link_folder(work / "small-1000", files[:1000])
    rows = []
    for folder, n, batch in ((sub, min(1000, len(files)), 64), (small, len(files), 64), (small, len(files), 256)):
        db = work / "db-memory"
        cmd = index_cmd(folder, db, model, "auto", "fp32", batch)
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=Path("../data/bench-photos"))
    ap.add_argument("--small", type=Path, default=Path("../data/bench_reindex/photos10000"),
                    help="indexed folder of small files (bench/reindex.py builds it)")
    ap.add_argument("--work", type=Path, default=Path("../data/bench-pipeline"))
    ap.add_argument("--limit", type=int, default=None, help="use only the first N photos (quick check)")
    ap.add_argument("--repeat", type=int, default=2, help="repeats of each e2e run and lever (median)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-levers", action="store_true", help="skip the in-process thread/batch lever sweep")
    ap.add_argument("--out", type=Path, default=RESULTS / "pipeline.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("BTEMBED_CACHE", str(args.work / "cache"))
    args.work.mkdir(parents=True, exist_ok=True)

    from btembed.images import find_images

    files = list(find_images(args.photos))[:args.limit]
    photos = link_folder(args.work / f"photos-{len(files)}", files) if args.limit else args.photos
    files = list(find_images(photos))
    n = len(files)
    for f in files:
        f.read_bytes()  # every path reads from the page cache, not the disk
    say(f"{n} photos from {args.photos}")
    model = setup_model(args.work, files[::max(1, n // 64)][:64])
    import torch

    torch.set_num_threads(cores())
    from btembed.config import ModelConfig
    from btembed.preprocess import load_pixels

    cfg = ModelConfig.load(model).preprocess
    result: dict = {"benchmark": "pipeline", "photos": str(args.photos), "n_photos": n,
                    "photo_set": json.loads((args.photos / "set.json").read_text()) if
                    (args.photos / "set.json").exists() and not args.limit else None,
                    "model": "resnet50 @224 (resize 256, bilinear), random init seed 0", "batch_size": INDEX_BATCH,
                    "index_defaults": defaults()}
    if result["photo_set"]:
        result["photo_set"] = {k: v for k, v in result["photo_set"].items() if k != "files"}

    say("decode cost per image (one thread)")
    result["decode"] = decode_costs(files, cfg)
    say("(a) naive loop")
    result["naive"] = naive(files, model)
    result["naive"]["command"] = "python bench/pipeline.py (naive loop, in-process)"
    say("(b) model-only, and (c) end to end, cold `btembed index`, interleaved round by round")
    pixels = np.stack([load_pixels(f, cfg) for f in files])
    before = "onnxruntime fp32, DataLoader processes (before)"
    runs: dict = {name: [] for name, _, _ in PATHS} | {before: [], SPINNING: []}
    alone: dict = {name: [] for name, _, _ in PATHS}
    one_core: dict = {name: [] for name, _, _ in PATHS}
    # Model-only figures are taken in every round next to the e2e runs, so a slow spell of the shared machine
    # moves numerator and denominator alike instead of one of them.
    for _ in range(args.repeat):
        for name, backend, precision in PATHS:
            alone[name].append(model_only(model, pixels, backend, precision, INDEX_BATCH))
            one_core[name].append(model_only(model, pixels, backend, precision, INDEX_BATCH, threads=1))
            cmd = index_cmd(photos, args.work / "db", model, backend, precision)
            runs[name].append(e2e(name, cmd, n, args.work / "db"))
        cmd = [PY, "-c", WITH_PROCESSES, *index_cmd(photos, args.work / "db", model, "auto", "fp32")[3:]]
        runs[before].append(e2e(before, cmd, n, args.work / "db"))
        # libgomp's threads spin after each parallel region by default, taking the core a decode thread wants.
        cmd = index_cmd(photos, args.work / "db", model, "torch", "bf16")
        runs[SPINNING].append(e2e(SPINNING, cmd, n, args.work / "db", env=SPINNING_ENV))
    del pixels
    rows = [{"path": name, "model_only_img_per_s": statistics.median(alone[name]),
             "model_only_runs": alone[name], "model_only_one_thread_img_per_s": statistics.median(one_core[name])}
            for name, _, _ in PATHS]
    rows.append({"path": before, "model_only_img_per_s": rows[0]["model_only_img_per_s"]})
    rows.append({"path": SPINNING, "model_only_img_per_s": rows[1]["model_only_img_per_s"],
                 "model_only_note": "the torch bf16 row's model-only figure"})
    naive_ips = result["naive"]["img_per_s"]
    for r in rows:
        rs = runs[r["path"]]
        r["e2e_img_per_s"] = statistics.median(x["img_per_s"] for x in rs)
        r["e2e_seconds_runs"] = [x["seconds"] for x in rs]
        r["peak_rss_mib"] = max(x["peak_rss_mib"] for x in rs)
        spin = "".join(f"{k}={v} " for k, v in SPINNING_ENV.items())
        r["command"] = (spin if r["path"] == SPINNING else "") + rs[0]["command"]
        r["e2e_over_model_only"] = r["e2e_img_per_s"] / r["model_only_img_per_s"]
        r["e2e_over_naive"] = r["e2e_img_per_s"] / naive_ips
        # 2 cores shared by decode and model: the most this path can do without decode workers of its own.
        decode_ms = result["decode"]["draft_decode_resize_core_ms"]
        model_core_ms = cores() * 1000 / r["model_only_img_per_s"]
        r["two_core_bound_img_per_s"] = cores() * 1000 / (model_core_ms + decode_ms)
        # The same bound from the model's one-thread cost: a model that scales imperfectly over 2 threads leaves
        # idle core time that decoding can fill, so this is the tighter ceiling of the whole command.
        one = r.get("model_only_one_thread_img_per_s")
        if one:
            r["core_cost_bound_img_per_s"] = cores() * 1000 / (1000 / one + decode_ms)
            r["core_cost_bound_over_model_only"] = r["core_cost_bound_img_per_s"] / r["model_only_img_per_s"]
    result["paths"] = rows
    say("levers")
    result["levers"] = [] if args.skip_levers else levers(model, files, args.repeat)
    result["device_decode_on_cpu_img_per_s"] = device_decode_cpu(model, files)
    say("(d) cold search")
    result["search"] = search_cold(args.small, files[0], 5)
    if not args.skip_memory:
        say("(e) memory on the 10k-file folder")
        result["memory"] = memory(args.small, args.work)
    import onnxruntime

    result["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": cores(),
                         "python": platform.python_version(), "torch": torch.__version__,
                         "onnxruntime": onnxruntime.__version__, "load_average_at_end": os.getloadavg()}
    report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    say(f"wrote {args.out}")
    return 0


def report(r: dict) -> None:
    d, nv = r["decode"], r["naive"]
    print(f"\n{r['n_photos']} JPEGs, {r['model']}, {r['machine']['cores']} cores")
    print(f"decode+resize per image, one core: draft {d['draft_decode_resize_core_ms']:.1f} ms, "
          f"full {d['full_decode_resize_core_ms']:.1f} ms")
    print(f"(a) naive loop: {nv['img_per_s']:.1f} img/s ({100 * nv['decode_share']:.0f} % decode+preprocess)")
    print(f"\n{'path':48} {'model-only':>10} {'1 thread':>8} {'e2e':>6} {'e2e/model':>9} {'e2e/naive':>9} "
          f"{'core-cost bound':>15} {'bound/model':>11} {'peak RSS':>9}")
    for p in r["paths"]:
        one, bound = p.get("model_only_one_thread_img_per_s"), p.get("core_cost_bound_img_per_s")
        print(f"{p['path']:48} {p['model_only_img_per_s']:10.1f} {one or float('nan'):8.1f} "
              f"{p['e2e_img_per_s']:6.1f} {p['e2e_over_model_only']:9.2f} {p['e2e_over_naive']:9.2f} "
              f"{bound or float('nan'):15.1f} {p.get('core_cost_bound_over_model_only', float('nan')):11.2f} "
              f"{p['peak_rss_mib']:7.0f} MiB")
    print(f"\nlevers (onnxruntime fp32, warm, in-process):")
    for lv in r["levers"]:
        print(f"  {lv['setting']:44} {lv['img_per_s']:6.1f} img/s")
    print(f"  GPU input path run on this CPU (decode_jpeg + tensor resize, torch bf16): "
          f"{r['device_decode_on_cpu_img_per_s']:.1f} img/s")
    s = r["search"]
    print(f"\n(d) cold search: {s['median_seconds']:.2f} s (query inside the folder "
          f"{s['query_inside_folder_median_seconds']:.2f} s; goal ≤ 2 s); torch imported: {s['torch_imported']}; "
          f"`import torch` alone {s['import_torch_seconds']:.2f} s")
    for m in r.get("memory", []):
        print(f"(e) {m['files']:6d} files, batch {m['batch_size']:3d}: peak RSS {m['peak_rss_mib']:.0f} MiB, "
              f"{m['seconds']:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
