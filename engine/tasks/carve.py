"""Sudoku puzzles carved from complete grids: the task layer's, used by /generate and by training data alike.

Every removal is checked with the exact solver, so a carved puzzle always has exactly one solution. A clue whose
removal would break uniqueness stays needed however many other cells are blanked later (blanking only adds
solutions), so a pass over all 81 cells leaves a minimal puzzle: no given can be removed without losing uniqueness.
"""

from __future__ import annotations

import numpy as np

from engine.tasks.sudoku import BLANK
from engine.tasks.sudoku_solver import count_solutions

# The fewest givens carving random grids reaches in practice. Over 3,000 minimal puzzles (whole passes, 8 orders per
# grid; 0.7 ms a pass on one core) the clue counts were 21 (0.3%), 22 (3.7%), 23 (17%) and 24-28 (the rest); 17-20-clue
# puzzles exist but random removal practically never ends there.
CLUE_FLOOR = 21


def carve(solution: np.ndarray, clues: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Blank the cells of a complete grid in random order, skipping any whose removal makes the solution ambiguous,
    until `clues` givens remain or the pass ends (then the puzzle is minimal). Returns (puzzle, givens left)."""
    puzzle, given = solution.copy(), 81
    for cell in rng.permutation(81):
        if given == clues:
            break
        puzzle[cell] = BLANK
        if count_solutions(puzzle, 2) == 1:
            given -= 1
        else:
            puzzle[cell] = solution[cell]  # this clue is needed for uniqueness
    return puzzle, given


def minimal_puzzle(solution: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A minimal puzzle of `solution`: a whole pass of `carve` (its clue count is whatever the removal order leaves,
    typically 22-27)."""
    return carve(solution, 0, rng)[0]


def is_minimal(puzzle: np.ndarray) -> bool:
    """Whether the puzzle has one solution and every given is needed for that (the exact solver decides each)."""
    if count_solutions(puzzle, 2) != 1:
        return False
    for cell in np.flatnonzero(puzzle != BLANK):
        weaker = puzzle.copy()
        weaker[cell] = BLANK
        if count_solutions(weaker, 2) == 1:
            return False
    return True
