"""Sudoku codec, rule checks, batch verifier and exact solver. Self-contained: no shared data files."""

from __future__ import annotations

import re

import numpy as np
import pytest

from engine.tasks.base import PuzzleError
from engine.tasks.sudoku import Sudoku
from engine.tasks.sudoku_solver import count_solutions, random_solution, search, solve

TASK = Sudoku()
# Arto Inkala's 2012 "world's hardest Sudoku": unique solution, needs real search.
INKALA = "8..........36......7..9.2...5...7.......457.....1...3...1....68..85...1..9....4.."
# A valid complete grid by construction: each row shifts the previous by 3 (by 1 across bands).
BASE = [[(r * 3 + r // 3 + c) % 9 + 1 for c in range(9)] for r in range(9)]


def tokens(grid: list[list[int]]) -> np.ndarray:
    """Nested digits -> tokens without the codec's checks, so tests can build faulty answers."""
    return np.array(grid, dtype=np.int64).reshape(81) + 1


def empty_with(*cells: tuple[int, int, int]) -> list[list[int]]:
    """An empty grid with (row, column, digit) givens, 1-based like the error messages."""
    grid = [[0] * 9 for _ in range(9)]
    for r, c, d in cells:
        grid[r - 1][c - 1] = d
    return grid


def candidates(digits: list[int], i: int) -> set[int]:
    """Digits that no filled peer (row, column, box) of cell i holds."""
    r, c = divmod(i, 9)
    peers = {digits[r * 9 + k] for k in range(9)} | {digits[k * 9 + c] for k in range(9)}
    peers |= {digits[(r // 3 * 3 + k // 3) * 9 + c // 3 * 3 + k % 3] for k in range(9)}
    return set(range(1, 10)) - peers


def brute_force_count(digits: list[int]) -> int:
    """All solutions by plain backtracking over the first blank: slow, but shares nothing with the solver."""
    if 0 not in digits:
        return 1
    i = digits.index(0)
    total = 0
    for d in candidates(digits, i):
        digits[i] = d
        total += brute_force_count(digits)
    digits[i] = 0
    return total


# --- codec -------------------------------------------------------------------------------------------------------


def test_token_encoding_follows_trm():
    t = TASK.encode("5...27..9" + "." * 72)
    assert t.dtype == np.int64 and t.shape == (81,)
    assert t[:9].tolist() == [6, 1, 1, 1, 3, 8, 1, 1, 10]  # TRM.md §6.1 example


def test_text_forms_round_trip():
    t = TASK.encode(INKALA)
    assert TASK.to_text(t) == INKALA
    assert np.array_equal(TASK.encode(INKALA.replace(".", "0")), t)
    multiline = "\n".join(" ".join(INKALA[r * 9 : (r + 1) * 9]) for r in range(9)) + "\n"
    assert np.array_equal(TASK.encode(multiline), t)


def test_nested_lists_round_trip():
    t = TASK.encode(INKALA)
    grid = TASK.decode(t)
    assert grid[0] == [8, 0, 0, 0, 0, 0, 0, 0, 0] and len(grid) == 9
    assert np.array_equal(TASK.encode(grid), t)
    assert np.array_equal(TASK.encode(tuple(tuple(row) for row in grid)), t)


def test_decode_and_text_treat_non_digits_as_blank():
    t = TASK.encode(INKALA)
    t[0], t[1] = 0, 11  # PAD and out-of-vocabulary tokens, as a model might emit
    assert TASK.decode(t)[0][:2] == [0, 0]
    assert TASK.to_text(t)[:2] == ".."


def test_render():
    lines = TASK.render(TASK.encode(INKALA)).splitlines()
    assert len(lines) == 11
    assert lines[0] == "8 . . | . . . | . . ."
    assert lines[3] == lines[7] == "------+-------+------"
    assert lines[4] == ". 5 . | . . 7 | . . ."


@pytest.mark.parametrize(
    "puzzle, message",
    [
        (INKALA[:-1], "expected 81 cells, got 80"),
        (INKALA + "1", "expected 81 cells, got 82"),
        (
            INKALA[:22] + "x" + INKALA[23:],
            "row 3, column 5: unexpected character 'x' (use 1-9 for givens, '.' or '0' for blanks)",
        ),
        (empty_with()[:8], "expected 9 rows, got 8"),
        (empty_with()[:3] + [[0] * 8] + empty_with()[4:], "row 4 has 8 cells, expected 9"),
        (empty_with((2, 7, 12)), "row 2, column 7: 12 is not a digit 0-9"),
        (empty_with((5, 1, -1)), "row 5, column 1: -1 is not a digit 0-9"),
        (empty_with((1, 1, True)), "row 1, column 1: True is not a digit 0-9"),
        (empty_with((1, 2, 5.0)), "row 1, column 2: 5.0 is not a digit 0-9"),
        (empty_with((9, 9, "5")), "row 9, column 9: '5' is not a digit 0-9"),
        (["8........"] * 9, "row 1: expected a list of 9 digits, got str"),
        (42, "expected an 81-character string or a 9x9 nested list, got int"),
        (empty_with((2, 1, 5), (2, 7, 5)), "row 2 has two 5s (columns 1 and 7)"),
        (empty_with((2, 3, 7), (5, 3, 7)), "column 3 has two 7s (rows 2 and 5)"),
        (
            empty_with((4, 4, 3), (6, 6, 3)),
            "box 5 (rows 4-6, columns 4-6) has two 3s (row 4, column 4 and row 6, column 6)",
        ),
        ("5.....5.." + "." * 72, "row 1 has two 5s (columns 1 and 7)"),
    ],
)
def test_malformed_input_is_named(puzzle, message):
    with pytest.raises(PuzzleError, match=re.escape(message) + "$"):
        TASK.encode(puzzle)


# --- rule checks -------------------------------------------------------------------------------------------------

EMPTY = tokens(empty_with())
SOME_GIVENS = tokens([[d if (r + c) % 3 == 0 else 0 for c, d in enumerate(row)] for r, row in enumerate(BASE)])


def with_cell(grid: list[list[int]], r: int, c: int, d: int) -> list[list[int]]:
    out = [row[:] for row in grid]
    out[r - 1][c - 1] = d
    return out


def answer_tokens_with(r: int, c: int, token: int) -> np.ndarray:
    t = tokens(BASE)
    t[(r - 1) * 9 + c - 1] = token
    return t


SWAPPED = with_cell(with_cell(BASE, 1, 1, BASE[0][1]), 1, 2, BASE[0][0])
RELABELLED = [[d % 9 + 1 for d in row] for row in BASE]  # a different valid grid
LATIN = [[(r + c) % 9 + 1 for c in range(9)] for r in range(9)]  # rows and columns fine, boxes not

CHECK_CASES = [
    (SOME_GIVENS, tokens(BASE), None),
    (EMPTY, tokens(RELABELLED), None),
    (EMPTY, tokens(with_cell(BASE, 4, 2, 0)), "row 4, column 2 is blank"),
    (EMPTY, answer_tokens_with(4, 2, 0), "row 4, column 2 is blank"),  # PAD
    (EMPTY, answer_tokens_with(1, 1, 11), "row 1, column 1 holds 11, which is not a Sudoku token"),
    (EMPTY, tokens(with_cell(BASE, 1, 1, 2)), "row 1 has two 2s (columns 1 and 2)"),
    (EMPTY, tokens(SWAPPED), "column 1 has two 2s (rows 1 and 4)"),
    (EMPTY, tokens(LATIN), "box 1 (rows 1-3, columns 1-3) has two 2s (row 1, column 2 and row 2, column 1)"),
    (SOME_GIVENS, tokens(RELABELLED), "row 1, column 1 changes the given 1 to 2"),
]


def test_base_grid_is_a_valid_sudoku():
    for unit in (
        [BASE[r] for r in range(9)]
        + [[BASE[r][c] for r in range(9)] for c in range(9)]
        + [[BASE[b // 3 * 3 + k // 3][b % 3 * 3 + k % 3] for k in range(9)] for b in range(9)]
    ):
        assert sorted(unit) == list(range(1, 10))


@pytest.mark.parametrize("puzzle, answer, message", CHECK_CASES)
def test_check_names_the_first_fault(puzzle, answer, message):
    assert TASK.check(puzzle, answer) == message
    assert TASK.verify(puzzle, answer) == (message is None)


def test_verify_batch_agrees_with_verify():
    rng = np.random.default_rng(0)
    puzzles, answers = [p for p, _, _ in CHECK_CASES], [a for _, a, _ in CHECK_CASES]
    for _ in range(300):
        answer = tokens([BASE, RELABELLED, LATIN][rng.integers(3)])
        for cell in rng.integers(0, 81, size=rng.integers(0, 3)):
            answer[cell] = rng.integers(0, 12)
        puzzle = np.where(rng.random(81) < 0.3, tokens(BASE), 1)
        puzzles.append(puzzle)
        answers.append(answer)
    got = TASK.verify_batch(np.stack(puzzles), np.stack(answers))
    want = np.array([TASK.verify(p, a) for p, a in zip(puzzles, answers)])
    assert got.dtype == bool and np.array_equal(got, want)
    assert 0 < want.sum() < len(want)


# --- exact solver ------------------------------------------------------------------------------------------------


def test_solves_a_hard_puzzle():
    puzzle = TASK.encode(INKALA)
    found = search(puzzle)
    assert TASK.check(puzzle, found.solution) is None
    assert found.guesses > 0  # singles alone do not crack it
    assert np.array_equal(solve(puzzle), found.solution)
    assert count_solutions(puzzle) == 1


def test_counts_stop_at_the_limit():
    fewer_clues = TASK.encode("." * 9 + INKALA[9:])  # drops the given 8: Inkala's puzzle is minimal
    assert count_solutions(fewer_clues, limit=2) == 2
    assert count_solutions(EMPTY) == 2
    assert count_solutions(EMPTY, limit=5) == 5
    assert count_solutions(EMPTY, limit=1) == 1


@pytest.mark.parametrize(
    "givens",
    [
        # row 1 holds 1-8, so its last cell must be 9, which column 9 already has
        [(1, c, c) for c in range(1, 9)] + [(5, 9, 9)],
        # rows 1-2 and columns 1-2 keep 1 out of box 1 except row 3, column 3, which holds a 2
        [(1, 4, 1), (2, 7, 1), (4, 1, 1), (7, 2, 1), (3, 3, 2)],
    ],
)
def test_contradictory_puzzle_has_no_solution(givens):
    puzzle = TASK.encode(empty_with(*givens))  # encodes, so no row, column or box repeats a given
    assert count_solutions(puzzle) == 0
    assert solve(puzzle) is None


def test_duplicate_givens_past_the_codec_have_no_solution():
    assert count_solutions(tokens(empty_with((2, 1, 5), (2, 7, 5)))) == 0


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros(81, dtype=np.int64),  # PAD is not a cell
        np.full(81, 11),
        np.ones((9, 9), dtype=np.int64),
        np.ones(81, dtype=np.float64),
    ],
)
def test_solver_rejects_non_tokens(bad):
    with pytest.raises(ValueError, match="tokens"):
        solve(bad)


def test_solver_rejects_a_zero_limit():
    with pytest.raises(ValueError, match="limit"):
        count_solutions(EMPTY, limit=0)


def test_random_solutions_are_valid_varied_and_repeatable():
    first = random_solution(EMPTY, np.random.default_rng(1))
    second = random_solution(EMPTY, np.random.default_rng(2))
    assert TASK.check(EMPTY, first) is None and TASK.check(EMPTY, second) is None
    assert not np.array_equal(first, second)
    assert np.array_equal(random_solution(EMPTY, np.random.default_rng(1)), first)
    inkala = TASK.encode(INKALA)
    assert np.array_equal(random_solution(inkala, np.random.default_rng(3)), solve(inkala))


def test_counts_agree_with_brute_force():
    rng = np.random.default_rng(7)
    counts = []
    for i in range(24):
        full = (random_solution(EMPTY, rng) - 1).tolist()
        digits = full[:]
        for cell in rng.choice(81, size=rng.integers(12, 30), replace=False):
            digits[cell] = 0
        if i % 3 == 0:  # a wrong given that repeats no peer: mostly leaves no solution
            cell = digits.index(0)
            wrong = sorted(candidates(digits, cell) - {full[cell]})
            if wrong:
                digits[cell] = wrong[0]
        if i % 3 == 1:  # blank rows 1-2: swapping them gives a second solution
            digits[:18] = [0] * 18
        want = brute_force_count(digits[:])
        assert count_solutions(np.array(digits) + 1, limit=10**6) == want
        counts.append(want)
    assert 0 in counts and 1 in counts and max(counts) > 1
