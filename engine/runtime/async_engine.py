"""The asyncio facade: HTTP handlers submit and await; the engine thread does the work (SERVING.md §2.1).

Admission errors (Overloaded, TooLarge, EngineStopped) raise at once, before anything is queued. A caller that is
cancelled (a client that disconnected) cancels its request, and the engine drops its rows at the next step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from engine.runtime.engine import Engine
from engine.runtime.request import InvalidRequest, Request, SearchResult
from engine.search import SearchParams


class AsyncEngine:
    def __init__(self, engine: Engine):
        self.engine = engine
        engine.start()

    def submit(
        self,
        puzzle: np.ndarray,
        params: SearchParams,
        puzzle_id: int = 0,
        request_id: str | None = None,
        listener: Callable[[Request], None] | None = None,
        tenant: str = "",
        reserved: int = 0,
    ) -> Request:
        """Admit a request now (or raise why not); `wait` for its result. `reserved`: row-steps the caller's quota set
        aside for it (Request.reserved)."""
        try:
            req = Request(self.engine.task, puzzle, params, puzzle_id, tenant, listener=listener, reserved=reserved)
        except ValueError as e:  # e.g. commit search or augment on a task that cannot take them
            raise InvalidRequest(str(e)) from None
        if request_id:
            req.id = request_id
        return self.engine.submit(req)

    async def wait(self, req: Request) -> SearchResult:
        try:
            return await asyncio.wrap_future(req.future)
        except asyncio.CancelledError:
            self.engine.cancel(req)
            raise

    async def search(
        self, puzzle: np.ndarray, params: SearchParams, puzzle_id: int = 0, request_id: str | None = None
    ) -> SearchResult:
        return await self.wait(self.submit(puzzle, params, puzzle_id, request_id))

    async def shutdown(self, drain: bool = True, timeout: float | None = None) -> None:
        await asyncio.to_thread(self.engine.shutdown, drain, timeout)
