"""The model's duplicate threshold, calibrated on synthetic near-duplicates of photos at hand.

Each photo yields a family of eight: itself and seven edits a person makes to a copy (JPEG quality 40, half size,
85 % centre crop, +20 % brightness, 5° rotation, a text watermark, a mirror flip). Families are embedded, grouped
with the same rule as `btembed dedup` (search/dedup.py) at every threshold of a grid — with the pixel check
(search/pixel_check.py), as `btembed dedup` runs by default, and without it — and scored by the pairs the groups imply: precision = implied pairs that share a photo / implied pairs; recall = / pairs that share a photo.
The calibrated threshold is the one of best F0.5 (precision weighs twice recall: a wrong group proposes removing a
distinct photo, a missed copy only costs space); of tied thresholds, the middle one.
"""
from __future__ import annotations

import io
import itertools
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

from . import pixel_check as pixels
from .dedup import NeighbourGraph, nearest_kept_groups

# from 0.80: with the pixel check the embedding only proposes candidates, so the best threshold sits lower
GRID = tuple(round(t, 3) for t in np.arange(0.80, 0.9951, 0.005))


def _jpeg_q40(im: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=40)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _crop_85(im: Image.Image) -> Image.Image:
    w, h = im.size
    cw, ch = round(w * 0.85), round(h * 0.85)
    left, top = (w - cw) // 2, (h - ch) // 2
    return im.crop((left, top, left + cw, top + ch))


def _watermark(im: Image.Image, text: str = "© sample watermark") -> Image.Image:
    out = im.convert("RGBA")
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    font = ImageFont.load_default(size=max(10, out.height // 12))
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    where = (max(0, out.width - (x1 - x0) - out.width // 30), max(0, out.height - (y1 - y0) - out.height // 20))
    draw.text(where, text, font=font, fill=(255, 255, 255, 170), stroke_width=1, stroke_fill=(0, 0, 0, 170))
    return Image.alpha_composite(out, layer).convert("RGB")


EDITS = {
    "jpeg-q40": _jpeg_q40,
    "half-size": lambda im: im.resize((max(1, im.width // 2), max(1, im.height // 2)), Image.LANCZOS),
    "crop-85": _crop_85,
    "brighter-20": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "rotate-5": lambda im: im.rotate(5, resample=Image.BICUBIC),
    "watermark": _watermark,
    "mirror": ImageOps.mirror,
}


def near_duplicate_families(photos) -> tuple[list[Image.Image], np.ndarray]:
    """Each photo and its seven edits, in order → (images, family number of each)."""
    images, families = [], []
    for f, photo in enumerate(photos):
        photo = photo.convert("RGB")
        for edit in (lambda im: im, *EDITS.values()):
            images.append(edit(photo))
            families.append(f)
    return images, np.array(families)


def implied_pairs(groups) -> set[tuple]:
    """Every (a, b) pair of members that share a group."""
    return {tuple(sorted(p)) for g in groups for p in itertools.combinations(g, 2)}


def pair_precision_recall(groups, families) -> tuple[float, float]:
    """Precision and recall of the pairs the groups imply against 'same family' (family of each member key)."""
    members = list(families)
    truth = {tuple(sorted((a, b))) for a, b in itertools.combinations(members, 2) if families[a] == families[b]}
    got = implied_pairs(groups)
    hits = len(got & truth)
    return (hits / len(got) if got else 1.0), (hits / len(truth) if truth else 1.0)


@dataclass
class Calibration:
    """The chosen threshold, its pair precision/recall, and the whole curve [(threshold, precision, recall)].

    These are `btembed dedup`'s default, with the pixel check; `embedding_only` is the (threshold, precision,
    recall) point of best F0.5 without it (`--no-pixel-check`), None when not measured.
    """

    threshold: float
    precision: float
    recall: float
    photos: int
    curve: list
    embedding_only: tuple | None = None

    def metrics(self, dataset: str) -> dict:
        """Entries for a model config's metrics, saying how they were measured."""
        def protocol(threshold, check):
            return ("pairs implied by `btembed dedup` groups (nearest kept image, k=16"
                    + (", pixel check" if check else ", no pixel check") + ") on each photo + 7 edits "
                    "(JPEG q40, half size, 85 % crop, +20 % brightness, 5° rotation, watermark, mirror), "
                    f"at threshold {threshold}")
        out = {f"dedup_pair_{k}": {"value": round(v, 4), "dataset": dataset, "protocol": protocol(self.threshold, True)}
               for k, v in (("precision", self.precision), ("recall", self.recall))}
        if self.embedding_only is not None:
            t, p, r = self.embedding_only
            out.update({f"dedup_pair_{k}_embedding_only": {"value": round(v, 4), "dataset": dataset,
                                                           "protocol": protocol(t, False)}
                        for k, v in (("precision", p), ("recall", r))})
        return out


def curve_of(vectors: np.ndarray, families: np.ndarray, sizes: np.ndarray, grid=GRID, k: int = 16,
             thumbs: list | None = None) -> list:
    """[(threshold, precision, recall)] of the dedup grouping over a set of embedded families.

    thumbs: each image's pixel_check.thumbnail; given, pairs must pass the pixel check as in `btembed dedup`.
    """
    sims = vectors @ vectors.T
    graph = NeighbourGraph()
    for i, row in enumerate(sims):
        for j in np.argsort(-row)[: k + 1]:
            graph.add(i, int(j), float(row[j]))
    passed = None
    if thumbs is not None:
        pairs = [(a, b) for a, nb in graph.edges.items() for b, s in nb.items() if a < b and s >= min(grid)]
        passed = pixels.passing_pairs(pairs, dict(enumerate(thumbs)))
    # keep order of `btembed dedup`: most pixels first; among equals the photo before its edits
    order = {i: (-int(sizes[i]), i) for i in range(len(vectors))}
    fam = dict(enumerate(families.tolist()))
    return [(t, *pair_precision_recall(nearest_kept_groups(graph if passed is None else graph.only(t, passed), t,
                                                           order.__getitem__), fam)) for t in grid]


def best_point(curve, beta: float = 0.5) -> tuple[float, float, float]:
    """The (threshold, precision, recall) point of best F-beta; among tied points the middle one (the lower of
    two), the farthest from where the score drops on either side."""
    def f_beta(point):
        _, p, r = point
        b2 = beta * beta
        return 0.0 if p + r == 0 else round((1 + b2) * p * r / (b2 * p + r), 6)
    best = max(map(f_beta, curve))
    tied = sorted((point for point in curve if f_beta(point) == best), key=lambda point: point[0])
    return tied[(len(tied) - 1) // 2]


def calibrate_threshold(embedder, photos, grid=GRID) -> Calibration:
    """Calibrate a model's duplicate threshold on photos (PIL images) it will meet; needs ≥ 2 photos."""
    photos = list(photos)
    if len(photos) < 2:
        raise ValueError("calibration needs at least two photos")
    images, families = near_duplicate_families(photos)
    vectors = embedder.embed(images, num_workers=0)
    sizes = np.array([im.width * im.height for im in images])
    curve = curve_of(vectors, families, sizes, grid, thumbs=[pixels.thumbnail(im) for im in images])
    t, p, r = best_point(curve)
    return Calibration(t, p, r, len(photos), curve, best_point(curve_of(vectors, families, sizes, grid)))
