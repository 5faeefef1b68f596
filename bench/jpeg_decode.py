"""JPEG decode cost on one core: full decode vs btembed's draft decode vs the smallest DCT scale (1/8).

    python bench/jpeg_decode.py [--photos ../data/bench-photos] [--out bench/results/jpeg_decode.json]

Files are read first (the draft path then reads them from the page cache), so decoding is what is timed (thread
CPU time, one thread). The 1/8 scale is the least work libjpeg-turbo can do for a file: entropy (Huffman)
decoding of every coefficient still happens, so it is the floor under any reduced-size decode. Baseline and
progressive files are reported apart.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

from results_io import machine, write_result

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"


def decode_ms(path: Path, data: bytes, mode: str, cfg) -> float:
    """Core-ms to decode one file: 'full', 'draft' (btembed's choice for cfg) or 'eighth' (DCT scale 1/8)."""
    from PIL import Image

    from btembed.preprocess import load_pixels

    t = time.thread_time()
    if mode == "draft":
        load_pixels(path, cfg)  # btembed's own path (draft decode, resize, crop); the file is in the page cache
    else:
        image = Image.open(io.BytesIO(data))
        if mode == "eighth":
            image.draft("RGB", (max(1, image.size[0] // 8), max(1, image.size[1] // 8)))
        image.load()
    return 1000 * (time.thread_time() - t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=Path("../data/bench-photos"))
    ap.add_argument("--model", default=None, help="model whose preprocessing sets the draft size (default: the "
                    "pipeline bench's ResNet-50@224, resize 256)")
    ap.add_argument("--out", type=Path, default=RESULTS / "jpeg_decode.json")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from PIL import Image

    from btembed.images import find_images
    from btembed.preprocess import PreprocessConfig

    cfg = PreprocessConfig(input_size=224, resize_size=256, interpolation="bilinear")
    if args.model:
        from btembed.modelfolder import ModelFolder

        cfg = ModelFolder.resolve(args.model).config.preprocess
    files = [f for f in find_images(args.photos) if f.suffix.lower() in (".jpg", ".jpeg")]
    if not files:
        raise SystemExit(f"no JPEGs under {args.photos}; build the set with `python bench/make_photo_set.py`")
    blobs = [f.read_bytes() for f in files]
    kinds = ["progressive" if Image.open(io.BytesIO(b)).info.get("progressive") else "baseline" for b in blobs]
    modes = ("full", "draft", "eighth")
    cost = {m: [decode_ms(f, b, m, cfg) for f, b in zip(files, blobs)] for m in modes}
    rows = []
    for kind in ("all", "baseline", "progressive"):
        picked = [i for i, k in enumerate(kinds) if kind == "all" or k == kind]
        if picked:
            rows.append({"files": kind, "n": len(picked),
                         **{f"{m}_core_ms": statistics.mean(cost[m][i] for i in picked) for m in modes}})
    print(f"{len(files)} JPEGs, mean core-ms per image, one thread (draft: resize {cfg.resize_size}, "
          f"crop {cfg.input_size})")
    print(f"{'files':12} {'n':>4} {'full':>7} {'draft':>7} {'1/8':>7} {'1/8 ÷ draft':>11}")
    for r in rows:
        print(f"{r['files']:12} {r['n']:4d} {r['full_core_ms']:7.1f} {r['draft_core_ms']:7.1f} "
              f"{r['eighth_core_ms']:7.1f} {r['eighth_core_ms'] / r['draft_core_ms']:11.2f}")
    result = {"benchmark": "jpeg_decode", "photos": str(args.photos), "preprocess": cfg.to_dict(), "rows": rows,
              "machine": machine(pillow=Image.__version__)}
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
