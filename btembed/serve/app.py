"""The ASGI app: the gallery page, and a read-only JSON API over one indexed folder (OpenAPI at /openapi.json)."""
from __future__ import annotations

import os
import posixpath
from pathlib import Path

from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..version import __version__
from ..errors import BtembedError, CatalogError
from ..search.dedup import KEEP_RULES, find_duplicates, model_threshold, neighbour_graph
from .live import Generation, LiveIndex
from .query_model import QueryModel
from .thumbs import MAX_SIZE, snap_size, thumbnail
from .uploads import BodyCap, Limits, UploadRejected, open_checked

STATIC = Path(__file__).resolve().parent / "static"
SLIDER_FLOOR = 0.80  # the lowest threshold the page offers: the neighbour graph is built once down to it
MAX_K = 200


def check_model(live: LiveIndex, model: str | None, revision: str | None) -> None:
    """Refuse a --model other than the one the catalog was built with (vectors of two models do not compare)."""
    if model is None:
        return
    from ..modelfolder import ModelFolder
    from ..search.catalog import ModelStamp

    asked = ModelStamp(**ModelFolder.resolve(model, revision=revision).identity())
    recorded = live.call(lambda g: g.index.catalog.model_stamp())
    if recorded is not None and not recorded.same_model(asked):
        raise CatalogError(f"{live.folder} was indexed with model {recorded.model_id}, not {asked.model_id}; serve "
                           "it without --model, or re-index it with `btembed index --rebuild --model M`")


def indexed_path(gen: Generation, rel: str) -> str:
    """rel as a cataloged image inside the folder; anything else (.., absolute, symlinks out, unknown) is 404."""
    norm = posixpath.normpath(rel) if rel else ""
    if norm in gen.outside:
        raise HTTPException(404, _outside(rel))
    if not norm or "\0" in norm or norm.startswith(("/", "../")) or norm == ".." or norm not in gen.indexed:
        raise HTTPException(404, f"no indexed image at {rel!r} in this folder")
    root = os.path.realpath(gen.index.root)
    if not os.path.realpath(os.path.join(root, norm)).startswith(root + os.sep):  # became a link since indexing
        raise HTTPException(404, _outside(rel))
    return norm


def _outside(rel: str) -> str:
    return f"{rel!r} lies outside the served folder (a symbolic link leads out of it), so it is not served"


def _relative(gen: Generation, hits, k: int) -> list[dict]:
    """The first k hits that are served (not led outside the folder), paths relative to it."""
    root = os.fspath(gen.index.root)
    found = [{"path": Path(os.path.relpath(h.path, root)).as_posix(), "score": round(h.score, 6)} for h in hits]
    return [f for f in found if f["path"] not in gen.outside][:k]


def _search(gen: Generation, query, k: int) -> list[dict]:
    """Neighbours of a path or vector; asks for as many more as there are unserved images, so k still come back."""
    return _relative(gen, gen.index.search(query, k=k + len(gen.outside)), k)


def _duplicates(gen: Generation, threshold: float | None, keep: str, pixel_check: bool = True):
    if threshold is None:
        threshold = model_threshold(gen.index, pixel_check)[0] if not pixel_check else _model_threshold(gen)[0]
    floor = min(SLIDER_FLOOR, threshold)
    if gen.cache.get("floor", 2.0) > floor:
        gen.cache["graph"], gen.cache["floor"] = neighbour_graph(gen.index, floor=floor), floor
    return find_duplicates(gen.index, threshold, keep=keep, graph=gen.cache["graph"],
                           facts=gen.cache.setdefault("facts", {}), leave_out=gen.outside,
                           pixel_check=pixel_check, checks=gen.cache.setdefault("checks", {}))


def _model_threshold(gen: Generation) -> tuple[float, str]:
    if "threshold" not in gen.cache:
        gen.cache["threshold"] = model_threshold(gen.index)
    return gen.cache["threshold"]


