"""Refusing an oversized request before reading its body.

A plain ASGI middleware, so it runs before routing and before any of the body is received:
a Content-Length over the limit is answered with 413 at once (the server then closes the
connection instead of reading the rest). Bodies without a Content-Length (chunked) are
capped while they are read (uploads.read_body).
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send


async def send_error(send: Send, status: int, message: str, headers: list | None = None) -> None:
    """A {"error": message} JSON response, sent directly over ASGI."""
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """413 for any request whose declared Content-Length exceeds max_bytes."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"content-length":
                    try:
                        length = int(value)
                    except ValueError:
                        await send_error(send, 400, f"invalid Content-Length {value[:40]!r}")
                        return
                    if length > self.max_bytes:
                        await send_error(send, 413, f"request body of {length:,} bytes is over the limit of "
                                                    f"{self.max_bytes:,} bytes",
                                         [(b"connection", b"close")])
                        return
                    break
        await self.app(scope, receive, send)
