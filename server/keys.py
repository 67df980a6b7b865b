"""API keys and per-key quotas (issue 27).

Keys come from `TRM_API_KEY` (comma-separated) or `--api-key KEY` (repeatable; it shows in `ps`, so engine-serve warns),
named `key-1`, `key-2`, ..., and from `--api-keys-file F`, a TOML file with one `[[keys]]` table per key:

    [[keys]]
    name = "alice"                     # what logs, metrics and messages show; never the secret
    key = "sk-alice-..."
    max_concurrent = 4                 # optional: requests in progress at once
    row_steps_per_minute = 60000       # optional: model work per minute (rows x supervision steps)

With keys configured, /solve, /generate and /v1/models (and /metrics with `--metrics-auth`) need
`Authorization: Bearer <key>`; a missing or wrong key gets 401 with `WWW-Authenticate: Bearer`. A presented key is
compared with every configured one in constant time (`hmac.compare_digest`), so the answer's timing does not tell how
much of a guess was right. Without keys every request is one anonymous tenant, as before.

An empty key, or one with surrounding whitespace (it could never match: a presented key is stripped), is refused at
startup naming where it came from; dropping it instead could quietly turn keys off.

Quotas are per key: past `max_concurrent`, or with the key's row-step budget spent, a 429 names the limit and its
Retry-After says when it frees: a token bucket of `row_steps_per_minute` tokens refilled continuously. Every engine
request an HTTP request makes (a /solve, each ARC variant, each /generate grid, ...) is admitted while the bucket is
above zero and reserves its worst case (Request.max_row_steps) at once; what it did not run comes back when it
resolves, however it ends (issue 34: charged only at the end, 8 concurrent requests of a key once spent 6.4 times its
budget). So a key never spends more than its budget plus one request's reservation (and the refill). On Ray Serve
each replica enforces its own counters, so a key's limits there hold per replica.
"""

from __future__ import annotations

import hmac
import threading
import time
import tomllib
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.runtime import AsyncEngine, Overloaded, Request, RequestError
from engine.runtime.request import worst_row_steps
from engine.search import SearchParams
from server.errors import ApiError

CHALLENGE = {"WWW-Authenticate": "Bearer"}
FIELDS = {"name", "key", "max_concurrent", "row_steps_per_minute"}


@dataclass(frozen=True)
class Key:
    name: str
    secret: str = field(repr=False)
    max_concurrent: int | None = None
    row_steps_per_minute: int | None = None


