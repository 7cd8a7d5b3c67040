"""`charrnn serve`: models over HTTP (the OpenAI-style completions API) and a page to try them."""

from __future__ import annotations

from pathlib import Path

import typer

from charrnn.cli.common import Precision, checkpoint_option, friendly, unknown_option
from charrnn.errors import CharRNNError


@friendly
def serve(
    runs: list[Path] = typer.Argument(..., help="Runs or checkpoint folders; each is served as its folder's name."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; 0.0.0.0 opens the server to the network."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on; 0 picks a free one."),
    api_key: str | None = typer.Option(
        None, envvar="CHARRNN_API_KEY", help="Require 'Authorization: Bearer KEY' on every API request."
    ),
    max_tokens: int = typer.Option(4096, min=1, help="Most characters generated per sample."),
    max_prompt: int = typer.Option(16_384, min=1, help="Most characters in a prompt or a text to score."),
    max_n: int = typer.Option(8, min=1, help="Most samples per request (n)."),
    max_streams: int = typer.Option(
        64, min=1, help="Most samples and scores in flight at once; more are answered 429."
    ),
    request_timeout: float = typer.Option(
        10, min=0.1, help="Seconds a client has to send a request's headers, and its body."
    ),
    allow_host: list[str] = typer.Option(
        [], help="Serve requests naming this host (besides IP addresses and localhost)."
    ),
    cors: list[str] = typer.Option([], help="Let web pages from this origin call the API, e.g. http://localhost:3000."),
    unknown=unknown_option("Prompt characters outside the vocabulary (a request may say)."),
    checkpoint=checkpoint_option("Which checkpoint of a run: best (what training hands back) or latest."),
    precision: Precision = typer.Option(
        Precision.auto,
        help="Products of a busy batch (16+ samples in flight): auto uses bf16 where the CPU has it natively; "
        "fp32 always computes as sample does.",
    ),
    access_log: bool = typer.Option(False, help="Log every request on stderr."),
) -> None:
    """Serve models over HTTP with the OpenAI-style completions API, and a page to try them at /.

    Needs the serve extra (starlette and uvicorn). Examples:

      charrnn serve runs/shakespeare

      CHARRNN_API_KEY=secret charrnn serve runs/a runs/b --host 0.0.0.0 --port 8080

    Endpoints, fields and limits: docs/serving.md.
    """
    try:
        from charrnn.serving import access, http, transport
        from charrnn.serving.requests import Limits
    except ImportError as e:
        raise CharRNNError(f"charrnn serve needs the serve extra ({e.name} is missing): pip install 'charrnn[serve]'")
    import torch

    from charrnn.cli import display
    from charrnn.device import resolve_precision
    from charrnn.storage import checkpoints

    names = http.served_names(runs)
    http.check_api_key(api_key)
    access.check_allow_hosts(allow_host)
    access.check_origins(cors)
    low = resolve_precision(precision.value, torch.device("cpu"))
    sock = transport.listen(host, port)  # before loading: a port in use is known at once
    torch.set_grad_enabled(False)
    loaded = {name: checkpoints.load(r, "cpu", which=checkpoint.value) for name, r in zip(names, runs)}
    limits = Limits(
        max_tokens=max_tokens,
        max_prompt=max_prompt,
        max_n=max_n,
        max_streams=max_streams,
        request_timeout=request_timeout,
    )
    guard = access.Access(host, api_key or None, tuple(allow_host), tuple(cors))
    server = http.Server(loaded, limits, guard, unknown.value, None if low == torch.float32 else low)
    where = sock.getsockname()
    url = f"http://{f'[{where[0]}]' if ':' in where[0] else where[0]}:{where[1]}"
    if not api_key and not access.is_loopback(host):  # an empty key checks nothing either
        display.note(f"--host {host} without --api-key: anyone who can reach this machine can use the server")
    display.note(f"serving {', '.join(names)} at {url}/v1 and a page to try it at {url}/; Ctrl-C stops")
    transport.serve_forever(server, sock, access_log)
