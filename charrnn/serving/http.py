"""`charrnn serve`: trained models behind the OpenAI-style completions API, plus a page to try them.

The HTTP side (Starlette on uvicorn) checks each request, hands it to the `Engine`'s worker thread
and streams the text back as the worker produces it. Characters play the part of tokens:
`max_tokens` and `usage` count characters. Every error answers in OpenAI's shape,
{"error": {"message", "type", "param", "code"}}, with a 4xx status for anything the client sent.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import copy
import errno
import hmac
import json
import math
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from charrnn import choices
from charrnn.data.sources import unify_newlines
from charrnn.device import resolve_precision
from charrnn.errors import CharRNNError, Interrupted, UsageError
from charrnn.generation.sampler import Decoding
from charrnn.model.scoring import by_character, score, surprisal
from charrnn.serving.engine import Engine, Job, ShuttingDown
from charrnn.storage.checkpoints import Loaded

GRACE = 3  # seconds requests in flight get to finish after Ctrl-C or SIGTERM
DISCONNECT_CHECK = 0.5  # seconds between looks for a client that hung up on a reply it waits for whole
_TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    list: "an array",
    dict: "an object",
}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how much the server takes on at once."""

    max_tokens: int = 4096  # characters generated per sample
    max_prompt: int = 16_384  # characters of prompt (and of text to score)
    max_n: int = 8  # samples per request
    max_streams: int = 64  # samples in flight over all requests; more are refused with 429

    @property
    def max_body(self) -> int:
        """Bytes of request body: room for the longest prompt at 4 UTF-8 bytes per character."""
        return 4 * self.max_prompt + 65_536


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}
        body = {
            "message": self.message,
            "type": kind.get(self.status, "invalid_request_error" if self.status < 500 else "server_error"),
            "param": self.param,
            "code": self.code,
        }
        return JSONResponse({"error": body}, status_code=self.status)


@dataclass(frozen=True)
class Completion:
    """A checked completion request."""

    model: str
    prompt: str  # in the model's symbols, the unknown-character policy applied
    max_tokens: int
    decoding: Decoding
    n: int
    stop: list[str]
    seed: int | None
    stream: bool
    echo: bool
    include_usage: bool


