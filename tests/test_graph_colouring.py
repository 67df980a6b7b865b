import json
from itertools import product

import numpy as np
import pytest

from engine.datasets.cli import main as engine_data
from engine.datasets.graph_colouring_build import read_graph_colouring
from engine.eval import coverage
from engine.eval import count_all as eval_counts
from engine.search.selectors import Rows
from engine.search.solutions import count_solutions, distinct_verified
from engine.tasks import TASKS, get_task
from engine.tasks.base import PAD, PuzzleError
from engine.tasks.graph_colouring import (
    EDGE,
    NO_EDGE,
    GraphColouring,
    canonical,
    colourings,
    conflicts,
    count_colourings,
)

FOUR = GraphColouring(4)
THREE = GraphColouring(3)


def matrix(n: int, edges: list[tuple[int, int]]) -> list[list[int]]:
    m = [[0] * n for _ in range(n)]
    for i, j in edges:
        m[i][j] = m[j][i] = 1
    return m


def coloured(task: GraphColouring, puzzle: np.ndarray, colours: list[int]) -> np.ndarray:
    answer = puzzle.copy()
    answer[task.n_edges :] = 3 + np.array(colours)
    return answer


def brute_force(n: int, edges: list[tuple[int, int]]) -> set[tuple[int, ...]]:
    """Every proper colouring among all 3^n, canonicalised by first occurrence independently of the module."""
    found = set()
    for colours in product(range(3), repeat=n):
        if all(colours[i] != colours[j] for i, j in edges):
            order: dict[int, int] = {}
            found.add(tuple(order.setdefault(c, len(order)) for c in colours))
    return found


def random_edges(n: int, p: float, rng: np.random.Generator) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(i + 1, n) if rng.random() < p]


def test_names_sizes_and_registry():
    eight, ten = get_task("graph-colouring-8"), get_task("graph-colouring-10")
    assert (eight.name, eight.seq_len, eight.vocab_size, eight.many_answers) == ("graph-colouring-8", 36, 6, True)
    assert (ten.name, ten.seq_len) == ("graph-colouring-10", 55)
    assert isinstance(TASKS["graph-colouring-8"], GraphColouring)


def test_codec_round_trips():
    path = matrix(4, [(0, 1), (1, 2), (2, 3)])
    tokens = FOUR.encode(path)
    # pairs (0,1) (0,2) (0,3) (1,2) (1,3) (2,3), then 4 uncoloured vertex slots
    assert tokens.dtype == np.int64 and tokens.tolist() == [2, 1, 1, 2, 1, 2, 0, 0, 0, 0]
    assert FOUR.to_text(tokens) == "100101"
    assert np.array_equal(FOUR.encode("100101"), tokens)
    assert np.array_equal(FOUR.encode(" 100\n101\n"), tokens)  # whitespace is layout only
    assert FOUR.adjacency(tokens) == path
    assert FOUR.decode(tokens) == [None] * 4
    answer = coloured(FOUR, tokens, [0, 1, 0, 2])
    assert FOUR.decode(answer) == [0, 1, 0, 2]
    assert FOUR.to_text(answer) == "100101 0102"
    for text in ("100101 0102", "1001010102"):
        assert np.array_equal(FOUR.encode(text), answer)
    assert np.array_equal(FOUR.encode({"adjacency": path, "colours": [0, 1, 0, 2]}), answer)
    assert np.array_equal(FOUR.encode({"adjacency": "100101", "colours": [0, None, 0, 2]}), FOUR.encode("100101 0.02"))
    assert FOUR.to_text(FOUR.encode("100101 0.02")) == "100101 0.02"
    assert "#" in FOUR.render(answer) and "C" in FOUR.render(answer)