def read_keys_file(path: str | Path) -> list[Key]:
    """The `[[keys]]` tables of a TOML file; errors name the file and the table at fault."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"API keys file {path}: {e}") from None
    tables = data.get("keys")
    if not isinstance(tables, list) or set(data) != {"keys"}:
        raise ValueError(f"API keys file {path}: expected only [[keys]] tables")
    keys = []
    for i, t in enumerate(tables, 1):
        where = f"API keys file {path}, [[keys]] table {i}"
        if set(t) - FIELDS:
            raise ValueError(f"{where}: unknown field(s) {sorted(set(t) - FIELDS)}; known: {sorted(FIELDS)}")
        if not isinstance(t.get("name"), str) or not t["name"] or not isinstance(t.get("key"), str) or not t["key"]:
            raise ValueError(f"{where}: needs a non-empty `name` and `key`")
        if not t["key"].strip() or t["key"] != t["key"].strip():
            problem = "`key` is blank or has surrounding whitespace (it could never match)"
            raise ValueError(f"{where} ({t['name']}): {problem}")
        limits = {k: t[k] for k in ("max_concurrent", "row_steps_per_minute") if k in t}
        for k, v in limits.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{where} ({t['name']}): `{k}` must be a positive integer")
        keys.append(Key(t["name"], t["key"], **limits))
    return keys


def configured_keys(secrets: list[str], path: str | Path | None) -> list[Key]:
    """Keys from the flags (named key-1, key-2, ...) and the keys file; names and secrets must be unique."""
    keys = [Key(f"key-{i}", s) for i, s in enumerate(secrets, 1)] + (read_keys_file(path) if path else [])
    for attr in ("name", "secret"):
        seen = [getattr(k, attr) for k in keys]
        if len(set(seen)) != len(seen):
            raise ValueError(f"two API keys share a {'name' if attr == 'name' else 'key'}")
    return keys


class Quota:
    """One key's requests in progress and its row-step bucket (any thread)."""

    def __init__(self, key: Key):
        self.key, self.running = key, 0
        self.rate = (key.row_steps_per_minute or 0) / 60.0  # tokens per second
        self.tokens, self.stamp = float(key.row_steps_per_minute or 0), time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        if self.rate:
            self.tokens = min(self.key.row_steps_per_minute, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def refusal(self, eta: Callable[[], float]) -> tuple[str, ApiError] | None:
        """(metric reason, the 429) when the key has its limit of requests in progress, else None; `eta()`: seconds
        until the first of them should finish."""
        k = self.key
        if k.max_concurrent is not None and self.running >= k.max_concurrent:
            message = f"key {k.name!r} has {self.running} requests in progress, its limit of {k.max_concurrent}"
            return "concurrency", ApiError(429, "overloaded", message, retry_after=eta())
        return None

    def reserve(self, row_steps: int) -> QuotaSpent | None:
        """Take `row_steps` from the bucket (it may go below zero by this one reservation), or say why not: the
        bucket is not above zero."""
        self._refill()
        if not self.rate:
            return None
        if self.tokens <= 0:
            k, wait = self.key, (1 - self.tokens) / self.rate  # until the bucket is back above zero
            message = (
                f"key {k.name!r} spent its {k.row_steps_per_minute} row-steps per minute (each engine request "
                f"reserves its most, {row_steps} here, and gets back what it does not run); retry in {wait:.0f} s"
            )
            return QuotaSpent(message, wait)
        self.tokens -= row_steps
        return None

    def give_back(self, row_steps: int) -> None:
        self._refill()
        self.tokens = min(self.key.row_steps_per_minute or 0, self.tokens + row_steps)


class QuotaSpent(Overloaded):
    """An engine request refused because its key's row-step bucket is spent (HTTP 429). An Overloaded, so a
    fan-out (/generate's grids) treats it as it treats a full engine: it keeps what was admitted."""

    def __init__(self, message: str, retry_after: float):
        RequestError.__init__(self, message)
        self.reason, self.limit, self.retry_after = "quota", 0, retry_after


class Keyring:
    """The configured keys and their quotas; `None` as a key means keys are off (one anonymous tenant)."""

    def __init__(self, keys: list[Key], metrics=None):
        self.keys, self.metrics = keys, metrics
        self.quotas = {k.name: Quota(k) for k in keys}
        self._lock = threading.Lock()  # quotas are charged from the engine threads
        self.models = None

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def authenticate(self, authorization: str | None) -> Key | None:
        """The key an `Authorization` header presents (None when keys are off); else a 401."""
        if not self.keys:
            return None
        scheme, _, presented = (authorization or "").partition(" ")
        presented_bytes, bearer = presented.strip().encode(), scheme.lower() == "bearer"
        found = None
        for key in self.keys:  # every key compared, in constant time each
            if hmac.compare_digest(presented_bytes, key.secret.encode()) and bearer:
                found = key
        if found is None:
            raise ApiError(
                401, "unauthorized", "a valid API key is required: Authorization: Bearer <key>", headers=CHALLENGE
            )
        return found

    @contextmanager
    def hold(self, key: Key | None) -> Iterator[None]:
        """One request of `key` in progress: refused (429) past its concurrency limit, counted while it runs (its
        row-step budget is reserved by each engine request it makes: `submit`)."""
        if key is None:
            yield
            return
        quota = self.quotas[key.name]
        with self._lock:
            refusal = quota.refusal(lambda: self.eta(key.name))
            if refusal is None:
                quota.running += 1
        if self.metrics is not None:
            self.metrics.key_requests.labels(key.name).inc()
        if refusal is not None:
            reason, error = refusal
            if self.metrics is not None:
                self.metrics.key_refusals.labels(key.name, reason).inc()
            raise error
        try:
            yield
        finally:
            with self._lock:
                quota.running -= 1

    async def held(self, key: Key | None, work: Coroutine):
        """Await a handler's `work` as one request of `key` (refused before it starts when past a quota)."""
        try:
            with self.hold(key):
                return await work
        finally:
            work.close()  # a refused request's work never started (closing a finished coroutine does nothing)

    def eta(self, tenant: str) -> float:
        """Seconds until the first of the tenant's engine requests should finish (the schedulers' estimate; 1 when
        none is known): a truthful Retry-After for its concurrency limit."""
        times = [
            s.engine.scheduler.estimate(r)
            for s in (self.models.all() if self.models is not None else [])
            if s.engine.scheduler.row_steps_per_s > 0
            for r in list(s.engine.scheduler.active)
            if r.tenant == tenant
        ]
        return min(times, default=1.0)

    def submit(
        self, facade: AsyncEngine, key: Key | None, puzzle: np.ndarray, params: SearchParams, **kwargs
    ) -> Request:
        """Admit one engine request under `key`'s tenant (fair share and quotas go by it), its worst case reserved
        from the key's row-step bucket first: refused (QuotaSpent, a 429) while the bucket is not above zero, given
        back whole if the engine refuses it, and less what it ran when it resolves (`attach`)."""
        if key is None:
            return facade.submit(puzzle, params, tenant="", **kwargs)
        quota = self.quotas[key.name]
        reserved = worst_row_steps(params) if quota.rate else 0
        with self._lock:
            refused = quota.reserve(reserved)
        if refused is not None:
            if self.metrics is not None:
                self.metrics.key_refusals.labels(key.name, "row_steps").inc()
            raise refused
        try:
            return facade.submit(puzzle, params, tenant=key.name, reserved=reserved, **kwargs)
        except BaseException:
            with self._lock:
                quota.give_back(reserved)
            raise

    def attach(self, models) -> None:
        """Settle every engine request with its tenant's quota as it resolves (a failed one too: its work ran)."""
        self.models = models
        for solver in models.all():
            solver.engine.on_resolve.append(lambda req, _, __: self.settle(req.tenant, req.reserved, req.row_steps))

    def settle(self, tenant: str, reserved: int, row_steps: int) -> None:
        """Engine thread: a request of this tenant that reserved `reserved` resolved after running `row_steps`."""
        quota = self.quotas.get(tenant)
        if quota is None:
            return
        with self._lock:
            quota.give_back(reserved - row_steps)
        if self.metrics is not None:
            self.metrics.key_row_steps.labels(tenant).inc(row_steps)
