"""ResNet-50@224 inference backends side by side: model-only img/s on pre-decoded uint8 batches, and retrieval
parity (recall@10 of each path's neighbours vs torch fp32) on real images.

    python bench/backends.py [--model FOLDER] [--images DIR] [--out bench/results/backends.json]

Paths: torch eager fp32 NCHW, torch channels_last fp32, torch channels_last bf16 (btembed's TorchBackend),
onnxruntime fp32, onnxruntime int8 plain (MinMax, everything quantized) and int8 as `btembed export --int8`
makes it (calibration method and fp32 parts chosen by measurement, parity recorded on a held-apart quarter of the
calibration images), and precision "auto" (what `btembed index` runs by default for this model, and why).
Calibration images are never in the parity set. Without --images: scikit-image photos and crops of them.
Timing rounds are interleaved across paths so load from other processes hits every path alike.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from btembed.backends.onnx import OnnxBackend, available_cores
from btembed.backends.torch import TorchBackend
from btembed.config import ModelConfig
from btembed.backends.onnx_check import compare
from btembed.backends.parity import recall_at_k
from btembed.backends.int8 import quantize_int8
from btembed.modelfiles import read_weights as load_state_dict
from btembed.images import find_images
from btembed.model import Encoder, PixelEncoder
from btembed.preprocess import load_pixels
from results_io import machine, write_result

# Clip-art and 28-px Fashion-MNIST are not photos; the rest of the offline pool is wallpapers, sky and textures.
NOT_PHOTOS = ("openclipart", "fashion")
SKIMAGE_PHOTOS = ("astronaut", "cat", "chelsea", "coffee", "colorwheel", "hubble_deep_field",
                  "immunohistochemistry", "retina", "rocket", "brick", "camera", "clock", "coins", "grass",
                  "gravel", "moon", "page", "text")


def random_init_folder(folder: Path) -> Path:
    """A random-init ResNet-50 @224 model folder (speed does not depend on the weights)."""
    torch.manual_seed(0)
    encoder = Encoder.from_config({"architecture": "resnet50", "name": "bench/random-r50"})
    return encoder.save_pretrained(folder)


def real_images(n: int, folder: Path | None, skip=(), seed: int = 0) -> tuple[list, str]:
    """n real images: files of a folder when it has enough, else scikit-image photos and random crops of them."""
    rng = np.random.default_rng(seed)
    if folder is not None and folder.is_dir():
        paths = [p for p in find_images(folder) if p.relative_to(folder).parts[0] not in skip]
        if len(paths) >= n:
            picks = sorted(rng.choice(len(paths), n, replace=False))
            sources = sorted({paths[i].relative_to(folder).parts[0] for i in picks})
            return [paths[i] for i in picks], (f"{n} files sampled (seed {seed}) from {folder.name}/ "
                                               f"(sources: {', '.join(sources)}; skipped: {', '.join(skip)})")
    from skimage import data

    photos = [getattr(data, name)() for name in SKIMAGE_PHOTOS]
    items = list(photos)
    while len(items) < n:
        photo = photos[rng.integers(len(photos))]
        h, w = photo.shape[:2]
        side = int(min(h, w) * rng.uniform(0.3, 1.0))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = photo[top:top + side, left:left + side]
        items.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return items[:n], (f"{len(photos)} scikit-image photos + {n - len(photos)} random crops/flips of them "
                       "(near-duplicate-heavy: neighbours are mostly crops of the same photo)")


class NCHWPixelEncoder(PixelEncoder):
    """PixelEncoder forced to contiguous NCHW activations: the plain eager baseline."""

    def forward(self, pixels):
        x = pixels.permute(0, 3, 1, 2).float().contiguous() * self.scale + self.shift
        return torch.nn.functional.normalize(self.encoder(x), dim=1)


def build_paths(folder: Path, config: ModelConfig, calibration: np.ndarray, workdir: Path,
                methods: tuple) -> tuple[dict, dict]:
    """(name → callable(uint8 NHWC) → unit vectors, notes) for each path under test."""
    from btembed.backends import load_backend
    from btembed.backends.int8 import MIN_IMAGES
    from btembed.backends.onnx_check import export_int8
    from btembed.modelfiles import INT8_FILE, shared_location

    encoder = Encoder(config)
    encoder.trunk.load_state_dict(load_state_dict(folder, config))
    nchw = NCHWPixelEncoder(encoder.eval()).eval()

    @torch.inference_mode()
    def torch_nchw(pixels):
        return nchw(torch.from_numpy(pixels)).numpy()

    onnx_fp32 = OnnxBackend(folder, config, device="cpu")
    paths = {
        "torch eager fp32 NCHW": torch_nchw,
        "torch channels_last fp32": TorchBackend(folder, config, device="cpu", precision="fp32"),
        "torch channels_last bf16": TorchBackend(folder, config, device="cpu", precision="bf16"),
        "onnxruntime fp32": onnx_fp32,
        "onnxruntime int8, plain (MinMax, all quantized)": OnnxBackend.from_file(
            quantize_int8(onnx_fp32.path, workdir / "plain.int8.onnx", calibration, config), config, device="cpu"),
    }
    notes = {}
    if len(calibration) >= MIN_IMAGES:
        # Into the model folder when it is ours (so precision "auto" sees it), else beside it in the work folder.
        target = (folder / INT8_FILE if shared_location(folder) is None and not (folder / INT8_FILE).exists()
                  else workdir / INT8_FILE)
        notes["export_int8"] = export_int8(onnx_fp32.path, target, calibration, config, workdir / "search",
                                           methods=methods, say=lambda m: print(m, file=sys.stderr, flush=True))
        # Where the file and its record went, by name only: a committed result holds no machine paths.
        notes["export_int8"]["file"] = "MODEL/" + target.name if target.parent == folder else "WORK/" + target.name
        notes["export_int8"]["parity_record"] = Path(notes["export_int8"]["parity_record"]).name
        paths["onnxruntime int8, btembed export --int8"] = OnnxBackend.from_file(target, config, device="cpu")
    auto = load_backend("auto", folder, config, device="cpu", precision="auto")
    notes["auto"] = {"precision": auto.precision, "reason": auto.precision_choice.reason}
    paths[f"precision auto (runs {auto.precision})"] = auto
    return paths, notes


def time_paths(paths: dict, batch: np.ndarray, rounds: int, reps: int) -> dict:
    """Median seconds per batch of each path; rounds are interleaved across paths."""
    for fn in paths.values():
        fn(batch)  # warm-up: allocations, oneDNN/MLAS kernel selection
    times = {name: [] for name in paths}
    for _ in range(rounds):
        for name, fn in paths.items():
            for _ in range(reps):
                start = time.perf_counter()
                fn(batch)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def embed_all(fn, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Embed a uint8 array in batches."""
    return np.concatenate([fn(pixels[i:i + batch_size]) for i in range(0, len(pixels), batch_size)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: random-init ResNet-50)")
    parser.add_argument("--images", type=Path, default=None,
                        help="folder of real images for parity and calibration (e.g. the offline pool's train/, "
                             "`python -m devdata.pool`); default: scikit-image photos and crops of them")
    parser.add_argument("--n-eval", type=int, default=300)
    parser.add_argument("--n-calibration", type=int, default=200,
                        help="calibration images, never in the parity set (the int8 export needs 200)")
    parser.add_argument("--int8-method", dest="int8_methods", action="append", default=None,
                        choices=("MinMax", "Entropy", "Percentile"),
                        help="calibration methods the int8 export tries (default: all three)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "backends.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(available_cores())
    with tempfile.TemporaryDirectory(prefix="btembed-bench-") as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("BTEMBED_CACHE", str(tmp / "cache"))
        folder = args.model or random_init_folder(tmp / "random-r50")
        config = ModelConfig.load(folder)
        items, source = real_images(args.n_eval + args.n_calibration, args.images, NOT_PHOTOS)
        pixels = np.stack([load_pixels(item, config.preprocess) for item in items])
        # Calibration images are held out from the parity set.
        calibration, evaluation = pixels[:args.n_calibration], pixels[args.n_calibration:]
        print(f"images: {source}; calibration {len(calibration)}, parity set {len(evaluation)}", file=sys.stderr)
        paths, notes = build_paths(folder, config, calibration, tmp,
                                   tuple(args.int8_methods or ("MinMax", "Entropy", "Percentile")))

        batch = evaluation[:args.batch_size]
        seconds = time_paths(paths, batch, args.rounds, args.reps)
        reference = embed_all(paths["torch channels_last fp32"], evaluation, args.batch_size)
        rows = []
        for name, fn in paths.items():
            vectors = reference if name == "torch channels_last fp32" else embed_all(fn, evaluation,
                                                                                      args.batch_size)
            agreement = compare(vectors, reference)
            rows.append({"path": name, "img_per_s": args.batch_size / seconds[name],
                         "recall_at_10_vs_torch_fp32": recall_at_k(vectors, reference),
                         "max_relative_diff": agreement["max_relative_diff"],
                         "min_cosine": agreement["min_cosine"]})
        # How crowded the reference space is: near 1 means every image looks alike and neighbour order is fragile.
        sims = reference @ reference.T
        crowding = float((sims.sum() - np.trace(sims)) / (len(sims) * (len(sims) - 1)))
    base = next(r["img_per_s"] for r in rows if r["path"] == "torch channels_last fp32")
    for r in rows:
        r["speedup_vs_channels_last_fp32"] = r["img_per_s"] / base
    at_parity = [r for r in rows if r["recall_at_10_vs_torch_fp32"] >= 0.98]
    best = max(at_parity, key=lambda r: r["img_per_s"])

    print(f"\n{config.architecture}@{config.preprocess.input_size}, batch {args.batch_size}, "
          f"{available_cores()} threads, model-only (pre-decoded uint8 NHWC → unit vectors)")
    print(f"{'path':28} {'img/s':>7} {'× cl fp32':>9} {'recall@10':>9} {'max rel diff':>12} {'min cos':>8}")
    for r in rows:
        print(f"{r['path']:28} {r['img_per_s']:7.1f} {r['speedup_vs_channels_last_fp32']:9.2f} "
              f"{r['recall_at_10_vs_torch_fp32']:9.3f} {r['max_relative_diff']:12.2e} {r['min_cosine']:8.5f}")
    print(f"mean pairwise cosine of the reference vectors: {crowding:.3f}")
    print(f"precision auto ran {notes['auto']['precision']}: {notes['auto']['reason']}")
    print(f"best at parity ≥ 0.98: {best['path']} ({best['speedup_vs_channels_last_fp32']:.2f}× torch "
          f"channels_last fp32; goal ≥ 1.5×)")
    result = {
        "benchmark": "backends", "architecture": config.architecture, "input_size": config.preprocess.input_size,
        "weights": "random init (seed 0)" if args.model is None else str(args.model),
        "batch_size": args.batch_size, "threads": available_cores(), "rounds": args.rounds, "reps": args.reps,
        "images": source, "n_parity": int(len(evaluation)), "n_calibration": int(len(calibration)),
        "reference": "torch channels_last fp32", "reference_mean_pairwise_cosine": crowding,
        "rows": rows, "best_at_parity": best["path"], "int8_export": notes.get("export_int8"),
        "auto": notes["auto"],
        "goal_met": best["speedup_vs_channels_last_fp32"] >= 1.5,
        "machine": machine(torch=torch.__version__, onnxruntime=__import__("onnxruntime").__version__),
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
