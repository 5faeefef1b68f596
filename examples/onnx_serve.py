"""Embed a folder with a btembed ONNX export using onnxruntime + Pillow + numpy only (no torch, no btembed).

usage: python onnx_serve.py model.onnx PHOTOS/ vectors.npy

Writes vectors.npy (one row per image that could be read) and vectors.json (the paths of those rows, and the files
skipped with their cause). A production job meets bad files: each is skipped with one line on stderr, never fatal.
"""
import base64
import json
import os
import stat
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
              ".pbm", ".pnm", ".tga", ".ico"}  # the files `btembed index` picks up
MAX_PIXELS = 160_000_000  # bigger than any camera sensor, smaller than decompression bombs (as btembed refuses)


def rgb(im):
    """8-bit RGB, with transparent pixels on white as btembed composites them (convert("RGB") would make them black)."""
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
    if im.mode.startswith("I") or im.mode == "F":  # 16-bit: scale to 8 bits (convert would clip at 255)
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I") else 1.0
        im = Image.fromarray(np.clip(a * 255.0 / top + 0.5, 0, 255).astype(np.uint8), "L")
    return im.convert("RGB")


def pixels(path, meta):
    """Decode, orient, resize the short side, center-crop: uint8 [size, size, 3]."""
    size, resize = int(meta["input_size"]), int(meta["resize_size"])
    resample = getattr(Image.Resampling, meta["interpolation"].upper())
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError("not a regular file (a named pipe or a device), never opened")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # refuse bombs instead of decoding them
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ValueError(f"{im.width}x{im.height} pixels, over the limit (possible decompression bomb)")
            im.draft("RGB", (resize, resize))  # JPEG: decode at reduced scale, never below the resize size
            im.seek(0)  # animated images: first frame
            im = rgb(ImageOps.exif_transpose(im))
    w, h = im.size
    if meta["crop"] == "none":
        return np.asarray(im.resize((size, size), resample))
    nw, nh = (resize, max(1, int(resize * h / w))) if w <= h else (max(1, int(resize * w / h)), resize)
    im = im.resize((nw, nh), resample) if (nw, nh) != (w, h) else im
    left, top = int(round((nw - size) / 2)), int(round((nh - size) / 2))
    return np.asarray(im.crop((left, top, left + size, top + size)))


def image_files(folder, skipped):
    """Image files under folder, sorted; unlistable folders are reported in skipped, symlinked folders followed
    once (a loop is cut)."""
    seen, found = set(), []

    def unlistable(error):
        skipped.append((error.filename, f"cannot list this folder ({error.strerror})"))

    for root, dirs, names in os.walk(folder, onerror=unlistable, followlinks=True):
        try:
            st = os.stat(root)
        except OSError as e:
            skipped.append((root, e.strerror))
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, n) for n in names
                  if not n.startswith(".") and Path(n).suffix.lower() in EXTENSIONS]
    return sorted(found)


def as_json(path):
    """A file name for JSON: text (undecodable bytes as U+FFFD) plus path_bytes (base64) only when needed."""
    raw = os.fsencode(path)
    text = raw.decode("utf-8", "replace")
    return {"path": text} if text.encode() == raw else {"path": text, "path_bytes": base64.b64encode(raw).decode()}


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    model, folder, out = argv
    if not os.path.isdir(folder):
        print(f"{folder}: not a folder", file=sys.stderr)
        return 1
    session = ort.InferenceSession(model, providers=ort.get_available_providers())
    meta = session.get_modelmeta().custom_metadata_map  # the preprocessing travels inside the file
    skipped, kept, vectors = [], [], []
    files = image_files(folder, skipped)
    for start in range(0, len(files), 32):
        batch = []
        for path in files[start:start + 32]:
            try:
                batch.append(pixels(path, meta))
                kept.append(path)
            except Exception as e:  # noqa: BLE001 - any bad file is skipped, never fatal
                cause = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
                skipped.append((path, cause))
        if batch:
            vectors.append(session.run(["embedding"], {meta["input_name"]: np.stack(batch)})[0])
    for path, cause in skipped:
        print(f"skipped {os.fsencode(path).decode('utf-8', 'replace')}: {cause}", file=sys.stderr)
    dim = int(meta.get("embedding_dim") or session.get_outputs()[0].shape[-1])
    np.save(out, np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32))
    summary = {"images": len(kept), "dim": dim, "model": meta["model_id"]}
    sidecar = {**summary, "paths": [as_json(p) for p in kept],
               "failures": [{**as_json(p), "error": cause} for p, cause in skipped]}
    Path(out).with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    print(json.dumps(summary))
    return 0 if kept or not files else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
