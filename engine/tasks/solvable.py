"""Proof that a puzzle has no solution, for the tasks with an exact solver, before any model work is spent on it.

A Sudoku search takes well under a millisecond, so the service can refuse an unsolvable puzzle at admission (422)
instead of answering `verified: false` with a fault that only describes the model's wrong guess (issue 16). Puzzles
with many solutions are fine: the rollouts look for any one of them.
"""

from __future__ import annotations

import numpy as np

from engine.tasks import Task
from engine.tasks.grid import cell
from engine.tasks.maze import Maze, shortest_path
from engine.tasks.nqueens import NQueens
from engine.tasks.nqueens import solve as complete_queens
from engine.tasks.sudoku import Sudoku
from engine.tasks.sudoku_solver import search

ALL_DIGITS = set(range(1, 10))


def no_solution(task: Task, tokens: np.ndarray) -> str | None:
    """Why the encoded puzzle has no solution; None when it has one, or when the task has no exact solver."""
    if isinstance(task, Sudoku):
        return _sudoku(tokens)
    if isinstance(task, NQueens):
        return None if complete_queens(tokens) is not None else "no placement of the other queens keeps the given ones"
    if isinstance(task, Maze):
        return None if shortest_path(tokens) is not None else "no path leads from the start to the goal"
    return None


def _sudoku(tokens: np.ndarray) -> str | None:
    digits = np.asarray(tokens, np.int64).reshape(9, 9) - 1  # 0 blank, else 1-9
    for r, c in np.argwhere(digits == 0):  # row-major: the first cell with no candidate
        b = digits[r // 3 * 3 : r // 3 * 3 + 3, c // 3 * 3 : c // 3 * 3 + 3]
        if {*digits[r], *digits[:, c], *b.ravel()} >= ALL_DIGITS:
            return f"{cell(int(r), int(c))} has no candidate digit"
    if search(np.asarray(tokens, np.int64), limit=1).count == 0:
        return "no digits fill the blanks without breaking a rule"
    return None
