"""9x9 Sudoku: codec, rule checks and a vectorised batch verifier. Exact search lives in `sudoku_solver`.

Tokens follow the official TRM encoding (TRM.md §6.1): PAD=0, blank=1, digit d -> d+1 (tokens 2-10).
"""

from __future__ import annotations

from numbers import Integral

import numpy as np

from engine.tasks.base import PuzzleError, Task
from engine.tasks.sudoku_solver import verify_tokens
from engine.tasks.symmetry import Symmetry

BLANK = 1
DIGITS = np.arange(2, 11)  # the tokens of digits 1-9
SYMMETRY_KEYS = 34  # uniform draws per symmetry: digits 9, transpose 1, bands 3, rows 9, stacks 3, columns 9


def _line_perm(keys: np.ndarray) -> np.ndarray:
    """Random keys [B, 12] -> [B, 9] line orders: shuffled bands (or stacks) x shuffled lines within each."""
    groups = np.argsort(keys[:, :3], axis=1)
    within = np.argsort(keys[:, 3:].reshape(-1, 3, 3), axis=2)
    return (groups[:, :, None] * 3 + within).reshape(-1, 9)


def symmetries(keys: np.ndarray) -> Symmetry:
    """Uniform keys [B, 34] -> B validity-preserving Sudoku symmetries (the official `shuffle_sudoku`, TRM.md §7.3):
    digit relabelling, optional transpose, band/stack shuffles and row/column shuffles within them."""
    b = len(keys)
    fixed = np.broadcast_to(np.arange(2), (b, 2))  # PAD and blank never move
    tokens = np.concatenate([fixed, np.argsort(keys[:, :9], axis=1) + 2], axis=1)
    rows, cols = _line_perm(keys[:, 10:22])[:, :, None], _line_perm(keys[:, 22:34])[:, None, :]
    # Output cell (r, c) reads input cell (rows[r], cols[c]), or (cols[c], rows[r]) when transposed.
    cells = np.where((keys[:, 9] < 0.5)[:, None, None], cols * 9 + rows, rows * 9 + cols).reshape(b, 81)
    return Symmetry(cells, tokens)


