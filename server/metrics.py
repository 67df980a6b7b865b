"""Prometheus metrics (SERVING.md §4.5): `trm_` prefix, base units, counters ending in `_total`, one registry per app.

Request outcomes, rejections and latencies are counted in the frontend; queue depth, running rows and work done are
read at scrape time from the engines' own state (scheduler queues, `Engine.stats`), never counted at dispatch.

| metric | type | labels |
|---|---|---|
| trm_requests_total | counter | endpoint, outcome (ok, invalid, rejected, unavailable, timeout, cancelled, error) |
| trm_admission_rejections_total | counter | model, reason: queue_full rows_full deadline too_large draining |
| trm_requests_waiting / trm_requests_running / trm_rows_waiting / trm_rows_running | gauge | model |
| trm_request_queue_seconds / _compute_seconds / _e2e_seconds | histogram | model (engine timestamps) |
| trm_rollouts_total, trm_supervision_steps_total, trm_padded_supervision_steps_total | counter | model |
| trm_engine_steps_total, trm_engine_busy_seconds_total | counter | model |
| trm_batch_rows, trm_batch_occupancy (rows / bucket), trm_step_seconds | histogram | model |
| trm_selection_agreement, trm_selection_confidence | histogram | model |
| trm_search_nodes_total, trm_search_backtracks_total | counter | model (commit search) |
| trm_search_committed_cells | histogram | model: cells a commit search committed beyond the givens |
| trm_generate_samples_total, trm_generate_valid_samples_total, trm_generate_items_total | counter | model (, kind) |
| trm_model_info | gauge = 1 | model, role, task, arch, dtype, device, runner, kernels |
| trm_ready | gauge | 1 when every checkpoint is loaded and the service is not draining |
| trm_key_requests_total, trm_key_row_steps_total | counter | key (the API key's name) |
| trm_key_refusals_total | counter | key, reason: concurrency row_steps (its quota) |
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from server.models import Models, Solver

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
disable_created_metrics()  # no `_created` series beside every counter (SERVING.md §4.1); process-wide


def _ladder(lo: float, hi: float) -> list[float]:
    """1-2.5-5 steps from lo to hi."""
    out, x = [], lo
    while x <= hi * 1.0001:
        for m in (1, 2.5, 5):
            if x * m <= hi * 1.0001:
                out.append(round(x * m, 6))
        x *= 10
    return out


# Searches take milliseconds (a tiny model, early exit) to minutes (K=64, D=64 on a CPU): 1 ms .. 10 min.
LATENCY = _ladder(0.001, 600)
# One supervision step: 0.1 ms (a CUDA graph replay) .. 10 s (a full bucket on a CPU).
STEP = _ladder(0.0001, 10)
ROWS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]  # the bucket ladder's scale
SHARE = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0]


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "trm_requests", "HTTP requests by endpoint and outcome", ["endpoint", "outcome"], registry=r
        )
        self.rejections = Counter(
            "trm_admission_rejections", "Requests refused at admission, by reason", ["model", "reason"], registry=r
        )
        self.queue_s = Histogram(
            "trm_request_queue_seconds", "Admission to first supervision step", ["model"], buckets=LATENCY, registry=r
        )
        self.compute_s = Histogram(
            "trm_request_compute_seconds", "First step to answer selected", ["model"], buckets=LATENCY, registry=r
        )
        self.e2e_s = Histogram(
            "trm_request_e2e_seconds", "Admission to answer (engine clock)", ["model"], buckets=LATENCY, registry=r
        )
        self.batch_rows = Histogram("trm_batch_rows", "Rows run per engine step", ["model"], buckets=ROWS, registry=r)
        self.occupancy = Histogram(
            "trm_batch_occupancy",
            "Rows / bucket rows per step (1 - padding waste)",
            ["model"],
            buckets=SHARE,
            registry=r,
        )
        self.step_s = Histogram("trm_step_seconds", "One supervision step", ["model"], buckets=STEP, registry=r)
        self.agreement = Histogram(
            "trm_selection_agreement",
            "Share of rollouts agreeing with the answer",
            ["model"],
            buckets=SHARE,
            registry=r,
        )
        self.confidence = Histogram(
            "trm_selection_confidence", "sigmoid(q) of the selected rollout", ["model"], buckets=SHARE, registry=r
        )
        self.key_requests = Counter("trm_key_requests", "Requests by API key name", ["key"], registry=r)
        self.key_refusals = Counter(
            "trm_key_refusals", "Requests refused by a key's quota", ["key", "reason"], registry=r
        )
        self.key_row_steps = Counter("trm_key_row_steps", "Row-steps run for each API key", ["key"], registry=r)
        self.nodes = Counter("trm_search_nodes", "Commit-search nodes expanded", ["model"], registry=r)
        self.backtracks = Counter(
            "trm_search_backtracks", "Commit-search returns to an earlier choice", ["model"], registry=r
        )
        self.committed = Histogram(
            "trm_search_committed_cells",
            "Cells a commit search committed beyond the givens (its depth)",
            ["model"],
            buckets=[0, 1, 2, 4, 8, 16, 32, 64, 128],
            registry=r,
        )
        self.gen_samples = Counter("trm_generate_samples", "Grids sampled by /generate", ["model"], registry=r)
        self.gen_valid = Counter("trm_generate_valid_samples", "Sampled grids that were valid", ["model"], registry=r)
        self.gen_items = Counter("trm_generate_items", "Items returned by /generate", ["model", "kind"], registry=r)
        self.ready = Gauge("trm_ready", "1 when loaded and not draining", registry=r)
        self.models: Models | None = None
        r.register(_EngineCollector(self))

    def attach(self, models: Models) -> None:
        """Hook into each solver's engine: per-step batch stats and per-request latency from engine timestamps."""
        self.models = models
        for s in models.all():
            self._hook(s)

    def _hook(self, s: Solver) -> None:
        name = s.name
        rows_h, occ_h, step_h = (h.labels(name) for h in (self.batch_rows, self.occupancy, self.step_s))
        q_h, c_h, e_h, a_h, conf_h = (
            h.labels(name) for h in (self.queue_s, self.compute_s, self.e2e_s, self.agreement, self.confidence)
        )
        nodes_c, back_c, depth_h = (m.labels(name) for m in (self.nodes, self.backtracks, self.committed))

        def on_step(rows: int, bucket: int, seconds: float) -> None:
            rows_h.observe(rows)
            occ_h.observe(rows / max(bucket, 1))
            step_h.observe(seconds)

        def on_resolve(req, result, error) -> None:
            if result is None:
                return
            t = result.timing
            q_h.observe(t.queued_s)
            c_h.observe(t.compute_s)
            e_h.observe(t.total_s)
            a_h.observe(result.selection.agreement)
            conf_h.observe(result.selection.confidence)
            if req.search is not None:
                nodes_c.inc(result.nodes)
                back_c.inc(result.backtracks)
                depth_h.observe(result.committed)

        s.engine.on_step.append(on_step)
        s.engine.on_resolve.append(on_resolve)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    """Scrape-time view of the engines: gauges from the scheduler's queues, counters from Engine.stats."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        gauges = {
            name: GaugeMetricFamily(name, doc, labels=["model"])
            for name, doc in (
                ("trm_requests_waiting", "Admitted requests that have not run a step yet"),
                ("trm_requests_running", "Admitted requests that have run at least one step"),
                ("trm_rows_waiting", "Admitted rows (rollouts) that have not started"),
                ("trm_rows_running", "Rows holding a carry slot (in flight)"),
            )
        }
        counters = {
            name: CounterMetricFamily(name, doc, labels=["model"])
            for name, doc in (
                ("trm_rollouts", "Rollouts (rows) started"),
                ("trm_supervision_steps", "Supervision steps run, summed over rows"),
                ("trm_padded_supervision_steps", "Supervision steps computed, bucket padding included"),
                ("trm_engine_steps", "Engine iterations that ran a batch"),
                ("trm_engine_busy_seconds", "Seconds the engine spent running steps"),
                ("trm_requests_finished", "Requests the engine resolved with an answer"),
            )
        }
        info = GaugeMetricFamily(
            "trm_model_info",
            "Loaded checkpoints (value 1)",
            labels=["model", "role", "task", "arch", "dtype", "device", "runner", "kernels"],
        )
        models = self.metrics.models
        for s in models.all() if models else ():
            eng = s.engine
            load = eng.scheduler.snapshot()
            for name, v in (
                ("trm_requests_waiting", load.requests_waiting),
                ("trm_requests_running", load.requests_running),
                ("trm_rows_waiting", load.rows_waiting),
                ("trm_rows_running", load.rows_running),
            ):
                gauges[name].add_metric([s.name], v)
            st = eng.stats
            for name, v in (
                ("trm_rollouts", st.rows_started),
                ("trm_supervision_steps", st.row_steps),
                ("trm_padded_supervision_steps", st.padded_row_steps),
                ("trm_engine_steps", st.steps),
                ("trm_engine_busy_seconds", st.busy_s),
                ("trm_requests_finished", st.requests_finished),
            ):
                counters[name].add_metric([s.name], v)
            runner = eng.runner
            info.add_metric(
                [s.name, s.role, s.task.name, s.ckpt.arch, s.ckpt.config.forward_dtype, str(runner.device)]
                + [runner.mode, runner.kernels],
                1,
            )
        yield from gauges.values()
        yield from counters.values()
        yield info
