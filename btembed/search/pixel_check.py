"""The pixel check of `btembed dedup`: are two pictures one photo, edited, or two photos that look alike?

An embedding trained to ignore crops, colour and flips scores two different photos of one kind of thing (two
textures, an apple and an orange) as high as a copy. The pixel check looks at the pictures themselves, small:
each is shrunk to 64 x 64, and one picture's whole 32 x 32 view is compared with every view of the other that an
edit could have made — mirrored or not, turned by 0 or +-5 degrees, whole or an 85 % window at nine places — and the
other way round. A pair passes when the best of those views correlates (normalized cross-correlation of the blurred
grey levels, so brightness and contrast do not count) at NCC_MIN or more and, at that view, the colours agree
(mean difference of chromaticity r/(r+g+b), g/(r+g+b) over the lit pixels at most CHROMA_MAX; skipped when either
picture has no colour, so a black-and-white copy still passes). It is independent of the model: the values were
chosen on photos of the sources listed for tuning (docs/serve.md: "The pixel check").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
from PIL import Image

SIDE = 64  # every picture is compared at this size (both sides: an edit that keeps the aspect keeps the geometry)
VIEW = 32  # side of a compared view
CROP = 0.85  # the window of a cropped copy, as a share of each side
ANGLES = (0.0, 5.0, -5.0)  # degrees a copy may have been turned by
NCC_MIN = 0.6
CHROMA_MAX = 0.05
LIT = 60  # r+g+b below this is too dark for its chromaticity to mean anything
COLOURLESS = 0.02  # mean |r - 1/3| + |g - 1/3| below this: a grey picture (chroma not compared)
_KERNEL = np.array([0.054, 0.244, 0.403, 0.244, 0.054], dtype=np.float32)  # Gaussian, sigma 1 px


def thumbnail(image: Image.Image) -> np.ndarray:
    """The SIDE x SIDE RGB uint8 picture the check works on."""
    return np.asarray(image.convert("RGB").resize((SIDE, SIDE), Image.BOX, reducing_gap=3.0), dtype=np.uint8)


def _blur(a: np.ndarray) -> np.ndarray:
    """Separable Gaussian blur over the first two axes (edges repeated)."""
    p = np.pad(a, [(2, 2), (2, 2)] + [(0, 0)] * (a.ndim - 2), mode="edge")
    rows = sum(w * p[i:i + a.shape[0]] for i, w in enumerate(_KERNEL))
    return sum(w * rows[:, i:i + a.shape[1]] for i, w in enumerate(_KERNEL))


@dataclass
class Views:
    """Views of one picture: grey [V, VIEW*VIEW] (zero mean, unit norm), chroma [V, VIEW, VIEW, 2], lit mask."""

    grey: np.ndarray
    chroma: np.ndarray
    lit: np.ndarray
    colourless: bool


def _view(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(grey, chroma, lit) of one VIEW x VIEW RGB view."""
    rgb = pixels.astype(np.float32)
    total = rgb.sum(-1)
    grey = _blur(total / 3.0)
    grey = (grey - grey.mean()).ravel()
    grey /= np.linalg.norm(grey) + 1e-3
    return grey, _blur(rgb[..., :2] / (total[..., None] + 1e-3)), total > LIT


def _stack(views: list, colourless: bool) -> Views:
    grey, chroma, lit = zip(*views)
    return Views(np.stack(grey), np.stack(chroma), np.stack(lit), colourless)


def _colourless(chroma: np.ndarray, lit: np.ndarray) -> bool:
    if not lit.any():
        return True
    return float(np.abs(chroma[lit] - 1.0 / 3.0).sum(-1).mean()) < COLOURLESS


def whole_view(thumb: np.ndarray) -> Views:
    """The one view a picture is compared by: all of it, as it is."""
    view = _view(np.asarray(Image.fromarray(thumb).resize((VIEW, VIEW), Image.BILINEAR)))
    return _stack([view], _colourless(view[1], view[2]))


def edit_views(thumb: np.ndarray) -> Views:
    """Every view an edit could have made of the picture (mirror x angle x whole-or-window: 60 views)."""
    side = round(SIDE * CROP)
    places = (0, (SIDE - side) // 2, SIDE - side)
    out = []
    for pixels in (thumb, np.ascontiguousarray(thumb[:, ::-1])):
        picture = Image.fromarray(pixels)
        for angle in ANGLES:
            turned = picture.rotate(angle, resample=Image.BILINEAR) if angle else picture
            out.append(_view(np.asarray(turned.resize((VIEW, VIEW), Image.BILINEAR))))
            for top in places:
                for left in places:
                    window = turned.crop((left, top, left + side, top + side))
                    out.append(_view(np.asarray(window.resize((VIEW, VIEW), Image.BILINEAR))))
    whole = out[0]
    return _stack(out, _colourless(whole[1], whole[2]))


@dataclass(frozen=True)
class Match:
    """The best view of a pair: its correlation and the colour difference there (0 when not compared)."""

    ncc: float
    chroma: float

    @property
    def passes(self) -> bool:
        """True when the pair is one photo, edited."""
        return self.ncc >= NCC_MIN and self.chroma <= CHROMA_MAX


def best_view(edits: Views, whole: Views) -> Match:
    """How well one picture's whole view matches the best of the other's edit views."""
    scores = edits.grey @ whole.grey[0]
    i = int(np.argmax(scores))
    ncc = float(scores[i])
    if edits.colourless or whole.colourless:
        return Match(ncc, 0.0)
    both = edits.lit[i] & whole.lit[0]
    if not both.any():
        return Match(ncc, 0.0)
    diff = np.abs(edits.chroma[i] - whole.chroma[0]).sum(-1)[both].mean()
    return Match(ncc, float(diff))


def same_photo(a: np.ndarray, b: np.ndarray) -> Match:
    """The pixel check of one pair of thumbnails (both directions; the better one counts)."""
    one, two = best_view(edit_views(a), whole_view(b)), best_view(edit_views(b), whole_view(a))
    return one if one.ncc >= two.ncc else two


def passing_pairs(pairs: Iterable[tuple[int, int]], thumbs: dict) -> set[frozenset]:
    """The pairs (of keys into thumbs) that pass the check.

    Each picture's 60 edit views are made once and dropped before the next picture's, so memory holds one
    picture's views and everyone's whole view, however many pairs there are.
    """
    by_node: dict = {}
    for a, b in pairs:
        by_node.setdefault(a, set()).add(b)
        by_node.setdefault(b, set()).add(a)
    wholes = {n: whole_view(thumbs[n]) for n in by_node}
    found: dict[tuple, Match] = {}
    for a, others in by_node.items():
        edits = edit_views(thumbs[a])
        for b in others:
            found[(a, b)] = best_view(edits, wholes[b])
    out = set()
    for (a, b), one in found.items():
        two = found[(b, a)]
        if (one if one.ncc >= two.ncc else two).passes:
            out.add(frozenset((a, b)))
    return out
