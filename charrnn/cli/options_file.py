"""Training options in a TOML file: `charrnn train --config run.toml` reads one, `charrnn info RUN
--config` writes the one that trains the same run again. Keys are the flags' names without the
dashes in front (`hidden-size = 512`); the corpus is `corpus = ["a.txt", "b.txt"]`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from charrnn.errors import InputError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

# Options that make no sense in a file that describes a run: --config itself, and --resume, which
# goes on with a run whose options are its own.
NOT_IN_FILES = {"config", "resume"}


def read_options(path: Path, ctx) -> dict:
    """The options a TOML file gives, each checked and converted as its flag would be."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e.strerror or e})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid TOML ({e})") from None
    params = {_key(p): p for p in ctx.command.params if p.name not in NOT_IN_FILES}
    values = {}
    for key, value in data.items():
        param = params.get(key)
        if param is None:
            raise UsageError(
                f"{path}: unknown option '{key}'; the keys are the flags of charrnn train, e.g. hidden-size"
            )
        if getattr(param, "multiple", False) or param.nargs == -1:
            value = value if isinstance(value, list) else [value]
        try:
            values[param.name] = param.process_value(ctx, value)
        except Exception as e:  # click's usage errors: the value's type or range
            if not hasattr(e, "format_message"):
                raise
            raise UsageError(f"{path}: {key} = {json.dumps(value)}: {e.format_message()}") from None
    return values


def _key(param) -> str:
    """A parameter's key in a file: its long flag without the dashes (`bytes_` is --bytes)."""
    longs = [o for o in getattr(param, "opts", []) if o.startswith("--")]
    return longs[0][2:] if longs else param.name.replace("_", "-")


def write_options(options: dict) -> str:
    """TOML for flat `options` (str, int, float, bool and lists of str; None left out)."""
    lines = []
    for key, value in options.items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        elif isinstance(value, (list, tuple)):
            text = "[" + ", ".join(json.dumps(str(v), ensure_ascii=False) for v in value) + "]"
        else:
            text = json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string
        lines.append(f"{key.replace('_', '-')} = {text}")
    return "\n".join(lines) + "\n"


def run_options(record) -> dict:
    """The options that train a run like the one `record` (a RunRecord) describes: every setting it
    used, its preset resolved, its text and how it was read."""
    sources = record.corpus.get("sources", [])
    options = {"corpus": [s.get("absolute") or s["path"] for s in sources]} if sources else {}
    options["preset"] = record.preset
    options.update(
        {k: getattr(record.model, k) for k in ("cell", "layers", "hidden_size", "embedding_size", "dropout")}
    )
    options.update(record.train.to_json())
    text = record.text_options
    options.update({k: text.get(k) for k in ("encoding", "errors", "keep_newlines", "bytes")})
    options.update(val_file=record.val_file, init_from=record.init_from)
    return options
