"""`Client` and `AsyncClient` for the trm-engine HTTP API, on httpx.

Errors are typed (`BadRequest`, `Unauthorized`, `NotFound`, `Overloaded`, `Unavailable`, `Timeout`, `ServerError`, all
`APIError`). `api_key` (default: the TRM_API_KEY environment variable, as openai-python reads OPENAI_API_KEY) goes out
as `Authorization: Bearer <key>` on every request.
429 and 503 answers and connection failures are retried up to `max_retries` times, waiting the server's
`Retry-After` when it sends one (0-60 s) and an exponential backoff with jitter otherwise (openai-python's
`_should_retry` policy). A 504 (the server's deadline) is not retried.

`solve(puzzle, solutions=N)` asks for up to N distinct verified solutions of a puzzle with several: the result's
`solutions` (each a `Solution`: solution, grid, samples, score), `count` (the puzzle's exact number, when known) and
`coverage`.

`solve_stream` / `generate_stream` ask for Server-Sent Events and yield `Progress` events as the search runs, then the
result (clients/stream.py); an `error` event raises the typed error; only a refusal before the stream starts is retried.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from clients.stream import MEDIA_TYPE, EventDecoder, Progress

DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUS = (429, 503)
# the status an `error` event's type stands for (the stream itself answered 200); server/errors.py has the table
STATUS_OF_TYPE = {
    "overloaded": 429,
    "unavailable": 503,
    "deadline_exceeded": 504,
    "not_found": 404,
    "unauthorized": 401,
    "cancelled": 499,
    "internal": 500,
    "engine_error": 500,
}


class APIError(Exception):
    def __init__(self, status: int, type: str, message: str, request_id: str | None = None):
        super().__init__(f"{status} {type}: {message}")
        self.status, self.type, self.message, self.request_id = status, type, message, request_id


class BadRequest(APIError):
    """422 (bad input: the message names the field, row or cell) or 413 (body too large)."""


class Unauthorized(APIError):
    """401: the service has API keys and this client sent none, or a wrong one (api_key= or TRM_API_KEY)."""


class NotFound(APIError):
    """404: unknown model, or no generator loaded."""


class Overloaded(APIError):
    """429: admission refused; retry after `retry_after` seconds."""

    def __init__(self, *args, retry_after: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class Unavailable(Overloaded):
    """503: loading or draining (or the connection failed)."""


class Timeout(APIError):
    """504 (the server's deadline passed) or the client's own read timeout."""


class ServerError(APIError):
    """5xx other than 503/504."""


@dataclass
class Solution:
    """One of the distinct verified solutions /solve found when asked for `solutions`."""

    solution: str | list  # in the same form as the puzzle
    grid: list
    samples: int  # rows whose answer it was
    score: float  # mean sigmoid(q halt) of those rows

    @classmethod
    def from_json(cls, d: dict) -> Solution:
        return cls(d["solution"], d["grid"], d["samples"], d["score"])


@dataclass
class SolveResult:
    solution: str | list
    grid: list
    verified: bool | None
    confidence: float
    agreement: float
    selector: str
    rollouts: int
    steps: int
    model: str
    timing: dict
    raw: dict = field(repr=False)
    # with `solutions=N`: the distinct verified solutions, the most often found first (None when not asked for)
    solutions: list[Solution] | None = None
    count: int | None = None  # the puzzle's exact number of solutions, when the server could count them
    coverage: float | None = None  # len(solutions) / count, when both are known

    @classmethod
    def from_json(cls, d: dict) -> SolveResult:
        keys = ("solution", "grid", "verified", "confidence", "agreement", "selector", "rollouts", "steps", "model")
        found = d.get("solutions")
        return cls(
            **{k: d[k] for k in keys},
            timing=d["timing"],
            raw=d,
            solutions=[Solution.from_json(s) for s in found] if found is not None else None,
            count=d.get("count"),
            coverage=d.get("coverage"),
        )


@dataclass
class GenerateResult:
    items: list[dict]
    complete: bool
    sampled: int
    valid: int
    validity: float
    model: str
    raw: dict = field(repr=False)

    @classmethod
    def from_json(cls, d: dict) -> GenerateResult:
        keys = ("items", "complete", "sampled", "valid", "validity", "model")
        return cls(**{k: d[k] for k in keys}, raw=d)


def parse_error(response: httpx.Response) -> APIError:
    """An error response -> the typed exception (the server's `{"error": {"type", "message"}}` shape)."""
    try:
        body = response.json()["error"]
        kind, message = body["type"], body["message"]
    except Exception:
        kind, message = "http_error", response.text[:500]
    status, rid = response.status_code, response.headers.get("x-request-id")
    return typed_error(status, kind, message, rid, _retry_after(response))


def typed_error(
    status: int, kind: str, message: str, rid: str | None = None, retry_after: float | None = None
) -> APIError:
    if status == 429:
        return Overloaded(status, kind, message, rid, retry_after=retry_after)
    if status == 503:
        return Unavailable(status, kind, message, rid, retry_after=retry_after)
    if status == 504:
        return Timeout(status, kind, message, rid)
    if status == 404:
        return NotFound(status, kind, message, rid)
    if status == 401:
        return Unauthorized(status, kind, message, rid)
    if status >= 500:
        return ServerError(status, kind, message, rid)
    return BadRequest(status, kind, message, rid)


def event_error(data: str, rid: str | None) -> APIError:
    """An `error` event's data (the server's error shape) -> the typed exception."""
    try:
        body = json.loads(data)["error"]
        kind, message = body["type"], body["message"]
    except Exception:
        kind, message = "stream_error", data[:500]
    return typed_error(STATUS_OF_TYPE.get(kind, 422 if kind.startswith("invalid") else 500), kind, message, rid)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        value = float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None
    return value if 0 <= value <= 60 else None


def solve_body(puzzle: str | list, task=None, model=None, timeout_s=None, solutions=None, **search) -> dict:
    """/solve's body: the top-level fields, and every other keyword (rollouts=, strategy=, ...) under `search`."""
    body: dict[str, Any] = {"puzzle": puzzle}
    for k, v in (("task", task), ("model", model), ("timeout_s", timeout_s), ("solutions", solutions)):
        if v is not None:
            body[k] = v
    search = {k: v for k, v in search.items() if v is not None}
    if search:
        body["search"] = search
    return body


def generate_body(count: int, kind: str, clues: int | None, seed: int | None, **extra) -> dict:
    body = {"count": count, "kind": kind, **{k: v for k, v in extra.items() if v is not None}}
    if clues is not None:
        body["clues"] = clues
    if seed is not None:
        body["seed"] = seed
    return body


class _Base:
    def __init__(self, base_url: str, timeout: float, max_retries: int, backoff: float, api_key: str | None):
        self.base_url, self.max_retries, self.backoff = base_url.rstrip("/"), max_retries, backoff
        # read must outlast the server's own deadline (SERVING.md §7), so it defaults to the whole timeout
        self.timeout = httpx.Timeout(timeout, connect=min(timeout, 5.0))
        api_key = api_key if api_key is not None else os.environ.get("TRM_API_KEY")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _delay(self, attempt: int, error: APIError | None) -> float:
        if isinstance(error, Overloaded) and error.retry_after is not None:
            return error.retry_after
        return min(self.backoff * 2**attempt, 8.0) * (0.75 + 0.5 * random.random())

    def _outcome(self, response: httpx.Response) -> dict:
        if response.status_code >= 400:
            raise parse_error(response)
        return response.json()

    @staticmethod
    def _event(decoded: tuple[str, str], result_type, rid: str | None):
        """A decoded event -> a Progress, the result, or None at `done`; raises at `error`. Other events are skipped
        before (EVENTS)."""
        event, data = decoded
        if event == "progress":
            return Progress.from_json(json.loads(data))
        if event == "result":
            return result_type.from_json(json.loads(data))
        if event == "error":
            raise event_error(data, rid)
        return None


EVENTS = ("progress", "result", "error", "done")
STREAM_HEADERS = {"accept": MEDIA_TYPE}
ENDED = "the event stream ended before its result"


def _connect_error(e: httpx.TransportError) -> APIError:
    if isinstance(e, httpx.TimeoutException):
        return Timeout(0, "client_timeout", f"no answer in time: {e}")
    return Unavailable(0, "connection_error", f"{type(e).__name__}: {e}")


class Client(_Base):
    """Synchronous client: `Client(url).solve(puzzle, rollouts=8)`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        timeout: float = 120.0,
        max_retries: int = 2,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
        api_key: str | None = None,
    ):
        super().__init__(base_url, timeout, max_retries, backoff, api_key)
        self._http = httpx.Client(
            base_url=self.base_url, timeout=self.timeout, transport=transport, headers=self.headers
        )

    def request(self, method: str, path: str, json: dict | None = None) -> dict:
        for attempt in range(self.max_retries + 1):
            try:
                return self._outcome(self._http.request(method, path, json=json))
            except (APIError, httpx.TransportError) as e:
                error = _connect_error(e) if isinstance(e, httpx.TransportError) else e
                if not _retryable(error) or attempt == self.max_retries:
                    raise error from None
                time.sleep(self._delay(attempt, error))
        raise AssertionError("unreachable")

    def solve(self, puzzle: str | list, **kwargs) -> SolveResult:
        return SolveResult.from_json(self.request("POST", "/solve", solve_body(puzzle, **kwargs)))

    def solve_stream(self, puzzle: str | list, **kwargs) -> Iterator[Progress | SolveResult]:
        """`solve`, watched: Progress events as the search runs, then the SolveResult."""
        return self._stream("/solve", solve_body(puzzle, **kwargs), SolveResult)

    def generate_stream(
        self, count: int = 1, kind: str = "grid", clues: int | None = None, seed: int | None = None, **extra
    ) -> Iterator[Progress | GenerateResult]:
        return self._stream("/generate", generate_body(count, kind, clues, seed, **extra), GenerateResult)

    def _stream(self, path: str, body: dict, result_type) -> Iterator:
        body = {**body, "stream": True}
        for attempt in range(self.max_retries + 1):
            started = False
            try:
                with self._http.stream("POST", path, json=body, headers=STREAM_HEADERS) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise parse_error(response)
                    started = True  # from here on nothing is retried: events were (or may have been) seen
                    decoder, rid = EventDecoder(), response.headers.get("x-request-id")
                    for line in response.iter_lines():
                        if (decoded := decoder.feed(line)) is None or decoded[0] not in EVENTS:
                            continue
                        item = self._event(decoded, result_type, rid)
                        if item is None:
                            return
                        yield item
                    raise ServerError(0, "stream_ended", ENDED, rid)
            except (APIError, httpx.TransportError) as e:
                error = _connect_error(e) if isinstance(e, httpx.TransportError) else e
                if started or not _retryable(error) or attempt == self.max_retries:
                    raise error from None
                time.sleep(self._delay(attempt, error))

    def generate(
        self, count: int = 1, kind: str = "grid", clues: int | None = None, seed: int | None = None, **extra
    ) -> GenerateResult:
        return GenerateResult.from_json(
            self.request("POST", "/generate", generate_body(count, kind, clues, seed, **extra))
        )

    def models(self) -> list[dict]:
        return self.request("GET", "/v1/models")["data"]

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient(_Base):
    """Asynchronous client: `await AsyncClient(url).solve(puzzle)`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        timeout: float = 120.0,
        max_retries: int = 2,
        backoff: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
        api_key: str | None = None,
    ):
        super().__init__(base_url, timeout, max_retries, backoff, api_key)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=self.timeout, transport=transport, headers=self.headers
        )

    async def request(self, method: str, path: str, json: dict | None = None) -> dict:
        for attempt in range(self.max_retries + 1):
            try:
                return self._outcome(await self._http.request(method, path, json=json))
            except (APIError, httpx.TransportError) as e:
                error = _connect_error(e) if isinstance(e, httpx.TransportError) else e
                if not _retryable(error) or attempt == self.max_retries:
                    raise error from None
                await asyncio.sleep(self._delay(attempt, error))
        raise AssertionError("unreachable")

    async def solve(self, puzzle: str | list, **kwargs) -> SolveResult:
        return SolveResult.from_json(await self.request("POST", "/solve", solve_body(puzzle, **kwargs)))

    def solve_stream(self, puzzle: str | list, **kwargs) -> AsyncIterator[Progress | SolveResult]:
        """`solve`, watched: `async for` over Progress events, then the SolveResult."""
        return self._stream("/solve", solve_body(puzzle, **kwargs), SolveResult)

    def generate_stream(
        self, count: int = 1, kind: str = "grid", clues: int | None = None, seed: int | None = None, **extra
    ) -> AsyncIterator[Progress | GenerateResult]:
        return self._stream("/generate", generate_body(count, kind, clues, seed, **extra), GenerateResult)

    async def _stream(self, path: str, body: dict, result_type) -> AsyncIterator:
        body = {**body, "stream": True}
        for attempt in range(self.max_retries + 1):
            started = False
            try:
                async with self._http.stream("POST", path, json=body, headers=STREAM_HEADERS) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise parse_error(response)
                    started = True
                    decoder, rid = EventDecoder(), response.headers.get("x-request-id")
                    async for line in response.aiter_lines():
                        if (decoded := decoder.feed(line)) is None or decoded[0] not in EVENTS:
                            continue
                        item = self._event(decoded, result_type, rid)
                        if item is None:
                            return
                        yield item
                    raise ServerError(0, "stream_ended", ENDED, rid)
            except (APIError, httpx.TransportError) as e:
                error = _connect_error(e) if isinstance(e, httpx.TransportError) else e
                if started or not _retryable(error) or attempt == self.max_retries:
                    raise error from None
                await asyncio.sleep(self._delay(attempt, error))

    async def generate(
        self, count: int = 1, kind: str = "grid", clues: int | None = None, seed: int | None = None, **extra
    ) -> GenerateResult:
        body = generate_body(count, kind, clues, seed, **extra)
        return GenerateResult.from_json(await self.request("POST", "/generate", body))

    async def models(self) -> list[dict]:
        return (await self.request("GET", "/v1/models"))["data"]

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


def _retryable(error: APIError) -> bool:
    return isinstance(error, Overloaded)  # 429, 503 and connection failures; never 4xx input errors or 504
