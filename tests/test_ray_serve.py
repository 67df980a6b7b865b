"""Ray Serve (issue 24) on a real local Ray cluster: two Engines replicas behind the ingress, deployed from the
shipped deploy/ray-serve.yaml (its args and Engines options, with a smaller CPU share), answering as engine-serve
does; a real Prometheus scraping every replica and Ray's own metrics; a replica killed during a burst."""

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from live import PUZZLE, Prometheus, error_of, free_port, metric, wait_ready
from ray_local import local_cluster, pids, require_ray

from server.app import create_app
from server.settings import Settings

ray = require_ray()
from ray import serve  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((ROOT / "deploy" / "ray-serve.yaml").read_text())["applications"][0]
SMALL = dict(max_batch=16, max_rollouts=16, max_steps=64, max_generate_count=2, generate_batch=4)
ENGINE_PROCESS = "ServeReplica:trm:Engines"
DIFFERS = {"timing", "request_id", "timing_s"}  # per call, not per answer


def deploy(engine_settings: dict, **engines) -> None:
    """The shipped config's application, with `engine_settings` over its args and `engines` over its Engines
    options (2 replicas at half a CPU each fit the test machine's 2 CPUs)."""
    from server.ray_serve import application

    shipped = next(d for d in CONFIG["deployments"] if d["name"] == "Engines")
    options = {k: v for k, v in shipped.items() if k != "name"} | {"ray_actor_options": {"num_cpus": 0.5}} | engines
    serve.run(application({**CONFIG["args"], **engine_settings}, engines=options), name="trm", route_prefix="/")


@pytest.fixture(scope="module")
def service():
    metrics_port, http_port = free_port(), free_port()
    with local_cluster(_metrics_export_port=metrics_port):
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        deploy(SMALL)
        yield f"http://127.0.0.1:{http_port}"
        serve.shutdown()


@pytest.fixture(scope="module")
def local():
    """engine-serve's app with the same settings, in process: what every answer must equal."""
    with TestClient(create_app(Settings(**CONFIG["args"], **SMALL))) as c:
        wait_ready(c)
        yield c


def test_the_shipped_config_builds_its_application():
    """What `serve run deploy/ray-serve.yaml` does first: import `import_path` and call it with the YAML's `args`
    through Serve's own builder call, which refuses a builder that does not take exactly one parameter."""
    from importlib import import_module

    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    module, name = CONFIG["import_path"].split(":")
    app = call_user_app_builder_with_args_if_necessary(getattr(import_module(module), name), CONFIG["args"])
    assert isinstance(app, Application)


def same(a: httpx.Response, b: httpx.Response) -> None:
    assert (a.status_code, a.headers["content-type"]) == (b.status_code, b.headers["content-type"])
    if a.headers.get("retry-after") or b.headers.get("retry-after"):
        assert a.headers.get("retry-after") == b.headers.get("retry-after")
    strip = lambda body: {k: v for k, v in body.items() if k not in DIFFERS}  # noqa: E731
    assert strip(a.json()) == strip(b.json())


def events(response: httpx.Response) -> list[tuple[str, str]]:
    """(event, data) pairs of an SSE body."""
    out = []
    for block in response.text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            out.append((fields["event"], fields["data"]))
    return out


def test_two_replicas_answer_solve_generate_and_streams_as_engine_serve_does(service, local):
    targets = httpx.get(service + "/metrics/targets").json()
    assert len(targets[0]["targets"]) == 2 and len(targets[1]["targets"]) == 1  # 2 replicas, 1 node's Ray metrics
    body = {"puzzle": PUZZLE, "search": {"rollouts": 4, "seed": 3}}
    same(httpx.post(service + "/solve", json=body, timeout=60), local.post("/solve", json=body))
    generate = {"count": 1, "kind": "puzzle", "clues": 40, "seed": 5}
    same(httpx.post(service + "/generate", json=generate, timeout=60), local.post("/generate", json=generate))
    bad = {"puzzle": PUZZLE[:-1] + "x"}
    served, direct = httpx.post(service + "/solve", json=bad), local.post("/solve", json=bad)
    assert (served.status_code, served.content) == (422, direct.content)
    assert httpx.get(service + "/v1/models").content == local.get("/v1/models").content
    assert httpx.get(service + "/").content == local.get("/").content
    assert httpx.get(service + "/readyz").json() == local.get("/readyz").json()

    streamed = httpx.post(service + "/solve", json={**body, "stream": True}, timeout=60)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    kinds = [e for e, _ in events(streamed)]
    assert kinds[0] == "progress" and kinds[-2:] == ["result", "done"]
    plain = httpx.post(service + "/solve", json=body, timeout=60).json()
    result = json.loads(events(streamed)[-2][1])
    assert {k: v for k, v in result.items() if k not in DIFFERS} == {k: v for k, v in plain.items() if k not in DIFFERS}


