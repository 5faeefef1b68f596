"""Embed a folder with a btembed ONNX export using onnxruntime + Pillow + numpy only (no torch, no btembed).

usage: python onnx_serve.py model.onnx PHOTOS/ vectors.npy   (rows follow the sorted file names)
"""
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

model, folder, out = sys.argv[1:4]
session = ort.InferenceSession(model, providers=ort.get_available_providers())
meta = session.get_modelmeta().custom_metadata_map  # the preprocessing travels inside the file
size, resize = int(meta["input_size"]), int(meta["resize_size"])
resample = getattr(Image.Resampling, meta["interpolation"].upper())


def rgb(im):
    """8-bit RGB, with transparent pixels on white as btembed composites them (convert("RGB") would make them black)."""
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
    return im.convert("RGB")


def pixels(path):
    """Decode, orient, resize the short side, center-crop: uint8 [size, size, 3]."""
    with Image.open(path) as im:
        im.draft("RGB", (resize, resize))  # JPEG: decode at reduced scale, never below the resize size
        im = rgb(ImageOps.exif_transpose(im))
    w, h = im.size
    if meta["crop"] == "none":
        return np.asarray(im.resize((size, size), resample))
    nw, nh = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    im = im.resize((nw, nh), resample) if (nw, nh) != (w, h) else im
    left, top = int(round((nw - size) / 2)), int(round((nh - size) / 2))
    return np.asarray(im.crop((left, top, left + size, top + size)))


EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
              ".pbm", ".pnm", ".tga", ".ico"}  # the files `btembed index` picks up
files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in EXTENSIONS)
batches = [np.stack([pixels(p) for p in files[i:i + 32]]) for i in range(0, len(files), 32)]
vectors = np.concatenate([session.run(["embedding"], {meta["input_name"]: b})[0]
                          for b in batches])
np.save(out, vectors)
print(json.dumps({"images": len(files), "dim": int(vectors.shape[1]), "model": meta["model_id"]}))