def _field(body: dict, name: str, kinds: tuple, default=None):
    """body[name] if it has one of `kinds` (null counts as absent), else a 400 naming the field."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(_TYPE_NAMES[k] for k in kinds)
        raise ApiError(400, f"'{name}' must be {names}, not {json.dumps(value)[:40]}", name)
    return value


def _in_range(name: str, value, low, high, default=None):
    if value is None:
        return default
    if not (low <= value <= high) or (isinstance(value, float) and math.isnan(value)):
        raise ApiError(400, f"'{name}' is {value}: must be between {low} and {high}", name)
    return value


def _text(body: dict, name: str, limit: int) -> str:
    value = _field(body, name, (str, list), "")
    if isinstance(value, list):  # OpenAI also takes a list of prompts: one is all we take
        if len(value) != 1 or not isinstance(value[0], str):
            raise ApiError(400, f"'{name}' must be a string (or a list of one string)", name)
        value = value[0]
    if len(value) > limit:
        raise ApiError(400, f"'{name}' has {len(value):,} characters; this server takes at most {limit:,}", name)
    return value


class Server:
    """The loaded models, the engine and the limits; its `app` is the ASGI application."""

    def __init__(
        self,
        runs: dict[str, Loaded],
        limits: Limits,
        api_key: str | None = None,
        unknown: str = "error",
        low: torch.dtype | None = None,  # the busy batch's products (engine.LOW_PRECISION_ROWS)
    ):
        self.runs, self.limits, self.api_key, self.unknown = runs, limits, api_key, unknown
        self.engine = Engine({name: (r.model, r.vocab) for name, r in runs.items()}, low)
        self.streams = 0  # samples accepted and not yet answered
        self.wakeups: Wakeups | None = None  # made with the event loop, in `lifespan`
        self.created = int(time.time())
        routes = [
            Route("/", self.page),
            Route("/health", self.health),
            Route("/v1/models", self.models),
            Route("/v1/models/{model:path}", self.model),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/score", self.score, methods=["POST"]),
        ]
        handlers = {
            ApiError: lambda _, e: e.response(),
            ShuttingDown: lambda _, e: ApiError(503, str(e), None, "server_error").response(),
            HTTPException: self.http_error,
            Exception: self.crash,
        }
        self.app = Starlette(routes=routes, exception_handlers=handlers, lifespan=self.lifespan)

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        self.wakeups = Wakeups(asyncio.get_running_loop())
        self.engine.start()
        yield
        self.engine.stop()

    # -- plumbing ---------------------------------------------------------------------------

    @staticmethod
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return ApiError(e.status_code, message.get(e.status_code, str(e.detail))).response()

    @staticmethod
    async def crash(request: Request, e: Exception) -> JSONResponse:
        return ApiError(500, f"internal error: {type(e).__name__}").response()

    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise ApiError(
                401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'", None, "invalid_api_key"
            )

    async def read_json(self, request: Request) -> dict:
        self.authorize(request)
        limit = self.limits.max_body
        declared = request.headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > limit:
            raise ApiError(413, f"the request body is over {limit:,} bytes", None, "request_too_large")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"the request body is over {limit:,} bytes", None, "request_too_large")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON ({e})")
        except RecursionError:  # arrays nested thousands deep: no field of ours is
            raise ApiError(400, "the request body is nested too deep")
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return data

    def pick_model(self, body: dict) -> str:
        name = _field(body, "model", (str,))
        if name is None and len(self.runs) == 1:
            return next(iter(self.runs))
        if name is None:
            raise ApiError(400, f"'model' is required: this server has {', '.join(self.runs)}", "model")
        if name not in self.runs:
            known = ", ".join(self.runs)
            raise ApiError(404, f"model '{name}' is not loaded; this server has: {known}", "model", "model_not_found")
        return name

    def encode(self, model: str, text: str, body: dict, field: str) -> str:
        """`text` in the model's symbols, characters outside its vocabulary handled per 'unknown'."""
        unknown = _field(body, "unknown", (str,), self.unknown)
        if reason := choices.problem(unknown, choices.Unknown):
            raise ApiError(400, f"'unknown' {unknown!r}: {reason}", "unknown")
        batch = self.engine.batches[model]
        try:
            return batch.sampler.encode_prime(batch.sampler.vocab.from_user(text), unknown, source=f"'{field}'")
        except CharRNNError as e:
            reason = str(e).split(";")[0]
            raise ApiError(
                400, f'{reason}; send "unknown": "skip" or "replace" to proceed', field, "unknown_characters"
            )

    # -- routes -----------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        return HTMLResponse(resources.files("charrnn.serving").joinpath("page.html").read_text(encoding="utf-8"))

    async def health(self, request: Request) -> Response:
        # streams: samples accepted and not yet answered; generating: rows in the model's batch
        counts = {"streams": self.streams, "generating": self.engine.rows()}
        return JSONResponse({"status": "ok", "models": list(self.runs), **counts})

    def describe(self, name: str) -> dict:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "charrnn"}

    async def models(self, request: Request) -> Response:
        self.authorize(request)
        return JSONResponse({"object": "list", "data": [self.describe(name) for name in self.runs]})

    async def model(self, request: Request) -> Response:
        self.authorize(request)
        name = request.path_params["model"]
        if name not in self.runs:
            raise ApiError(404, f"model '{name}' is not loaded", "model", "model_not_found")
        return JSONResponse(self.describe(name))

    async def completions(self, request: Request) -> Response:
        c = self.parse_completion(await self.read_json(request))
        if self.streams + c.n > self.limits.max_streams:
            raise ApiError(429, f"the server is busy ({self.streams} samples in flight); try again shortly")
        reply = Reply(self, c)
        self.streams += c.n
        try:
            await reply.start()
        except BaseException:
            self.streams -= c.n
            raise
        if c.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(reply.events(), media_type="text/event-stream", headers=headers)
        return JSONResponse(await reply.whole(request))

    def parse_completion(self, body: dict) -> Completion:
        limits = self.limits
        model = self.pick_model(body)
        prompt = self.encode(model, _text(body, "prompt", limits.max_prompt), body, "prompt")
        max_tokens = _in_range("max_tokens", _field(body, "max_tokens", (int,)), 0, limits.max_tokens, 256)
        temperature = _in_range("temperature", _field(body, "temperature", (int, float)), 0, 100, 1.0)
        top_p = _in_range("top_p", _field(body, "top_p", (int, float)), 0, 1)
        if top_p == 0:
            raise ApiError(400, "'top_p' must be above 0", "top_p")
        top_k = _in_range("top_k", _field(body, "top_k", (int,)), 0, 1 << 30)
        stop = _field(body, "stop", (str, list), [])
        stop = [stop] if isinstance(stop, str) else stop
        if len(stop) > 4 or not all(isinstance(s, str) and 0 < len(s) <= 64 for s in stop):
            raise ApiError(400, "'stop' must be a string or up to 4 strings of 1 to 64 characters", "stop")
        if (
            _field(body, "logprobs", (int,)) is not None
            or _field(body, "best_of", (int,), 1) != 1
            or body.get("suffix")
        ):
            raise ApiError(400, "'logprobs', 'best_of' and 'suffix' are not supported", "logprobs")
        options = _field(body, "stream_options", (dict,), {})
        return Completion(
            model=model,
            prompt=prompt,
            max_tokens=max_tokens,
            # top_k 0 means no limit, as in other servers that take it (and as --top-k 0 does)
            decoding=Decoding(float(temperature), top_k, None if top_p is None else float(top_p)),
            n=_in_range("n", _field(body, "n", (int,)), 1, limits.max_n, 1),
            stop=[self.engine.batches[model].sampler.vocab.from_user(s) for s in stop],
            seed=_in_range("seed", _field(body, "seed", (int,)), -(2**63), 2**64 - 1),
            stream=_field(body, "stream", (bool,), False),
            echo=_field(body, "echo", (bool,), False),
            include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
        )

    async def score(self, request: Request) -> Response:
        body = await self.read_json(request)
        model = self.pick_model(body)
        loaded = self.runs[model]
        text = _text(body, "text", self.limits.max_prompt)
        if loaded.vocab.kind != "bytes" and not loaded.keep_newlines:
            text = unify_newlines(text)  # as `charrnn eval` reads a file
        text = self.encode(model, text, body, "text")
        if len(text) < 2:
            raise ApiError(400, "'text' needs at least 2 characters: the first one has no context to be scored", "text")
        per_char = _field(body, "per_char", (bool,), False)
        ids = loaded.vocab.encode(text)

        def scoring() -> dict:
            cpu = torch.device("cpu")  # scored as `charrnn eval` scores: bf16 where the CPU has it natively
            dtype = resolve_precision("auto", cpu)
            result = score(loaded.model, ids, cpu, streams=1, dtype=dtype)
            if not math.isfinite(result.nats):  # not JSON, and no figure: the weights overflow on this text
                raise ApiError(500, "the model's loss on this text is not a number: its weights overflow", None, "nan")
            out = {"object": "score", "model": model, **result.to_json()}
            if per_char:  # in the same precision, so that they add up to the total
                losses = surprisal(loaded.model, ids, 0, len(ids), cpu, dtype=dtype)
                chars, losses = by_character(text, losses, loaded.vocab.kind == "bytes")
                out["surprisal"] = [None if np.isnan(x) else round(float(x), 4) for x in losses]
                out["chars"] = chars
            return out

        return JSONResponse(await asyncio.wrap_future(self.engine.submit(scoring)))


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


