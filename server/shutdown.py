"""Graceful shutdown (SERVING.md §2.8): drain the app before uvicorn stops, so a SIGTERM loses no request silently.

On the first SIGTERM (or SIGINT) /readyz turns 503 "draining" at once and stays reachable, new work gets 503 with
Retry-After, in-flight requests have `drain_timeout_s` to finish and those still running then get a JSON 503; only
then does uvicorn close its sockets and exit. uvicorn alone stops accepting connections at the signal and, after its
graceful timeout, cancels what runs, which answers a plain-text 500 (issue 16). A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import uvicorn

log = logging.getLogger("server.shutdown")
POLL_S = 0.05
CUT_OFF_GRACE_S = 5.0  # for the cut-off requests' 503s to be written once they are cancelled


@dataclass(eq=False)
class Drain:
    """One app's in-flight handlers and the drain's progress (event-loop side only)."""

    inflight: set = field(default_factory=set)  # handler tasks, registered by `cancel_on_disconnect`
    cutoff: asyncio.Event = field(default_factory=asyncio.Event)  # set: in-flight handlers answer 503 now
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    started: bool = False


async def drain(app, timeout: float) -> None:
    """Refuse new work, give in-flight requests `timeout` seconds, cut off the rest with a 503. Idempotent."""
    state, d = app.state, app.state.drain
    if d.started:
        await d.finished.wait()
        return
    d.started = True
    state.phase = "draining"
    state.metrics.ready.set(0)
    log.info("draining", extra={"fields": {"in_flight": len(d.inflight), "timeout_s": timeout}})
    end = time.monotonic() + timeout
    while d.inflight and time.monotonic() < end:
        await asyncio.sleep(POLL_S)
    if d.inflight:
        log.warning("drain timeout: cutting off requests", extra={"fields": {"requests": len(d.inflight)}})
        d.cutoff.set()
        end = time.monotonic() + CUT_OFF_GRACE_S
        while d.inflight and time.monotonic() < end:
            await asyncio.sleep(POLL_S)
    d.finished.set()


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first exit signal drains `app` (above) before uvicorn's own shutdown begins."""

    def __init__(self, config: uvicorn.Config, app, timeout: float):
        super().__init__(config)
        self.app, self.timeout = app, timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._drain_task: asyncio.Task | None = None  # a reference, so the task is not garbage-collected

    async def startup(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig, frame) -> None:
        if self._loop is None or not self.started or self._draining or self.should_exit:
            return super().handle_exit(sig, frame)  # not serving yet, or a second signal: uvicorn's exit
        self._draining = True
        self._captured_signals.append(sig)  # uvicorn re-raises it after its shutdown, as it does without us
        self._loop.call_soon_threadsafe(self._start_drain)  # a signal handler must not touch the loop directly

    def _start_drain(self) -> None:
        self._drain_task = self._loop.create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await drain(self.app, self.timeout)
        finally:
            self.should_exit = True
