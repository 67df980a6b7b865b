"""Ray Serve: replicas of the service behind a light ingress (issue 24; SERVING.md §10).

    client -> Serve proxy -> Ingress (no model) -> DeploymentHandle -> Engines replica 1..N (its own engines each)

Each Engines replica runs the app of `engine-serve` (server.app.create_app, its lifespan, one set of engines) and
answers the HTTP requests handed to it through ASGI, in process; the Ingress forwards each request (method, path,
headers, body) and passes the app's response messages on as they come. So every answer is the app's own, byte for
byte: the JSON bodies, the one error shape, Retry-After, SSE streams, /v1/models, the page at /.

Why an ingress rather than `serve.ingress(app)` on the engine replicas: when a replica dies Serve answers a bare 500
and cuts an SSE stream (SERVING.md §10.3). The ingress instead retries a request that has had no byte yet on another
replica (no endpoint has side effects, and /solve is deterministic for its seed) and otherwise ends it in our shape:
a JSON 503, or an `error` event then `done` on a stream that had begun. Serve's own queue limit on the engines
(`max_queued_requests`) reaches the ingress as BackPressureError and answers 429 in our shape, with Retry-After.

Readiness: an Engines replica's constructor returns only once its checkpoints are loaded and warm (Engine.warm_up),
so Serve routes nothing to it before; its health check reads what /readyz reads. A replica being removed drains like
`engine-serve` on SIGTERM: Serve stops routing to it and waits for its requests, then the app's lifespan drains.

Metrics: each Engines replica serves its app's registry (the trm_* series) on a port of its own, and
`GET /metrics/targets` on the ingress lists those ports and every node's Ray metrics export (the ray_serve_* series)
in Prometheus' HTTP service-discovery format: one `http_sd_configs` entry scrapes them all, and `sum(...)` adds the
replicas up. Start it with `serve run deploy/ray-serve.yaml` (deploy/README.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import suppress

from engine.ray_extra import require_ray

ray = require_ray()
from ray import serve  # noqa: E402
from ray.exceptions import RayActorError  # noqa: E402
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError  # noqa: E402

from server.errors import error_response  # noqa: E402
from server.settings import Settings  # noqa: E402
from server.stream import frame  # noqa: E402

log = logging.getLogger("server.ray_serve")
SCOPE_KEYS = ("method", "path", "raw_path", "query_string", "headers", "client", "server", "scheme", "http_version")
RETRIES = 2  # another replica for a request that got no byte yet; then a 503
RETRY_WAIT_S = 0.5  # for Serve to stop routing to the dead replica
LOST = (RayActorError, ReplicaUnavailableError)  # the replica died or left
TARGETS, NAMESPACE = "trm-metrics-targets", "trm"
EXTRA_ONGOING = 16  # a replica's requests beyond its engine's queue cap: /readyz, /v1/models, the page, refusals


@ray.remote(num_cpus=0)
class MetricsTargets:
    """The `host:port` of every Engines replica's metrics (a named actor; the ingress reads it for discovery)."""

    def __init__(self):
        self.targets: set[str] = set()

    def add(self, target: str) -> None:
        self.targets.add(target)

    def remove(self, target: str) -> None:
        self.targets.discard(target)

    def list(self) -> list[str]:
        return sorted(self.targets)


def metrics_targets():
    return MetricsTargets.options(name=TARGETS, namespace=NAMESPACE, lifetime="detached", get_if_exists=True).remote()


