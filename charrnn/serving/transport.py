"""The server's transport: the listening socket, uvicorn run until Ctrl-C or SIGTERM (requests in flight get
GRACE seconds), the limits uvicorn lacks (how long a client may take to send a request, how many
connections may be open), floods of failed connections counted on one line, and waking many
waiting replies at once from the engine's thread."""

from __future__ import annotations

import asyncio
import copy
import errno
import json
import math
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from charrnn.errors import CharRNNError, Interrupted
from charrnn.serving.requests import ApiError

try:
    import resource
except ImportError:  # Windows: no file limit to read
    resource = None

GRACE = 3  # seconds requests in flight get to finish after Ctrl-C or SIGTERM
# File descriptors kept for the process itself (the listening socket, logs, files it opens) below
# its limit: connections beyond the rest are refused, so that accept() never runs out of them.
RESERVED_FILES = 64

HUNG_UP = "clients that hung up before sending a whole request"
TOO_SLOW = "connections closed for sending no whole request within the request timeout"
TOO_MANY = "connections refused: as many open as the file limit allows"
NO_FILES = "connections not accepted: the process is out of file descriptors"

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


class Tally:
    """Events that come in floods (clients hanging up mid-request, connections refused), counted:
    a line with the running count at most every EVERY seconds per kind, a summary at the end, and
    never a traceback."""

    EVERY = 5.0

    def __init__(self, report: Callable[[str], None], clock: Callable[[], float] = time.monotonic):
        self.report, self.clock = report, clock
        self.counts: Counter[str] = Counter()
        self.reported: dict[str, float] = {}

    def add(self, kind: str) -> None:
        self.counts[kind] += 1
        now = self.clock()
        if now - self.reported.get(kind, -math.inf) >= self.EVERY:
            self.reported[kind] = now
            self.report(f"{kind}: {self.counts[kind]:,} so far")

    def summary(self) -> str | None:
        if not self.counts:
            return None
        return "while serving, " + "; ".join(f"{kind}: {count:,}" for kind, count in self.counts.items())


def max_connections() -> int:
    """Connections that can be open at once within the process's file limit, RESERVED_FILES kept."""
    if resource is None:
        return 1000
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else max(1, soft - RESERVED_FILES)


class Config(uvicorn.Config):
    """uvicorn's settings, and ours that `Protocol` reads."""

    def __init__(self, app, *, tally: Tally, request_timeout: float, max_connections: int, **settings):
        super().__init__(app, http=Protocol, ws="none", **settings)
        self.tally, self.request_timeout, self.max_connections = tally, request_timeout, max_connections


class Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with the limits it lacks. A connection beyond `max_connections`
    is answered 503 and closed at once. A client has `request_timeout` seconds to send a request's
    headers, from connecting or from the end of the reply before, and to send the rest of a body
    whose reply has gone out; the server reading a body keeps to the same timeout itself (408)."""

    config: Config
    clock: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.config.max_connections:
            self.config.tally.add(TOO_MANY)
            transport.write(_BUSY)
            transport.close()
            return
        self._wait()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._answering():
            self._stop()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self._answering():
            self._wait()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()
        super().connection_lost(exc)

    def _answering(self) -> bool:
        """Whether a request has arrived (its headers) and its reply is not complete yet."""
        return self.cycle is not None and not self.cycle.response_complete

    def _wait(self) -> None:
        self._stop()
        self.clock = self.loop.call_later(self.config.request_timeout, self._expire)

    def _stop(self) -> None:
        if self.clock is not None:
            self.clock.cancel()
            self.clock = None

    def _expire(self) -> None:
        self.clock = None
        if not self._answering() and not self.transport.is_closing():
            self.config.tally.add(TOO_SLOW)
            self.transport.close()


def _busy_reply() -> bytes:
    error = ApiError(503, "the server has too many connections open; try again shortly", None, "too_many_connections")
    body = json.dumps(error.body()).encode()
    head = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


_BUSY = _busy_reply()


def quiet_accept_errors(tally: Tally) -> Callable[[asyncio.AbstractEventLoop, dict], None]:
    """An event loop exception handler that counts accept() running out of file descriptors (a
    traceback each, from asyncio's own handler) and hands anything else to asyncio's."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        e = context.get("exception")
        if isinstance(e, OSError) and e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            tally.add(NO_FILES)
        else:
            loop.default_exception_handler(context)

    return handle


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
    config = Config(
        server.app,
        tally=server.tally,
        request_timeout=server.limits.request_timeout,
        max_connections=max_connections(),
        log_level="info" if access_log else "warning",
        access_log=access_log,
        log_config=log_config,
        timeout_graceful_shutdown=GRACE,
    )
    served = Uvicorn(config, server.engine)
    # A Ctrl-C before uvicorn has set up its own handlers must stop the server too: asyncio's runner
    # would otherwise cancel uvicorn's start-up task, which went on serving.
    previous = {s: signal.signal(s, served.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        served.run(sockets=[sock])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if served.signals:
        # the signal again, as uvicorn raises it once it has shut down, now to the process's own
        # handlers (SIGTERM ends it); where that does not end the process (SIGINT ignored, as in a
        # background job of a script) the exit code must still say it
        signal.raise_signal(served.signals[0])
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
