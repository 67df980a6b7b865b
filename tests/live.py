"""Helpers for the HTTP tests (test_server, test_reliability): a small app on tiny checkpoints, a real uvicorn server
in a thread, and readers of the responses and of the Prometheus exposition."""

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from server.app import create_app
from server.models import load_models
from server.settings import Settings

PUZZLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
SMALL = dict(max_rollouts=4, max_steps=4, max_batch=8, max_generate_count=4, max_generate_samples=64, generate_batch=16)


def missing(what: str):
    """A real part a test needs (a browser, Prometheus, Ray) is missing: a failure under CI=true, where .ci/run
    installs every one of them, and a skip saying what is missing elsewhere (issue 28: no silent skips in CI)."""
    if os.environ.get("CI"):
        pytest.fail(f"{what}; CI must have it", pytrace=False)
    pytest.skip(what, allow_module_level=True)


def app_for(*checkpoints, loader=load_models, **overrides):
    return create_app(Settings(checkpoints=[str(c) for c in checkpoints], **{**SMALL, **overrides}), loader=loader)


def wait_ready(client, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"not ready: {client.get('/readyz').json()}")


def solver(client):
    return next(iter(client.app.state.models.solvers.values()))


def metric(text: str, name: str, **labels) -> float:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise KeyError(f"{name}{labels} not in the exposition")


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}, body
    return body["error"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """A real uvicorn server in a thread (in-process, so tests can look at the engine behind it); `config` as
    engine-serve configures it (server.main.uvicorn_options) where a test needs that."""

    def __init__(self, app, **config):
        self.app, self.port = app, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # h11 as engine-serve runs it (server.main): uvicorn's "auto" would take httptools where installed (the ray
        # extra brings it), whose parser answers malformed framing itself, in plain text
        config = {"log_config": None, "access_log": False, "http": "h11", **config}
        self.server = uvicorn.Server(uvicorn.Config(app, port=self.port, **config))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                if httpx.get(self.url + "/readyz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError("the live server did not become ready")

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


class Prometheus:
    """A real Prometheus (Debian's `prometheus`) with these `scrape_configs` (YAML lines), scraping every second;
    `wait_for` polls a PromQL query until its first value passes (`want`: a value or a predicate)."""

    def __init__(self, scrape_configs: str, workdir: Path):
        self.port, self.workdir = free_port(), workdir
        (workdir / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n" + scrape_configs
        )

    def __enter__(self):
        if shutil.which("prometheus") is None:
            missing("the `prometheus` binary is not installed (apt-get install prometheus)")
        self.process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait(10)

    def query(self, q: str) -> float | None:
        try:
            result = httpx.get(f"http://127.0.0.1:{self.port}/api/v1/query", params={"query": q}).json()
            result = result["data"]["result"]
        except (httpx.TransportError, KeyError, ValueError):
            return None
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, q: str, want, timeout: float = 60) -> float | None:
        ok = want if callable(want) else lambda got: got == want
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if (got := self.query(q)) is not None and ok(got):
                return got
            time.sleep(0.25)
        return self.query(q)