@serve.deployment(name="Engines", graceful_shutdown_timeout_s=35, health_check_period_s=5)
class Engines:
    """One replica: the service's app with its own engines, answering forwarded HTTP requests in process."""

    async def __init__(self, settings: dict):
        import torch
        from prometheus_client import start_http_server

        from server.app import create_app
        from server.logs import setup_logging

        self.settings = Settings(**settings)
        setup_logging(self.settings.log_level)
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        self.app = create_app(self.settings)
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()  # starts loading (and warming) the checkpoints in a thread
        while self.app.state.phase == "loading":
            await asyncio.sleep(0.05)
        if self.app.state.phase != "ready":  # a failed replica: Serve reports it and starts another
            raise RuntimeError(self.app.state.load_error)
        host = ray.util.get_node_ip_address()
        self._metrics, _ = start_http_server(0, addr=host, registry=self.app.state.metrics.registry)
        self.target = f"{host}:{self._metrics.server_port}"
        self._targets = metrics_targets()
        await self._targets.add.remote(self.target)

    def check_health(self) -> None:
        """Serve's health check: what /readyz answers (raising is one failed check)."""
        from server.app import not_ready

        if why := not_ready(self.app.state):
            raise RuntimeError(why)

    async def forward(self, request: dict) -> AsyncIterator[list[dict]]:
        """Run one HTTP request (`scope` fields and `body`) through the app; yield its ASGI response messages, those
        sent together in one list. Cancelled (the client left): the app hears `http.disconnect`, which cancels the
        request's rows in the engine."""
        scope = {"type": "http", "asgi": {"version": "3.0"}, "root_path": "", **request["scope"]}
        body, sent = request["body"], asyncio.Queue()
        gone = asyncio.Event()

        async def receive() -> dict:
            nonlocal body
            if body is not None:
                message, body = {"type": "http.request", "body": body, "more_body": False}, None
                return message
            await gone.wait()
            return {"type": "http.disconnect"}

        app = asyncio.ensure_future(self.app(scope, receive, sent.put))
        try:
            while True:
                waiting = asyncio.ensure_future(sent.get())
                await asyncio.wait({waiting, app}, return_when=asyncio.FIRST_COMPLETED)
                if not waiting.done():  # the app returned without (more) messages
                    waiting.cancel()
                    app.result()
                    return
                messages = [waiting.result()] + [sent.get_nowait() for _ in range(sent.qsize())]
                yield messages
                if any(m["type"] == "http.response.body" and not m.get("more_body") for m in messages):
                    return
        finally:
            gone.set()
            await asyncio.wait({app}, timeout=self.settings.drain_timeout_s)

    async def __del__(self):
        """Removed (downscale, redeploy, shutdown): Serve has waited for this replica's requests; drain like SIGTERM."""
        if hasattr(self, "target"):  # fully started
            with suppress(RayActorError):
                await self._targets.remove.remote(self.target)
            self._metrics.shutdown()
        await self._lifespan.__aexit__(None, None, None)