@pytest.mark.parametrize(
    "puzzle, message",
    [
        ([[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1]], r"row 4 has 3 cells, expected 4"),
        ([[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1]], r"expected 4 rows, got 3"),
        ([[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 1, 1], [0, 0, 1, 0]], r"row 3, column 3: .*diagonal"),
        ([[0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1], [0, 0, 1, 0]], r"row 2, column 3 is 1 but row 3, column 2 is 0"),
        ([[0, 1, 0, 0], [1, 0, 2, 0], [0, 1, 0, 1], [0, 0, 1, 0]], r"row 2, column 3: 2 is not 0 .* or 1"),
        ([[0, 1, 0, 0], [1, 0, True, 0], [0, 1, 0, 1], [0, 0, 1, 0]], r"row 2, column 3: True is not"),
        ("10x101", r"edge character 3: unexpected character 'x'"),
        ("10010", r"expected 6 edge characters .* got 5"),
        ("100101 01x2", r"vertex 3: 'x' is not a colour"),
        ({"adjacency": "100101", "colours": [0, 1, 3, 0]}, r"vertex 3: 3 is not a colour"),
        ({"edges": "100101"}, r"expected keys 'adjacency'"),
        (42, r"expected text, an adjacency matrix or a dict, got int"),
    ],
)
def test_encode_names_the_bad_cell(puzzle, message):
    with pytest.raises(PuzzleError, match=message):
        FOUR.encode(puzzle)


def test_triangle_path_and_k4_by_hand():
    triangle = THREE.encode(matrix(3, [(0, 1), (0, 2), (1, 2)]))
    assert list(colourings(triangle)) == [[0, 1, 2]]  # the one colouring, up to colour names
    path = THREE.encode(matrix(3, [(0, 1), (1, 2)]))
    assert list(colourings(path)) == [[0, 1, 0], [0, 1, 2]]  # ends alike or different
    assert count_colourings(path) == 2 and count_colourings(path, limit=1) == 1
    k4 = FOUR.encode(matrix(4, [(i, j) for i in range(4) for j in range(i + 1, 4)]))
    assert count_colourings(k4) == 0
    k4_inside = GraphColouring(6).encode(matrix(6, [(1, 2), (1, 3), (1, 5), (2, 3), (2, 5), (3, 5), (0, 4)]))
    assert count_colourings(k4_inside) == 0
    empty = THREE.encode("000")
    assert count_colourings(empty) == 5  # Bell-like: S(3,1) + S(3,2) + S(3,3) = 1 + 3 + 1


def test_verifier_rules_in_order():
    puzzle = FOUR.encode(matrix(4, [(0, 1), (1, 2), (2, 3)]))
    assert FOUR.check(puzzle, coloured(FOUR, puzzle, [0, 1, 0, 1])) is None
    assert FOUR.check(puzzle, coloured(FOUR, puzzle, [2, 0, 1, 2])) is None  # not canonical, still valid
    added = coloured(FOUR, puzzle, [0, 1, 0, 1])
    added[1] = EDGE  # pair (0, 2)
    assert FOUR.check(puzzle, added) == "the edge between vertex 1 and vertex 3 was added"
    removed = coloured(FOUR, puzzle, [0, 1, 0, 1])
    removed[5] = NO_EDGE  # pair (2, 3)
    assert FOUR.check(puzzle, removed) == "the edge between vertex 3 and vertex 4 was removed"
    junk = coloured(FOUR, puzzle, [0, 1, 0, 1])
    junk[3] = 4
    assert FOUR.check(puzzle, junk) == "the edge slot of vertex 2 and vertex 3 holds token 4, not the puzzle's 2"
    blank = coloured(FOUR, puzzle, [0, 1, 0, 1])
    blank[FOUR.n_edges + 2] = PAD
    assert FOUR.check(puzzle, blank) == "vertex 3 is uncoloured"
    wrong = coloured(FOUR, puzzle, [0, 1, 0, 1])
    wrong[FOUR.n_edges + 1] = EDGE
    assert FOUR.check(puzzle, wrong) == "vertex 2 holds token 2, not a colour (3, 4, 5)"
    clash = coloured(FOUR, puzzle, [0, 1, 1, 0])
    assert FOUR.check(puzzle, clash) == "vertex 2 and vertex 3 share an edge and colour 1"
    assert FOUR.check(puzzle, coloured(FOUR, puzzle, [0, 0, 1, 0])) == (
        "vertex 1 and vertex 2 share an edge and colour 0"
    )
    with pytest.raises(PuzzleError, match="expected 10 tokens"):
        FOUR.check(puzzle, puzzle[:-1])


