"""Puzzles carved from grids (engine/tasks/carve.py, issue 26): unique always, minimal after a whole pass."""

import numpy as np

from engine.tasks.carve import carve, is_minimal, minimal_puzzle
from engine.tasks.sudoku import BLANK
from engine.tasks.sudoku_solver import count_solutions, random_solution


def needed(puzzle: np.ndarray) -> list[bool]:
    """For each given, whether blanking it alone leaves more than one solution (checked here, not by is_minimal)."""
    out = []
    for cell in np.flatnonzero(puzzle != BLANK):
        weaker = puzzle.copy()
        weaker[cell] = BLANK
        out.append(count_solutions(weaker, 2) > 1)
    return out


def test_carving_keeps_the_solution_unique_and_a_whole_pass_is_minimal():
    rng = np.random.default_rng(26)
    for _ in range(3):
        grid = random_solution(np.full(81, BLANK, np.int64), rng)
        puzzle, given = carve(grid, 40, rng)
        assert given == 40 and (puzzle != BLANK).sum() == 40 and count_solutions(puzzle, 2) == 1
        assert not all(needed(puzzle)) and not is_minimal(puzzle)  # 40 clues are never minimal
        least = minimal_puzzle(grid, rng)
        assert count_solutions(least, 2) == 1 and ((least == grid) | (least == BLANK)).all()
        assert all(needed(least)) and is_minimal(least)
    assert not is_minimal(np.full(81, BLANK, np.int64))  # no unique solution at all
