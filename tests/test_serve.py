"""btembed serve's JSON API through the framework's test client: documents, path escapes, upload limits, CORS."""
from __future__ import annotations

import io
import os

import pytest
from PIL import Image, ImageFile

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from btembed.errors import CatalogError  # noqa: E402
from btembed.search.search import ImageIndex  # noqa: E402
from btembed.serve.app import create_app  # noqa: E402
from btembed.serve.uploads import Limits  # noqa: E402
from tests.conftest import make_model_dir  # noqa: E402
from tests.serve_helpers import index, make_folder, png_header_only  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory, photo_paths, tiny_model_dir):
    root = make_folder(tmp_path_factory.mktemp("serve") / "photos", photo_paths)
    outside = root.parent / "outside.jpg"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(outside)
    os.symlink(outside, root / "link-out.jpg")  # indexed (the walk follows links), but it leads out of DIR
    index(root, tiny_model_dir)
    return root


@pytest.fixture(scope="module")
def client(folder):
    app = create_app(folder, limits=Limits(max_bytes=300_000, max_pixels=50_000_000), backend="torch")
    with TestClient(app) as c:
        yield c


def jpeg_bytes(path, size=None) -> bytes:
    with Image.open(path) as im:
        if size:
            im = im.resize(size)
        out = io.BytesIO()
        im.convert("RGB").save(out, "JPEG", quality=80)
        return out.getvalue()


def test_info_and_paged_images(client):
    info = client.get("/api/info").json()
    assert info["images"] == 8 and info["dim"] == 512 and info["model"]  # link-out.jpg is not served
    first = client.get("/api/images", params={"offset": 0, "limit": 4}).json()
    rest = client.get("/api/images", params={"offset": 4, "limit": 100}).json()
    paths = [i["path"] for i in first["items"] + rest["items"]]
    assert first["total"] == 8 and len(first["items"]) == 4 and paths == sorted(paths)
    assert "copies/astronaut (1).jpg" in paths


def test_search_by_path_matches_the_library_order(client, folder):
    doc = client.get("/api/search", params={"path": "coffee.jpg", "k": 5}).json()
    index = ImageIndex.open(folder)
    try:
        want = [(os.path.relpath(h.path, folder), round(h.score, 6)) for h in index.search(folder / "coffee.jpg", 6)]
        want = [w for w in want if w[0] != "link-out.jpg"][:5]  # indexed, but it leads out of the folder
    finally:
        index.close()
    assert doc["query"] == "coffee.jpg"
    assert [(r["path"], r["score"]) for r in doc["results"]] == want
    assert doc["results"][0]["path"] == "coffee.jpg"


@pytest.mark.parametrize("path", ["../outside.jpg", "/etc/passwd", "link-out.jpg", ".btembed/catalog.sqlite",
                                  "copies/../../outside.jpg", "", "nope.jpg"])
def test_paths_outside_the_folder_are_404(client, path):
    for url in ("/api/search", "/api/thumb"):
        r = client.get(url, params={"path": path})
        assert r.status_code == 404, (url, path, r.text)
        assert list(r.json()) == ["error"] and "\n" not in r.json()["error"]


def test_thumbnail_is_a_cached_jpeg(client, folder):
    r = client.get("/api/thumb", params={"path": "chelsea.jpg", "size": 128})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(r.content)) as im:
        assert max(im.size) == 128
    cached = list((folder / ".btembed" / "thumbs" / "128").rglob("*.jpg"))
    assert len(cached) == 1 and cached[0].read_bytes() == r.content


