"""Who may reach the server: the names a request may give in its Host header, the content type of
a request body, and the web pages (origins) allowed to read the replies (CORS).

A web page the user opens can send requests to a server on the user's machine: a form or a fetch
with `Content-Type: text/plain` goes out cross-origin without asking first, and a page whose own
name is made to resolve to 127.0.0.1 (DNS rebinding) can read the replies too. So a request with a
body must say `application/json` (a browser asks the server first, and is refused without CORS),
and a request must name the server as its user reaches it: by an IP address, `localhost`, a name
given with `--allow-host`, or, on a server open to the network with an API key, any name.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from charrnn.errors import UsageError
from charrnn.serving.requests import ApiError


def host_name(header: str) -> str:
    """The name in a Host header, without its port, brackets or final dot, in lower case."""
    name = header.strip().lower()
    if name.startswith("["):  # an IPv6 address: [::1]:8000
        name = name[1 : name.find("]")] if "]" in name else name[1:]
    elif name.count(":") == 1:
        name = name.split(":")[0]
    return name.rstrip(".")


def is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the server to this machine."""
    name = host_name(host)
    return name == "localhost" or is_address(name) and ipaddress.ip_address(name).is_loopback


@dataclass(frozen=True)
class Access:
    """Where the server listens and what it lets in (the flags --host, --api-key, --allow-host and --cors)."""

    host: str = "127.0.0.1"
    api_key: str | None = None
    allow_hosts: tuple[str, ...] = ()  # names besides IP addresses and localhost; "*": any
    cors: tuple[str, ...] = ()  # origins whose pages may read the replies; "*": any

    def allows(self, header: str | None) -> bool:
        """Whether a request whose Host header is `header` is served.

        An IP address or localhost can be trusted: a page served from another name cannot make the
        browser send them. Any other name only when given with --allow-host, or when the server is
        open to the network with an API key (the key guards it, and its users' names are not
        known here). No header at all comes from no browser."""
        if header is None or "*" in self.allow_hosts:
            return True
        name = host_name(header)
        if name == "localhost" or is_address(name) or name in {host_name(n) for n in self.allow_hosts}:
            return True
        return bool(self.api_key) and not is_loopback(self.host)

    def refusal(self, header: str) -> ApiError:
        name = host_name(header)[:100].encode("ascii", "replace").decode()
        return ApiError(
            403,
            f"Host '{name}' is not served here: reach the server by its address or localhost, "
            f"or start it with --allow-host {name}",
            None,
            "host_not_allowed",
        )


def check_allow_hosts(names: list[str]) -> None:
    """An --allow-host value is a name or address, without a scheme, path or port."""
    for name in names:
        if name != "*" and (not name or any(c in name for c in "/:@ ") or not name.isascii()):
            raise UsageError(f"--allow-host {name!r}: give a host name or address, such as example.com")


def check_origins(origins: list[str]) -> None:
    """A --cors value is an origin as a browser sends it: scheme, host and port, no path."""
    for origin in origins:
        scheme, _, rest = origin.partition("://")
        if origin != "*" and (scheme not in ("http", "https") or not rest or "/" in rest):
            raise UsageError(f"--cors {origin!r}: give an origin such as http://localhost:3000 (no path), or *")


def is_json(content_type: str | None) -> bool:
    """Whether a Content-Type header says JSON: application/json, with or without parameters."""
    return (content_type or "").split(";")[0].strip().lower() == "application/json"


class HostCheck:
    """ASGI middleware: a request whose Host is not allowed is answered 403 before anything else."""

    def __init__(self, app: ASGIApp, access: Access):
        self.app, self.access = app, access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            header = headers[b"host"].decode("latin-1") if b"host" in headers else None
            if not self.access.allows(header):
                await self.access.refusal(header).response()(scope, receive, send)
                return
        await self.app(scope, receive, send)
