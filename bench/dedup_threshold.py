"""Duplicate threshold of a model: calibrate it on photos, and measure `btembed dedup` as a new user would.

  python bench/dedup_threshold.py calibrate PHOTOS [--model M] [--record]   # best-F1 threshold on PHOTOS' families
  python bench/dedup_threshold.py measure PHOTOS [--model M] [-t 0.95 0.96]  # index a folder of families, dedup it
  python bench/dedup_threshold.py crossval PHOTOS [--model M]               # calibrate on one half, measure the other

Families: each photo and its seven edits (btembed/search/calibrate.py). `measure` writes them as files, runs
`btembed index` and `find_duplicates` (k=16, keep the largest; with and without the pixel check) on the folder and
scores the pairs its groups imply.
--record writes the calibrated threshold and its precision/recall into the model folder's config.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from PIL import Image

from btembed import Embedder
from btembed.images import find_images
from btembed.search import ImageIndex, IndexOptions, index_folder
from btembed.search.calibrate import EDITS, calibrate_threshold, near_duplicate_families, pair_precision_recall
from btembed.search.dedup import find_duplicates


def load(folder: Path) -> tuple[list[str], list[Image.Image]]:
    paths = list(find_images(folder))
    return [p.name for p in paths], [Image.open(p).convert("RGB") for p in paths]


def measure(photos: list[Image.Image], model: str | None, thresholds: list[float]) -> list[dict]:
    """Pair precision/recall of `btembed dedup` groups on a folder of the photos' families, per threshold."""
    images, families = near_duplicate_families(photos)
    names = ["original", *EDITS]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos"
        root.mkdir()
        family_of = {}
        for i, (image, f) in enumerate(zip(images, families)):
            rel = f"{f:03d}-{names[i % len(names)]}.png"  # PNG: the edits as made, no second JPEG pass
            image.save(root / rel)
            family_of[rel] = int(f)
        index_folder(root, IndexOptions(model=model, workers=0))
        index = ImageIndex.open(root)
        try:
            out = []
            for check in (True, False):  # side by side: the pixel check on (the default) and off
                for t in thresholds:
                    found = find_duplicates(index, t, pixel_check=check)
                    p, r = pair_precision_recall([[m.path for m in g] for g in found.groups], family_of)
                    out.append({"threshold": t, "pixel_check": check, "precision": round(p, 4), "recall": round(r, 4),
                                "groups": len(found.groups),
                                "largest_group": max(map(len, found.groups), default=0)})
            return out
        finally:
            index.close()


def record(model_dir: Path, result, dataset: str) -> None:
    """Add duplicate_threshold and its two metrics to config.json, leaving every other byte of it as it was."""
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config["duplicate_threshold"] = result.threshold
    if result.embedding_only is not None:
        config["duplicate_threshold_embedding_only"] = result.embedding_only[0]
    config.setdefault("metrics", {}).update(result.metrics(dataset))
    path.write_text(json.dumps(config, indent=2) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("calibrate", "measure", "crossval"))
    ap.add_argument("photos", type=Path, help="a folder of distinct photos (no two of one scene)")
    ap.add_argument("--model", default=None, help="model folder or name (default: the embedded default)")
    ap.add_argument("-t", "--thresholds", type=float, nargs="+", default=[0.95])
    ap.add_argument("--record", action="store_true", help="write the calibrated threshold into the model's config")
    ap.add_argument("--dataset", default=None, help="how the metrics name the photos (default: the folder)")
    args = ap.parse_args(argv)
    names, photos = load(args.photos)
    if args.mode == "measure":
        print(json.dumps({"photos": len(photos), "results": measure(photos, args.model, args.thresholds)}, indent=2))
        return 0
    embedder = Embedder.from_pretrained(args.model)
    if args.mode == "calibrate":
        result = calibrate_threshold(embedder, photos)
        print(json.dumps({"photos": names, "threshold": result.threshold, "precision": round(result.precision, 4),
                          "recall": round(result.recall, 4)}, indent=2))
        if args.record:
            record(embedder.folder, result, args.dataset or f"{len(photos)} photos of {args.photos.name}")
            print(f"recorded in {embedder.folder / 'config.json'}", file=sys.stderr)
        return 0
    halves = [(photos[0::2], photos[1::2]), (photos[1::2], photos[0::2])]
    report = []
    for tune, test in halves:
        result = calibrate_threshold(embedder, tune)
        report.append({"calibrated_on": len(tune), "threshold": result.threshold,
                       "measured_on_other_half": measure(test, args.model, sorted({0.95, result.threshold}))})
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
