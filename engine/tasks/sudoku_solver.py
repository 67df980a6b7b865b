"""Exact Sudoku search: a numba bitmask depth-first search with naked + hidden singles and MRV branching.

Convention: puzzles go in and solutions come out as token arrays [81] in the codec's encoding
(`Sudoku.encode`: blank=1, digit d -> d+1), so `solve(task.encode(text))` round-trips through `task.to_text`.
Inside the search a cell holds the bit of its digit (digit d -> 1 << (d-1)), 0 when empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

FULL = 0x1FF
_CELLS = np.arange(81)
# used[] slots per cell: its row 0-8, its column 9-17, its box 18-26; the 27 units list cells in the same order.
_ROW = _CELLS // 9
_COL = 9 + _CELLS % 9
_BOX = 18 + (_CELLS // 27) * 3 + (_CELLS % 9) // 3
_UNITS = np.array([[c for c in range(81) if u in (_ROW[c], _COL[c], _BOX[c])] for u in range(27)], dtype=np.int64)
_POPCOUNT = np.array([bin(m).count("1") for m in range(512)], dtype=np.int64)


@njit(cache=True)
def verify_tokens(puzzles, answers, out):
    """out[b] = answers[b] (int64 [B, 81] tokens) is a complete grid that keeps puzzles[b]'s givens and repeats no
    digit in a row, column or box. One pass per grid, stopping at its first fault: the engine checks every row of
    every step with it (issue 15: host time per step)."""
    used = np.zeros(27, np.int64)
    for b in range(answers.shape[0]):
        used[:] = 0
        ok = True
        for c in range(81):
            t, p = answers[b, c], puzzles[b, c]
            if t < 2 or t > 10 or (p >= 2 and p != t):
                ok = False
                break
            bit = 1 << (t - 2)
            if (used[_ROW[c]] | used[_COL[c]] | used[_BOX[c]]) & bit:
                ok = False
                break
            used[_ROW[c]] |= bit
            used[_COL[c]] |= bit
            used[_BOX[c]] |= bit
        out[b] = ok


# Outcomes of _propagate other than a cell to branch on.
_SOLVED = -1
_CONTRADICTION = -2


@njit(cache=True)
def _propagate(g, used):
    """Place naked and hidden singles until none remain. Returns _SOLVED, _CONTRADICTION or the MRV cell."""
    while True:
        progress = False
        best, best_n = -1, 10
        for c in range(81):
            if g[c]:
                continue
            m = FULL & ~(used[_ROW[c]] | used[_COL[c]] | used[_BOX[c]])
            if m == 0:
                return _CONTRADICTION
            if m & (m - 1) == 0:  # naked single
                g[c] = m
                used[_ROW[c]] |= m
                used[_COL[c]] |= m
                used[_BOX[c]] |= m
                progress = True
            elif _POPCOUNT[m] < best_n:
                best, best_n = c, _POPCOUNT[m]
        if progress:
            continue
        if best < 0:
            return _SOLVED
        for u in range(27):
            once, twice = 0, 0  # digits possible in at least one / at least two empty cells of the unit
            for k in range(9):
                c = _UNITS[u, k]
                if g[c] == 0:
                    m = FULL & ~(used[_ROW[c]] | used[_COL[c]] | used[_BOX[c]])
                    twice |= once & m
                    once |= m
            if (once | used[u]) != FULL:  # some digit has nowhere to go in this unit
                return _CONTRADICTION
            single = once & ~twice
            if single == 0:
                continue
            for k in range(9):
                c = _UNITS[u, k]
                if g[c] == 0:
                    s = single & ~(used[_ROW[c]] | used[_COL[c]] | used[_BOX[c]])
                    if s & (s - 1):  # one cell is the only home of two digits
                        return _CONTRADICTION
                    if s:
                        g[c] = s
                        used[_ROW[c]] |= s
                        used[_COL[c]] |= s
                        used[_BOX[c]] |= s
                        progress = True
        if not progress:
            return best


@njit(cache=True)
def _search(digits, limit, seed, out):
    """Count solutions of `digits` (int64[81], 0 blank) up to `limit`; the first one goes to `out` as digits.

    seed 0 tries candidates in ascending order; any other seed drives a random order (an LCG, so runs repeat).
    Returns (solutions found, branches tried).
    """
    g = np.zeros(81, np.int64)
    used = np.zeros(27, np.int64)
    for c in range(81):
        if digits[c]:
            bit = 1 << (digits[c] - 1)
            if (used[_ROW[c]] | used[_COL[c]] | used[_BOX[c]]) & bit:
                return 0, 0
            g[c] = bit
            used[_ROW[c]] |= bit
            used[_COL[c]] |= bit
            used[_BOX[c]] |= bit
    # Each level fixes at least one more cell, so 81 levels suffice.
    stack_g = np.empty((81, 81), np.int64)
    stack_used = np.empty((81, 27), np.int64)
    stack_cell = np.empty(81, np.int64)
    stack_left = np.empty(81, np.int64)
    depth, count, guesses, state = 0, 0, 0, seed
    while True:
        cell = _propagate(g, used)
        if cell == _SOLVED:
            if count == 0:
                for c in range(81):
                    out[c] = _POPCOUNT[g[c] - 1] + 1  # bit 1 << k -> digit k + 1
            count += 1
            if count >= limit:
                return count, guesses
        elif cell >= 0:
            stack_g[depth] = g
            stack_used[depth] = used
            stack_cell[depth] = cell
            stack_left[depth] = FULL & ~(used[_ROW[cell]] | used[_COL[cell]] | used[_BOX[cell]])
            depth += 1
        while depth > 0 and stack_left[depth - 1] == 0:
            depth -= 1
        if depth == 0:
            return count, guesses
        top = depth - 1
        left = stack_left[top]
        bit = left & -left
        if seed:
            state = state * 6364136223846793005 + 1442695040888963407  # wraps mod 2**64
            for _ in range(((state >> 33) & 0x7FFFFFFF) % _POPCOUNT[left]):
                left &= left - 1
            bit = left & -left
        stack_left[top] &= ~bit
        g[:] = stack_g[top]
        used[:] = stack_used[top]
        c = stack_cell[top]
        g[c] = bit
        used[_ROW[c]] |= bit
        used[_COL[c]] |= bit
        used[_BOX[c]] |= bit
        guesses += 1


@dataclass(frozen=True)
class SearchResult:
    count: int  # solutions found, at most the limit asked for
    solution: np.ndarray | None  # the first solution found, as tokens [81]
    guesses: int  # branches tried: a hardness measure (0 means singles alone solve it)


def search(puzzle: np.ndarray, limit: int = 1, rng: np.random.Generator | None = None) -> SearchResult:
    """Search `puzzle` (tokens [81]) for up to `limit` solutions; with `rng`, branch on candidates in random order."""
    tokens = np.asarray(puzzle)
    if tokens.shape != (81,) or tokens.dtype.kind not in "iu" or tokens.min() < 1 or tokens.max() > 10:
        raise ValueError(
            "the solver takes Sudoku tokens [81] with values 1-10 (blank=1, digit d -> d+1), as from Sudoku.encode"
        )
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    seed = 0 if rng is None else int(rng.integers(1, 2**62))
    out = np.zeros(81, np.int64)
    count, guesses = _search(tokens.astype(np.int64) - 1, limit, seed, out)
    return SearchResult(int(count), out + 1 if count else None, int(guesses))


def solve(puzzle: np.ndarray) -> np.ndarray | None:
    """The first solution (tokens [81]) in ascending candidate order, or None when there is none."""
    return search(puzzle).solution


def count_solutions(puzzle: np.ndarray, limit: int = 2) -> int:
    """The number of solutions, counting no further than `limit` (limit=2 tells unique from ambiguous)."""
    return search(puzzle, limit).count


def random_solution(puzzle: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """A solution found with random branching order; on an empty grid this gives varied complete grids."""
    return search(puzzle, 1, rng).solution
