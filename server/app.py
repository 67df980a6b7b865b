"""The FastAPI app: /solve, /generate, /v1/models, /healthz, /readyz, /metrics (DESIGN.md "HTTP"), and the web page
at / that watches a search (server/static/, streamed by server/stream.py).

Checkpoints load in a worker thread started by the lifespan, so /healthz answers at once and /readyz says 503 until
every engine is up (SERVING.md §2.7). Handlers validate, submit and await; a client that disconnects cancels its
request in the engine (SERVING.md §2.6: the handler races a task waiting for `http.disconnect`).
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures, which name per-app models.
import asyncio
import logging
import secrets
import time
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles

from engine.generate import generation_method, grid_params
from engine.runtime import EngineStopped, Overloaded, TooLarge
from engine.tasks.solvable import no_solution
from server import arc, docs, generation, stream
from server.errors import ApiError, ClientDisconnected, install
from server.keys import Key, Keyring, QuotaSpent, configured_keys
from server.metrics import CONTENT_TYPE, Metrics
from server.middleware import RequestContext
from server.models import ModelNotFound, Models, Solver, card, load_models, scrub_paths
from server.schemas import ErrorResponse, GenerateResponse, ModelList, SolveResponse, build_requests
from server.settings import Settings
from server.solutions import solve_many
from server.shutdown import Drain, drain
from server.stream import Watch

log = logging.getLogger("server")
STATIC = Path(__file__).resolve().parent / "static"
ERRORS = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "both Content-Length and Transfer-Encoding sent"),
        (401, "a valid API key is required (when the service has keys): Authorization: Bearer <key>"),
        (404, "unknown model, or no generator loaded"),
        (413, "request body too large"),
        (415, "a body without Content-Type: application/json"),
        (422, "invalid request, puzzle or JSON body (the message names the field, row, cell or JSON fault)"),
        (429, "overloaded; retry after the Retry-After header's seconds"),
        (503, "loading or draining"),
        (504, "the deadline passed with `search.strict_deadline`, or before the search ran a step"),
    )
}


def create_app(settings: Settings | None = None, loader=load_models) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    req = build_requests(settings)
    keyring = Keyring(configured_keys(settings.api_key, settings.api_keys_file), metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = app.state
        loading = asyncio.create_task(_load(app, loader))
        try:
            yield
        finally:
            await drain(app, settings.drain_timeout_s)  # at once when a SIGTERM already drained it (shutdown.py)
            with suppress(Exception):
                await loading
            if state.models is not None:
                for s in state.models.all():
                    await s.facade.shutdown(drain=True, timeout=settings.drain_timeout_s)
            log.info("stopped")

    app = FastAPI(
        title="trm-engine",
        version="0.1.0",
        summary="Inference-time search for Tiny Recursive Models: /solve by K noisy rollouts, /generate with GRAM",
        lifespan=lifespan,
        docs_url=None,  # served by server/docs.py from local assets
        redoc_url=None,
    )
    app.state.settings, app.state.metrics, app.state.keyring = settings, metrics, keyring
    app.state.phase, app.state.models, app.state.load_error = "loading", None, None
    app.state.drain = Drain()
    install(app)
    docs.install(app)
    app.add_middleware(RequestContext, metrics=metrics, max_body_bytes=settings.max_body_bytes)

    def get_models(request: Request) -> Models:
        state = request.app.state
        if state.phase != "ready":
            raise ApiError(503, "unavailable", _phase_message(state), retry_after=5)
        return state.models

    ModelsDep = Annotated[Models, Depends(get_models)]
    bearer = HTTPBearer(auto_error=False, description="an API key, when the service has keys (401 otherwise)")

    def authorized(request: Request, _=Depends(bearer)) -> Key | None:
        """The caller's key (None when keys are off); its name, never its secret, goes to the request's log line."""
        key = keyring.authenticate(request.headers.get("authorization"))
        request.state.key = key.name if key else None
        return key

    KeyDep = Annotated[Key | None, Depends(authorized)]

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict:
        """Liveness: answers from the event loop, never touches an engine."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: ERRORS[503]})
    async def readyz(request: Request):
        """Readiness: 503 while loading, after a failed load, while draining, and while an engine is stalled (no step
        for `watchdog_s` with requests waiting)."""
        state = request.app.state
        if why := not_ready(state):
            headers = {"Retry-After": "5"} if state.phase != "ready" else None
            return JSONResponse({"error": {"type": "unavailable", "message": why}}, status_code=503, headers=headers)
        return {"status": "ready", "models": [m.name for m in state.models.all()]}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus(request: Request) -> Response:
        if settings.metrics_auth:
            authorized(request)
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", tags=["models"], responses={c: ERRORS[c] for c in (401, 503)})
    async def list_models(key: KeyDep, models: ModelsDep) -> ModelList:
        return ModelList(data=[card(m, settings.checkpoint_root) for m in models.all()])

    solve_responses = {200: {"content": stream.OPENAPI}} | {
        c: ERRORS[c] for c in (400, 401, 404, 413, 415, 422, 429, 503, 504)
    }

    @app.post("/solve", tags=["solve"], responses=solve_responses)
    async def solve(body: req.Solve, request: Request, key: KeyDep, models: ModelsDep) -> SolveResponse:  # type: ignore[valid-type]
        """Solve a puzzle by K rollouts on the shared batching engine; one answer is selected and verified. With
        `stream` (or `Accept: text/event-stream`): Server-Sent Events, `progress` per step, then `result`, `done`."""
        if stream.wanted(body, request):
            watch = Watch(models.solver(body.model, body.task).task, settings.stream_max_events_per_s)
            work = keyring.held(key, _solve(body, request, models, settings, metrics, key, watch))
            return await watch.respond(request, work, _json)
        return await cancel_on_disconnect(
            request, keyring.held(key, _solve(body, request, models, settings, metrics, key))
        )

    generate_responses = {200: {"content": stream.OPENAPI}} | {
        c: ERRORS[c] for c in (400, 401, 404, 413, 415, 422, 429, 503)
    }

    @app.post("/generate", tags=["generate"], responses=generate_responses)
    async def generate(body: req.Generate, request: Request, key: KeyDep, models: ModelsDep) -> GenerateResponse:  # type: ignore[valid-type]
        """Sample complete grids from the GRAM generator (only verified-valid ones are returned), or puzzles made from
        them with exactly `clues` givens and a solution proven unique by the exact solver. With `stream`: events as
        for /solve, `progress` carrying the `sample` it is about."""
        if stream.wanted(body, request):
            watch = Watch(_generator(models, body)[0].task, settings.stream_max_events_per_s)
            work = keyring.held(key, _generate(body, request, models, settings, metrics, key, watch))
            return await watch.respond(request, work, _json)
        return await cancel_on_disconnect(
            request, keyring.held(key, _generate(body, request, models, settings, metrics, key))
        )

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        """The web page that watches a search (server/static/)."""
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    return app


