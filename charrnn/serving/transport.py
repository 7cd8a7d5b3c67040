"""The server's transport: the listening socket, uvicorn run until Ctrl-C or SIGTERM (requests in flight get
GRACE seconds), and waking many waiting replies at once from the engine's thread."""

from __future__ import annotations

import asyncio
import copy
import errno
import json
import socket
import threading
from typing import TYPE_CHECKING

import uvicorn

from charrnn.errors import CharRNNError, Interrupted

GRACE = 3  # seconds requests in flight get to finish after Ctrl-C or SIGTERM

if TYPE_CHECKING:
    from charrnn.serving.http import Server


class Wakeups:
    """Sets asyncio events from the engine's thread, many with one wake-up of the event loop: the
    engine tells every stream of its news on the same step, and one wake-up each (32 streams every
    15 ms) would cost the loop more than the streaming itself."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.lock = threading.Lock()
        self.pending: list[asyncio.Event] = []

    def set(self, event: asyncio.Event) -> None:
        with self.lock:
            self.pending.append(event)
            if len(self.pending) > 1:  # a wake-up is on its way and will set this one too
                return
        self.loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self.lock:
            events, self.pending = self.pending, []
        for event in events:
            event.set()


def _event(data: dict) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


def listen(host: str, port: int) -> socket.socket:
    """A bound listening socket (port 0: a free one), so the caller can say where before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL:  # the host, not the port
            raise CharRNNError(
                f"--host {host}: cannot listen there ({e.strerror or e}); give an address of this machine, "
                "such as 127.0.0.1 (this machine only) or 0.0.0.0 (every network)"
            )
        raise CharRNNError(
            f"--host {host} --port {port}: cannot listen ({e.strerror or e}); choose another port, or --port 0 for any free one"
        )
    sock.listen(128)
    return sock


def serve_forever(server: Server, sock: socket.socket, access_log: bool = False) -> None:
    """Serve until SIGINT or SIGTERM; requests in flight get a few seconds to finish."""
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["handlers"]["access"]["stream"] = "ext://sys.stderr"  # stdout is for data, even here
    # "socket.send() raised exception." each time a streaming client hangs up: the stream's work is
    # cleaned up (tests/test_serve.py), and the server stays quiet without --access-log
    log_config["loggers"]["asyncio"] = {"level": "ERROR"}
    config = uvicorn.Config(
        server.app,
        log_level="info" if access_log else "warning",
        access_log=access_log,
        log_config=log_config,
        timeout_graceful_shutdown=GRACE,
    )
    served = Uvicorn(config, server.engine)
    served.run(sockets=[sock])
    if served.signals:
        # uvicorn raises the signal again once it has shut down; where that does not end the process
        # (SIGINT ignored, as in a background job of a script) the exit code must still say it
        raise Interrupted(128 + served.signals[0])


class Uvicorn(uvicorn.Server):
    """uvicorn's server, which at the end of its grace period cancels the requests still running
    (a traceback each, and a plain-text 500 or a cut stream for their clients). Shortly before
    that the engine stops instead, and every request still in flight gets an OpenAI-shaped error
    ("the server is shutting down") in time to send it."""

    def __init__(self, config: uvicorn.Config, engine):
        super().__init__(config)
        self.engine = engine
        self.signals: list[int] = []  # the signals that stopped it

    def handle_exit(self, sig, frame) -> None:
        self.signals.append(sig)
        if not self.should_exit:
            timer = threading.Timer(GRACE / 2, self.engine.halt)  # the other half to send the replies
            timer.daemon = True
            timer.start()
        super().handle_exit(sig, frame)
