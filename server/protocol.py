"""uvicorn's h11 protocol with an idle deadline from the moment a connection opens (issue 16: 1,000 connections that
never sent a byte stayed open). uvicorn arms its keep-alive timer only after a response; here it is also armed when
the connection is made, and keeps running while the request's headers trickle in, so a slow-headers client is
closed by the same deadline. Once a request line and headers are in, the handler's own deadline takes over."""

from __future__ import annotations

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class IdleTimeoutH11Protocol(H11Protocol):
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def data_received(self, data: bytes) -> None:
        pending, self.timeout_keep_alive_task = self.timeout_keep_alive_task, None  # super() would cancel it
        super().data_received(data)
        if pending is None:
            return
        waiting_for_headers = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting_for_headers and self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = pending
        else:
            pending.cancel()
