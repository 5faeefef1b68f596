"""Pipeline speed of `btembed index` on hi-res JPEGs, side by side in one run: naive loop, model-only, end to end.

    python bench/pipeline.py --photos DIR [--work bench/data/pipeline] [--small DIR] [--limit N] [--repeat 2]
                             [--levers] [--before] [--out bench/results/pipeline.json]

(a) naive loop: PIL full decode + torchvision Resize/CenterCrop/Normalize + eager fp32 NCHW torch, batch 16, on
    the first 96 photos in every round;
(b) model-only img/s of each backend path on 192 pre-decoded uint8 NHWC images (batches as in the index), on
    2 threads and on 1 (its core cost, for the core-cost bound: 2 cores / (model + decode core-ms));
(c) `btembed index` as a whole cold command (subprocess, fresh --db) per path, its wall time and peak RSS;
    (b) and (c) alternate round by round, and each figure is the median of --repeat rounds. Paths: precision
    "auto" (the default), onnxruntime fp32, torch bf16 and int8 forced, each int8 row with the parity record of
    the int8 file (made here by `btembed export --int8` on the photos: recall@10 and cosine on a held-apart
    quarter); then the embedded default model under auto and fp32 (which precision auto ran, and why);
levers (--levers): decode threads/processes vs onnxruntime threads, spinning, batch size, read-ahead (warm);
(d) cold `btembed search` on an indexed folder (--small, indexed first when needed; else the photos, indexed here);
(e) peak RSS of `btembed index` on 1k vs 10k files and at two batch sizes (needs --small: bench/reindex.py).
ResNet-50@224 (resize 256, bilinear), random-init weights (seed 0): speed does not depend on the weights.
Every step writes the JSON so far; a step that fails is recorded in one line and the run goes on without it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from pipeline_parts import (BEFORE, INDEX_BATCH, PATHS, PY, RESULTS, ROOT, SPINNING, SPINNING_ENV, WITH_PROCESSES,
                            cores, decode_costs, defaults, device_decode_cpu, e2e, index_cmd, link_folder, memory,
                            model_only, naive, run_child, say, search_cold)
from pipeline_report import report

NAIVE_IMAGES = 96  # per round: the naive loop is the slowest path, and its img/s does not need all photos
MODEL_ONLY_IMAGES = 192  # three index batches


def setup_model(work: Path, photos: Path, methods: list[str]) -> dict:
    """Random-init ResNet-50@224 folder, its fp32 export cached, and a model.int8.onnx made as `btembed export
    --int8 --calibration PHOTOS` makes it (search + parity on a held-apart quarter, recorded) -> its report.
    Kept in --work: a later run reuses both (the report says when the int8 file was made)."""
    folder, saved = work / "r50", work / "r50-int8-report.json"
    if not (folder / "config.json").exists():
        import torch

        from btembed import Encoder

        torch.manual_seed(0)
        Encoder.from_config({"architecture": "resnet50", "name": "bench/random-r50"}).save_pretrained(folder)
    from btembed.backends.onnx import INT8_FILE, OnnxBackend
    from btembed.backends.parity import find_record
    from btembed.config import ModelConfig

    config = ModelConfig.load(folder)
    fp32 = OnnxBackend(folder, config, device="cpu")  # exports once into r50/.onnx-cache (not timed)
    if (folder / INT8_FILE).exists() and saved.exists() and find_record(folder / INT8_FILE) is not None \
            and (work / "r50-plain" / INT8_FILE).exists():
        return {**json.loads(saved.read_text()), "reused": True}
    import tempfile

    from btembed.backends.int8 import MIN_IMAGES, folder_pixels, quantize_int8
    from btembed.backends.onnx_check import DEFAULT_MAX_IMAGES, export_int8

    pixels = folder_pixels(photos, config, DEFAULT_MAX_IMAGES)
    t = time.perf_counter()
    if len(pixels) < MIN_IMAGES:
        say(f"only {len(pixels)} photos (< {MIN_IMAGES}): plain int8 without a search or parity record")
        quantize_int8(fp32.path, folder / INT8_FILE, pixels, config)
        report = {"note": f"plain MinMax int8, no parity record (fewer than {MIN_IMAGES} photos)"}
    else:
        with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
            report = export_int8(fp32.path, folder / INT8_FILE, pixels, config, Path(tmp), methods=methods,
                                 say=say)
    report["seconds"] = time.perf_counter() - t
    report["whole_trunk"] = whole_trunk_int8(folder, work / "r50-plain", pixels)
    saved.write_text(json.dumps(report, indent=2) + "\n")
    return report


def whole_trunk_int8(folder: Path, plain: Path, pixels: np.ndarray) -> str:
    """A copy of the model folder whose model.int8.onnx quantizes the whole trunk (plain MinMax, no search)."""
    import shutil

    from btembed.backends.int8 import quantize_int8
    from btembed.backends.onnx import INT8_FILE, OnnxBackend
    from btembed.config import ModelConfig

    shutil.rmtree(plain, ignore_errors=True)
    shutil.copytree(folder, plain, ignore=shutil.ignore_patterns(INT8_FILE, "*.parity.json"))
    config = ModelConfig.load(plain)
    quantize_int8(OnnxBackend(plain, config, device="cpu").path, plain / INT8_FILE, pixels, config)
    return str(plain)


class Run:
    """The result dict, written as JSON after every step; a failed step is recorded in one line and skipped."""

    def __init__(self, out: Path, result: dict, names: dict[Path, str]):
        self.out, self.result, self.failed = out, result, {}
        # Folders of this machine are written by their role (PHOTOS, WORK), so a committed result holds no paths.
        self.names = sorted(((str(k.resolve()), v) for k, v in names.items()), key=lambda kv: -len(kv[0]))

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({**self.result, "failed_steps": self.failed}, indent=2, default=str) + "\n"
        for path, name in self.names:
            text = text.replace(path, name)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.out)

    def step(self, key: str, label: str, fn, *args, **kwargs):
        """Run one step: its result goes under key (None when it failed), the JSON is rewritten either way."""
        say(label)
        try:
            self.result[key] = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - one line in the JSON and on stderr, and the run goes on
            self.failed[key] = f"{type(e).__name__}: {e}"
            self.result[key] = None
            say(f"  {key} failed: {self.failed[key]}")
        self.write()
        return self.result[key]

    def skip(self, key: str, why: str) -> None:
        say(f"skipped {key}: {why}")
        self.result[key] = {"skipped": why}
        self.write()


def parity_of(folder: Path | None) -> dict | None:
    """The parity record of a model's int8 file under this runtime (None without one)."""
    from btembed.backends.onnx import INT8_FILE
    from btembed.backends.parity import find_record
    from btembed.modelfolder import ModelFolder

    path = ModelFolder.resolve(folder).path / INT8_FILE
    record = find_record(path) if path.exists() else None
    return None if record is None else {"recall_at_10": record.recall_at_10, "mean_cosine": record.mean_cosine,
                                        "images": record.images, "passes_bar": record.passes(),
                                        "kept_fp32": record.kept_fp32, "calibration_method": record.calibration_method}


