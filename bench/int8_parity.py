"""How well a model's int8 file keeps its fp32 neighbours on whole folders (not only on the export's held-apart
quarter): recall@10 of int8 vs fp32 neighbours taken among each folder's images, among random subsets of it, and
the cosine between each image's two vectors; and what each file buys: model-only img/s beside the fp32 file, in the
same run (timing rounds interleaved across files, batch 32, btembed's onnxruntime settings).

    python bench/int8_parity.py DIR [DIR ...] [--model FOLDER] [--int8 FILE ...] [--out bench/results/int8_parity.json]

Every folder should be one the int8 file was not calibrated on. Recall falls as a folder grows (more images, closer
neighbours whose order a small error swaps), so each folder is also measured on subsets of --subsets sizes.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from btembed.backends.int8 import embed_with, folder_pixels
from btembed.backends.onnx import OnnxBackend
from btembed.backends.onnx_export import export_onnx, read_metadata
from btembed.backends.parity import PARITY_BAR, agreement, onnxruntime_version
from btembed.config import ModelConfig
from btembed.modelfiles import INT8_FILE, sha256_file
from btembed.modelfolder import ModelFolder
from results_io import machine, write_result


def every_image(folder: Path, config: ModelConfig) -> np.ndarray:
    """Every readable image of a folder through the model's preprocessing (unreadable ones skipped)."""
    pixels = folder_pixels(folder, config, max_images=sys.maxsize)
    if len(pixels) < 11:
        raise SystemExit(f"{folder}: {len(pixels)} readable images; recall@10 needs at least 11")
    return pixels


def subset_recall(got: np.ndarray, ref: np.ndarray, size: int, draws: int, seed: int = 0) -> float:
    """Mean recall@10 over seeded random subsets of size images (neighbours taken within each subset)."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(len(got), size, replace=False) for _ in range(draws)]
    return float(np.mean([agreement(got[p], ref[p])["recall_at_10"] for p in picks]))


def label(file: Path) -> str:
    """A file named by its folder and name (no machine path in the results)."""
    return f"{file.parent.name}/{file.name}"


def model_only_speed(files: list[Path], config: ModelConfig, pixels: np.ndarray, rounds: int = 5,
                     batch_size: int = 32) -> dict[str, float]:
    """Median img/s of each ONNX file on the same pixels, rounds interleaved across files (load hits all alike)."""
    backends = {str(f): OnnxBackend.from_file(f, config, device="cpu") for f in files}
    for backend in backends.values():
        backend(pixels[:batch_size])  # warm-up: first-run allocations are not the model's speed
    runs: dict[str, list] = {f: [] for f in backends}
    for _ in range(rounds):
        for f, backend in backends.items():
            start = time.perf_counter()
            for i in range(0, len(pixels), batch_size):
                backend(pixels[i:i + batch_size])
            runs[f].append(len(pixels) / (time.perf_counter() - start))
    return {f: statistics.median(r) for f, r in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="image folders the int8 file was not calibrated on")
    parser.add_argument("--model", default=None, help="model folder or name (default: the embedded default)")
    parser.add_argument("--int8", type=Path, action="append", default=None,
                        help="int8 ONNX file(s) to measure (default: the folder's model.int8.onnx)")
    parser.add_argument("--subsets", type=int, nargs="*", default=[100, 300], help="subset sizes (20 draws each)")
    parser.add_argument("--speed-images", type=int, default=192, help="images timed for model-only speed (0: none)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/int8_parity.json"))
    args = parser.parse_args()
    model = ModelFolder.resolve(args.model)
    config = model.config
    files = args.int8 or [model.path / INT8_FILE]
    results = {"model": config.name, "onnxruntime": onnxruntime_version(), "bar": PARITY_BAR, "files": []}
    with tempfile.TemporaryDirectory(prefix="int8-parity-") as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", config=config)
        pixels = {folder: every_image(folder, config) for folder in args.folders}
        reference = {folder: embed_with(fp32, config, px) for folder, px in pixels.items()}
        for file in files:
            meta = read_metadata(file)
            row = {"file": label(file), "sha256": sha256_file(file), "kept_fp32": meta.get("kept_fp32", ""),
                   "quantization": meta.get("quantization", ""), "folders": {}}
            print(f"\n{label(file)}  (fp32 kept: {row['kept_fp32'] or '-'})")
            print(f"{'folder':<16}{'images':>7}{'whole':>9}" + "".join(f"{f'~{n}':>9}" for n in args.subsets)
                  + f"{'mean cos':>10}{'min cos':>9}")
            for folder, px in pixels.items():
                got, ref = embed_with(file, config, px), reference[folder]
                whole = agreement(got, ref)
                subsets = {str(n): subset_recall(got, ref, n, 20) for n in args.subsets if n < len(px)}
                row["folders"][folder.name] = {**whole, "subsets": subsets}
                print(f"{folder.name:<16}{len(px):>7}{whole['recall_at_10']:>9.4f}"
                      + "".join(f"{subsets[str(n)]:>9.4f}" if str(n) in subsets else f"{'-':>9}"
                                for n in args.subsets)
                      + f"{whole['mean_cosine']:>10.5f}{whole['min_cosine']:>9.5f}")
            results["files"].append(row)
        if args.speed_images:
            timed = np.concatenate(list(pixels.values()))[:args.speed_images]
            speed = model_only_speed([fp32, *files], config, timed)
            results["model_only"] = {"images": len(timed), "batch_size": 32, "fp32_img_per_s": speed[str(fp32)],
                                     "int8": {label(f): {"img_per_s": speed[str(f)],
                                                         "x_fp32": speed[str(f)] / speed[str(fp32)]} for f in files}}
            print(f"\nmodel-only, {len(timed)} images, batch 32: fp32 {speed[str(fp32)]:.1f} img/s")
            for f in files:
                print(f"  {label(f):<40} {speed[str(f)]:7.1f} img/s  x{speed[str(f)] / speed[str(fp32)]:.2f} of fp32")
    results["machine"] = machine()
    write_result(args.out, results)


if __name__ == "__main__":
    main()
