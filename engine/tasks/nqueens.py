"""N-Queens completion (GRAM-style, DATA.md §5.1): codec, rule verifier, and a bitmask solver that counts completions.

A puzzle is an n x n board holding some non-attacking queens; an answer is a full board of n non-attacking queens
that keeps every given one. A partial board usually has several completions, so answers are judged by the rules,
never against one label. Tokens: PAD 0, empty 1, queen 2; n*n of them, row-major.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import islice
from numbers import Integral

import numpy as np

from engine.tasks.base import PuzzleError, Task
from engine.tasks.grid import board, cell, parse_rows
from engine.tasks.symmetry import Symmetry, dihedral

EMPTY, QUEEN = 1, 2
TEXT_TOKEN = {".": EMPTY, "0": EMPTY, "Q": QUEEN, "1": QUEEN}

Cell = tuple[int, int]


def _parse(puzzle: str | list, n: int) -> np.ndarray:
    if isinstance(puzzle, str):
        lines = ("".join(line.split()) for line in puzzle.splitlines())
        puzzle = "\n".join(line for line in lines if line)  # whitespace is layout only
    cells = np.empty((n, n), dtype=np.int64)
    for r, row in enumerate(parse_rows(puzzle, n, n)):
        for c, v in enumerate(row):
            if isinstance(v, str):
                token = TEXT_TOKEN.get(v)
                if token is None:
                    raise PuzzleError(f"{cell(r, c)}: unexpected character {v!r} (allowed: '.', 'Q', '0', '1')")
            # bool is an Integral, but True as a cell is almost certainly a caller's mistake
            elif isinstance(v, Integral) and not isinstance(v, bool) and v in (0, 1):
                token = EMPTY + int(v)
            else:
                raise PuzzleError(f"{cell(r, c)}: {v!r} is not 0 (empty) or 1 (queen)")
            cells[r, c] = token
    return cells


def _board(tokens: np.ndarray) -> np.ndarray:
    """Flat tokens -> a square board of EMPTY/QUEEN tokens; the side is inferred from the token count."""
    side = math.isqrt(np.size(tokens))
    if side * side != np.size(tokens):
        raise PuzzleError(f"expected n*n tokens for an n x n board, got {np.size(tokens)}")
    cells = board(tokens, side, side)
    fault = _bad_token(cells)
    if fault:
        raise PuzzleError(fault)
    return cells


def _bad_token(cells: np.ndarray) -> str | None:
    for r, c in np.argwhere((cells != EMPTY) & (cells != QUEEN)):
        return f"{cell(r, c)}: token {cells[r, c]} is neither empty (1) nor a queen (2)"
    return None


def _queens(cells: np.ndarray) -> list[Cell]:
    return [(int(r), int(c)) for r, c in np.argwhere(cells == QUEEN)]


def _first_attack(queens: list[Cell]) -> str | None:
    """The first pair of queens (in row-major order) that attack each other, as a sentence."""
    for i, (r1, c1) in enumerate(queens):
        for r2, c2 in queens[i + 1 :]:
            shared = (
                "a row"
                if r1 == r2
                else "a column"
                if c1 == c2
                else "a diagonal"
                if abs(r1 - r2) == abs(c1 - c2)
                else None
            )
            if shared:
                return f"queens at {cell(r1, c1)} and {cell(r2, c2)} share {shared}"
    return None


def _completions(cells: np.ndarray) -> Iterator[list[int]]:
    """The queen's column in each row, for every full board that keeps the given queens (none if they attack)."""
    n = len(cells)
    queens = _queens(cells)
    if _first_attack(queens):
        return
    full = (1 << n) - 1
    given = [-1] * n
    for r, c in queens:
        given[r] = c
    reserved = sum(1 << c for c in given if c >= 0)  # free rows must leave the givens' columns alone

    def place(r: int, cols: int, left: int, right: int, placed: list[int]) -> Iterator[list[int]]:
        # left/right: columns of row r attacked along the diagonals by the queens above
        if r == n:
            yield list(placed)
            return
        options = (1 << given[r] if given[r] >= 0 else full & ~reserved) & ~(cols | left | right)
        while options:
            bit = options & -options
            options ^= bit
            placed.append(bit.bit_length() - 1)
            yield from place(r + 1, cols | bit, ((left | bit) << 1) & full, (right | bit) >> 1, placed)
            placed.pop()

    yield from place(0, 0, 0, 0, [])


def completions(puzzle_tokens: np.ndarray) -> Iterator[list[int]]:
    """Every full board that keeps the puzzle's queens, as the queen's column in each row, in search order."""
    return _completions(_board(puzzle_tokens))


def count_completions(puzzle_tokens: np.ndarray, limit: int | None = None) -> int:
    """How many full boards keep the puzzle's queens, counting no further than `limit`."""
    return sum(1 for _ in islice(completions(puzzle_tokens), limit))


def solve(puzzle_tokens: np.ndarray) -> np.ndarray | None:
    """The first completion in row-major search order (tokens [n*n]), or None when there is none."""
    cells = _board(puzzle_tokens)
    columns = next(_completions(cells), None)
    if columns is None:
        return None
    answer = np.full_like(cells, EMPTY)
    answer[np.arange(len(cells)), columns] = QUEEN
    return answer.reshape(-1)


class NQueens(Task):
    """n x n N-Queens completion. Text: n*n characters or n lines of n, '.' or '0' empty, 'Q' or '1' queen,
    whitespace ignored; nested lists: n rows of n ints, 0 empty and 1 queen."""

    vocab_size = 3
    many_answers = True

    def __init__(self, n: int = 8):
        if n < 1:
            raise ValueError(f"board side must be at least 1, got {n}")
        self.n = n
        self.name = "nqueens" if n == 8 else f"nqueens-{n}"
        self.seq_len = n * n

    def encode(self, puzzle: str | list) -> np.ndarray:
        cells = _parse(puzzle, self.n)
        fault = _first_attack(_queens(cells))
        if fault:
            raise PuzzleError(fault)
        return cells.reshape(-1)

    def decode(self, tokens: np.ndarray) -> list[list[int]]:
        # anything but a queen token (PAD included) reads as empty
        return (board(tokens, self.n, self.n) == QUEEN).astype(int).tolist()

    def to_text(self, tokens: np.ndarray) -> str:
        return "\n".join("".join("Q" if v else "." for v in row) for row in self.decode(tokens))

    def symmetry(self, rng: np.random.Generator) -> Symmetry:
        return dihedral(self.n, self.vocab_size, rng)

    def check(self, puzzle: np.ndarray, answer: np.ndarray) -> str | None:
        given = board(puzzle, self.n, self.n)
        cells = board(answer, self.n, self.n)
        fault = _bad_token(cells)
        if fault:
            return fault
        for r, c in np.argwhere((given == QUEEN) & (cells != QUEEN)):
            return f"{cell(r, c)}: the given queen was removed"
        queens = _queens(cells)
        fault = _first_attack(queens)
        if fault:
            return fault
        if len(queens) != self.n:
            return f"the board has {len(queens)} queens, expected {self.n}"
        return None