def measure_paths(run: Run, model: Path, photos: Path, files: list[Path], cfg, args) -> list[dict]:
    """(b) model-only and (c) cold `btembed index` of each path, interleaved round by round; the rows."""
    from btembed.preprocess import load_pixels

    n, work = len(files), args.work
    pixels = np.stack([load_pixels(f, cfg) for f in files[:MODEL_ONLY_IMAGES]])
    naive_runs = []
    extra = ([(BEFORE, "auto", "fp32", {}, WITH_PROCESSES), (SPINNING, "torch", "bf16", SPINNING_ENV, None)]
             if args.before else [])
    runs: dict = {name: [] for name, *_ in PATHS} | {e[0]: [] for e in extra}
    alone: dict = {name: [] for name, *_ in PATHS}
    one_core: dict = {name: [] for name, *_ in PATHS}
    ran: dict = {}
    # Model-only figures are taken in every round next to the e2e runs, so a slow spell of the shared machine
    # moves numerator and denominator alike instead of one of them.
    for round_ in range(args.repeat):
        naive_runs.append(naive(files[:NAIVE_IMAGES], work / "r50"))
        for name, backend, precision, where in PATHS:
            folder = work / where
            speed, ran[name] = model_only(folder, pixels, backend, precision, INDEX_BATCH)
            alone[name].append(speed)
            one_core[name].append(model_only(folder, pixels, backend, precision, INDEX_BATCH, threads=1)[0])
            runs[name].append(e2e(name, index_cmd(photos, work / "db", folder, backend, precision), n, work / "db"))
        for name, backend, precision, env, code in extra:
            cmd = index_cmd(photos, work / "db", model, backend, precision)
            runs[name].append(e2e(name, [PY, "-c", code, *cmd[3:]] if code else cmd, n, work / "db", env=env))
        say(f"  round {round_ + 1} of {args.repeat} done")
    del pixels
    rows = []
    for name, backend, precision, where in PATHS:
        row = {"path": name, "precision_run": ran[name], "model_only_img_per_s": statistics.median(alone[name]),
               "model_only_runs": alone[name], "model_only_one_thread_img_per_s": statistics.median(one_core[name])}
        if ran[name] == "int8":
            row["parity"] = parity_of(work / where)  # None: a file without a record (the whole-trunk one)
        rows.append(row)
    for name, *_ in extra:
        rows.append({"path": name, "model_only_img_per_s": rows[1 if name == BEFORE else 2]["model_only_img_per_s"],
                     "model_only_note": "the model-only figure of the same backend and precision"})
    naive_ips = statistics.median(r["img_per_s"] for r in naive_runs)
    run.result["naive"] = {"img_per_s": naive_ips, "runs": naive_runs, "images": len(files[:NAIVE_IMAGES]),
                           "decode_share": statistics.median(r["decode_share"] for r in naive_runs),
                           "command": "python bench/pipeline.py (naive loop, in-process, in every round)"}
    decode_ms = (run.result.get("decode") or {}).get("draft_decode_resize_core_ms")
    for r in rows:
        rs = runs[r["path"]]
        r["e2e_img_per_s"] = statistics.median(x["img_per_s"] for x in rs)
        r["e2e_seconds_runs"] = [x["seconds"] for x in rs]
        r["peak_rss_mib"] = max(x["peak_rss_mib"] for x in rs)
        spin = "".join(f"{k}={v} " for k, v in SPINNING_ENV.items())
        r["command"] = (spin if r["path"] == SPINNING else "") + rs[0]["command"]
        r["e2e_over_model_only"] = r["e2e_img_per_s"] / r["model_only_img_per_s"]
        if naive_ips:
            r["e2e_over_naive"] = r["e2e_img_per_s"] / naive_ips
        one = r.get("model_only_one_thread_img_per_s")
        if one and decode_ms:
            # The whole command's ceiling if the cores never idled: model core cost (one thread) + decode.
            r["core_cost_bound_img_per_s"] = cores() * 1000 / (1000 / one + decode_ms)
            r["core_cost_bound_over_model_only"] = r["core_cost_bound_img_per_s"] / r["model_only_img_per_s"]
    return rows