def test_upload_finds_the_photo_it_was_made_from(client, photo_paths):
    data = jpeg_bytes(photo_paths[1], (300, 300))  # chelsea: no copy of it in the folder
    r = client.post("/api/search", files={"image": ("query.jpg", data, "image/jpeg")}, data={"k": "3"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["query"] == "query.jpg" and len(doc["results"]) == 3
    assert doc["results"][0]["path"] == photo_paths[1].name


def test_upload_over_the_byte_cap_is_413(client, photo_paths):
    big = jpeg_bytes(photo_paths[0]) + b"\0" * 400_000
    r = client.post("/api/search", files={"image": ("big.jpg", big, "image/jpeg")})
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_bomb_is_refused_before_decoding(client, monkeypatch):
    decoded = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or original(self))
    for (w, h), said in [((10000, 8000), "80.0 MP"), ((20000, 20000), "decompression bomb")]:
        r = client.post("/api/search", files={"image": ("bomb.png", png_header_only(w, h), "image/png")})
        assert r.status_code == 422 and said in r.json()["error"] and "50 MP" in r.json()["error"]
    assert decoded == []


def test_not_an_image_is_422(client):
    r = client.post("/api/search", files={"image": ("notes.txt", b"hello", "text/plain")})
    assert r.status_code == 422 and list(r.json()) == ["error"]


def test_no_cors_and_read_only(client):
    r = client.get("/api/info", headers={"Origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    assert client.options("/api/search", headers={"Origin": "http://evil.example",
                                                  "Access-Control-Request-Method": "POST"}).status_code == 405
    assert client.delete("/api/images").status_code == 405


def test_openapi_lists_the_api(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/info", "/api/images", "/api/search", "/api/duplicates", "/api/thumb"} <= set(paths)
    assert {"get", "post"} <= set(paths["/api/search"])


def test_duplicates_document(client):
    doc = client.get("/api/duplicates", params={"threshold": 0.995}).json()
    assert set(doc) >= {"groups", "blank"}
    groups = sorted(sorted(m["path"] for m in g["members"]) for g in doc["groups"])
    assert ["astronaut.jpg", "copies/astronaut (1).jpg"] in groups
    for g in doc["groups"]:
        assert [set(m) for m in g["members"]] == [{"path", "score", "exact", "kept"}] * len(g["members"])
        assert g["members"][0]["kept"] and sum(m["kept"] for m in g["members"]) == 1
        assert all(m["score"] >= 0.995 or m["exact"] for m in g["members"])
    actions = client.get("/api/actions", params={"threshold": 0.995, "keep": "oldest"}).json()
    assert actions["rule"] == "keep-oldest" and actions["remove_count"] == sum(len(g["members"]) - 1
                                                                             for g in doc["groups"])
    assert client.get("/api/duplicates", params={"keep": "newest"}).status_code == 422


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_unindexed_folder_and_other_model_are_refused(tmp_path, folder):
    with pytest.raises(CatalogError, match="run `btembed index"):
        create_app(tmp_path)
    other = make_model_dir(tmp_path / "other-r18", seed=1)
    with pytest.raises(CatalogError, match="indexed with model"):
        create_app(folder, model=str(other))


def test_a_link_out_of_the_folder_is_left_out_and_its_404_says_why(client, folder):
    index = ImageIndex.open(folder)
    try:
        assert index.catalog.lookup("link-out.jpg").ok  # indexed: the walk follows links
    finally:
        index.close()
    listed = [i["path"] for i in client.get("/api/images", params={"limit": 1000}).json()["items"]]
    assert "link-out.jpg" not in listed and len(listed) == 8
    found = client.get("/api/search", params={"path": "coffee.jpg", "k": 8}).json()["results"]
    assert len(found) == 8 and "link-out.jpg" not in [r["path"] for r in found]
    with open(folder.parent / "outside.jpg", "rb") as f:  # its own picture, uploaded: still not among the results
        r = client.post("/api/search", files={"image": ("q.jpg", f.read(), "image/jpeg")}, data={"k": "3"})
    assert len(r.json()["results"]) == 3 and "link-out.jpg" not in [h["path"] for h in r.json()["results"]]
    groups = client.get("/api/duplicates", params={"threshold": -1.0, "pixel_check": "false"}).json()["groups"]
    members = [m["path"] for g in groups for m in g["members"]]
    assert len(members) == 8 and "link-out.jpg" not in members
    for url in ("/api/search", "/api/thumb"):
        error = client.get(url, params={"path": "link-out.jpg"}).json()["error"]
        assert "outside the served folder" in error and "no indexed image" not in error


def test_thumbnail_sizes_round_up_to_1024_and_never_enlarge(tmp_path, folder, client):
    from btembed.serve.thumbs import SIZES, snap_size, thumbnail

    assert [snap_size(s) for s in (16, 64, 65, 600, 1000, 1024)] == [64, 64, 128, 1024, 1024, 1024]
    assert SIZES[-1] == 1024
    Image.new("RGB", (1600, 1200), (10, 120, 200)).save(tmp_path / "big.jpg")
    with Image.open(io.BytesIO(thumbnail(tmp_path / "store", tmp_path, "big.jpg", snap_size(1000)))) as im:
        assert im.size == (1024, 768)
    r = client.get("/api/thumb", params={"path": "chelsea.jpg", "size": 1000})
    with Image.open(folder / "chelsea.jpg") as original, Image.open(io.BytesIO(r.content)) as im:
        assert im.size == original.size  # smaller than the size asked: its own size, not enlarged
    assert client.get("/api/thumb", params={"path": "chelsea.jpg", "size": 1025}).status_code == 422


def test_a_file_given_as_the_folder_is_named_a_file(folder):
    with pytest.raises(CatalogError, match="chelsea.jpg is a file, not a folder"):
        create_app(folder / "chelsea.jpg")


def serve_cli(folder, *args):
    from btembed.cli import main

    return main(["serve", str(folder), "--backend", "torch", *args])


def test_port_out_of_range_is_a_usage_error(folder, capsys):
    for port in ("99999", "-1"):
        with pytest.raises(SystemExit) as exit:
            serve_cli(folder, "--port", port)
        assert exit.value.code == 2
        err = capsys.readouterr().err
        assert "0 to 65535" in err and "serving" not in err and "Traceback" not in err


def test_bind_errors_are_one_line_and_nothing_says_serving(folder, capsys):
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        assert serve_cli(folder, "--port", str(port)) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("btembed serve: error: cannot listen on 127.0.0.1:") and "\n" not in err
        assert str(port) in err and "another --port" in err
    finally:
        busy.close()
    assert serve_cli(folder, "--host", "8.8.8.8", "--port", "0") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert not any("serving" in line for line in err)
    assert err[-1].startswith("btembed serve: error: cannot listen on 8.8.8.8:0") and "--host" in err[-1]


def test_the_serving_line_comes_once_the_port_is_bound(folder, capsys, monkeypatch):
    import socket

    from btembed.serve import server

    seen = {}

    def instead_of_serving(app, sock):  # what a browser would meet once the line is printed
        seen["said"], seen["port"] = capsys.readouterr().err, sock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", seen["port"]), timeout=5):
            seen["accepted"] = True

    monkeypatch.setattr(server, "run_server", instead_of_serving)
    assert serve_cli(folder, "--port", "0") == 0
    assert seen["accepted"] and f"serving 8 images of {folder} at http://127.0.0.1:{seen['port']}/" in seen["said"]
