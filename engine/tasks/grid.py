"""Parsing helpers shared by the fixed-size grid tasks (maze, N-Queens, ARC): rows from text or nested lists."""

from __future__ import annotations

from collections.abc import Sequence, Sized

import numpy as np

from engine.tasks.base import PuzzleError


def cell(r: int, c: int) -> str:
    """0-based indices -> the 1-based position every error message uses."""
    return f"row {r + 1}, column {c + 1}"


def split_text(text: str, n_rows: int, n_cols: int) -> list[str]:
    """One run of n_rows*n_cols characters, or lines separated by newlines (one trailing newline allowed).

    Characters are kept as they are, spaces included (a space is a maze cell); the row count and widths of a
    multi-line text are left to `check_shape`.
    """
    text = text.replace("\r\n", "\n")
    if text.endswith("\n"):
        text = text[:-1]
    if "\n" in text:
        return text.split("\n")
    if len(text) != n_rows * n_cols:
        raise PuzzleError(f"expected {n_rows * n_cols} characters, got {len(text)}")
    return [text[i : i + n_cols] for i in range(0, len(text), n_cols)]


def list_rows(grid: Sequence) -> list[list]:
    """Nested lists -> a list of rows, each a list of cells; a string row counts as its characters."""
    rows = []
    for r, row in enumerate(grid):
        if not isinstance(row, (str, list, tuple)):
            raise PuzzleError(f"row {r + 1}: expected a list, got {type(row).__name__}")
        rows.append(list(row))
    return rows


def check_shape(rows: Sequence[Sized], n_rows: int, n_cols: int, unit: str) -> None:
    if len(rows) != n_rows:
        raise PuzzleError(f"expected {n_rows} rows, got {len(rows)}")
    for r, row in enumerate(rows):
        if len(row) != n_cols:
            raise PuzzleError(f"row {r + 1} has {len(row)} {unit}, expected {n_cols}")


def parse_rows(puzzle: str | list, n_rows: int, n_cols: int) -> list[list]:
    """Text (see `split_text`) or nested lists -> n_rows rows of n_cols raw cells (characters or list items)."""
    if isinstance(puzzle, str):
        rows, unit = [list(line) for line in split_text(puzzle, n_rows, n_cols)], "characters"
    elif isinstance(puzzle, (list, tuple)):
        rows, unit = list_rows(puzzle), "cells"
    else:
        raise PuzzleError(f"expected text or nested lists, got {type(puzzle).__name__}")
    check_shape(rows, n_rows, n_cols, unit)
    return rows


def board(tokens: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """Flat tokens -> an int64 [n_rows, n_cols] board, refusing a wrong token count."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.size != n_rows * n_cols:
        raise PuzzleError(f"expected {n_rows * n_cols} tokens, got {tokens.size}")
    return tokens.reshape(n_rows, n_cols)
