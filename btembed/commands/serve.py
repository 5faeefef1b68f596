"""btembed serve: a web page and a JSON API over an indexed folder (gallery, neighbours, duplicates)."""
from __future__ import annotations

import argparse

from . import say

MAX_PORT = 65535


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 (any free one) to 65535 (a usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"a port is 0 to {MAX_PORT}, not {value}")
    return value


def register(sub) -> None:
    """Add the serve subcommand."""
    p = sub.add_parser("serve", help="browse an indexed folder in a web page: neighbours, duplicates, a JSON API",
                       description="Serve a gallery page and a read-only JSON API (OpenAPI at /openapi.json) over "
                                   "the index of DIR. DIR must be indexed first (`btembed index DIR`); a running "
                                   "index run is picked up when it finishes, without a restart.")
    p.add_argument("folder", metavar="DIR", help="the indexed folder")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_number, default=8765, help="port, 0-65535 (default 8765; 0 picks a free one)")
    p.add_argument("--model", "-m", default=None,
                   help="the model to serve with; must be the one the folder was indexed with (default: that one)")
    p.add_argument("--revision", default=None, help="hub revision of --model")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"),
                   help="how uploaded photos are embedded (default auto)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... for uploaded photos")
    p.add_argument("--db", default=None, help="index folder, when DIR was indexed with --db")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest query photo in MB (default 20)")
    p.add_argument("--max-megapixels", type=float, default=50.0, help="largest query photo in MP (default 50)")
    p.set_defaults(run=run)


def run(args) -> int:
    """Open the index (refusing an unindexed folder or another model), then serve until Ctrl-C."""
    from ..errors import BtembedError

    if args.max_upload_mb <= 0 or args.max_megapixels <= 0:
        raise BtembedError("--max-upload-mb and --max-megapixels must be above 0")
    try:
        from ..serve.app import create_app
        from ..serve.server import bind_socket, bound_address, run_server
        from ..serve.uploads import Limits
    except ImportError as e:
        raise BtembedError(f"btembed serve needs its web packages ({e.name} is missing); "
                           "install them with `pip install 'btembed[serve]'`") from None
    limits = Limits(int(args.max_upload_mb * 1024 * 1024), int(args.max_megapixels * 1_000_000))
    app = create_app(args.folder, db=args.db, model=args.model, revision=args.revision, limits=limits,
                     backend=args.backend, device=args.device)
    try:
        sock = bind_socket(args.host, args.port)
    except BaseException:
        app.state.live.close()
        raise
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        say(f"listening on {args.host}: anyone who can reach it can see the photos of {args.folder}")
    host, port = bound_address(sock)
    shown_host = f"[{host}]" if ":" in host else host
    images = app.state.live.current.paths
    say(f"serving {len(images)} images of {args.folder} at http://{shown_host}:{port}/ (Ctrl-C stops)")
    run_server(app, sock)
    return 0