def test_an_engine_429_passes_through_with_retry_after(service):
    """Both replicas busy with a long search: a request whose deadline cannot be met behind it is refused by the
    engine's admission (the pace is known from the warm-up), and the 429 reaches the client in our shape."""
    long = {"puzzle": PUZZLE, "search": {"rollouts": 16, "steps": 16, "early_exit": "off"}, "timeout_s": 120}
    with ThreadPoolExecutor(2) as pool:
        busy = [pool.submit(httpx.post, service + "/solve", json=long, timeout=120) for _ in range(2)]
        time.sleep(1.0)
        refused = httpx.post(service + "/solve", json={"puzzle": PUZZLE, "timeout_s": 0.5}, timeout=30)
        assert refused.status_code == 429, refused.text
        assert error_of(refused)["type"] == "overloaded" and int(refused.headers["retry-after"]) >= 1
        assert [f.result().status_code for f in busy] == [200, 200]


def test_prometheus_sums_the_replicas_requests_beside_rays_metrics(service, tmp_path):
    scrape = f"  - job_name: trm\n    http_sd_configs: [{{url: '{service}/metrics/targets', refresh_interval: 1s}}]\n"
    with Prometheus(scrape, tmp_path) as prom:
        assert prom.wait_for('sum(up{source="engines"})', 2) == 2
        assert prom.wait_for('sum(up{source="ray"})', 1) == 1
        before = prom.wait_for('sum(trm_requests_total{endpoint="solve"})', lambda v: True) or 0
        sent = 12
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: httpx.post(service + "/solve", json={"puzzle": PUZZLE}), range(sent)))
        assert [r.status_code for r in answers] == [200] * sent
        assert prom.wait_for('sum(trm_requests_total{endpoint="solve"})', before + sent) == before + sent
        # both replicas served some, so the sum is over replicas
        assert prom.wait_for('count(trm_requests_total{endpoint="solve",outcome="ok"} > 0)', 2) == 2
        assert prom.wait_for("sum(ray_serve_num_http_requests_total)", lambda v: v >= sent) >= sent


def cancelled(service: str) -> float:
    """trm_requests_total{endpoint="solve", outcome="cancelled"} summed over the replicas, read from each."""
    total = 0.0
    for target in httpx.get(service + "/metrics/targets").json()[0]["targets"]:
        text = httpx.get(f"http://{target}/metrics").text
        with suppress(KeyError):
            total += metric(text, "trm_requests_total", endpoint="solve", outcome="cancelled")
    return total


def test_a_client_that_leaves_cancels_its_search_on_the_replica(service):
    """A stream's client reads the first event and hangs up: the replica's app hears the disconnect through the
    ingress and cancels the request (counted as cancelled there), as engine-serve does."""
    before = cancelled(service)
    long = {"puzzle": PUZZLE, "search": {"rollouts": 16, "steps": 64, "early_exit": "off"}, "stream": True}
    with httpx.stream("POST", service + "/solve", json=long, timeout=60) as streamed:
        assert next(streamed.iter_lines()).startswith("event: progress")
    end = time.monotonic() + 30
    while cancelled(service) < before + 1:
        assert time.monotonic() < end, "the replica did not cancel the request"
        time.sleep(0.2)


