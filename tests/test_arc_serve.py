"""ARC through the service (issue 25): `POST /solve` runs every variant of a task through the engine and votes as the
official evaluation: its attempts are the official submission's.

The checkpoint is the official fixture (tests/fixtures/official/arc: a small official TRM whose predictions have wide
logit margins, so they do not hang on the last bits of a batch's floats), converted with engine-convert, which finds
the identifiers of its dataset (tests/fixtures/arc/official, three synthetic tasks x 8 augmentations)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from live import app_for, error_of, wait_ready
from test_stream import sse

from engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from engine.checkpoint import main as convert
from engine.models import TRM, TRMConfig

DATA = Path(__file__).parent / "fixtures" / "arc" / "official"
OFFICIAL = Path(__file__).parent / "fixtures" / "official" / "arc"
NAMES = json.loads((DATA / "identifiers.json").read_text())
PUZZLES = json.loads((DATA / "test_puzzles.json").read_text())


def arc_model(rows: int = len(NAMES)) -> TRM:
    torch.manual_seed(0)
    config = TRMConfig(
        seq_len=900,
        vocab_size=12,
        num_puzzle_identifiers=rows,
        puzzle_emb_ndim=32,
        hidden_size=32,
        num_heads=2,
        expansion=2,
        L_layers=1,
        H_cycles=1,
        L_cycles=1,
        halt_max_steps=2,
        forward_dtype="float32",
    )
    model = TRM(config)
    with torch.no_grad():  # a puzzle vector per variant, and a Q head that reads the state, so q differs by row
        model.puzzle_emb.normal_()
        model.q_head.weight.normal_()
    return model


def same_attempts(a: dict, b: dict) -> bool:
    """Two answers' attempts agree: grids and votes exactly, mean q to float noise (its last bits move with how the
    variants happened to share the engine's batches)."""
    key = lambda body: [(x["grid"], x["votes"]) for x in body["attempts"]]  # noqa: E731
    q = lambda body: [x["mean_q"] for x in body["attempts"]]  # noqa: E731
    return key(a) == key(b) and q(a) == pytest.approx(q(b))


@pytest.fixture(scope="module")
def arc_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("arc") / "arc-tiny"
    convert([str(OFFICIAL / "step_500"), str(out)])
    return out


@pytest.fixture(scope="module")
def arc(arc_ckpt):
    with TestClient(app_for(arc_ckpt, max_steps=16, max_batch=16)) as c:
        wait_ready(c)
        yield c


def test_the_checkpoint_keeps_identifiers_that_name_every_embedding_row(arc_ckpt, tmp_path):
    ckpt = load_checkpoint(arc_ckpt)
    assert ckpt.identifiers == NAMES and ckpt.test_puzzles == PUZZLES
    wrong = save_checkpoint(
        tmp_path / "wrong", arc_model(len(NAMES) + 1), "arc", files={"identifiers.json": json.dumps(NAMES)}
    )
    with pytest.raises(CheckpointError, match="names 28 puzzle identifiers but the checkpoint's puzzle-embedding"):
        load_checkpoint(wrong)


def test_solve_votes_over_every_variant_as_the_official_evaluation(arc):
    expected = json.loads((OFFICIAL / "submission.json").read_text())
    for name, pairs in PUZZLES.items():
        for i, pair in enumerate(pairs["test"]):
            by_index = arc.post("/solve", json={"task": "arc", "name": name, "test_index": i})
            assert by_index.status_code == 200, by_index.text
            body = by_index.json()
            assert body["variants"] == 9 and body["rollouts"] == 9 and body["selector"] == "vote"
            assert sum(a["votes"] for a in body["attempts"]) <= 9 and body["verified"] is None
            attempts = [a["grid"] for a in body["attempts"]]
            attempts += attempts[:1] * (2 - len(attempts))
            assert {"attempt_1": attempts[0], "attempt_2": attempts[1]} == expected[name][i]
            assert body["solution"] == body["grid"] == attempts[0]
            assert body["confidence"] == body["attempts"][0]["mean_q"]
            by_grid = arc.post("/solve", json={"task": "arc", "name": name, "puzzle": pair["input"]}).json()
            assert same_attempts(by_grid, body)


def test_arc_errors_name_what_is_wrong(arc):
    cases = [
        ({"task": "arc", "name": "nope", "test_index": 0}, 404, "knows no ARC task 'nope'"),
        ({"task": "arc", "test_index": 0}, 422, "ARC needs `name`"),
        ({"task": "arc", "name": "e0000003", "test_index": 1}, 422, "below 1"),
        ({"task": "arc", "name": "e0000003", "puzzle": [[1] * 31]}, 422, "31 columns; at most 30"),
        ({"task": "arc", "name": "e0000003", "puzzle": [[1, 10]]}, 422, "10 is not a colour 0-9"),
        ({"task": "arc", "name": "e0000003", "puzzle": [[1]], "test_index": 0}, 422, "not both"),
    ]
    for body, status, message in cases:
        r = arc.post("/solve", json=body)
        assert r.status_code == status and message in error_of(r)["message"], (body, r.text)


def test_sudoku_refuses_arc_fields(client):
    r = client.post("/solve", json={"puzzle": "1" * 81, "name": "e0000003"})
    assert r.status_code == 422 and "`name` and `test_index` are for ARC" in error_of(r)["message"]
    r = client.post("/solve", json={"task": "sudoku"})
    assert r.status_code == 422 and "puzzle: Field required" in error_of(r)["message"]


def test_streaming_shows_the_vote_as_it_forms(arc_ckpt):
    with TestClient(app_for(arc_ckpt, max_steps=16, max_batch=16, stream_max_events_per_s=10_000)) as c:
        wait_ready(c)
        body = {"task": "arc", "name": "e0000002", "test_index": 1}
        plain = c.post("/solve", json=body).json()
        with c.stream("POST", "/solve", json={**body, "stream": True}) as r:
            events = sse(r.read().decode())
    votes = [json.loads(d) for e, d in events if e == "vote"]
    assert [v["votes"] for v in votes] == list(range(1, 10))  # one event per finished variant at this rate
    assert all(v["variants"] == 9 for v in votes)
    kinds = [e for e, _ in events if e != "progress"]
    assert kinds[-2:] == ["result", "done"] and set(kinds[:-2]) == {"vote"}
    result = json.loads(events[-2][1])
    assert votes[-1]["leader"]["grid"] == result["grid"] and same_attempts(result, plain)


def test_the_vote_maps_a_copying_model_back_to_the_test_input(arc_ckpt, monkeypatch):
    """With every variant predicting its own input, each prediction maps back to the task's test input: one
    candidate with all 9 votes (an augmentation applied the wrong way would scatter them)."""
    from engine.runtime.runner import Runner, StepResult

    def copy(self, batch):  # the launched "step" is the batch itself; collecting it answers each row's input
        return StepResult(batch.inputs.copy(), np.zeros(len(batch.inputs), np.float32), None, None)

    monkeypatch.setattr(Runner, "launch", lambda self, batch: batch)
    monkeypatch.setattr(Runner, "collect", copy)
    with TestClient(app_for(arc_ckpt, max_steps=16, max_batch=16)) as c:
        wait_ready(c)
        body = c.post("/solve", json={"task": "arc", "name": "e0000002", "test_index": 0}).json()
    assert body["attempts"] == [
        {"grid": PUZZLES["e0000002"]["test"][0]["input"], "votes": 9, "share": 1.0, "mean_q": 0.5}
    ]
