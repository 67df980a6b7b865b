"""Server-Sent Events for /solve and /generate (issue 17): watch a search while it runs.

A request asks for a stream with `"stream": true` or `Accept: text/event-stream`. Everything that can fail before the
engine admits the request (validation, an unknown model, a 429) still answers a plain JSON error with its status;
once admitted, the answer is `200 text/event-stream` with these events, each `data` one line of JSON:

    progress   after a supervision step (rate-limited to `stream_max_events_per_s`; `progress_json` has the fields)
    vote       ARC: after a variant finished, the vote so far (server/arc.py `vote_json`)
    result     the response body exactly as the non-streaming call returns it (always sent)
    error      instead of `result`: `{"error": {"type", "message"}}`, the one error shape (server/errors.py)
    done       the end, `data: [DONE]` (as OpenAI's streams end)

A comment line (`: ping`) goes out every PING_S seconds without events, for proxies that close idle connections.
The engine thread calls a request's listener after each step; the listener drops what comes sooner than the rate
allows, takes a snapshot (engine/runtime/progress.py) and hands it to the event loop with call_soon_threadsafe. A
client that disconnects ends the stream, which cancels the work and so the request's rows (as the plain path does).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import StreamingResponse

from engine.runtime import Request as EngineRequest
from engine.runtime.progress import Progress, snapshot
from engine.tasks import Task
from server.errors import ApiError, to_api_error
from server.middleware import outcome

log = logging.getLogger("server.stream")
MEDIA_TYPE = "text/event-stream"
PING_S = 15.0
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of the events
# One event's shape (OpenAPI 3.2's `itemSchema`; validators of 3.0/3.1 documents read `schema` per event).
EVENT_SCHEMA = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["progress", "vote", "result", "error", "done"]},
        "data": {"type": "string", "contentMediaType": "application/json", "description": "JSON, or [DONE]"},
    },
    "description": "progress... then result (or error), then done",
}
OPENAPI = {MEDIA_TYPE: {"schema": EVENT_SCHEMA}}


def wanted(body, request: Request) -> bool:
    return bool(getattr(body, "stream", False)) or MEDIA_TYPE in request.headers.get("accept", "")


def frame(event: str, data: str) -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


def progress_json(task: Task, p: Progress, sample: int | None = None) -> dict:
    """A progress event's data: `grid` holds each cell's consensus digit, `agreement` the share of rows giving it."""
    grid = task.decode(p.consensus)
    shape = np.shape(grid)
    agreement = p.agreement.round(3)
    data: dict[str, Any] = {
        "step": p.step,
        "rows": p.rows,
        "row_steps": p.row_steps,
        "best_q": round(p.best_q, 4) if math.isfinite(p.best_q) else None,
        "grid": grid,
        "agreement": (agreement.reshape(shape) if math.prod(shape) == agreement.size else agreement).tolist(),
    }
    if p.grid is not None:  # commit search
        data.update(
            node=p.node,
            nodes=p.nodes,
            backtracks=p.backtracks,
            depth=p.depth,
            committed=p.committed.tolist(),
            node_grid=task.decode(p.grid),
        )
    if sample is not None:
        data["sample"] = sample
    return data


class Watch:
    """One streamed HTTP request: its engine requests' listeners, the queue of their events, and the response."""

    def __init__(self, task: Task, max_events_per_s: float):
        self.task, self.interval = task, 1.0 / max_events_per_s
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.admitted = asyncio.Event()  # an engine took (one of) its request(s): from now on the answer streams
        self._due = 0.0  # engine thread only: when the next progress event may go

    def listener(self, sample: int | None = None) -> Callable[[EngineRequest], None]:
        def hear(req: EngineRequest) -> None:  # engine thread
            now = time.monotonic()
            if now < self._due:
                return
            self._due = now + self.interval
            self.loop.call_soon_threadsafe(self.queue.put_nowait, ("progress", (snapshot(req), sample)))

        return hear

    def event(self, kind: str, data: dict) -> None:
        """Queue an event of the handler's own (event-loop thread), e.g. ARC's `vote`."""
        self.queue.put_nowait((kind, data))

    async def respond(self, request: Request, work: Coroutine, result_json: Callable[[Any], dict]):
        """Run `work` (which sets `admitted`); answer a JSON error if it fails before admission, else stream."""
        task = asyncio.ensure_future(work)
        admitted = asyncio.ensure_future(self.admitted.wait())
        try:
            await asyncio.wait({task, admitted}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            admitted.cancel()
        if task.done() and not self.admitted.is_set():
            task.result()  # raises the refusal: a plain status and JSON error
        # Done callbacks run after the call_soon_threadsafe puts made before the future resolved, so the last progress
        # events are queued before the end.
        task.add_done_callback(lambda t: self.queue.put_nowait(("end", t)))
        drain = request.app.state.drain
        drain.inflight.add(task)
        task.add_done_callback(drain.inflight.discard)
        body = self._events(request, task, result_json)
        return StreamingResponse(body, media_type=MEDIA_TYPE, headers=HEADERS)

    async def _events(self, request: Request, task: asyncio.Task, result_json) -> AsyncIterator[bytes]:
        cutoff = asyncio.ensure_future(request.app.state.drain.cutoff.wait())
        getter: asyncio.Future | None = None
        request.state.outcome = "cancelled"  # until the end is sent: a client that leaves early cancelled it
        try:
            while True:
                if getter is None or getter.done():  # a getter still waiting keeps its place (no event is lost)
                    getter = asyncio.ensure_future(self.queue.get())
                done, _ = await asyncio.wait({getter, cutoff}, timeout=PING_S, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    if cutoff in done:
                        yield self._error(request, _drain_error(request))
                        return
                    yield b": ping\n\n"
                    continue
                kind, item = getter.result()
                if kind == "progress":
                    p, sample = item
                    yield frame("progress", json.dumps(progress_json(self.task, p, sample)))
                    continue
                if kind != "end":
                    yield frame(kind, json.dumps(item))
                    continue
                if item.cancelled():
                    return
                if (error := item.exception()) is not None:
                    yield self._error(request, error)
                    return
                request.state.outcome = "ok"
                yield frame("result", json.dumps(result_json(item.result())))
                yield frame("done", "[DONE]")
                return
        finally:  # the client left (or the stream ended): the work and its rows stop here
            for pending in (getter, cutoff, task):
                if pending is not None:
                    pending.cancel()

    def _error(self, request: Request, exc: BaseException) -> bytes:
        err = to_api_error(exc)
        if err.status >= 500 and err.status not in (503, 504):
            log.error("streamed request failed", exc_info=exc)
        request.state.outcome = outcome(err.status)
        return frame("error", json.dumps({"error": {"type": err.type, "message": err.message}})) + frame(
            "done", "[DONE]"
        )


def _drain_error(request: Request) -> ApiError:
    timeout = request.app.state.settings.drain_timeout_s
    message = f"the service shut down before the request finished (drain timeout {timeout:g} s)"
    return ApiError(503, "unavailable", message, retry_after=5)