@serve.deployment(name="Ingress", max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Ingress:
    """The HTTP entry: forwards every request to an Engines replica and relays the answer (no model here)."""

    def __init__(self, engines, settings: dict):
        self.engines, self.settings = engines, Settings(**settings)

    def __serve_build_asgi_app__(self):
        async def app(scope, receive, send):  # a plain coroutine function: uvicorn takes a bound method for ASGI 2
            await self.asgi(scope, receive, send)

        return app

    async def asgi(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        if scope["path"] == "/metrics/targets":
            body = json.dumps(await self.targets()).encode()
            return await _respond(send, 200, body, b"application/json")
        request = {"scope": {k: scope[k] for k in SCOPE_KEYS if k in scope}, "body": await self._body(receive)}
        for attempt in range(RETRIES + 1):
            try:
                return await self._relay(self.engines.options(stream=True).forward.remote(request), receive, send)
            except _Lost as lost:
                if lost.started:  # an event stream that had begun: end it with our error event
                    message = _lost_message(lost.__cause__)
                    error = json.dumps({"error": {"type": "unavailable", "message": message}})
                    await send({"type": "http.response.body", "body": frame("error", error) + frame("done", "[DONE]")})
                    return
                if attempt == RETRIES:
                    answer = error_response(503, "unavailable", _lost_message(lost.__cause__), retry_after=1)
                    return await answer(scope, receive, send)
                log.warning("replica lost; retrying on another", extra={"fields": {"path": scope["path"]}})
                await asyncio.sleep(RETRY_WAIT_S * (attempt + 1))
            except BackPressureError:
                message = "service overloaded: the engine replicas' queues are full; retry in 1 s"
                return await error_response(429, "overloaded", message, retry_after=1)(scope, receive, send)

    async def _body(self, receive) -> bytes:
        """The request body, at most one byte past the limit (the replica's app answers 413 in our shape then)."""
        chunks, size = [], 0
        while size <= self.settings.max_body_bytes:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if not message.get("more_body", False):
                break
        return b"".join(chunks)[: self.settings.max_body_bytes + 1]

    async def _relay(self, answer, receive, send) -> None:
        """Pass the replica's response messages on. The start waits for the first body bytes, so a replica lost
        before them loses nothing the client saw (the request can be retried). A client that leaves cancels it."""
        start, started, finished = None, False, False
        left = asyncio.ensure_future(_disconnected(receive))
        try:
            while True:
                chunk = asyncio.ensure_future(answer.__anext__())
                await asyncio.wait({chunk, left}, return_when=asyncio.FIRST_COMPLETED)
                if not chunk.done():  # the client left: the finally cancels the replica's work
                    chunk.cancel()
                    return
                try:
                    messages = chunk.result()
                except StopAsyncIteration:  # ended before the response's last body
                    raise _Lost(started) from RuntimeError("the replica ended the response early")
                except LOST as e:
                    raise _Lost(started) from e
                for m in messages:
                    if m["type"] == "http.response.start":  # Serve's proxy adds the X-Request-ID (the app's, too)
                        start = {**m, "headers": [h for h in m["headers"] if h[0].lower() != b"x-request-id"]}
                        continue
                    if start is not None:
                        await send(start)
                        start, started = None, True
                    await send(m)
                    if not m.get("more_body"):
                        finished = True
                        return
        finally:
            left.cancel()
            if not finished:  # the client left, or this handler was cancelled: so is the replica's request
                answer.cancel()

    async def targets(self) -> list[dict]:
        """Prometheus HTTP service discovery: the live Engines replicas' metrics and every node's Ray metrics."""
        listed = await metrics_targets().list.remote()
        replicas = [t for t, up in zip(listed, await asyncio.gather(*map(_reachable, listed))) if up]
        nodes = await asyncio.to_thread(ray.nodes)
        ray_ports = [f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}" for n in nodes if n["Alive"]]
        return [
            {"targets": replicas, "labels": {"source": "engines"}},
            {"targets": ray_ports, "labels": {"source": "ray"}},
        ]


class _Lost(Exception):
    """The replica serving a request died or left; `started`: the client already has part of the answer."""

    def __init__(self, started: bool):
        super().__init__()
        self.started = started


def _lost_message(cause: BaseException | None) -> str:
    return f"the replica serving this request stopped ({type(cause).__name__}); retry"


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _reachable(target: str) -> bool:
    host, port = target.rsplit(":", 1)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 0.5)
    except (TimeoutError, OSError):
        return False
    writer.close()
    return True


async def _respond(send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def build_app(args: dict):
    """The Serve application of deploy/ray-serve.yaml (`import_path: server.ray_serve:build_app`; Serve calls it with
    the YAML's `args`: engine-serve's settings, by their field names in server/settings.py)."""
    return application(args)


def application(settings: dict, engines: dict | None = None):
    """The Ingress bound to the Engines deployment with these settings; `engines`: options of the Engines deployment
    (a YAML's `deployments` section overrides them too). A replica may hold more requests than its engine admits, so
    that the engine's own 429 (with its Retry-After) answers an overload, not a silent wait in Serve's queue."""
    checked = Settings(**settings)
    options = {"max_ongoing_requests": checked.max_queued_requests + EXTRA_ONGOING, **(engines or {})}
    forwarded = checked.model_dump(mode="json", exclude_unset=True)
    return Ingress.bind(Engines.options(**options).bind(forwarded), forwarded)
