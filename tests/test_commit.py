"""Row diversity by task symmetries, the legal-value mask, and commit search (decisions on made-up distributions,
backtracking, budgets, the uniform baseline), alone and through the engine."""

import numpy as np
import pytest
import torch

from engine.models import TRM, preset
from engine.runtime import Engine, Limits, Request, Runner
from engine.search import SearchParams
from engine.search.commit import CommitSearch, Final
from engine.tasks import get_task
from engine.tasks.sudoku_solver import count_solutions
from engine.train.data import generate_puzzles, random_grids

SUDOKU = get_task("sudoku")
PUZZLE = SUDOKU.encode("53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79")


@pytest.mark.parametrize("name", ["sudoku", "maze", "nqueens", "nqueens-10"])
def test_symmetries_round_trip_tokens_and_distributions(name):
    task, rng = get_task(name), np.random.default_rng(0)
    for _ in range(5):
        sym = task.symmetry(rng)
        x = rng.integers(0, task.vocab_size, task.seq_len)
        assert (sym.inverse.apply(sym.apply(x)) == x).all()
        p = rng.random((task.seq_len, task.vocab_size))
        assert np.allclose(sym.inverse.apply_probs(sym.apply_probs(p)), p)
        onehot = np.eye(task.vocab_size)[x]  # a distribution moves like its tokens
        assert (sym.apply_probs(onehot).argmax(-1) == sym.apply(x)).all()


def test_sudoku_symmetries_map_solutions_to_solutions():
    grids = random_grids(4, np.random.default_rng(1)).astype(np.int64)
    for grid in grids:
        sym = SUDOKU.symmetry(np.random.default_rng(int(grid[0])))
        puzzle = grid.copy()
        puzzle[::3] = 1
        image = sym.apply(puzzle)
        assert SUDOKU.verify(image, sym.apply(grid))  # the transformed answer solves the transformed puzzle
        assert (sym.inverse.apply(sym.apply(grid)) == grid).all()


def test_legal_mask_on_a_constructed_grid():
    grid = np.ones(81, np.int64)
    grid[0] = 6  # digit 5 at row 1, column 1
    grid[80] = 2  # digit 1 at row 9, column 9
    legal = SUDOKU.legal(grid)
    assert legal[0].tolist() == [i == 6 for i in range(11)]  # a filled cell: only its own value
    assert not legal[8, 6] and not legal[72, 6] and not legal[10, 6]  # row, column and box peers lose 5
    assert legal[40, 6] and legal[40, 2]  # the centre is free of both
    assert not legal[79, 2] and legal[79, 6]
    assert not legal[:, :2].any()


class Stub:
    """Rows that always answer `answer` with made-up per-cell distributions (one-hot on `belief`, softened)."""

    def __init__(self, belief: np.ndarray, sure: float):
        self.belief, self.sure = belief, sure

    def rows(self, grid, k=2):
        p = np.full((81, 11), (1 - self.sure) / 8)
        p[:, :2] = 0
        p[np.arange(81), self.belief] = self.sure
        answers = np.broadcast_to(self.belief, (k, 81)).copy()
        return answers, np.broadcast_to(p, (k, 81, 11)).copy(), np.zeros(k)


def _solve(puzzle, belief, sure, **params):
    search = CommitSearch(SUDOKU, puzzle, SearchParams(rollouts=2, steps=1, strategy="commit", **params))
    stub, step = Stub(belief, sure), search.start()
    while not isinstance(step, Final):
        step = search.expanded(*stub.rows(step))
    return search, step


def test_commit_takes_every_sure_cell_and_fills_a_valid_grid():
    puzzles, solutions = generate_puzzles(1, np.random.default_rng(2), clues=(24, 26))
    puzzle, solution = puzzles[0].astype(np.int64), solutions[0].astype(np.int64)
    search, final = _solve(puzzle, solution, sure=0.95)
    assert final.finish == "filled" and (final.answer == solution).all() and search.nodes == 1


def test_branching_and_backtracking_out_of_a_wrong_belief():
    puzzles, solutions = generate_puzzles(1, np.random.default_rng(3), clues=(22, 26), min_guesses=5)
    puzzle, solution = puzzles[0].astype(np.int64), solutions[0].astype(np.int64)
    other = random_grids(1, np.random.default_rng(7))[0].astype(np.int64)  # a valid grid, but not the solution
    search, final = _solve(puzzle, other, sure=0.95)  # confident and mostly wrong: commits, dead ends, backtracks
    assert final.finish == "filled" and (final.answer == solution).all()  # unique puzzle: the filled grid solves it
    assert search.backtracks > 0 and search.nodes > 1