def symmetry_class(grid: np.ndarray) -> tuple:
    """An invariant of a complete grid [81] under `symmetries`: grids that are images of each other get the same
    class, so different classes mean essentially different grids (the converse need not hold: a lower bound on how
    many essentially different grids a set holds). For every pair of rows, the digit permutation from one row to the
    other (column by column) has a cycle type that relabelling and column moves keep; row moves only permute the
    pairs (within a band stay within a band). Columns likewise; a transpose swaps the two sides."""
    g = np.asarray(grid, np.int64).reshape(9, 9)

    def side(rows: np.ndarray) -> tuple:
        within, across = [], []
        for a in range(9):
            for b in range(a + 1, 9):
                perm = np.empty(11, np.int64)
                perm[rows[a]] = rows[b]
                seen, cycles = set(), []
                for start in rows[a]:
                    n, x = 0, start
                    while x not in seen:
                        seen.add(x)
                        x, n = perm[x], n + 1
                    if n:
                        cycles.append(n)
                (within if a // 3 == b // 3 else across).append(tuple(sorted(cycles)))
        return tuple(sorted(within)), tuple(sorted(across))

    return tuple(sorted((side(g), side(g.T))))


def _digits(tokens: np.ndarray) -> np.ndarray:
    """Tokens [81] -> 9x9 int64 digits, 0 wherever the token is not a digit (PAD, blank, out of range)."""
    t = np.asarray(tokens, dtype=np.int64).reshape(9, 9)
    return np.where((t >= 2) & (t <= 10), t - 1, 0)


def _box_cells(box: int) -> list[tuple[int, int]]:
    r0, c0 = box // 3 * 3, box % 3 * 3
    return [(r0 + i // 3, c0 + i % 3) for i in range(9)]


# The 27 units in reporting order: rows, columns, boxes, as (kind, name, cells).
_UNITS = (
    [("row", f"row {i + 1}", [(i, c) for c in range(9)]) for i in range(9)]
    + [("column", f"column {i + 1}", [(r, i) for r in range(9)]) for i in range(9)]
    + [
        (
            "box",
            f"box {b + 1} (rows {b // 3 * 3 + 1}-{b // 3 * 3 + 3}, columns {b % 3 * 3 + 1}-{b % 3 * 3 + 3})",
            _box_cells(b),
        )
        for b in range(9)
    ]
)


def _two_cells(kind: str, a: tuple[int, int], b: tuple[int, int]) -> str:
    if kind == "row":
        return f"columns {a[1] + 1} and {b[1] + 1}"
    if kind == "column":
        return f"rows {a[0] + 1} and {b[0] + 1}"
    return f"row {a[0] + 1}, column {a[1] + 1} and row {b[0] + 1}, column {b[1] + 1}"


def _first_duplicate(grid: np.ndarray) -> str | None:
    """The first row, column or box (in that order) holding a digit twice, as a sentence; 0s are ignored."""
    for kind, name, cells in _UNITS:
        seen: dict[int, tuple[int, int]] = {}
        for r, c in cells:
            d = int(grid[r, c])
            if d and d in seen:
                return f"{name} has two {d}s ({_two_cells(kind, seen[d], (r, c))})"
            seen[d] = (r, c)
    return None


def _parse_text(text: str) -> np.ndarray:
    cells = "".join(text.split())  # whitespace anywhere is layout, so a 9-line grid works too
    if len(cells) != 81:
        raise PuzzleError(f"expected 81 cells, got {len(cells)}")
    grid = np.zeros((9, 9), dtype=np.int64)
    for i, ch in enumerate(cells):
        if ch in "123456789":
            grid[i // 9, i % 9] = int(ch)
        elif ch not in ".0":
            raise PuzzleError(
                f"row {i // 9 + 1}, column {i % 9 + 1}: unexpected character {ch!r} "
                "(use 1-9 for givens, '.' or '0' for blanks)"
            )
    return grid


def _parse_rows(rows: list | tuple) -> np.ndarray:
    if len(rows) != 9:
        raise PuzzleError(f"expected 9 rows, got {len(rows)}")
    grid = np.zeros((9, 9), dtype=np.int64)
    for r, row in enumerate(rows):
        if not isinstance(row, (list, tuple)):
            raise PuzzleError(f"row {r + 1}: expected a list of 9 digits, got {type(row).__name__}")
        if len(row) != 9:
            raise PuzzleError(f"row {r + 1} has {len(row)} cells, expected 9")
        for c, v in enumerate(row):
            # bool is an Integral, but True as a digit is almost certainly a caller's mistake
            if isinstance(v, bool) or not isinstance(v, Integral) or not 0 <= v <= 9:
                raise PuzzleError(f"row {r + 1}, column {c + 1}: {v!r} is not a digit 0-9")
            grid[r, c] = int(v)
    return grid


# Peers of each cell (same row, column or box, itself excluded) as a [81, 81] bool matrix.
_r, _c = np.divmod(np.arange(81), 9)
PEERS = (_r[:, None] == _r) | (_c[:, None] == _c) | ((_r[:, None] // 3 == _r // 3) & (_c[:, None] // 3 == _c // 3))
PEERS &= ~np.eye(81, dtype=bool)


class Sudoku(Task):
    name = "sudoku"
    seq_len = 81
    vocab_size = 11
    blank = BLANK
    values = DIGITS

    def symmetry(self, rng: np.random.Generator) -> Symmetry:
        one = symmetries(rng.random((1, SYMMETRY_KEYS)))
        return Symmetry(one.cells[0], one.tokens[0])

    def legal(self, tokens: np.ndarray) -> np.ndarray:
        """bool [81, vocab]: the digit tokens each cell may hold given the filled cells (a filled cell: its own)."""
        t = np.asarray(tokens, np.int64).reshape(81)
        onehot = np.zeros((81, self.vocab_size), bool)
        filled = (t >= 2) & (t <= 10)
        onehot[np.flatnonzero(filled), t[filled]] = True
        taken = (PEERS.astype(np.int64) @ onehot.astype(np.int64)) > 0  # digits held by a peer
        legal = ~taken
        legal[:, :2] = False
        legal[filled] = onehot[filled]
        return legal

    def encode(self, puzzle: str | list) -> np.ndarray:
        """81 chars ('.' or '0' blank, whitespace ignored) or 9x9 nested ints (0 blank) -> tokens [81]."""
        if isinstance(puzzle, str):
            grid = _parse_text(puzzle)
        elif isinstance(puzzle, (list, tuple)):
            grid = _parse_rows(puzzle)
        else:
            raise PuzzleError(f"expected an 81-character string or a 9x9 nested list, got {type(puzzle).__name__}")
        fault = _first_duplicate(grid)
        if fault:
            raise PuzzleError(fault)
        return (grid.reshape(81) + 1).astype(np.int64)

    def decode(self, tokens: np.ndarray) -> list:
        return _digits(tokens).tolist()

    def to_text(self, tokens: np.ndarray) -> str:
        return "".join(str(d) if d else "." for d in _digits(tokens).reshape(81))

    def render(self, tokens: np.ndarray) -> str:
        text = self.to_text(tokens)
        lines = []
        for r in range(9):
            if r in (3, 6):
                lines.append("------+-------+------")
            row = text[r * 9 : (r + 1) * 9]
            lines.append(" | ".join(" ".join(row[s : s + 3]) for s in (0, 3, 6)))
        return "\n".join(lines)

    def check(self, puzzle: np.ndarray, answer: np.ndarray) -> str | None:
        given = _digits(puzzle)
        tokens = np.asarray(answer, dtype=np.int64).reshape(9, 9)
        for r, c in np.argwhere((tokens < 2) | (tokens > 10)):
            t = int(tokens[r, c])
            what = "is blank" if t in (0, BLANK) else f"holds {t}, which is not a Sudoku token"
            return f"row {r + 1}, column {c + 1} {what}"
        grid = tokens - 1
        for r, c in np.argwhere((given > 0) & (grid != given)):
            return f"row {r + 1}, column {c + 1} changes the given {given[r, c]} to {grid[r, c]}"
        return _first_duplicate(grid)

    def verify_batch(self, puzzles: np.ndarray, answers: np.ndarray) -> np.ndarray:
        answers = np.ascontiguousarray(answers, dtype=np.int64).reshape(-1, 81)
        puzzles = np.ascontiguousarray(np.broadcast_to(puzzles, answers.shape), dtype=np.int64)
        ok = np.empty(len(answers), dtype=bool)
        verify_tokens(puzzles, answers, ok)
        return ok
