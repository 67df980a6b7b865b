"""Streamed answers (`"stream": true`): the Server-Sent Events of /solve and /generate, decoded into typed events.

The server sends `progress` events, then `result` (the body the plain call returns) or `error` (the one error
shape), then `done` (server/stream.py). `Client.solve_stream` yields `Progress` objects and then the `SolveResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

MEDIA_TYPE = "text/event-stream"


@dataclass(frozen=True)
class Progress:
    """The search after a supervision step: per cell the rows' consensus digit and the share of rows that give it."""

    step: int
    rows: int
    row_steps: int
    best_q: float | None
    grid: list
    agreement: list
    node: int | None = None  # commit search: the node being expanded
    nodes: int | None = None
    backtracks: int | None = None
    depth: int | None = None
    committed: list[int] | None = None  # commit search: flat indices of the cells committed beyond the givens
    node_grid: list | None = None  # commit search: the node's grid (givens and committed cells, 0 elsewhere)
    sample: int | None = None  # /generate: which of the request's grids this is about
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict) -> Progress:
        names = {f.name for f in fields(cls)} - {"raw"}
        return cls(**{k: v for k, v in d.items() if k in names}, raw=d)


class EventDecoder:
    """Lines of an event stream in, `(event, data)` out at each blank line (the WHATWG rules this API needs: `event`
    and `data` fields, comment lines starting with ':', multi-line data joined by newlines)."""

    def __init__(self) -> None:
        self.event, self.data = "message", []

    def feed(self, line: str) -> tuple[str, str] | None:
        if not line:
            out = (self.event, "\n".join(self.data)) if self.data else None
            self.event, self.data = "message", []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        return None
