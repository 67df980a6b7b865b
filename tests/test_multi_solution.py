"""Puzzles with many answers: the N-Queens data builder, training and coverage the GRAM way, and /solve's
`solutions` (distinct, verified, capped)."""

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from live import app_for, wait_ready

from engine.datasets.cli import main as engine_data
from engine.datasets.nqueens_build import make_nqueens, read_nqueens
from engine.eval import coverage
from engine.eval import main as engine_eval
from engine.search import Rows
from engine.search.solutions import count_solutions, distinct_verified
from engine.tasks import get_task
from engine.tasks.nqueens import EMPTY, QUEEN, NQueens, completions
from engine.train.cli import main as engine_train

ROOT = Path(__file__).resolve().parents[1]
EIGHT = NQueens(8)


def queens(columns: dict[int, int]) -> np.ndarray:
    """An 8x8 board with a queen at (row, column) for each item."""
    board = np.full((8, 8), EMPTY, np.int64)
    for r, c in columns.items():
        board[r, c] = QUEEN
    return board.reshape(-1)


def full_board(columns: list[int]) -> np.ndarray:
    return queens(dict(enumerate(columns)))


@pytest.fixture(scope="module")
def nq8(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "nq8"
    engine_data(["nqueens", "--n", "8", "--output-dir", str(out)])
    return out


def test_the_recipe_enumerates_every_solution_and_removes_k_queens():
    data = make_nqueens(8)
    assert len(data.solutions) == 92
    assert len(np.unique(data.solutions, axis=0)) == 92 and EIGHT.verify_batch(data.solutions, data.solutions).all()
    ten = np.array(list(completions(np.full(100, EMPTY, np.uint8))))
    assert len(ten) == 724 and len(np.unique(ten, axis=0)) == 724
    inputs = np.concatenate([data.train.inputs, data.test.inputs])
    assert set((inputs == QUEEN).sum(1)) == {1, 2, 3}  # 8 - k for k in 5, 6, 7
    # every input is a subset of some solution, and every subset of 1-3 queens of a solution is an input
    expected = set()
    for s in data.solutions:
        q = np.flatnonzero(s == QUEEN)
        for i in range(8):
            expected.add((q[i],))
            for j in range(i + 1, 8):
                expected.add((q[i], q[j]))
                expected.update((q[i], q[j], q[m]) for m in range(j + 1, 8))
    assert {tuple(np.flatnonzero(x == QUEEN)) for x in inputs} == expected


def test_dataset_split_shares_no_input_and_keeps_every_completion(nq8):
    train, test = read_nqueens(nq8, "train"), read_nqueens(nq8, "test")
    seen = {x.tobytes() for x in train.inputs}
    assert len(seen) == len(train.inputs) and not seen & {x.tobytes() for x in test.inputs}
    assert abs(len(test.inputs) / (len(train.inputs) + len(test.inputs)) - 0.15) < 0.002
    for split in (train, test):
        for x, labels in zip(split.inputs, split.completions):
            assert len(labels) == count_solutions(EIGHT, x)  # all of them ...
            assert len(np.unique(labels, axis=0)) == len(labels)  # ... once each ...
            assert EIGHT.verify_batch(np.broadcast_to(x, labels.shape), labels).all()  # ... and valid
    meta = json.loads((nq8 / "train" / "dataset.json").read_text())
    assert (meta["seq_len"], meta["vocab_size"], meta["total_puzzles"]) == (64, 3, len(train.inputs))
    assert json.loads((nq8 / "identifiers.json").read_text()) == ["<blank>"]


def test_coverage_counts_distinct_valid_answers_per_puzzle_and_pooled():
    a, b = full_board([0, 4, 7, 5, 2, 6, 1, 3]), full_board([0, 5, 7, 2, 6, 3, 1, 4])
    puzzle_ab = queens({0: 0, 2: 7})  # both a and b complete it (and others may)
    bad = full_board([0, 1, 2, 3, 4, 5, 6, 7])
    c = full_board([7, 3, 0, 2, 5, 1, 6, 4])
    puzzle_c = queens({0: 7, 1: 3, 2: 0})
    rows = [
        Rows(np.stack([a, a, b, bad]), np.zeros(4)),  # 2 distinct valid of 4 rows; the invalid one does not count
        Rows(np.stack([bad, bad, bad, bad]), np.zeros(4)),  # none
    ]
    counts = np.array([4, 1])
    report = coverage(EIGHT, np.stack([puzzle_ab, puzzle_c]), rows, counts)
    assert report["validity"] == pytest.approx((3 / 4 + 0) / 2)
    assert report["coverage"] == pytest.approx((2 / 4 + 0 / 1) / 2)
    assert report["coverage_pooled"] == pytest.approx(2 / 5)
    # a completion that drops a given queen is no answer to that puzzle
    assert coverage(EIGHT, puzzle_c[None], [Rows(c[None], np.zeros(1))], np.array([1]))["coverage"] == 1.0
    assert coverage(EIGHT, puzzle_ab[None], [Rows(c[None], np.zeros(1))], np.array([1]))["coverage"] == 0.0


def test_distinct_verified_ranks_by_samples_then_score():
    a, b = full_board([0, 4, 7, 5, 2, 6, 1, 3]), full_board([0, 5, 7, 2, 6, 3, 1, 4])
    bad = full_board([0, 1, 2, 3, 4, 5, 6, 7])
    puzzle = queens({0: 0})
    rows = Rows(np.stack([b, a, bad, a, b, a]), np.array([5.0, 0.0, 9.0, 0.0, 5.0, 0.0]))
    found = distinct_verified(EIGHT, puzzle, rows)
    assert [f.samples for f in found] == [3, 2]
    assert np.array_equal(found[0].answer, a) and found[0].score == pytest.approx(0.5)
    assert np.array_equal(found[1].answer, b) and found[1].score == pytest.approx(1 / (1 + np.exp(-5)))


def test_engine_train_and_eval_on_nqueens_report_the_collapse_guard_and_coverage(nq8, tmp_path):
    out = tmp_path / "run"
    common = ["--task", "nqueens", "--dataset", str(nq8), "--steps", "4", "--eval-every", "4", "--eval-limit", "16"]
    engine_train([*common, "--arch", "gram", "--batch-size", "8", "--hidden-size", "32", "--out", str(out)])
    evals = [json.loads(line)["eval"] for line in (out / "log.jsonl").read_text().splitlines() if "eval" in line]
    assert {"kl", "posterior_exact", "exact_accuracy", "prior_gap"} <= set(evals[-1])
    config = json.loads((out / "checkpoint" / "config.json").read_text())
    assert (config["task"], config["arch"], config["model"]["puzzle_emb_len"]) == ("nqueens", "gram", 16)
    assert config["model"]["puzzle_emb_ndim"] == 0  # zero-padded slots, no puzzle vector
    assert config["training"]["config"]["kl_beta"] == 0.07 and config["training"]["config"]["kl_sum"]

    result = tmp_path / "eval.json"
    engine_eval(["--checkpoint", str(out / "checkpoint"), "--dataset", str(nq8), "--limit", "6", "-K", "3"])
    engine_eval(["--checkpoint", str(out / "checkpoint"), "--dataset", str(nq8), "--limit", "6", "-K", "3",
                 "--json", str(result)])  # fmt: skip
    report = json.loads(result.read_text())
    test = read_nqueens(nq8, "test")
    assert report["n"] == 6 and report["mean_solutions"] == pytest.approx(np.mean([len(c) for c in test.completions[:6]]))
    assert {"validity", "coverage", "coverage_pooled", "row_steps_per_puzzle"} <= set(report)
    assert report["row_steps_per_puzzle"] == 3 * 8  # K x N_sup


@pytest.fixture(scope="module")
def sudoku():
    with TestClient(app_for(ROOT / "checkpoints" / "sudoku-trm")) as c:
        wait_ready(c)
        yield c


# a classic puzzle's solution with cells blanked until it has 6 solutions
SIX = ".3...8.1267.19534..983..5.7..9..14..4...5.....13..4...9..5.7...28..1.6.5.45....7."


def _check_solutions(puzzle_text: str, body: dict) -> list[np.ndarray]:
    task = get_task("sudoku")
    puzzle = task.encode(puzzle_text)
    answers = [task.encode(s["solution"]) for s in body["solutions"]]
    assert all(task.verify(puzzle, a) for a in answers)
    assert len({a.tobytes() for a in answers}) == len(answers)
    assert body["verified"] and np.array_equal(task.encode(body["solution"]), answers[0])
    return answers


def test_solutions_gives_distinct_verified_answers_and_the_empty_grid_answers(sudoku):
    r = sudoku.post("/solve", json={"puzzle": "." * 81, "solutions": 5, "timeout_s": 60})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(_check_solutions("." * 81, body)) == 5
    assert body["count"] is None and body["coverage"] is None  # far more than the counter's limit

    plain = sudoku.post("/solve", json={"puzzle": "." * 81, "timeout_s": 60}).json()  # no `solutions`: one answer
    assert plain["verified"] and plain["solutions"] is None


def test_solutions_reports_the_exact_count_and_coverage(sudoku):
    task = get_task("sudoku")
    assert count_solutions(task, task.encode(SIX)) == 6
    body = sudoku.post("/solve", json={"puzzle": SIX, "solutions": 5, "timeout_s": 120}).json()
    found = _check_solutions(SIX, body)
    assert len(found) == 5 and body["count"] == 6 and body["coverage"] == pytest.approx(5 / 6)


def test_solutions_above_the_cap_is_refused_naming_it(sudoku):
    r = sudoku.post("/solve", json={"puzzle": "." * 81, "solutions": 33})
    assert r.status_code == 422
    assert "solutions" in r.json()["error"]["message"] and "32" in r.json()["error"]["message"]


class _FakeSolver:
    def __init__(self, task: str, arch: str):
        self.task, self.ckpt = get_task(task), type("Ckpt", (), {"arch": arch, "meta": {}})()


def _routes(task: str, arch: str, puzzle: np.ndarray, n: int) -> list:
    """The engine requests solve_many makes (params), each answered with the puzzle's exact solutions."""
    import asyncio

    from engine.runtime.request import Timing
    from engine.runtime.request import SearchResult as Result
    from engine.search import SearchParams, Selection
    from server.solutions import solve_many

    task_ = get_task(task)
    seen = []
    sols = list(completions(puzzle)) if task.startswith("nqueens") else []  # Sudoku rows answer unverified

    async def search(x, params, sample):
        seen.append(params)
        k = params.rollouts
        answers = np.stack([full_board(sols[i % len(sols)]) for i in range(k)]) if sols else np.stack([x] * k)
        rows = Rows(answers, np.zeros(k), task_.verify_batch(np.broadcast_to(x, answers.shape), answers))
        verified = bool(rows.verified[0])
        return Result("r", answers[0], Selection(0, "q", 0.5, 1.0), verified, rows, k, k * params.steps, params.steps,
                      "completed", Timing(0, 0, 0))  # fmt: skip

    asyncio.run(solve_many(_FakeSolver(task, arch), puzzle, SearchParams(rollouts=4, steps=8), n, 256, search))
    return seen


def test_gram_samples_its_prior_with_twice_the_rows_asked_and_no_early_exit():
    puzzle = queens({0: 0})
    (params,) = _routes("nqueens", "gram", puzzle, 5)
    assert (params.rollouts, params.early_exit, params.strategy) == (10, "off", "rollouts")
    (params,) = _routes("nqueens", "gram", puzzle, 1)  # one answer: the ordinary search
    assert params.rollouts == 4


def test_a_unique_puzzle_runs_the_ordinary_search_and_an_ambiguous_sudoku_decodes_on_trm():
    unique = queens({r: c for r, c in enumerate([0, 4, 7, 5, 2, 6, 1, 3]) if r})  # one queen short of a solution
    (params,) = _routes("nqueens", "trm", unique, 5)
    assert params.strategy == "rollouts" and params.rollouts == 4
    (params,) = _routes("nqueens", "trm", queens({0: 0}), 3)  # not a fill-in task: rollouts, as GRAM
    assert params.rollouts == 6 and params.early_exit == "off"
    empty = get_task("sudoku").encode("." * 81)
    decoded = _routes("sudoku", "trm", empty, 3)  # nothing verifies here: every round runs
    assert len(decoded) == 6 + 6 + 6 + 6
    assert all(p.strategy == "commit" and p.rollouts == 1 and p.temperature == 1.0 for p in decoded)
    assert len({p.seed for p in decoded}) == len(decoded)  # each request its own draw


def test_shipped_nqueens_gram_lists_verified_completions_with_their_count():
    """The shipped GRAM answers /solve with `solutions` through its prior samples: each listed board a distinct valid
    completion of the puzzle, the exact count from the counter, coverage = found / count. On held-out inputs with
    several completions (its CARD: about two thirds of its samples are valid)."""
    test = make_nqueens(8).test
    several = [x for x, c in zip(test.inputs, test.completions) if len(c) >= 2][:10]
    answered = 0
    with TestClient(app_for(ROOT / "checkpoints" / "nqueens8-gram", max_rollouts=32, max_steps=8)) as c:
        wait_ready(c)
        for tokens in several:
            puzzle = EIGHT.decode(tokens)
            body = c.post("/solve", json={"task": "nqueens", "puzzle": puzzle, "solutions": 4}).json()
            found = [EIGHT.encode(s["grid"]) for s in body["solutions"]]
            n = count_solutions(EIGHT, tokens)
            assert body["count"] == n and body["coverage"] == pytest.approx(len(found) / n)
            assert all(EIGHT.verify(tokens, f) for f in found) and len({f.tobytes() for f in found}) == len(found)
            assert sum(s["samples"] for s in body["solutions"]) <= 20 and len(found) <= 4
            answered += bool(found)
    assert answered >= 1  # 1 of these 10 when shipped: inputs with several completions are its weak spot (CARD)
