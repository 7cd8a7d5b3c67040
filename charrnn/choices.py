"""Every named choice a user makes, defined once. The command line's option types, the Python API's
checks and the server's are all made from these, so a value is accepted or refused alike everywhere."""

from __future__ import annotations

from typing import Literal, get_args

Cell = Literal["lstm", "gru", "rnn"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Preset = Literal["auto", "small", "medium", "large"]
DecodingErrors = Literal["strict", "replace", "ignore"]  # what to do with bytes that do not decode
Unknown = Literal["error", "skip", "replace"]  # characters outside a model's vocabulary
Checkpoint = Literal["best", "latest"]  # which checkpoint of a run
LogFormat = Literal["auto", "plain", "jsonl"]


def values(choice) -> tuple[str, ...]:
    """The values of a choice, in the order they are offered."""
    return get_args(choice)


def problem(value, choice) -> str | None:
    """What is wrong with `value` as one of `choice` ("use error, skip or replace"), or None."""
    allowed = values(choice)
    if isinstance(value, str) and value in allowed:
        return None
    return f"use {', '.join(allowed[:-1])} or {allowed[-1]}"


def check(value, choice, name: str) -> str:
    """`value` if it is one of `choice`, else a UsageError naming `name`: a flag ("--unknown") or a
    keyword argument ("which=")."""
    from charrnn.errors import UsageError

    if reason := problem(value, choice):
        raise UsageError(f"{name}{'' if name.endswith('=') else ' '}{value!r}: {reason}")
    return value