def embedded_default(photos: Path, files: list[Path], args) -> list[dict]:
    """The embedded default model: `btembed index` under auto and fp32 (which precision auto ran, and why)."""
    from btembed.backends.precision import choose_precision
    from btembed.modelfolder import ModelFolder
    from btembed.preprocess import load_pixels

    folder = ModelFolder.resolve(None)
    pixels = np.stack([load_pixels(f, folder.config.preprocess) for f in files[:MODEL_ONLY_IMAGES]])
    choice = choose_precision(folder.path, "auto", device="cpu")
    rows = []
    for precision in ("auto", "fp32"):
        row = {"path": f"embedded default ({folder.config.architecture}@{folder.config.preprocess.input_size}), "
                       f"precision {precision}", "e2e": [], "model_only": []}
        for _ in range(args.repeat):
            row["model_only"].append(model_only(None, pixels, "auto", precision, INDEX_BATCH)[0])
            row["e2e"].append(e2e(row["path"], index_cmd(photos, args.work / "db", None, "auto", precision),
                                  len(files), args.work / "db"))
        rows.append({"path": row["path"], "precision_run": row["e2e"][0]["precision"],
                     "model_only_img_per_s": statistics.median(row["model_only"]),
                     "e2e_img_per_s": statistics.median(x["img_per_s"] for x in row["e2e"]),
                     "command": row["e2e"][0]["command"], "peak_rss_mib": max(x["peak_rss_mib"] for x in row["e2e"])})
    rows[0].update({"auto_reason": choice.reason, "parity": parity_of(None)})
    return rows


