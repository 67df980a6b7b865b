"""One error shape, `{"error": {"type", "message"}}`, mapped from typed exceptions in one place (SERVING.md §7).

| exception | status | type |
|---|---|---|
| validation, body not JSON, PuzzleError, no solution, TooLarge | 422 | invalid_request, invalid_puzzle, too_large |
| no API key, or a wrong one (when keys are configured) | 401 + WWW-Authenticate: Bearer | unauthorized |
| Content-Length and Transfer-Encoding both sent | 400 | bad_request |
| body over the size limit | 413 | payload_too_large |
| a body sent without `Content-Type: application/json` | 415 | unsupported_media_type |
| unknown model, no generator loaded, unknown route | 404 | not_found |
| Overloaded (caps, or the deadline cannot be met), a key's quota | 429 + Retry-After | overloaded |
| loading, draining (EngineStopped), cut off by the drain timeout | 503 + Retry-After | unavailable |
| DeadlineExceeded | 504 | deadline_exceeded |
| client went away | 499 (nobody reads it) | cancelled |
| anything else | 500 | internal |
"""

from __future__ import annotations

import json
import logging
import math
import sys

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from engine.runtime import (
    Cancelled,
    DeadlineExceeded,
    EngineStopped,
    InvalidRequest,
    Overloaded,
    RequestError,
    TooLarge,
)
from engine.tasks import PuzzleError
from server.models import ModelNotFound

log = logging.getLogger("server.errors")


class ApiError(Exception):
    def __init__(
        self, status: int, type: str, message: str, retry_after: float | None = None, headers: dict | None = None
    ):
        super().__init__(message)
        self.status, self.type, self.message, self.retry_after = status, type, message, retry_after
        self.headers = headers or {}


class ClientDisconnected(Exception):
    pass


def error_response(
    status: int, type: str, message: str, retry_after: float | None = None, close: bool = False, headers=None
) -> JSONResponse:
    """The one error shape. `close`: the connection is closed after it (a body left unread cannot be framed)."""
    headers = dict(headers or {})
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    if close:
        headers["Connection"] = "close"
    return JSONResponse({"error": {"type": type, "message": message}}, status_code=status, headers=headers)


def to_api_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, PuzzleError):
        return ApiError(422, "invalid_puzzle", f"puzzle: {exc}")
    if isinstance(exc, TooLarge):
        return ApiError(422, "too_large", str(exc))
    if isinstance(exc, InvalidRequest):
        return ApiError(422, "invalid_request", str(exc))
    if isinstance(exc, Overloaded):
        return ApiError(429, "overloaded", str(exc), exc.retry_after)
    if isinstance(exc, EngineStopped):
        return ApiError(503, "unavailable", str(exc), 5)
    if isinstance(exc, DeadlineExceeded):
        return ApiError(504, "deadline_exceeded", str(exc))
    if isinstance(exc, (Cancelled, ClientDisconnected)):
        return ApiError(499, "cancelled", "the request was cancelled")
    if isinstance(exc, ModelNotFound):
        return ApiError(404, "not_found", str(exc.args[0]))
    if isinstance(exc, RequestError):
        return ApiError(500, "engine_error", str(exc))
    return ApiError(500, "internal", f"internal error: {type(exc).__name__}")


def _parse_fault(cause: BaseException | None) -> str | None:
    """What FastAPI's bare `400 There was an error parsing the body` was about (its cause), named."""
    if isinstance(cause, RecursionError):
        return "body: the JSON is nested deeper than the parser's limit"
    if isinstance(cause, UnicodeDecodeError):
        return f"body: invalid UTF-8 at byte {cause.start}"
    if isinstance(cause, ValueError) and "integer string conversion" in str(cause):
        return f"body: an integer has more than {sys.get_int_max_str_digits()} digits"
    return None


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        if e.get("type") == "json_invalid" and isinstance(exc.body, str):  # loc is (body, offset)
            syntax = json.JSONDecodeError(e.get("ctx", {}).get("error", "invalid"), exc.body, e["loc"][-1])
            parts.append(f"body: invalid JSON at line {syntax.lineno}, column {syntax.colno}: {syntax.msg}")
            continue
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        if isinstance(exc.body, bytes):
            # FastAPI reads a body as JSON only under a JSON Content-Type (curl -d alone sends a form type). Refused
            # rather than read as JSON anyway: a form or text/plain POST is one a web page may send cross-site
            # without a CORS preflight
            content_type = request.headers.get("content-type")
            sent = f"Content-Type {content_type!r}" if content_type else "no Content-Type header"
            message = f"body: send JSON with the header Content-Type: application/json (this request has {sent})"
            return error_response(415, "unsupported_media_type", message)
        return error_response(422, "invalid_request", _validation_message(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        if exc.status_code == 400 and (fault := _parse_fault(exc.__cause__)):
            return error_response(422, "invalid_request", fault)
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, kind, str(exc.detail))

    async def _mapped(request: Request, exc: Exception):
        err = to_api_error(exc)
        if err.status >= 500 and err.status not in (503, 504):
            log.error("request failed", exc_info=exc)
        return error_response(err.status, err.type, err.message, err.retry_after, headers=err.headers)

    # Typed errors go through Starlette's ExceptionMiddleware; a bare Exception handler would sit in
    # ServerErrorMiddleware, which re-raises after answering, so only the truly unexpected land there.
    for kind in (ApiError, PuzzleError, RequestError, ModelNotFound, ClientDisconnected, Exception):
        app.add_exception_handler(kind, _mapped)
