"""Python clients for the trm-engine HTTP API (sync and async, on httpx) and the `engine-client` CLI."""

from clients.client import (
    APIError,
    AsyncClient,
    BadRequest,
    Client,
    GenerateResult,
    NotFound,
    Overloaded,
    ServerError,
    Solution,
    SolveResult,
    Timeout,
    Unauthorized,
    Unavailable,
)
from clients.stream import Progress

__all__ = [
    "APIError",
    "AsyncClient",
    "BadRequest",
    "Client",
    "GenerateResult",
    "NotFound",
    "Overloaded",
    "Progress",
    "ServerError",
    "Solution",
    "SolveResult",
    "Timeout",
    "Unauthorized",
    "Unavailable",
]