def test_budget_exhaustion_answers_the_best_candidate_unverified():
    puzzles, solutions = generate_puzzles(1, np.random.default_rng(4), clues=(24, 26))
    puzzle = puzzles[0].astype(np.int64)
    bad = np.full(81, 2, np.int64)  # believes every cell is a 1: branches and dead ends
    search, final = _solve(puzzle, bad, sure=0.3, max_nodes=3)
    assert final.finish == "budget" and search.nodes == 3 and not SUDOKU.verify(puzzle, final.answer)


def test_a_dead_end_puzzle_exhausts_and_backtrack_off_stops():
    puzzle = SUDOKU.encode("12345678." + "........9" + "." * 63)  # row 1, column 9 has no candidate
    assert count_solutions(puzzle, 2) == 0
    search = CommitSearch(SUDOKU, puzzle, SearchParams(strategy="commit"))
    assert isinstance(search.start(), Final) and search.start().finish == "dead_end"


def test_uniform_policy_solves_by_search_alone():
    puzzles, solutions = generate_puzzles(1, np.random.default_rng(5), clues=(28, 30))
    params = SearchParams(strategy="commit", policy="uniform", max_nodes=10_000)
    final = CommitSearch(SUDOKU, puzzles[0].astype(np.int64), params).uniform()
    assert final.finish == "filled" and (final.answer == solutions[0]).all()


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(0)
    model = TRM(preset("sudoku-tiny"))
    return Engine(Runner(model, max_batch=16), SUDOKU, Limits(max_batch=16))


def _run(engine, *requests):
    for r in requests:
        engine.submit(r)
    engine.run_until_idle()
    return [r.future.result() for r in requests]


# A solvable hard puzzle the rule mask alone does not fill (generate_puzzles(1, default_rng(1), clues=(22, 26),
# min_guesses=3)): commit search expands several nodes and backtracks (the README puzzle needs no node at all).
HARD = SUDOKU.encode("..54.....8....2...2...71..6..85..1.36.4....8....8.....4...2.7......6...8...9..23.")


def test_commit_search_through_the_engine_is_deterministic_alone_and_batched(engine):
    params = SearchParams(rollouts=3, steps=2, strategy="commit", diversity="augment", max_nodes=200, seed=4)
    alone = _run(engine, Request(SUDOKU, HARD, params))[0]
    assert alone.nodes > 1 and alone.backtracks >= 1  # a real search: nodes expanded, a dead end backed out of
    others = [Request(SUDOKU, PUZZLE, params.replace(seed=s, strategy="rollouts")) for s in range(3)]
    mixed = _run(engine, *others[:2], Request(SUDOKU, HARD, params), others[2])[2]
    assert (alone.answer == mixed.answer).all() and alone.nodes == mixed.nodes and alone.row_steps == mixed.row_steps
    assert alone.backtracks == mixed.backtracks
    assert alone.verified and alone.finish in ("verified", "filled")  # the mask plus DFS completes even a random net
    assert alone.row_steps == alone.nodes * 3 * 2 or alone.finish == "verified"


def test_generation_is_commit_search_from_the_empty_grid(engine):
    empty = np.ones(81, np.int64)
    params = SearchParams(rollouts=1, steps=1, strategy="commit", diversity="augment", temperature=1.0, max_nodes=400)
    a, b = _run(engine, Request(SUDOKU, empty, params.replace(seed=1)), Request(SUDOKU, empty, params.replace(seed=2)))
    assert a.verified and b.verified and (a.answer != b.answer).any()
    again = _run(engine, Request(SUDOKU, empty, params.replace(seed=1)))[0]
    assert (again.answer == a.answer).all()


def test_rollouts_with_noise_diversity_are_unchanged(engine):
    """diversity 'noise' is today's PTRM: the same answers as the plain model loop with the same seeds."""
    from engine.search import run_rollouts

    params = SearchParams(rollouts=4, steps=3, noise=0.3, seed=9)
    got = _run(engine, Request(SUDOKU, PUZZLE, params))[0]
    ref = run_rollouts(engine.runner.model, PUZZLE, params)
    assert (got.rows.answers == ref["answers"]).all()


def test_augment_needs_symmetries_and_commit_needs_a_fill_in_task():
    arc = get_task("arc")
    with pytest.raises(ValueError, match="symmetries"):
        Request(arc, np.zeros(arc.seq_len, np.int64), SearchParams(rollouts=2, diversity="augment"))
    maze = get_task("maze")
    with pytest.raises(ValueError, match="fill-in"):
        Request(maze, np.zeros(maze.seq_len, np.int64), SearchParams(strategy="commit"))