def search_folder(args, photos: Path) -> tuple[Path, Path | None]:
    """(folder, --db) of an indexed folder for the cold search: --small (indexed first when needed), else the
    photos indexed here with the embedded default."""
    if args.small is not None:
        if not (args.small / ".btembed").exists():
            say(f"indexing {args.small} first (cold search needs an indexed folder)")
            run_child([PY, "-m", "btembed", "index", str(args.small), "--json"])
        return args.small, None
    db = args.work / "search-db"
    if not db.exists():
        say(f"no --small: indexing the photos into {db} for the cold search")
        run_child([PY, "-m", "btembed", "index", str(photos), "--db", str(db), "--json"])
    return photos, db


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, required=True,
                    help="folder of hi-res JPEGs (python bench/make_photo_set.py OUT makes one)")
    ap.add_argument("--small", type=Path, default=None,
                    help="folder of 10k small files for search and memory (bench/reindex.py makes one); without "
                         "it the cold search runs on the photos and the memory step is skipped")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "data" / "pipeline",
                    help="scratch folder: models, indexes, int8 file (default bench/data/pipeline, not committed)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N photos (quick check)")
    ap.add_argument("--repeat", type=int, default=2, help="repeats of each e2e run and lever (median)")
    ap.add_argument("--int8-method", dest="int8_methods", action="append", default=None,
                    choices=("MinMax", "Entropy", "Percentile"),
                    help="calibration methods the int8 export tries for the ResNet-50 (default: all three)")
    ap.add_argument("--levers", action="store_true", help="also sweep decode/thread/batch levers (in-process)")
    ap.add_argument("--before", action="store_true", help="also time the older defaults (DataLoader, spinning)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "pipeline.json")
    args = ap.parse_args(argv)
    if not args.photos.is_dir():
        ap.error(f"--photos {args.photos} is not a folder (python bench/make_photo_set.py OUT makes one)")
    os.environ.setdefault("BTEMBED_CACHE", str(args.work / "cache"))
    args.work.mkdir(parents=True, exist_ok=True)

    from btembed.images import find_images

    files = sorted(find_images(args.photos))[:args.limit]
    photos = link_folder(args.work / f"photos-{len(files)}", files) if args.limit else args.photos
    files = sorted(find_images(photos))
    n = len(files)
    for f in files:
        f.read_bytes()  # every path reads from the page cache, not the disk
    say(f"{n} photos from {args.photos}")
    set_file = args.photos / "set.json"
    run = Run(args.out, {"benchmark": "pipeline", "photos": str(args.photos), "n_photos": n,
                         "photo_set": ({k: v for k, v in json.loads(set_file.read_text()).items() if k != "files"}
                                       if set_file.exists() and not args.limit else None),
                         "model": "resnet50 @224 (resize 256, bilinear), random init seed 0",
                         "batch_size": INDEX_BATCH, "index_defaults": defaults(), "machine": machine()},
              {args.photos: "PHOTOS", photos: "PHOTOS", args.work: "WORK", ROOT: "."})
    run.write()
    setup = run.step("int8", "model: random ResNet-50, fp32 export, int8 export (search + parity record)",
                     setup_model, args.work, photos, args.int8_methods or ["MinMax", "Entropy", "Percentile"])
    model = args.work / "r50"
    import torch

    torch.set_num_threads(cores())
    if setup is not None or (model / "config.json").exists():
        from btembed.config import ModelConfig

        cfg = ModelConfig.load(model).preprocess
        run.step("decode", "decode cost per image (one thread)", decode_costs, files, cfg)
        run.step("paths", "(a) naive loop, (b) model-only and (c) cold `btembed index`, round by round",
                 measure_paths, run, model, photos, files, cfg, args)
        if args.levers:
            from pipeline_levers import levers

            run.step("levers", "levers", levers, model, files, args.repeat)
        run.step("device_decode_on_cpu_img_per_s", "GPU input path on this CPU", device_decode_cpu, model, files)
    else:
        run.skip("paths", "the ResNet-50 could not be set up (see failed_steps.int8)")
    run.step("embedded_default", "the embedded default under auto and fp32", embedded_default, photos, files, args)
    found = run.step("search_folder", "(d) an indexed folder for the cold search", search_folder, args, photos)
    if found:
        import shutil

        query = args.work / f"query{files[0].suffix}"  # a query from outside the indexed folder
        shutil.copyfile(files[0], query)
        run.step("search", "(d) cold search", search_cold, found[0], found[1], query, 5)
    if args.skip_memory or args.small is None:
        run.skip("memory", "--skip-memory" if args.skip_memory else "no --small folder (bench/reindex.py makes one)")
    else:
        run.step("memory", "(e) memory on the small-file folder", memory, args.small, args.work)
    run.result["machine"] = machine()
    run.write()
    report(run.result)
    say(f"wrote {args.out}" + (f"; failed steps: {', '.join(run.failed)}" if run.failed else ""))
    return 1 if run.failed else 0


def machine() -> dict:
    import onnxruntime
    import torch

    from btembed.backends.parity import Runtime

    return {"cpu": platform.processor() or platform.machine(), "cores": cores(), "vnni": Runtime.here().vnni,
            "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "load_average": os.getloadavg()}


if __name__ == "__main__":
    sys.exit(main())
