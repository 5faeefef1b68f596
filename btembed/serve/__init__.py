"""`btembed serve`: a small ASGI app over an indexed folder — a gallery page, neighbours, duplicates, a JSON API.

create_app(folder) builds the app (FastAPI); btembed.serve.server serves it with uvicorn: bind_socket + run_server
in the foreground (`btembed serve`), ThreadedServer(app) from a background thread (tests; .url, .stop()).
"""
from __future__ import annotations


def create_app(*args, **kwargs):
    """The ASGI app of an indexed folder (see btembed.serve.app.create_app)."""
    from .app import create_app as create

    return create(*args, **kwargs)
