"""btembed serve while `btembed index` writes: 20 parallel searches keep answering, then the new generation shows."""
from __future__ import annotations

import json
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

pytest.importorskip("uvicorn")
from btembed.search.apply import IndexOptions, index_folder  # noqa: E402
from btembed.serve.app import create_app  # noqa: E402
from btembed.serve.server import ThreadedServer  # noqa: E402
from tests.serve_helpers import index, make_folder  # noqa: E402


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as r:
        assert r.status == 200
        return json.loads(r.read())


def test_parallel_searches_during_an_index_run(tmp_path, photo_paths, tiny_model_dir):
    root = make_folder(tmp_path / "photos", photo_paths)
    index(root, tiny_model_dir)
    server = ThreadedServer(create_app(root))
    try:
        assert server.host == "127.0.0.1"
        before = get(server.url + "/api/info")["images"]
        new = root / "new"
        new.mkdir()
        for i, p in enumerate(photo_paths * 2):  # 12 new files, embedded two at a time
            with Image.open(p) as im:
                im.resize((96 + i, 80 + i)).save(new / f"{i:02d}-{p.name}")
        options = IndexOptions(model=str(tiny_model_dir), workers=0, backend="torch", batch_size=2)
        run = threading.Thread(target=index_folder, args=(root, options))
        queries = [p.name for p in photo_paths]
        answered, during = [], []

        def search(i: int) -> None:
            query = urllib.parse.quote(queries[i % len(queries)])
            doc = get(f"{server.url}/api/search?k=5&path={query}")
            assert doc["results"] and doc["results"][0]["score"] > 0.99
            answered.append(time.monotonic())
            during.append(run.is_alive())

        run.start()
        with ThreadPoolExecutor(20) as pool:
            for _ in range(3):  # three waves of 20 parallel searches while the run writes
                list(pool.map(search, range(20)))
        run.join(300)
        assert len(answered) == 60 and any(during), "the searches should overlap the index run"
        deadline = time.monotonic() + 10
        while get(server.url + "/api/info")["images"] == before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert get(server.url + "/api/info")["images"] == before + 12  # the new generation, no restart
        assert get(server.url + "/api/images?limit=1000")["total"] == before + 12

        # a --rebuild builds a new generation beside the live one: answers go on, then come from the new one
        options = IndexOptions(model=str(tiny_model_dir), workers=0, backend="torch", rebuild=True)
        run = threading.Thread(target=index_folder, args=(root, options))
        run.start()
        with ThreadPoolExecutor(20) as pool:
            list(pool.map(search, range(20)))
        run.join(300)
        deadline = time.monotonic() + 10
        while not server.server.config.app.state.live.current.version[0].startswith("gen-"):
            assert time.monotonic() < deadline, "the server did not move to the rebuilt generation"
            get(server.url + "/api/info")
            time.sleep(0.2)
        assert get(server.url + "/api/info")["images"] == before + 12
    finally:
        server.stop()