def test_verify_batch_agrees_with_check():
    rng = np.random.default_rng(1)
    six = GraphColouring(6)
    puzzles, answers = [], []
    for _ in range(300):
        puzzle = six.encode(matrix(6, random_edges(6, 0.4, rng)))
        found = list(colourings(puzzle))
        if found and rng.random() < 0.6:  # a valid colouring, colours permuted at random
            answer = coloured(six, puzzle, list(rng.permutation(3)[found[rng.integers(len(found))]]))
        else:
            answer = coloured(six, puzzle, list(rng.integers(0, 3, 6)))
        if rng.random() < 0.2:
            answer[rng.integers(six.seq_len)] = rng.integers(0, 6)
        puzzles.append(puzzle)
        answers.append(answer)
    expected = [six.check(p, a) is None for p, a in zip(puzzles, answers)]
    assert 30 < sum(expected) < 270
    assert six.verify_batch(np.stack(puzzles), np.stack(answers)).tolist() == expected


def test_canonical_and_conflicts():
    puzzle = FOUR.encode(matrix(4, [(0, 1), (1, 2), (2, 3), (0, 3)]))
    assert FOUR.canonical(coloured(FOUR, puzzle, [2, 0, 2, 1]))[FOUR.n_edges :].tolist() == [3, 4, 3, 5]
    assert FOUR.canonical(coloured(FOUR, puzzle, [1, 1, 2, 1]))[FOUR.n_edges :].tolist() == [3, 3, 4, 3]
    batch = np.stack([coloured(FOUR, puzzle, c) for c in ([1, 2, 1, 2], [2, 0, 1, 0], [0, 1, 2, 1])]).astype(np.uint8)
    out = canonical(batch)
    assert out.dtype == np.uint8 and np.array_equal(out[:, : FOUR.n_edges], batch[:, : FOUR.n_edges])
    assert out[:, FOUR.n_edges :].tolist() == [[3, 4, 3, 4], [3, 4, 5, 4], [3, 4, 5, 4]]
    partial = FOUR.encode("110011 2.20")  # uncoloured slots stay as they are
    assert canonical(partial)[FOUR.n_edges :].tolist() == [3, PAD, 3, 4]
    assert np.array_equal(canonical(puzzle), puzzle)
    # conflicts: edges (0,1) (1,2) (2,3) (0,3) of a 4-cycle
    assert conflicts(puzzle, coloured(FOUR, puzzle, [0, 1, 0, 1])) == 0
    assert conflicts(puzzle, coloured(FOUR, puzzle, [0, 0, 1, 1])) == 2
    assert conflicts(puzzle, coloured(FOUR, puzzle, [2, 2, 2, 2])) == 4
    assert conflicts(puzzle, FOUR.encode("110011 0.0.")) == 0  # uncoloured ends never conflict
    assert conflicts(puzzle, FOUR.encode("110011 00..")) == 1


@pytest.mark.parametrize("n", [2, 5, 6])
def test_enumerator_matches_brute_force(n):
    task = GraphColouring(n)
    rng = np.random.default_rng(n)
    for p in (0.0, 0.3, 0.5, 0.8):
        for _ in range(8):
            edges = random_edges(n, p, rng)
            puzzle = task.encode(matrix(n, edges))
            found = list(colourings(puzzle))
            assert len(set(map(tuple, found))) == len(found)
            assert set(map(tuple, found)) == brute_force(n, edges)
            assert count_colourings(puzzle) == len(found)
            for colours in found:
                answer = coloured(task, puzzle, colours)
                assert task.check(puzzle, answer) is None and conflicts(puzzle, answer) == 0
                assert np.array_equal(canonical(answer), answer)


def test_symmetry_maps_valid_to_valid():
    six = GraphColouring(6)
    rng = np.random.default_rng(3)
    for _ in range(20):
        puzzle = six.encode(matrix(6, random_edges(6, 0.5, rng)))
        sym = six.symmetry(rng)
        moved = sym.apply(puzzle)
        assert np.array_equal(sym.inverse.apply(moved), puzzle)
        assert count_colourings(moved) == count_colourings(puzzle)
        for colours in colourings(puzzle):
            assert six.check(moved, sym.apply(coloured(six, puzzle, colours))) is None