def test_commit_search_is_cancelled_or_timed_out_mid_search(engine):
    from engine.runtime import Cancelled, DeadlineExceeded

    empty = np.ones(81, np.int64)
    params = SearchParams(rollouts=2, steps=1, strategy="commit", temperature=1.0, max_nodes=400)
    cut = Request(SUDOKU, empty, params.replace(seed=1))
    late = Request(SUDOKU, empty, params.replace(seed=2, timeout_s=60, strict_deadline=True))
    anytime = Request(SUDOKU, empty, params.replace(seed=3, timeout_s=60))
    engine.submit(late)  # first: deadline admission needs a measured pace once others wait
    engine.submit(cut)
    engine.step()
    engine.submit(anytime)
    for _ in range(3):  # a few nodes in
        engine.step()
    assert cut.search.nodes >= 1 and late.search.nodes >= 1 and anytime.search.nodes >= 1 and not cut.future.done()
    engine.cancel(cut)
    late.submitted -= 61  # its deadline passes mid-search
    anytime.submitted -= 61
    engine.run_until_idle()
    with pytest.raises(Cancelled):
        cut.future.result()
    with pytest.raises(DeadlineExceeded):  # strict
        late.future.result()
    best = anytime.future.result()  # else the best row so far
    assert best.finish == "deadline" and best.nodes >= 1 and best.verified is False
    assert engine.scheduler.queued == (0, 0) and len(engine.scheduler.free_slots) == engine.runner.slots


def test_restart_on_a_dead_end_starts_again_from_the_puzzle(monkeypatch):
    puzzles, solutions = generate_puzzles(1, np.random.default_rng(3), clues=(22, 26), min_guesses=5)
    puzzle, solution = puzzles[0].astype(np.int64), solutions[0].astype(np.int64)
    other = random_grids(1, np.random.default_rng(7))[0].astype(np.int64)  # a wrong belief: it hits dead ends
    starts = []
    start = CommitSearch.start
    monkeypatch.setattr(CommitSearch, "start", lambda self: starts.append(1) or start(self))
    search, final = _solve(puzzle, other, sure=0.95, backtrack="restart", temperature=1.0, max_nodes=300)
    assert len(starts) == 1 + search.backtracks and search.backtracks > 0  # every dead end went back to the puzzle
    assert final.finish in ("filled", "budget")
    if final.finish == "filled":
        assert (final.answer == solution).all()
    _, stopped = _solve(puzzle, other, sure=0.95, backtrack="off")
    assert stopped.finish == "dead_end"


def test_max_row_steps_stops_the_search_at_its_budget(engine):
    """A search that would expand many nodes stops before a node whose K x D row-steps would pass the cap: finish
    "budget", the row-steps within the cap, the best row's answer returned."""
    params = SearchParams(rollouts=2, steps=2, strategy="commit", max_nodes=200, seed=4)
    free = _run(engine, Request(SUDOKU, HARD, params))[0]
    assert free.nodes > 3 and free.row_steps > 10  # without the cap it goes further
    capped = _run(engine, Request(SUDOKU, HARD, params.replace(max_row_steps=10)))[0]
    assert capped.finish == "budget" and capped.row_steps <= 10
    assert capped.nodes == 2 and capped.row_steps == 8  # a third node (12 row-steps) would pass the cap
    assert not capped.verified  # a random net's best row breaks the rules


def test_width_caps_the_values_tried_per_branch():
    """width 1: a branch tries only the most probable value, so a wrong belief cannot be backed out of; the default
    (every legal value) and width 2 find the solution. The first node's branch has exactly `width` children."""
    puzzles, solutions = generate_puzzles(1, np.random.default_rng(3), clues=(22, 26), min_guesses=5)
    puzzle, solution = puzzles[0].astype(np.int64), solutions[0].astype(np.int64)
    other = random_grids(1, np.random.default_rng(7))[0].astype(np.int64)  # a valid grid, but not the solution
    for width in (None, 2):
        search, final = _solve(puzzle, other, sure=0.3, width=width, max_nodes=500)
        assert final.finish == "filled" and (final.answer == solution).all() and search.nodes == 10
    search, final = _solve(puzzle, other, sure=0.3, width=1, max_nodes=500)
    assert final.finish == "exhausted" and search.nodes == 2 and not (final.answer == solution).all()
    children = {}
    for width in (None, 1, 2):
        search = CommitSearch(SUDOKU, puzzle, SearchParams(rollouts=2, strategy="commit", width=width))
        search.expanded(*Stub(other, 0.3).rows(search.start()))
        first = search.stack[0]  # the puzzle's node: no cell reaches the threshold, so only the branch's values
        children[width] = first.tried + len(first.choices)
    assert children == {None: 2, 1: 1, 2: 2}  # the branch cell has two legal values


