"""`charrnn serve`: trained models behind the OpenAI-style completions API, plus a page to try them.

The HTTP side (Starlette on uvicorn) checks each request, hands it to the `Engine`'s worker thread
and streams the text back as the worker produces it (`replies.Reply`); a text to score is read a
slice at a time between the engine's steps. Characters play the part of tokens:
`max_tokens` and `usage` count characters. Every error answers in OpenAI's shape,
{"error": {"message", "type", "param", "code"}}, with a 4xx status for anything the client sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from charrnn import choices
from charrnn.data.sources import unify_newlines
from charrnn.device import resolve_precision
from charrnn.errors import CharRNNError, UsageError
from charrnn.generation.sampler import Decoding
from charrnn.model.scoring import CHUNK, by_character, chunk_losses
from charrnn.records import Score
from charrnn.serving.access import Access, HostCheck, is_json
from charrnn.serving.engine import Engine, ShuttingDown
from charrnn.serving.replies import Reply, answer_or_leave
from charrnn.serving.requests import ApiError, Completion, Limits, _field, _in_range, _text, lone_surrogate
from charrnn.serving.transport import HUNG_UP, Tally, Wakeups, quiet_accept_errors
from charrnn.storage.checkpoints import Loaded

LOG = logging.getLogger("uvicorn.error")  # uvicorn's own warnings go there, on stderr


class Server:
    """The loaded models, the engine and the limits; its `app` is the ASGI application."""

    def __init__(
        self,
        runs: dict[str, Loaded],
        limits: Limits,
        access: Access = Access(),
        unknown: str = "error",
        low: torch.dtype | None = None,  # the busy batch's products (engine.LOW_PRECISION_ROWS)
    ):
        self.runs, self.limits, self.api_key, self.unknown = runs, limits, access.api_key, unknown
        self.engine = Engine({name: (r.model, r.vocab) for name, r in runs.items()}, low)
        self.streams = 0  # samples and scores accepted and not yet answered
        self.tally = Tally(LOG.warning)
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
        middleware = [Middleware(HostCheck, access=access)]
        if access.cors:
            middleware.append(
                Middleware(
                    CORSMiddleware,
                    allow_origins=list(access.cors),
                    allow_methods=["GET", "POST"],
                    allow_headers=["Authorization", "Content-Type"],
                )
            )
        self.app = Starlette(routes=routes, exception_handlers=handlers, lifespan=self.lifespan, middleware=middleware)

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        loop = asyncio.get_running_loop()
        self.wakeups = Wakeups(loop)
        loop.set_exception_handler(quiet_accept_errors(self.tally))
        self.engine.start()
        yield
        self.engine.stop()
        if summary := self.tally.summary():
            LOG.warning(summary)

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
        if not is_json(request.headers.get("content-type")):
            message = "send the body as JSON, with the header 'Content-Type: application/json'"
            raise ApiError(415, message, None, "content_type", close=True)
        limit, timeout = self.limits.max_body, self.limits.request_timeout
        declared = request.headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > limit:
            raise ApiError(413, f"the request body is over {limit:,} bytes", None, "request_too_large", close=True)

        async def read() -> bytes:
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise ApiError(
                        413, f"the request body is over {limit:,} bytes", None, "request_too_large", close=True
                    )
            return body

        try:
            body = await asyncio.wait_for(read(), timeout)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {timeout:g} s", None, "timeout", close=True)
        except ClientDisconnect:  # counted, not a traceback each: they come in floods
            self.tally.add(HUNG_UP)
            raise ApiError(400, "the client hung up", close=True)
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON ({e})")
        except RecursionError:  # arrays nested thousands deep: no field of ours is
            raise ApiError(400, "the request body is nested too deep")
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        if (field := lone_surrogate(data)) is not None:
            where = f"'{field}'" if field else "a field's name"
            raise ApiError(
                400, f"{where} holds a lone UTF-16 surrogate (\\ud800 to \\udfff): not a character", field or None
            )
        return data

    def admit(self, count: int) -> None:
        """Take `count` of the --max-streams places (samples or scores in flight), or answer 429."""
        if self.streams + count > self.limits.max_streams:
            raise ApiError(429, f"the server is busy ({self.streams} samples in flight); try again shortly")
        self.streams += count

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
            return batch.sampler.encode_prime(self.runs[model].symbols(text), unknown, source=f"'{field}'")
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
        reply = Reply(self, c)
        self.admit(c.n)
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
            stop=[self.runs[model].symbols(s) for s in stop],
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
        # scored as `charrnn eval` scores: bf16 where the CPU has it natively, CHUNK characters a call
        dtype = resolve_precision("auto", torch.device("cpu"))

        def scoring():  # a slice per call between the engine's steps
            losses = [np.full(1, np.nan)]  # the first character has no context
            for chunk in chunk_losses(loaded.model, ids, torch.device("cpu"), CHUNK, dtype):
                losses.append(chunk)
                yield
            losses = np.concatenate(losses)
            result = Score(float(losses[1:].astype(np.float64).sum() / (len(losses) - 1)), len(losses) - 1)
            if not math.isfinite(result.nats):  # not JSON, and no figure: the weights overflow on this text
                raise ApiError(500, "the model's loss on this text is not a number: its weights overflow", None, "nan")
            out = {"object": "score", "model": model, **result.to_json()}
            if per_char:  # from the same pass, so that they add up to the total
                chars, losses = by_character(text, losses, loaded.vocab.kind == "bytes")
                out["surprisal"] = [None if np.isnan(x) else round(float(x), 4) for x in losses]
                out["chars"] = chars
            return out

        self.admit(1)
        try:
            out = await answer_or_leave(request, self.engine.start_work(scoring()))
        finally:
            self.streams -= 1
        return Response() if out is None else JSONResponse(out)


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
