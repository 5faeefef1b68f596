"""Run the app with uvicorn: in the foreground for `btembed serve`, or in a thread for tests."""
from __future__ import annotations

import threading
import time


def _server(app, host: str, port: int):
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                         server_header=False, lifespan="on"))


def run_server(app, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve until Ctrl-C."""
    _server(app, host, port).run()


class ThreadedServer:
    """The app served from a background thread on host:port (port 0 picks a free one); stop() ends it."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0):
        self.server = _server(app, host, port)
        self.server.install_signal_handlers = lambda: None  # only the main thread may own signals
        self.thread = threading.Thread(target=self.server.run, name="btembed-serve", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        sock = self.server.servers[0].sockets[0]
        self.host, self.port = sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """Ask the server to finish and wait for its thread."""
        self.server.should_exit = True
        self.thread.join(30)
