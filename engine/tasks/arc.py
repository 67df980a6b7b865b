"""ARC-AGI grids in TRM's 30x30 encoding (TRM.md §6.3) and the official evaluator's crop (TRM.md §9).

Tokens: PAD 0, EOS 1, colour k -> token k + 2 (tokens 2-11), 900 of them, row-major over a 30x30 canvas.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np

from engine.tasks.base import PuzzleError, Task
from engine.tasks.grid import board, cell, list_rows

SIDE = 30
EOS = 1
COLOUR = 2  # token of colour 0
DIGITS = "0123456789"


def _parse(grid: str | list) -> list[list[int]]:
    """Rows of digits (text) or nested lists of ints 0-9 -> a rectangular grid of at most 30x30."""
    if isinstance(grid, str):
        rows = []
        for r, line in enumerate(grid.strip().splitlines()):
            line = "".join(line.split())  # spaces between digits are layout
            for c, ch in enumerate(line):
                if ch not in DIGITS:
                    raise PuzzleError(f"{cell(r, c)}: unexpected character {ch!r} (expected a digit 0-9)")
            rows.append([int(ch) for ch in line])
    elif isinstance(grid, (list, tuple)):
        rows = list_rows(grid)
    else:
        raise PuzzleError(f"expected text or nested lists, got {type(grid).__name__}")
    if not rows:
        raise PuzzleError("grid has no rows")
    if len(rows) > SIDE:
        raise PuzzleError(f"grid has {len(rows)} rows; at most {SIDE}")
    width = len(rows[0])
    for r, row in enumerate(rows):
        if len(row) != width:
            raise PuzzleError(f"row {r + 1} has {len(row)} cells, expected {width}")
    if width == 0:
        raise PuzzleError("grid has no columns")
    if width > SIDE:
        raise PuzzleError(f"grid has {width} columns; at most {SIDE}")
    for r, row in enumerate(rows):
        for c, v in enumerate(row):
            # bool is an Integral, but True as a colour is almost certainly a caller's mistake
            if isinstance(v, bool) or not isinstance(v, Integral) or not 0 <= v <= 9:
                raise PuzzleError(f"{cell(r, c)}: {v!r} is not a colour 0-9")
    return [[int(v) for v in row] for row in rows]


def crop(tokens: np.ndarray) -> np.ndarray:
    """The official evaluator's `_crop`: the largest top-left rectangle of the 30x30 canvas holding only colour
    tokens, as uint8 colours.

    Rows are scanned top-down; the usable width shrinks to each row's first non-colour token (PAD, EOS or out of
    range) and never grows back; the (rows, width) of largest area wins, the first one on ties.
    """
    canvas = np.asarray(tokens).reshape(SIDE, SIDE)
    best_area, (height, width) = 0, (0, 0)
    usable = SIDE
    for r in range(SIDE):
        bad = np.flatnonzero((canvas[r, :usable] < COLOUR) | (canvas[r, :usable] > COLOUR + 9))
        if bad.size:
            usable = int(bad[0])
        if (r + 1) * usable > best_area:
            best_area, (height, width) = (r + 1) * usable, (r + 1, usable)
    return (canvas[:height, :width] - COLOUR).astype(np.uint8)


class Arc(Task):
    """One ARC grid (a test input, or a predicted output) on TRM's 30x30 canvas.

    The puzzle identifier, the row of the checkpoint's puzzle-embedding table that names the ARC task (and its
    augmentation), is not encoded in the tokens: callers pass it alongside them.

    ARC has no rule verifier: whether an output is right depends on the task's hidden rule. `check` only says
    whether the answer crops to a well-formed (non-empty) grid, and `has_rule_verifier` is False.
    """

    name = "arc"
    seq_len = SIDE * SIDE
    vocab_size = COLOUR + 10
    has_rule_verifier = False

    def encode(self, puzzle: str | list) -> np.ndarray:
        """A grid -> tokens, placed at offset (0, 0) with EOS below and right of it, as the official builder
        writes test examples (`build_arc_dataset.py`); EOS is dropped where it would fall off the canvas."""
        grid = np.array(_parse(puzzle), dtype=np.int64)
        height, width = grid.shape
        canvas = np.zeros((SIDE, SIDE), dtype=np.int64)
        canvas[:height, :width] = grid + COLOUR
        if height < SIDE:
            canvas[height, :width] = EOS
        if width < SIDE:
            canvas[:height, width] = EOS
        return canvas.reshape(-1)

    def decode(self, tokens: np.ndarray) -> list[list[int]]:
        """Tokens -> the cropped grid of colours 0-9; [] when the top-left token is not a colour."""
        return crop(board(tokens, SIDE, SIDE)).tolist()

    def to_text(self, tokens: np.ndarray) -> str:
        return "\n".join("".join(map(str, row)) for row in self.decode(tokens))

    def check(self, puzzle: np.ndarray, answer: np.ndarray) -> str | None:
        if not self.decode(answer):
            return "the answer holds no grid: its top-left token is not a colour"
        return None