def test_a_replica_killed_during_a_burst_loses_no_request_that_was_not_on_it(service):
    """SIGKILL one Engines replica while 12 /solve requests and a stream run: every /solve answers 200 (retried on
    the other replica) or a 503 in our shape, none hangs; the stream ends with `done`, after a result or an error."""
    request = {"puzzle": PUZZLE, "search": {"rollouts": 16, "steps": 8, "early_exit": "off", "seed": 1}}
    client = httpx.Client(timeout=120)
    with ThreadPoolExecutor(13) as pool:
        stream = pool.submit(client.post, service + "/solve", json={**request, "stream": True})
        burst = [pool.submit(client.post, service + "/solve", json=request) for _ in range(12)]
        time.sleep(1.5)
        victims = pids(ENGINE_PROCESS)
        assert len(victims) == 2, victims
        os.kill(victims[0], signal.SIGKILL)
        answers = [f.result() for f in burst]
        streamed = stream.result()
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {200, 503}, [r.text for r in answers]
    for r in answers:
        if r.status_code == 503:
            assert error_of(r)["type"] == "unavailable"
    assert statuses.count(200) >= 6  # at least those on the surviving replica, and retried ones
    first = answers[statuses.index(200)].json()
    assert all(r.json()["solution"] == first["solution"] for r in answers if r.status_code == 200)  # same seed
    kinds = [e for e, _ in events(streamed)]
    assert kinds[-1] == "done" and kinds[-2] in ("result", "error")
    if kinds[-2] == "error":
        assert set(json.loads(events(streamed)[-2][1])["error"]) == {"type", "message"}
    # Serve starts a replacement; the service answers again
    end = time.monotonic() + 120
    while len(httpx.get(service + "/metrics/targets").json()[0]["targets"]) < 2:
        assert time.monotonic() < end, "no replacement replica"
        time.sleep(1)
    assert httpx.post(service + "/solve", json={"puzzle": PUZZLE}, timeout=60).status_code == 200


def test_a_removed_replica_finishes_its_requests(service):
    """Scale from 2 replicas to 1 while each runs a long search: the removed one stops taking requests but finishes
    its own (Serve waits for them, then the app drains), so both answer 200."""
    long = {"puzzle": PUZZLE, "search": {"rollouts": 16, "steps": 32, "early_exit": "off"}}
    with ThreadPoolExecutor(2) as pool:
        running = [pool.submit(httpx.post, service + "/solve", json=long, timeout=120) for _ in range(2)]
        time.sleep(1.0)
        deploy(SMALL, num_replicas=1)
        assert [f.result().status_code for f in running] == [200, 200]
    end = time.monotonic() + 60
    while len(pids(ENGINE_PROCESS)) != 1:  # the removed replica's process exits once drained
        assert time.monotonic() < end, pids(ENGINE_PROCESS)
        time.sleep(0.5)


def test_serves_own_queue_limit_answers_in_our_shape(service):
    """One replica that takes one request at a time and queues one more: the third concurrent request meets Serve's
    queue limit (BackPressureError), which the ingress answers as our 429 with Retry-After."""
    deploy(SMALL, num_replicas=1, max_ongoing_requests=1, max_queued_requests=1)
    long = {"puzzle": PUZZLE, "search": {"rollouts": 16, "steps": 16, "early_exit": "off"}}
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: httpx.post(service + "/solve", json=long, timeout=120), range(4)))
    refused = [r for r in answers if r.status_code == 429]
    assert refused and all(r.status_code in (200, 429) for r in answers)
    assert error_of(refused[0])["type"] == "overloaded" and refused[0].headers["retry-after"] == "1"


def test_api_keys_are_checked_by_the_replicas_behind_the_ingress(service):
    """Keys on Ray Serve (issue 27): every replica runs the app with the key, the ingress relays its 401."""
    deploy({**SMALL, "api_key": ["ray-key"]}, num_replicas=1)
    r = httpx.post(service + "/solve", json={"puzzle": PUZZLE}, timeout=60)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and error_of(r)["type"] == "unauthorized"
    ok = httpx.post(
        service + "/solve", json={"puzzle": PUZZLE}, headers={"Authorization": "Bearer ray-key"}, timeout=60
    )
    assert ok.status_code == 200 and ok.json()["verified"]
