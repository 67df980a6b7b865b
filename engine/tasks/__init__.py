"""Puzzle tasks, one file per kind, looked up by name."""

from engine.tasks.arc import Arc
from engine.tasks.base import PAD, PuzzleError, Task
from engine.tasks.graph_colouring import GraphColouring
from engine.tasks.maze import Maze
from engine.tasks.nqueens import NQueens
from engine.tasks.sudoku import Sudoku

TASKS: dict[str, Task] = {
    t.name: t for t in (Sudoku(), Maze(), NQueens(8), NQueens(10), Arc(), GraphColouring(8), GraphColouring(10))
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None


__all__ = ["PAD", "PuzzleError", "TASKS", "Task", "get_task"]
