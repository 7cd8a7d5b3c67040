"""What a request to the server may hold: the limits, the checked completion request, and errors in OpenAI's shape,
{"error": {"message", "type", "param", "code"}}, with a 4xx status for anything the client sent."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from starlette.responses import JSONResponse

from charrnn.generation.sampler import Decoding

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
    max_streams: int = 64  # samples and scores in flight over all requests; more are refused with 429
    request_timeout: float = 10.0  # seconds a client has to send a request's headers, and its body

    @property
    def max_body(self) -> int:
        """Bytes of request body: room for the longest prompt at 4 UTF-8 bytes per character."""
        return 4 * self.max_prompt + 65_536


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None, close: bool = False
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.close = close  # end the connection after the reply: the rest of the request is not read

    def body(self) -> dict:
        """The error in OpenAI's shape."""
        kind = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}
        return {
            "error": {
                "message": self.message,
                "type": kind.get(self.status, "invalid_request_error" if self.status < 500 else "server_error"),
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        headers = {"Connection": "close"} if self.close else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


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


def lone_surrogate(data: dict) -> str | None:
    """The field of a request body whose text holds a lone UTF-16 surrogate ("\\ud800" in JSON
    without its pair), "" for a field's name, None if none does. Such text is no Unicode: it
    cannot be encoded, shown, or written back in a reply."""
    for name, value in data.items():
        if _has_surrogate(name):
            return ""
        stack = [value]
        while stack:  # no recursion: the JSON reader allows nesting deeper than Python's stack
            item = stack.pop()
            if isinstance(item, str) and _has_surrogate(item):
                return name
            if isinstance(item, dict):
                stack.extend(item.keys())
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
