"""HTTP requests handed from one process to another: a router reads the model a request asks for and forwards the
request, whole, to a process that runs the sdrt app on it (Ray Serve's model replicas).

`Forwarded` and `Answer` are plain data (they cross processes); `call_asgi` runs a forwarded request through an
ASGI app in this process; `requested_model` reads, from a request as clients send it, the model it names in the
field each API names it by.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive

from sdrt.serve.openai_images import OPENAI_MODELS

Headers = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True)
class Forwarded:
    """An HTTP request as it came in: what an ASGI app needs to answer it elsewhere."""

    method: str
    path: str
    query: bytes  # the raw query string
    headers: Headers  # lower-case names, as ASGI gives them
    body: bytes
    client: tuple[str, int] | None = None  # the client's address (the web UI's /interrupt stops its own jobs)

    def with_header(self, name: str, value: str) -> Forwarded:
        key = name.lower().encode("latin-1")
        kept = tuple((k, v) for k, v in self.headers if k != key)
        return Forwarded(
            self.method, self.path, self.query, (*kept, (key, value.encode("latin-1"))), self.body, self.client
        )

    def with_body(self, body: bytes) -> Forwarded:
        kept = tuple((k, v) for k, v in self.headers if k != b"content-length")
        headers = (*kept, (b"content-length", str(len(body)).encode()))
        return Forwarded(self.method, self.path, self.query, headers, body, self.client)

    def header(self, name: str) -> str | None:
        key = name.lower().encode("latin-1")
        return next((v.decode("latin-1") for k, v in self.headers if k == key), None)


@dataclass(frozen=True)
class Answer:
    """An HTTP response: status, headers, body."""

    status: int
    headers: Headers
    body: bytes


async def call_asgi(app: ASGIApp, request: Forwarded, extra_headers: Headers = ()) -> Answer:
    """Run `request` through `app` (whose lifespan is already running) and collect its answer.

    The request's body is delivered at once; after it the app sees no disconnect until this call is cancelled
    (the caller went away), which cancels the app's handler as a server would.
    """
    scope = _scope(request)
    receive = _body_once(request)

    status, headers, chunks = 500, [], []

    async def send(message: Message) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status, headers = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return Answer(status, tuple(headers) + tuple(extra_headers), b"".join(chunks))


def _scope(request: Forwarded) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode("utf-8", "surrogateescape"),
        "root_path": "",
        "query_string": request.query,
        "headers": list(request.headers),
        "client": request.client,
        "server": None,
    }


def _body_once(request: Forwarded) -> Receive:
    """An ASGI receive that gives the whole body, then waits (no disconnect) until cancelled."""
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await asyncio.get_running_loop().create_future()  # no disconnect: the caller's cancel is one
        raise AssertionError("unreachable")

    return receive


# where each API names the model: a field of its JSON body (a path into it), or a form field
_JSON_FIELDS = {
    "/v1/generate": ("model",),
    "/v1/images/generations": ("model",),
    "/sdapi/v1/txt2img": ("override_settings", "sd_model_checkpoint"),
    "/sdapi/v1/img2img": ("override_settings", "sd_model_checkpoint"),
    "/sdapi/v1/options": ("sd_model_checkpoint",),
}
_FORM_FIELDS = {"/v1/images/variations": "model"}


async def requested_model(request: Forwarded) -> str | None:
    """The model a request names in its API's own field (None: none, or a body that cannot be read here; the app
    answers such a body with its own error)."""
    value: Any = None
    if request.method != "POST":
        return None
    path = _JSON_FIELDS.get(request.path)
    if path is not None:
        try:
            value = json.loads(request.body)
        except ValueError:
            return None
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
    field = _FORM_FIELDS.get(request.path)
    if field is not None:
        try:  # with the form parser FastAPI itself uses
            async with Request(_scope(request), _body_once(request)).form() as form:
                value = form.get(field)
        except Exception:  # a malformed form: the app says what is wrong with it
            return None
    if not isinstance(value, str):
        return None
    return None if request.path.startswith("/v1/images/") and value.startswith(OPENAI_MODELS) else value