class Reply:
    """One completion request on its way through the engine, read back as it is written."""

    def __init__(self, server: Server, c: Completion):
        self.server, self.c = server, c
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.vocab = server.runs[c.model].vocab
        self.news = asyncio.Event()
        self.job = Job(
            prompt=c.prompt,
            length=c.max_tokens,
            decoding=c.decoding,
            count=c.n,
            stop=c.stop,
            seed=c.seed,
            notify=lambda: server.wakeups.set(self.news),
        )
        self.sent = [0] * c.n  # characters of each sample handed out so far
        self.decoders = [codecs.getincrementaldecoder("utf-8")("replace") for _ in range(c.n)]
        self.released = False

    async def start(self) -> None:
        await asyncio.wrap_future(self.server.engine.start_job(self.c.model, self.job))

    def release(self) -> None:
        """Give the request's samples back to the server's budget and stop its work (once)."""
        if not self.released:
            self.released = True
            self.job.cancelled = True
            self.server.streams -= self.c.n

    def take(self, row: int) -> tuple[str, str | None]:
        """New text of sample `row` that can be shown now, and its finish reason once it has one.

        Text that might be the start of a stop string is held back until it is known not to be;
        a stop string that ends a sample is not shown (as OpenAI does)."""
        text, finish = self.job.read(row, self.sent[row])
        stop = self.c.stop
        if finish == "stop":
            matched = max((s for s in stop if text.endswith(s)), key=len, default="")
            shown, used = text[: len(text) - len(matched)], len(text)
        elif finish is None and stop:
            hold = max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
            shown = text[: len(text) - hold]
            used = len(shown)
        else:
            shown, used = text, len(text)
        self.sent[row] += used
        if self.vocab.kind == "bytes":  # symbols are bytes: show them as UTF-8 text once complete
            shown = self.decoders[row].decode(self.vocab.to_bytes(shown), final=finish is not None)
        return shown, finish

    def usage(self) -> dict:
        prompt = len(self.c.prompt)
        generated = sum(len(t) for t in self.job.texts)
        return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}

    def choice(self, row: int, text: str, finish: str | None) -> dict:
        return {"text": text, "index": row, "logprobs": None, "finish_reason": finish}

    def echoed(self) -> str:
        return self.vocab.to_bytes(self.c.prompt).decode("utf-8", "replace") if self.c.echo else ""

    def envelope(self, choices: list[dict]) -> dict:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.c.model,
            "choices": choices,
        }

    async def wait(self) -> None:
        await self.news.wait()
        self.news.clear()
        if self.job.error:
            raise ApiError(503, self.job.error, None, "server_error")

    async def whole(self, request: Request) -> dict:
        try:
            checked = time.monotonic()
            while not self.job.done:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.wait(), DISCONNECT_CHECK)
                # on a clock of its own: news of the job comes every few milliseconds while it runs
                if time.monotonic() - checked >= DISCONNECT_CHECK:
                    checked = time.monotonic()
                    if await request.is_disconnected():  # nobody to answer: stop generating
                        return {}
            choices = [
                self.choice(row, self.echoed() + text, finish)
                for row, (text, finish) in enumerate(map(self.take, range(self.c.n)))
            ]
            return {**self.envelope(choices), "usage": self.usage()}
        finally:
            self.release()

    async def events(self):
        """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
        try:
            if self.c.echo:
                yield _event(self.envelope([self.choice(row, self.echoed(), None) for row in range(self.c.n)]))
            finished = [False] * self.c.n
            while not all(finished):
                await self.wait()
                for row in range(self.c.n):
                    if finished[row]:
                        continue
                    text, finish = self.take(row)
                    finished[row] = finish is not None
                    if text or finish:
                        yield _event(self.envelope([self.choice(row, text, finish)]))
            if self.c.include_usage:
                yield _event({**self.envelope([]), "usage": self.usage()})
            yield b"data: [DONE]\n\n"
        except ApiError as e:
            yield _event({"error": {"message": e.message, "type": "server_error", "param": None, "code": e.code}})
        finally:
            self.release()


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


def served_names(runs: list[Path]) -> list[str]:
    """The name each run is served as: its folder's name (a checkpoint folder's run's name)."""
    names = [
        (r.resolve().parent.parent if r.resolve().parent.name == "checkpoints" else r.resolve()).name for r in runs
    ]
    if len(set(names)) != len(names):
        name = max(names, key=names.count)
        if len({r.resolve() for r, n in zip(runs, names) if n == name}) == 1:
            raise UsageError(f"{name}: given twice; name each run once")
        raise UsageError(f"two runs share the name '{name}': serve runs from differently named folders")
    return names


def check_api_key(key: str | None) -> None:
    """A header's bytes are read as Latin-1, and its ends stripped: refuse a key no request could send."""
    if key and not (key.isascii() and key.isprintable() and key == key.strip()):
        raise UsageError(
            "--api-key (or CHARRNN_API_KEY): use printable ASCII characters, no spaces at either end; "
            "HTTP headers carry no others"
        )
