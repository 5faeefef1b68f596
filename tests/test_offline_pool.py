"""The offline pool writer: dedupe, shrink, and 2x-zoom tiles of large photos."""

import io

import numpy as np
from PIL import Image

from devdata.pictures import MAX_SHORT_SIDE
from devdata.pool import TILE_ZOOM, Pool, tiles
from devdata.sources import Item, Source


def _jpeg(w: int, h: int, seed: int) -> bytes:
    """A noisy JPEG of w x h (noise so no two are pixel-identical)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_tiles_cover_quadrants_and_centre():
    im = Image.new("RGB", (2400, 1200))
    got = tiles(im)
    assert len(got) == 5
    assert {t.size for t in got} == {(2400 // TILE_ZOOM, 1200 // TILE_ZOOM)}


def test_no_tiles_below_twice_the_pool_resolution():
    assert tiles(Image.new("RGB", (4000, 2 * MAX_SHORT_SIDE - 2))) == []


def test_pool_writes_tiles_only_for_tile_sources(tmp_path):
    pool = Pool(tmp_path, "train")
    big = _jpeg(2200, 1300, 0)
    for name, flag, data in (("photos", True, big), ("drawings", False, _jpeg(2200, 1300, 1))):
        stats: dict = {}
        src = Source(name, "pkg", "CC0", tiles=flag)
        assert pool.add(src, Item(inner=f"{name}/a.jpg", rel="a", load=lambda d=data: d), stats)
        assert stats["written"] == 1
        assert stats.get("tiles_written", 0) == (5 if flag else 0)
    tile_rows = [r for r in pool.rows if "tile_of" in r]
    assert len(tile_rows) == 5 and all(r["source"] == "photos" for r in tile_rows)
    for r in pool.rows:
        with Image.open(tmp_path / r["path"]) as im:
            assert min(im.size) == MAX_SHORT_SIDE == min(r["size"])
    # A second copy of the same bytes is a duplicate: neither it nor its tiles are written again.
    stats = {}
    assert not pool.add(Source("photos", "pkg", "CC0", tiles=True), Item("photos/b.jpg", "b", lambda: big), stats)
    assert stats == {"duplicate_bytes": 1}
