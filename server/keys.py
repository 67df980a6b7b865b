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
Retry-After says when it frees: a token bucket of `row_steps_per_minute` tokens refilled continuously; a request is
admitted while the bucket is above zero and its row-steps are charged as the engine resolves it (it may overdraw;
the next one then waits until the bucket refills past zero). On Ray Serve each replica enforces its own counters, so
a key's limits there hold per replica.
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
        """(metric reason, the 429) when the key is past a quota, else None; `eta()`: seconds until the first of the
        key's requests in progress should finish."""
        k = self.key
        if k.max_concurrent is not None and self.running >= k.max_concurrent:
            message = f"key {k.name!r} has {self.running} requests in progress, its limit of {k.max_concurrent}"
            return "concurrency", ApiError(429, "overloaded", message, retry_after=eta())
        self._refill()
        if self.rate and self.tokens <= 0:
            wait = (1 - self.tokens) / self.rate  # until the bucket is back above zero
            message = f"key {k.name!r} spent its {k.row_steps_per_minute} row-steps per minute; retry in {wait:.0f} s"
            return "row_steps", ApiError(429, "overloaded", message, retry_after=wait)
        return None

    def charge(self, row_steps: int) -> None:
        self._refill()
        self.tokens -= row_steps


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
        """One request of `key` in progress: refused (429) past its quotas, counted while it runs."""
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

    def attach(self, models) -> None:
        """Charge every engine request to its tenant's quota as it resolves (a failed one too: its work ran)."""
        self.models = models
        for solver in models.all():
            solver.engine.on_resolve.append(lambda req, result, error: self.charge(req.tenant, req.row_steps))

    def charge(self, tenant: str, row_steps: int) -> None:
        """Engine thread: a request of this tenant resolved after running `row_steps`."""
        quota = self.quotas.get(tenant)
        if quota is None:
            return
        with self._lock:
            quota.charge(row_steps)
        if self.metrics is not None:
            self.metrics.key_row_steps.labels(tenant).inc(row_steps)
