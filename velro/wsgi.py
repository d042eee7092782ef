"""WSGI entry point (gunicorn: `velro.wsgi:application`): Django, behind KeepAliveGuard.

KeepAliveGuard keeps a kept-alive HTTP/1.1 connection in sync when a view
answers without reading the request body (a 401 before parsing, a 404, a
405, a 429, a 413...). The unread bytes are still on the connection, ahead of
the client's next request. Gunicorn's gthread worker discards at most 64 KiB of
them, and only after the response went out saying `Connection: keep-alive`;
past that it closes the connection, and the client (or a reverse proxy reusing
its upstream connections) sends its next request into a closed socket:
"Server disconnected without sending a response".

So, before the response headers go out, the guard reads and discards what is
left of the body, up to the upload limit (DATA_UPLOAD_MAX_MEMORY_SIZE) and for
DRAIN_SECONDS at most. When that cannot be done (a remainder over the limit,
a client too slow, a broken chunk), the response says `Connection: close` and
gunicorn closes the connection after it: the connection is never announced as
reusable while unread bytes sit on it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "velro.settings")

# How long the guard waits for the rest of an unread body: gunicorn's own bound
# on waiting for request data (gthread's DEFAULT_WORKER_DATA_TIMEOUT).
DRAIN_SECONDS = 5.0
_READ_SIZE = 64 * 1024

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict, StartResponse], Iterable[bytes]]


class CountingInput:
    """wsgi.input, counting the bytes the application reads from it."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.consumed = 0

    def read(self, *args: Any) -> bytes:
        data = self.stream.read(*args)
        self.consumed += len(data)
        return data

    def readline(self, *args: Any) -> bytes:
        line = self.stream.readline(*args)
        self.consumed += len(line)
        return line

    def readlines(self, *args: Any) -> list[bytes]:
        lines = self.stream.readlines(*args)
        self.consumed += sum(len(line) for line in lines)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


def _content_length(environ: dict) -> int | None:
    try:
        return int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None


def _chunked(environ: dict) -> bool:
    return "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()


def _has_body(environ: dict) -> bool:
    return _chunked(environ) or (_content_length(environ) or 0) > 0


def _connection_persists(environ: dict) -> bool:
    """Whether the client asked to reuse the connection (HTTP/1.1 by default, 1.0 when it says keep-alive)."""
    tokens = {token.strip().lower() for token in environ.get("HTTP_CONNECTION", "").split(",")}
    if "close" in tokens:
        return False
    protocol = environ.get("SERVER_PROTOCOL", "")
    return protocol == "HTTP/1.1" or (protocol == "HTTP/1.0" and "keep-alive" in tokens)


def drain(environ: dict, body: CountingInput, limit: int, seconds: float = DRAIN_SECONDS) -> bool:
    """Read and discard what the application left of the request body.

    True: the body is consumed, the connection can serve the next request.
    False: it cannot be (more than `limit` bytes left, a client slower than
    `seconds`, a malformed chunk, a reset): the connection must close.
    """
    length = _content_length(environ)
    if length is not None and not _chunked(environ):
        left = length - body.consumed
        if left <= 0:
            return True
        if left > limit:
            return False
    # Bound every read by the deadline on the socket itself (the worker thread's
    # socket is blocking, without a timeout), as gunicorn's own drain does.
    sock = environ.get("gunicorn.socket")
    if not (hasattr(sock, "gettimeout") and hasattr(sock, "settimeout")):
        sock = None
    prior_timeout = sock.gettimeout() if sock is not None else None
    deadline = time.monotonic() + seconds
    drained = 0
    try:
        while True:
            if sock is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                sock.settimeout(remaining)
            data = body.stream.read(_READ_SIZE)
            if not data:
                return True
            drained += len(data)
            if drained > limit:
                return False
    except Exception:  # a timeout, a reset, a bad chunk: where the next request starts is unknown
        return False
    finally:
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.settimeout(prior_timeout)


def force_close(start_response: StartResponse) -> bool:
    """Make the server answer `Connection: close` and close after this response.

    A WSGI application may not set hop-by-hop headers (gunicorn drops a
    `Connection` header it is given), so this asks gunicorn's response object,
    whose bound method start_response is. Returns False under another server.
    """
    close = getattr(getattr(start_response, "__self__", None), "force_close", None)
    if not callable(close):
        return False
    close()
    return True


class KeepAliveGuard:
    """Never announce keep-alive with unread request bytes on the connection (see the module docstring)."""

    def __init__(self, app: WSGIApp, limit: Callable[[], int], seconds: float = DRAIN_SECONDS) -> None:
        self.app = app
        self.limit = limit
        self.seconds = seconds

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        if not _has_body(environ) or not _connection_persists(environ):
            return self.app(environ, start_response)
        body = CountingInput(environ["wsgi.input"])
        environ["wsgi.input"] = body
        checked = False

        def guarded_start_response(status: str, headers: list, exc_info: Any = None) -> Any:
            nonlocal checked
            if not checked:
                checked = True
                if not drain(environ, body, self.limit(), self.seconds):
                    force_close(start_response)
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        return self.app(environ, guarded_start_response)


def _body_limit() -> int:
    from velro.errors import body_limit  # imported once Django is set up

    return body_limit()


application = KeepAliveGuard(get_wsgi_application(), limit=_body_limit)
