import numpy as np
import pytest

from engine.tasks.base import PuzzleError
from engine.tasks.nqueens import EMPTY, QUEEN, NQueens, count_completions, solve

EIGHT = NQueens(8)
SOLUTION = [0, 4, 7, 5, 2, 6, 1, 3]  # the queen's column in each row


def board(columns: list[int | None], n: int = 8) -> list[str]:
    return ["." * n if c is None else "." * c + "Q" + "." * (n - c - 1) for c in columns]


def tokens(columns: list[int | None]) -> np.ndarray:
    return EIGHT.encode(board(columns))


def every_solution() -> list[list[int]]:
    """All 8x8 boards by plain recursion, independent of the bitmask solver."""
    found: list[list[int]] = []

    def extend(cols: list[int]) -> None:
        if len(cols) == 8:
            found.append(cols)
        for c in range(8):
            if all(c != d and abs(c - d) != len(cols) - r for r, d in enumerate(cols)):
                extend(cols + [c])

    extend([])
    return found


def test_names_and_sizes():
    assert (EIGHT.name, EIGHT.seq_len, EIGHT.vocab_size) == ("nqueens", 64, 3)
    assert (NQueens(10).name, NQueens(10).seq_len) == ("nqueens-10", 100)


def test_text_forms_agree():
    expected = tokens(SOLUTION)
    assert expected.dtype == np.int64 and expected.shape == (64,)
    assert expected[0] == QUEEN and expected[1] == EMPTY
    text = "\n".join(board(SOLUTION))
    assert np.array_equal(EIGHT.encode(text.replace(".", "0").replace("Q", "1")), expected)
    assert np.array_equal(EIGHT.encode("".join(board(SOLUTION))), expected)
    assert np.array_equal(EIGHT.encode("\n".join(" ".join(row) for row in board(SOLUTION)) + "\n\n"), expected)
    nested = [[int(c == col) for c in range(8)] for col in SOLUTION]
    assert np.array_equal(EIGHT.encode(nested), expected)
    assert EIGHT.decode(expected) == nested
    assert EIGHT.to_text(expected) == text


@pytest.mark.parametrize("n, total", [(8, 92), (10, 724)])
def test_counts_from_an_empty_board(n, total):
    empty = np.full(n * n, EMPTY, dtype=np.int64)
    assert count_completions(empty) == total
    assert count_completions(empty, limit=5) == 5
    assert NQueens(n).check(empty, solve(empty)) is None


def test_partial_boards_count_and_solve():
    solutions = every_solution()
    assert len(solutions) == 92
    rng = np.random.default_rng(0)
    for _ in range(20):
        kept = [c if rng.random() < 0.4 else None for c in solutions[rng.integers(92)]]
        expected = sum(all(k is None or k == s[r] for r, k in enumerate(kept)) for s in solutions)
        puzzle = tokens(kept)
        assert count_completions(puzzle) == expected >= 1
        assert EIGHT.check(puzzle, solve(puzzle)) is None


def test_dead_end_puzzles():
    stuck = tokens([0, 2, None, None, None, None, None, None])  # no completion keeps both
    assert count_completions(stuck) == 0 and solve(stuck) is None
    attacking = np.full(64, EMPTY, dtype=np.int64)
    attacking[[0, 9]] = QUEEN  # encode refuses this, but raw tokens may still arrive
    assert count_completions(attacking) == 0 and solve(attacking) is None
    with pytest.raises(PuzzleError, match=r"expected n\*n tokens for an n x n board, got 63"):
        count_completions(np.full(63, EMPTY))
    with pytest.raises(PuzzleError, match="row 1, column 1: token 0 is neither empty"):
        solve(np.zeros(64, dtype=np.int64))


def test_check():
    puzzle = tokens([0, None, None, None, None, None, None, 3])
    assert EIGHT.check(puzzle, tokens(SOLUTION)) is None
    other = next(s for s in every_solution() if s[0] != 0)
    assert EIGHT.check(puzzle, tokens(other)) == "row 1, column 1: the given queen was removed"
    assert EIGHT.check(puzzle, tokens(SOLUTION[:7] + [None])) == "row 8, column 4: the given queen was removed"
    assert EIGHT.check(puzzle, tokens(SOLUTION[:6] + [None, 3])) == "the board has 7 queens, expected 8"
    crowded = tokens(SOLUTION)
    crowded[1] = QUEEN
    assert EIGHT.check(puzzle, crowded) == "queens at row 1, column 1 and row 1, column 2 share a row"
    padded = tokens(SOLUTION)
    padded[10] = 0
    assert EIGHT.check(puzzle, padded) == "row 2, column 3: token 0 is neither empty (1) nor a queen (2)"


@pytest.mark.parametrize(
    "puzzle, message",
    [
        (board([0, None, 2] + [None] * 5), "queens at row 1, column 1 and row 3, column 3 share a diagonal"),
        (
            board([None, 5, None, None, None, None, 5, None]),
            "queens at row 2, column 6 and row 7, column 6 share a column",
        ),
        (["Q..Q...."] + board([None] * 7), "queens at row 1, column 1 and row 1, column 4 share a row"),
        (board([None] * 7), "expected 8 rows, got 7"),
        ("\n".join(board([None] * 4) + ["......."] + board([None] * 3)), "row 5 has 7 characters, expected 8"),
        ("." * 63, "expected 64 characters, got 63"),
        (
            board([None] * 2) + ["..x....."] + board([None] * 5),
            "row 3, column 3: unexpected character 'x' (allowed: '.', 'Q', '0', '1')",
        ),
        ([[0] * 8] * 3 + [[0, 2] + [0] * 6] + [[0] * 8] * 4, "row 4, column 2: 2 is not 0 (empty) or 1 (queen)"),
        ([[0] * 8] * 7 + [[0] * 9], "row 8 has 9 cells, expected 8"),
        ([[True] + [0] * 7] + [[0] * 8] * 7, "row 1, column 1: True is not 0 (empty) or 1 (queen)"),
    ],
)
def test_malformed_input(puzzle, message):
    with pytest.raises(PuzzleError) as err:
        EIGHT.encode(puzzle)
    assert str(err.value) == message