def not_ready(state) -> str | None:
    """Why the app is not ready (loading, a failed load, draining, a stalled engine), or None: what /readyz and a Ray
    Serve replica's health check answer."""
    if state.phase != "ready":
        return _phase_message(state)
    watchdog = state.settings.watchdog_s
    stalled = {s.name: t for s in state.models.all() if (t := s.stalled_for()) > watchdog}
    if stalled:
        name, t = next(iter(stalled.items()))
        log.error("watchdog: engine stalled", extra={"fields": {"model": name, "stalled_s": t}})
        return f"engine {name!r} has made no step for {t:.0f} s while requests wait"
    return None


def _phase_message(state) -> str:
    if state.phase == "failed":
        return f"checkpoint loading failed: {state.load_error}"
    messages = {
        "loading": "the service is loading its checkpoints",
        "draining": "the service is draining (shutting down)",
    }
    return messages.get(state.phase, state.phase)


async def _load(app: FastAPI, loader) -> None:
    state = app.state
    try:
        models = await asyncio.to_thread(loader, state.settings)
        if not models.solvers and not models.generators:
            raise RuntimeError("no checkpoint loaded")
    except Exception as e:
        state.phase, state.load_error = "failed", scrub_paths(f"{type(e).__name__}: {e}", state.settings)
        log.exception("checkpoint loading failed")
        return
    state.models = models
    state.metrics.attach(models)
    state.keyring.attach(models)
    if state.phase == "loading":
        state.phase = "ready"
        state.metrics.ready.set(1)
        log.info("ready", extra={"fields": {"models": [m.name for m in models.all()]}})


