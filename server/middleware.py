"""Pure ASGI middleware (BaseHTTPMiddleware would break the handlers' `receive`-based disconnect detection):
request ids (X-Request-ID in and out), the body size limit (413), one JSON log line and one outcome count per
request.

The limit holds for the bytes actually received: a body is read (up to the limit) and replayed, whatever
Content-Length says; a declared length over the limit is refused before any byte is read; a request with both
Content-Length and Transfer-Encoding is refused outright (RFC 9112 §6.1: they disagree on where the body ends;
issue 16 found the parser reading a 64 MiB chunked body behind `Content-Length: 5`). Starlette's own body limit
(FastAPI `max_body_size`) is not used: it sits outside user middleware and answers 413 in plain text.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from server.errors import error_response
from server.logs import request_id
from server.metrics import Metrics

log = logging.getLogger("server.access")
REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
COUNTED = {"/solve", "/generate"}


def outcome(status: int) -> str:
    if status < 400:
        return "ok"
    return {429: "rejected", 503: "unavailable", 504: "timeout", 499: "cancelled"}.get(
        status, "error" if status >= 500 else "invalid"
    )


class RequestContext:
    def __init__(self, app, metrics: Metrics, max_body_bytes: int):
        self.app, self.metrics, self.max_body = app, metrics, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        rid = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id.set(rid)
        start, status = time.perf_counter(), [500]

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            refusal = self._refuse_framing(headers)
            limited = await self._limit_body(headers, receive) if refusal is None else None
            if refusal is None and limited is None:
                limit = f"the request body exceeds the limit of {self.max_body} bytes"
                refusal = error_response(413, "payload_too_large", limit, close=True)
            if refusal is not None:
                await refusal(scope, receive, send_with_id)
            else:
                await self.app(scope, limited, send_with_id)
        finally:
            path, took = scope["path"], time.perf_counter() - start
            # a streamed answer is 200 from its first byte; its handler records how it really ended (server/stream.py)
            result = scope["state"].get("outcome") or outcome(status[0])
            if path in COUNTED:
                self.metrics.requests.labels(path.strip("/"), result).inc()
            if path != "/metrics":
                fields = {"method": scope["method"], "path": path, "status": status[0], "outcome": result}
                if key := scope["state"].get("key"):  # the API key's name (never its secret)
                    fields["key"] = key
                fields["duration_s"] = round(took, 6)
                log.info("request", extra={"fields": fields})
            request_id.reset(token)

    def _refuse_framing(self, headers: dict):
        """An error response for a request whose framing headers are refused, else None."""
        declared = headers.get("content-length")
        if declared is not None and "transfer-encoding" in headers:
            message = "a request may not carry both Content-Length and Transfer-Encoding"
            return error_response(400, "bad_request", message, close=True)
        if declared is not None and not (declared.isdigit() and int(declared) <= self.max_body):
            limit = f"the request body exceeds the limit of {self.max_body} bytes"
            return error_response(413, "payload_too_large", limit, close=True)
        return None

    async def _limit_body(self, headers: dict, receive):
        """The receive to pass on, or None when more bytes than the limit arrive: the body is read (up to the limit)
        and replayed."""
        if "content-length" not in headers and "transfer-encoding" not in headers:
            return receive  # no body
        chunks, size = [], 0
        while True:
            message = await receive()
            chunks.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_body:
                return None
            if not message.get("more_body", False):
                break

        async def replay():
            return chunks.pop(0) if chunks else await receive()

        return replay
