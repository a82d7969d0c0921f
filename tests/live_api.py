"""The API app served by a real uvicorn server in a thread of the test process, on a free
port: real HTTP parsing and a real event loop, with the app object (and its state) at hand."""

from __future__ import annotations

import contextlib
import threading
import time

import uvicorn

from face2paint.cli.stack import free_port


@contextlib.contextmanager
def serve(app, *, log_level: str = "warning", **config):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level,
                                           lifespan="on", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
