"""The pixel check of `btembed dedup`: edits of one photo pass, different photos and recoloured copies do not."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from btembed.search import ImageIndex
from btembed.search import pixel_check as pc
from btembed.search.calibrate import EDITS
from btembed.search.dedup import find_duplicates
from tests.serve_helpers import index as index_with


@pytest.fixture(scope="module")
def photos(photo_paths):
    return {p.stem: Image.open(p).convert("RGB") for p in photo_paths}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_every_edit_of_a_photo_passes(photos, edit):
    for name, photo in photos.items():
        match = pc.same_photo(pc.thumbnail(photo), pc.thumbnail(EDITS[edit](photo)))
        if (name, edit) == ("hubble_deep_field", "watermark"):
            # The known limit (docs/serve.md): bright text over a dark, nearly empty picture outweighs the picture's
            # own faint detail. Setting the most different pixels aside would let it pass, but measured, it also let
            # distinct photos through (pair precision 1.000 -> 0.87-0.93 on 30 photos), so it stays a miss.
            assert not match.passes and 0.5 < match.ncc < pc.NCC_MIN
            continue
        assert match.passes, (name, edit, match)


def test_different_photos_do_not_pass(photos):
    names = sorted(photos)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            match = pc.same_photo(pc.thumbnail(photos[a]), pc.thumbnail(photos[b]))
            assert not match.passes, (a, b, match)


def test_colours_count_unless_one_picture_has_none(photos):
    photo = photos["coffee"]
    r, g, b = photo.split()
    recoloured = Image.merge("RGB", (b, r, g))  # the same grey levels' layout, other colours
    match = pc.same_photo(pc.thumbnail(photo), pc.thumbnail(recoloured))
    assert match.ncc > 0.6 and match.chroma > pc.CHROMA_MAX and not match.passes
    grey = ImageOps.grayscale(photo).convert("RGB")  # a black-and-white copy is still a copy
    assert pc.same_photo(pc.thumbnail(photo), pc.thumbnail(grey)).passes


def test_passing_pairs_holds_one_pictures_views_at_a_time(photos):
    thumbs = {i: pc.thumbnail(im) for i, im in enumerate([photos["coffee"], EDITS["mirror"](photos["coffee"]),
                                                           photos["astronaut"]])}
    assert pc.passing_pairs([(0, 1), (0, 2), (1, 2)], thumbs) == {frozenset((0, 1))}
    assert pc.passing_pairs([], thumbs) == set()


def test_dedup_groups_only_what_passes(tmp_path, photos, tiny_model_dir):
    root = tmp_path / "photos"
    root.mkdir()
    photo = photos["coffee"]
    photo.save(root / "coffee.jpg", quality=92)
    EDITS["rotate-5"](photo).save(root / "coffee-turned.jpg", quality=92)
    r, g, b = photo.split()
    Image.merge("RGB", (b, r, g)).save(root / "coffee-recoloured.jpg", quality=92)
    photos["astronaut"].save(root / "astronaut.jpg", quality=92)
    index_with(root, tiny_model_dir)
    index = ImageIndex.open(root)
    try:
        # threshold -1: every pair the neighbour graph holds is a candidate; only the pixel check tells them apart
        checked = find_duplicates(index, threshold=-1.0)
        assert [sorted(m.path for m in g) for g in checked.groups] == [["coffee-turned.jpg", "coffee.jpg"]]
        assert checked.to_dict()["pixel_check"] is True
        unchecked = find_duplicates(index, threshold=-1.0, pixel_check=False)
        assert sum(len(g) for g in unchecked.groups) == 4 and unchecked.to_dict()["pixel_check"] is False
    finally:
        index.close()
