"""Helpers for the HTTP tests (test_server, test_reliability): a small app on tiny checkpoints, a real uvicorn server
in a thread, and readers of the responses and of the Prometheus exposition."""

import socket
import threading
import time

import httpx
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from server.app import create_app
from server.models import load_models
from server.settings import Settings

PUZZLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
SMALL = dict(max_rollouts=4, max_steps=4, max_batch=8, max_generate_count=4, max_generate_samples=64, generate_batch=16)


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
        config = {"log_config": None, "access_log": False, **config}
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
