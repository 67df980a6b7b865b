"""The batching engine: requests of K rows, admission and scheduling, the runner, the loop, the asyncio facade."""

from engine.runtime.async_engine import AsyncEngine
from engine.runtime.engine import Engine, Stats
from engine.runtime.request import (
    Cancelled,
    DeadlineExceeded,
    EngineStopped,
    InvalidRequest,
    Overloaded,
    Request,
    RequestError,
    SearchResult,
    Timing,
    TooLarge,
)
from engine.runtime.runner import Batch, Runner, bucket_ladder
from engine.runtime.scheduler import Limits, Load, Scheduler

__all__ = [
    "AsyncEngine",
    "Batch",
    "Cancelled",
    "DeadlineExceeded",
    "Engine",
    "EngineStopped",
    "InvalidRequest",
    "Limits",
    "Load",
    "Overloaded",
    "Request",
    "RequestError",
    "Runner",
    "Scheduler",
    "SearchResult",
    "Stats",
    "Timing",
    "TooLarge",
    "bucket_ladder",
]