def test_count_solutions_and_coverage_count_colour_classes_once():
    task = get_task("graph-colouring-8")
    # a path on 8 vertices: 3 * 2^7 proper colourings, each class (all use 2 or 3 colours) has 3! members
    puzzle = task.encode(matrix(8, [(i, i + 1) for i in range(7)]))
    assert len(brute_force(8, [(i, i + 1) for i in range(7)])) == 3 * 2**7 // 6 == 64
    assert count_solutions(task, puzzle) == 64 and count_solutions(task, puzzle, limit=10) == 10
    assert eval_counts(task, np.stack([puzzle, puzzle])).tolist() == [64, 64]
    first, second = (coloured(task, puzzle, c) for c in list(colourings(puzzle))[:2])
    relabelled = coloured(task, puzzle, [(c + 1) % 3 for c in task.decode(first)])  # the first class again
    bad = coloured(task, puzzle, [0] * 8)
    answers = np.stack([first, relabelled, second, bad])
    rows = Rows(answers=answers, q=np.zeros(4), verified=None)
    found = distinct_verified(task, puzzle, rows)
    assert [f.samples for f in found] == [2, 1] and np.array_equal(found[0].answer, first)
    stats = coverage(task, puzzle[None], [rows], np.array([64]))
    assert stats["validity"] == 0.75 and stats["coverage"] == pytest.approx(2 / 64)


def test_builder_small(tmp_path, capsys):
    out = tmp_path / "colouring8"
    engine_data(["graph-colouring", "--n", "8", "--output-dir", str(out), "--train", "40", "--test", "10"])
    line = capsys.readouterr().out.strip()
    assert line.startswith("engine-data: 50 distinct 3-colourable graphs of ") and "40 train" in line
    assert "10 test" in line and "per graph" in line and "\n" not in line
    task = get_task("graph-colouring-8")
    assert json.loads((out / "identifiers.json").read_text()) == ["<blank>"]
    graphs = {}
    for split, size in (("train", 40), ("test", 10)):
        meta = json.loads((out / split / "dataset.json").read_text())
        assert (meta["vocab_size"], meta["seq_len"], meta["total_puzzles"], meta["total_groups"]) == (6, 36, size, size)
        assert np.load(out / split / "all__puzzle_identifiers.npy").tolist() == [0] * size
        data = read_graph_colouring(out, split)
        assert data.inputs.dtype == np.uint8 and len(data.inputs) == size
        graphs[split] = {g.tobytes() for g in data.inputs}
        assert len(graphs[split]) == size  # distinct graphs
        for graph, labels in zip(data.inputs, data.colourings):
            assert (graph[task.n_edges :] == PAD).all()
            i, j = np.triu_indices(8, 1)
            edges = [(a, b) for a, b, t in zip(i, j, graph[: task.n_edges]) if t == EDGE]
            expected = brute_force(8, edges)
            assert len(labels) == len(expected) == count_colourings(graph) >= 1  # complete
            assert {tuple(row[task.n_edges :] - 3) for row in labels} == expected
            assert all(task.check(graph, row) is None for row in labels)  # valid
            assert np.array_equal(canonical(labels), labels)  # canonical
            assert len({row.tobytes() for row in labels}) == len(labels)
    assert not graphs["train"] & graphs["test"]  # no shared graph


def test_builder_is_seeded_and_refuses(tmp_path):
    from engine.datasets.graph_colouring_build import make_graph_colouring

    tiny = make_graph_colouring(3, seed=0, train=6, test=2, p=0.5)  # 8 of the 2^3 graphs on 3 vertices: every one
    every = {t.tobytes() for t in np.concatenate([tiny.train.inputs, tiny.test.inputs])}
    assert len(every) == 8 and tiny.draws > 8
    with pytest.raises(Exception, match="only 8 distinct 3-colourable graphs"):
        make_graph_colouring(3, seed=0, train=8, test=1, p=0.5)
    a, b = (make_graph_colouring(8, seed=5, train=6, test=2) for _ in range(2))
    assert np.array_equal(a.train.inputs, b.train.inputs) and np.array_equal(a.test.inputs, b.test.inputs)
    assert not np.array_equal(make_graph_colouring(8, seed=6, train=6, test=2).train.inputs, a.train.inputs)
    dense = ["--train", "5", "--test", "1", "--p", "0.99"]  # G(8, 0.99) almost always holds a K4
    with pytest.raises(SystemExit, match="only .* distinct 3-colourable graphs"):
        engine_data(["graph-colouring", "--n", "8", "--output-dir", str(tmp_path / "x"), *dense])
    assert not (tmp_path / "x").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("")
    with pytest.raises(SystemExit, match="not empty"):
        engine_data(["graph-colouring", "--n", "8", "--output-dir", str(tmp_path / "full"), "--train", "2", "--test=1"])
