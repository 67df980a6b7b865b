"""Pure ASGI middleware (BaseHTTPMiddleware would break the handlers' `receive`-based disconnect detection):
request ids (X-Request-ID in and out), the body size limit (413), one JSON log line and one outcome count per
request."""

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
            limited = await self._limit_body(headers, receive)
            if limited is None:
                limit = f"the request body exceeds the limit of {self.max_body} bytes"
                await error_response(413, "payload_too_large", limit)(scope, receive, send_with_id)
            else:
                await self.app(scope, limited, send_with_id)
        finally:
            path, took = scope["path"], time.perf_counter() - start
            if path in COUNTED:
                self.metrics.requests.labels(path.strip("/"), outcome(status[0])).inc()
            if path != "/metrics":
                fields = {"method": scope["method"], "path": path, "status": status[0], "outcome": outcome(status[0])}
                fields["duration_s"] = round(took, 6)
                log.info("request", extra={"fields": fields})
            request_id.reset(token)

    async def _limit_body(self, headers: dict, receive):
        """The receive to pass on, or None when the body is over the limit. A declared Content-Length is checked
        before reading; otherwise the body is read (up to the limit) and replayed."""
        declared = headers.get("content-length")
        if declared is not None:
            return receive if declared.isdigit() and int(declared) <= self.max_body else None
        if "transfer-encoding" not in headers:
            return receive
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                chunks.append(message)
                break
            size += len(message.get("body", b""))
            if size > self.max_body:
                return None
            chunks.append(message)
            if not message.get("more_body", False):
                break

        async def replay():
            return chunks.pop(0) if chunks else await receive()

        return replay
