"""One completion request on its way through the engine (`Reply`), read back as the engine writes
it: whole, or as server-sent events in OpenAI's chunk format."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import time
import uuid
from concurrent.futures import Future
from typing import TYPE_CHECKING

from starlette.requests import Request

from charrnn.serving.engine import Job
from charrnn.serving.requests import ApiError, Completion
from charrnn.serving.transport import _event

if TYPE_CHECKING:
    from charrnn.serving.http import Server

DISCONNECT_CHECK = 0.5  # seconds between looks for a client that hung up on a reply it waits for whole


async def answer_or_leave(request: Request, work: Future):
    """The result of `work` (from `Engine.start_work`), or None if the client hangs up first: then
    the work is cancelled, and stops before its next slice."""
    waiting = asyncio.wrap_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_CHECK)
            if done:
                return waiting.result()
            if await request.is_disconnected():
                return None
    finally:
        work.cancel()


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
            if self.job.error:  # ended by an error that came between two looks at the news
                raise ApiError(503, self.job.error, None, "server_error")
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