def test_order_picks_the_branch_cell_by_margin_or_by_max_probability():
    """On the empty grid no cell is forced or sure; cell 0 has the larger top probability (0.6 vs 0.4), cell 80 the
    larger margin over its runner-up (0.5 - 0.0625 vs 0.6 - 0.4): order "margin" branches on 80, "max" on 0."""
    empty = np.ones(81, np.int64)
    p = np.zeros((81, 11))
    p[:, 2:] = 1 / 9
    p[0, 2:] = 0
    p[0, 2], p[0, 3] = 0.6, 0.4
    p[80, 2:] = 0.5 / 8
    p[80, 2] = 0.5
    probs, answers = np.broadcast_to(p, (2, 81, 11)).copy(), np.full((2, 81), 2)
    filled = {}
    for order in ("margin", "max"):
        search = CommitSearch(SUDOKU, empty, SearchParams(rollouts=2, strategy="commit", order=order))
        assert (search.start() == empty).all()
        grid = search.expanded(answers, probs, np.zeros(2))
        filled[order] = np.flatnonzero(grid != SUDOKU.blank).tolist()
        assert grid[filled[order][0]] == 2  # the cell's most probable value first
    assert filled == {"margin": [80], "max": [0]}


def test_agree_commits_only_the_sure_cells_the_parent_node_answered_the_same():
    """Raw decoding (no mask, no backtracking). The first node believes a wrong value in 5 open cells, the later ones
    the solution. Without `agree` the first node commits all its sure cells, the 5 wrong ones too, and the grid is
    filled wrong. With `agree` the root (no parent) only branches; the second node commits the sure cells the root
    answered the same (not the 5); the third fills the rest from the solution."""
    puzzles, solutions = generate_puzzles(1, np.random.default_rng(2), clues=(24, 26))
    puzzle, solution = puzzles[0].astype(np.int64), solutions[0].astype(np.int64)
    open_cells = np.flatnonzero(puzzle == SUDOKU.blank)
    wrong = solution.copy()
    wrong[open_cells[-5:]] = (solution[open_cells[-5:]] - 2 + 1) % 9 + 2  # another digit in 5 cells
    for agree in (False, True):
        search = CommitSearch(
            SUDOKU,
            puzzle,
            SearchParams(rollouts=2, strategy="commit", mask=False, backtrack="off", temperature=1.0, agree=agree),
        )
        grids, step = [], search.start()
        for belief in [wrong] + [solution] * 5:
            if isinstance(step, Final):
                break
            grids.append(step)
            step = search.expanded(*Stub(belief, 0.95).rows(step))
        assert step.finish == "filled"
        if not agree:
            assert len(grids) == 1 and (step.answer == wrong).all()
            continue
        assert len(grids) == 3 and (step.answer == solution).all()
        first_commit = np.flatnonzero((grids[1] != SUDOKU.blank) & (puzzle == SUDOKU.blank))
        assert len(first_commit) == 1  # the root only branched
        second = np.flatnonzero((grids[2] != SUDOKU.blank) & (grids[1] == SUDOKU.blank))
        assert set(second) == set(open_cells[:-5]) - set(first_commit)  # what both nodes believed


def test_symmetry_class_is_kept_by_every_symmetry_and_tells_grids_apart():
    """A grid's images (relabelled, transposed, lines moved) share its class; 40 random grids have 40 classes. So a
    decoder that only re-frames one grid scores 1 / n distinct up to symmetry, however distinct its grids look."""
    from engine.eval import diversity_report
    from engine.tasks.sudoku import SYMMETRY_KEYS, symmetries, symmetry_class

    grids = random_grids(40, np.random.default_rng(1)).astype(np.int64)
    assert len({symmetry_class(g) for g in grids}) == 40
    rng = np.random.default_rng(2)
    for grid in grids[:5]:
        images = symmetries(rng.random((16, SYMMETRY_KEYS))).apply(np.broadcast_to(grid, (16, 81)).copy())
        assert len({symmetry_class(g) for g in images} | {symmetry_class(grid)}) == 1
        report = diversity_report(images)
        assert report["distinct_up_to_symmetry"] == 1 / 16 and len(np.unique(images, axis=0)) == 16
    assert diversity_report(grids)["distinct_up_to_symmetry"] == 1
