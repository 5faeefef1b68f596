"""Run the app with uvicorn: in the foreground for `btembed serve`, or in a thread for tests.

The listening socket is bound here, before uvicorn starts: a port in use or an address this machine does not have
is one line (BindError) instead of uvicorn's log and exit status 3, and "serving at ..." is said only once it is true.
"""
from __future__ import annotations

import socket
import threading
import time

from ..errors import BtembedError

BACKLOG = 2048  # uvicorn's own default


class BindError(BtembedError):
    """The server cannot listen on the asked address (port in use, no such address here, not allowed)."""


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port and listening (port 0 picks a free one); raises BindError in one line."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise BindError(f"cannot listen on {where}: {getattr(e, 'strerror', None) or e}; give --host an address "
                        "of this machine (e.g. 127.0.0.1 or 0.0.0.0)") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart right after Ctrl-C may rebind
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        raise BindError(f"cannot listen on {where}: {e.strerror or e}; {_advice(e)}") from None
    sock.set_inheritable(True)
    return sock


def _advice(error: OSError) -> str:
    import errno

    if error.errno == errno.EADDRINUSE:
        return "another program uses that port: stop it or choose another --port"
    if error.errno == errno.EADDRNOTAVAIL:
        return "that address is not one of this machine's: give --host 127.0.0.1, 0.0.0.0 or one of its addresses"
    if error.errno == errno.EACCES:
        return "ports below 1024 need administrator rights: choose --port 1024 or above"
    return "choose another --host or --port"


def bound_address(sock: socket.socket) -> tuple[str, int]:
    """(host, port) the socket listens on."""
    host, port = sock.getsockname()[:2]
    return host, port


def _server(app):
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, server_header=False,
                                         lifespan="on", backlog=BACKLOG))


def run_server(app, sock: socket.socket) -> None:
    """Serve on an already bound socket (bind_socket) until Ctrl-C."""
    _server(app).run(sockets=[sock])


class ThreadedServer:
    """The app served from a background thread on host:port (port 0 picks a free one); stop() ends it."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0):
        sock = bind_socket(host, port)
        self.host, self.port = bound_address(sock)
        self.url = f"http://{self.host}:{self.port}"
        self.server = _server(app)
        self.server.install_signal_handlers = lambda: None  # only the main thread may own signals
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, name="btembed-serve",
                                       daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        """Ask the server to finish and wait for its thread."""
        self.server.should_exit = True
        self.thread.join(30)