async def cancel_on_disconnect(request: Request, work):
    """Run the handler's coroutine, cancelling it when the client disconnects (vLLM's `with_cancellation`), or when a
    shutdown's drain timeout cuts it off (then it answers 503). Safe here because the body has already been read."""
    drain_state: Drain = request.app.state.drain
    handler = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    cutoff = asyncio.ensure_future(drain_state.cutoff.wait())
    drain_state.inflight.add(handler)
    try:
        done, _ = await asyncio.wait({handler, watcher, cutoff}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        cutoff.cancel()
        if not handler.done():
            handler.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await handler
        drain_state.inflight.discard(handler)
    if handler in done:
        return handler.result()
    if cutoff in done:
        timeout = request.app.state.settings.drain_timeout_s
        message = f"the service shut down before the request finished (drain timeout {timeout:g} s)"
        raise ApiError(503, "unavailable", message, retry_after=5)
    log.info("client disconnected; request cancelled")
    raise ClientDisconnected()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _search(
    engine: Solver, puzzle, params, request: Request, key: Key | None, watch: Watch | None, sample: int | None = None
):
    """One engine request of the caller's tenant (its key), watched when streaming (the watch hears of its admission
    and of each of its steps)."""
    listener = watch.listener(sample) if watch is not None else None
    keyring: Keyring = request.app.state.keyring
    req = keyring.submit(engine.facade, key, puzzle, params, request_id=request.state.request_id, listener=listener)
    if watch is not None:
        watch.admitted.set()
    return await engine.facade.wait(req)


def _json(response) -> dict:
    return response.model_dump(mode="json")


# -- /solve ---------------------------------------------------------------------------------------------------------


async def _solve(
    body,
    request: Request,
    models: Models,
    settings: Settings,
    metrics: Metrics,
    key: Key | None,
    watch: Watch | None = None,
) -> SolveResponse:
    start = time.perf_counter()
    solver = models.solver(body.model, body.task)
    task = solver.task
    if body.task is not None and body.task != task.name:
        raise ApiError(422, "invalid_request", f"model {solver.name!r} solves {task.name}, not {body.task!r}")
    if task.name != "arc":
        if body.name is not None or body.test_index is not None:
            raise ApiError(422, "invalid_request", f"`name` and `test_index` are for ARC; {task.name} takes `puzzle`")
        if body.puzzle is None:
            raise ApiError(422, "invalid_request", "puzzle: Field required")
        tokens = task.encode(body.puzzle)
        if why := no_solution(task, tokens):  # proven before any model work (an exact search takes < 1 ms)
            raise ApiError(422, "invalid_puzzle", f"puzzle: the puzzle has no solution: {why}")
    given = body.search.model_dump(exclude_none=True) if body.search else {}
    timeout = body.timeout_s or min(settings.default_timeout_s, settings.max_timeout_s)
    try:
        params = solver.defaults.replace(**given, timeout_s=timeout)
    except ValueError as e:
        raise ApiError(422, "invalid_request", f"search: {e}") from None
    try:
        if task.name == "arc":
            window = max(1, settings.max_queued_requests // 4)
            submit = lambda x, p, **kw: request.app.state.keyring.submit(solver.facade, key, x, p, **kw)  # noqa: E731
            return await arc.solve(solver, body, params, request.state.request_id, window, submit, watch, start)
        search = lambda x, p, sample: _search(solver, x, p, request, key, watch, sample)  # noqa: E731
        many = await solve_many(solver, tokens, params, body.solutions or 1, settings.max_rollouts, search)
    except QuotaSpent:  # the key's quota, counted by the keyring (not the engine's admission)
        raise
    except (Overloaded, TooLarge, EngineStopped) as e:  # refused at admission: count why
        metrics.rejections.labels(solver.name, _reason(e)).inc()
        raise
    result = many.result
    answer = many.found[0].answer if many.found else result.answer
    verified = True if many.found else result.verified
    grid = task.decode(answer)
    form = task.to_text if isinstance(body.puzzle, str) else task.decode
    fault = None
    if task.has_rule_verifier and not verified:
        fault = task.check(tokens, answer)
    found = many.found[: body.solutions] if body.solutions else None
    t = result.timing
    return SolveResponse(
        solution=form(answer),
        grid=grid,
        verified=verified,
        fault=fault,
        confidence=result.selection.confidence,
        agreement=result.selection.agreement,
        selector=result.selection.selector,
        rollouts=many.rollouts,
        steps=result.steps,
        row_steps=many.row_steps,
        finish=result.finish,
        strategy=params.strategy,
        diversity=params.diversity,
        waves=result.waves,
        nodes=result.nodes,
        backtracks=result.backtracks,
        committed=result.committed,
        solutions=[
            {"solution": form(f.answer), "grid": task.decode(f.answer), "samples": f.samples, "score": f.score}
            for f in found
        ]
        if found is not None
        else None,
        count=many.count,
        coverage=len(found) / many.count if found is not None and many.count else None,
        model=solver.name,
        task=task.name,
        request_id=result.request_id,
        timing={
            "queued_s": t.queued_s,
            "compute_s": t.compute_s,
            "total_s": t.total_s,
            "server_s": time.perf_counter() - start,
        },
    )


def _reason(e: Exception) -> str:
    if isinstance(e, Overloaded):
        return {"requests": "queue_full", "rows": "rows_full", "deadline": "deadline"}[e.reason]
    return "too_large" if isinstance(e, TooLarge) else "draining"


# -- /generate ------------------------------------------------------------------------------------------------------


async def _generate(
    body,
    request: Request,
    models: Models,
    settings: Settings,
    metrics: Metrics,
    key: Key | None,
    watch: Watch | None = None,
) -> GenerateResponse:
    start = time.perf_counter()
    engine, method = _generator(models, body)
    # strict: a grid cut by the deadline is not a sample (generation.py skips it), not an unfinished grid
    params = grid_params(method, engine.ckpt, engine.defaults, body.temperature).replace(strict_deadline=True)
    # Unlike /solve (an answer should not change between calls), a generator without a seed gives new items each call
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    timeout = body.timeout_s or min(settings.default_timeout_s, settings.max_timeout_s)
    deadline = time.monotonic() + timeout

    async def search(puzzle, p, sample):
        return await _search(engine, puzzle, p, request, key, watch, sample)

    grader = _grader(models, engine.task.name, request, key, deadline) if body.kind == "puzzle" else None
    hard = body.difficulty == "hard"
    if hard and (body.kind != "puzzle" or grader is None):
        raise ApiError(422, "invalid_request", "difficulty 'hard' grades puzzles (kind 'puzzle') with a loaded solver")
    # "hard" wants few givens: minimal puzzles unless a clue count was asked for
    clues = None if body.minimal or (hard and "clues" not in body.model_fields_set) else body.clues
    try:
        out = await generation.generate(
            search,
            engine.task,
            params,
            body.count,
            body.kind,
            clues,
            seed,
            body.max_samples or settings.max_generate_samples,
            settings.generate_batch,
            deadline,
            grader,
            hard,
        )
    except QuotaSpent:
        raise
    except (Overloaded, TooLarge, EngineStopped) as e:
        metrics.rejections.labels(engine.name, _reason(e)).inc()
        raise
    metrics.gen_samples.labels(engine.name).inc(out.sampled)
    metrics.gen_valid.labels(engine.name).inc(out.valid)
    metrics.gen_items.labels(engine.name, body.kind).inc(len(out.items))
    return GenerateResponse(
        items=out.items,
        complete=len(out.items) == body.count,
        sampled=out.sampled,
        valid=out.valid,
        validity=out.valid / out.sampled if out.sampled else 0.0,
        distinct=out.distinct,
        row_steps=out.row_steps,
        method=method,
        kind=body.kind,
        model=engine.name,
        seed=seed,
        request_id=request.state.request_id,
        timing_s=time.perf_counter() - start,
    )


def _grader(models: Models, task: str, request: Request, key: Key | None, deadline: float):
    """Grades /generate's puzzles on the first solver of the task (None when none is loaded)."""
    solver = next((s for s in models.solvers.values() if s.task.name == task), None)
    if solver is None:
        return None

    async def solve(puzzle, params):
        left = max(deadline - time.monotonic(), 1e-3)
        # strict: a grade cut short by the deadline would measure the deadline, not the puzzle
        return await _search(solver, puzzle, params.replace(timeout_s=left, strict_deadline=True), request, key, None)

    return generation.Grader(solve, solver.defaults)


def _generator(models: Models, body) -> tuple[Solver, str]:
    """The engine and method for /generate: the named model, else the first generator (then solver) that can decode
    grids by the asked method (`commit` on a fill-in model, `prior` on a GRAM generator), commit decoding first when
    none is asked for (the prior generator is a research baseline)."""
    if body.model is not None:
        found = models.generators.get(body.model) or models.solvers.get(body.model)
        if found is None:
            models.solver(body.model, None)  # raises the 404 naming what is loaded
        candidates = [found]
    else:
        candidates = [*models.generators.values(), *models.solvers.values()]
        candidates.sort(key=lambda e: generation_method(e.ckpt) != "commit")  # stable: generators stay first
    for engine in candidates:
        method = generation_method(engine.ckpt)
        if method is not None and body.method in (None, method) and engine.task.name == body.task:
            return engine, method
    if body.model is not None:
        raise ApiError(422, "invalid_request", f"{body.model!r} cannot generate by method {body.method or 'any'!r}")
    raise ModelNotFound(f"no generator loaded for method {body.method or 'commit or prior'!r}")