def create_app(folder: str | os.PathLike, *, db: str | os.PathLike | None = None, model: str | None = None,
               revision: str | None = None, limits: Limits = Limits(), backend: str = "auto",
               device: str = "auto") -> FastAPI:
    """The app for an indexed folder; raises CatalogError (one line) when it is not indexed or --model differs."""
    live = LiveIndex(folder, db)
    try:
        check_model(live, model, revision)
    except BaseException:
        live.close()
        raise
    app = FastAPI(title="btembed serve", version=__version__, docs_url=None, redoc_url=None,
                  description="Read-only search and duplicates over one indexed folder.")
    app.state.live = live
    query_model = QueryModel(backend, device)
    app.add_middleware(BodyCap, max_bytes=limits.max_bytes)
    app.router.add_event_handler("shutdown", live.close)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    @app.exception_handler(UploadRejected)
    async def upload_refused(_request, exc):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(BtembedError)
    async def btembed_error(_request, exc):
        return JSONResponse({"error": str(exc)}, status_code=422)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/info", summary="How many images, which model, how wide its vectors")
    def info():
        def read(gen: Generation):
            stamp = gen.index.catalog.model_stamp()
            threshold, note = _model_threshold(gen)
            return {"images": len(gen.paths), "model": stamp.model_id if stamp else "", "dim": gen.index.ann.dim,
                    "folder": Path(gen.index.root).name, "duplicate_threshold": threshold, "threshold_note": note}
        return live.call(read)

    @app.get("/api/images", summary="The indexed images, by path, a page at a time")
    def images(offset: int = Query(0, ge=0), limit: int = Query(60, ge=1, le=1000)):
        return live.call(lambda g: {"total": len(g.paths),
                                    "items": [{"path": p} for p in g.paths[offset:offset + limit]]})

    @app.get("/api/search", summary="The neighbours of an indexed image, best first (as `btembed search`)")
    def search_path(path: str, k: int = Query(10, ge=1, le=MAX_K)):
        def run(gen: Generation):
            rel = indexed_path(gen, path)
            return {"query": rel, "results": _search(gen, str(gen.index.root / rel), k)}
        return live.call(run)

    @app.post("/api/search", summary="The neighbours of an uploaded photo (multipart field 'image')")
    async def search_upload(image: UploadFile = File(...), k: int = Form(10, ge=1, le=MAX_K)):
        data = await image.read()
        picture = await run_in_threadpool(open_checked, data, limits)
        stamp = await run_in_threadpool(live.call, lambda g: g.index.catalog.model_stamp())
        embedder = await run_in_threadpool(query_model.get, stamp, live.folder)
        vector = (await run_in_threadpool(embedder.embed, [picture], num_workers=0))[0]
        hits = await run_in_threadpool(live.call, lambda g: _search(g, vector, k))
        return {"query": image.filename or "upload", "results": hits}

    @app.get("/api/duplicates", summary="Near-duplicate groups, the kept image first (as `btembed dedup --json`)")
    def duplicates(threshold: float | None = Query(None, ge=-1.0, le=1.0),
                   keep: str = Query("largest", pattern="^(" + "|".join(KEEP_RULES) + ")$"),
                   pixel_check: bool = Query(True, description="pairs must also pass the pixel check")):
        return live.call(lambda g: _duplicates(g, threshold, keep, pixel_check).to_dict())

    @app.get("/api/actions", summary="What to keep and what could be removed (as `btembed dedup --actions`)")
    def actions(threshold: float | None = Query(None, ge=-1.0, le=1.0),
                keep: str = Query("largest", pattern="^(" + "|".join(KEEP_RULES) + ")$"),
                pixel_check: bool = Query(True, description="pairs must also pass the pixel check")):
        return live.call(lambda g: _duplicates(g, threshold, keep, pixel_check).actions())

    @app.get("/api/thumb", summary="A JPEG thumbnail of an indexed image, its longer side SIZE rounded up to "
                                   "64/128/256/512/1024 and never enlarged (cached under the index folder)",
             response_class=Response)
    def thumb(path: str, size: int = Query(256, ge=16, le=MAX_SIZE)):
        gen, rel = live.call(lambda g: (g, indexed_path(g, path)))
        try:
            data = thumbnail(live.store, Path(gen.index.root), rel, snap_size(size))
        except OSError:
            raise HTTPException(404, f"{path} is no longer in the folder") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})

    return app
