"""`engine-client solve --watch`: the grid redrawn in place as progress events arrive (plain ANSI escapes).

On a terminal each event redraws the grid, digits coloured by how many rows agree on them (bold green from 90%,
yellow from 50%, dim below), givens bold, commit-search commits bold blue, with one summary line under it. When
stdout is not a terminal (a pipe, a log file) each event prints the summary line alone.
"""

from __future__ import annotations

import sys
from typing import TextIO

from clients.stream import Progress

RESET, BOLD, DIM, GREEN, YELLOW, BLUE = "\x1b[0m", "\x1b[1m", "\x1b[2m", "\x1b[32m", "\x1b[33m", "\x1b[34m"


def summary(p: Progress) -> str:
    agreement = [a for row in p.agreement for a in (row if isinstance(row, list) else [row])]
    parts = [f"step {p.step}", f"rows {p.rows}", f"row-steps {p.row_steps}"]
    parts.append(f"best q {p.best_q:.2f}" if p.best_q is not None else "best q -")
    parts.append(f"agreement {sum(agreement) / max(len(agreement), 1):.2f}")
    if p.node is not None:
        parts += [f"node {p.node}", f"depth {p.depth}", f"committed {len(p.committed or [])}"]
        parts.append(f"backtracks {p.backtracks}")
    if p.sample is not None:
        parts.insert(0, f"sample {p.sample}")
    return ", ".join(parts)


def draw(grid: list, agreement: list, given: set[int] = frozenset(), committed: set[int] = frozenset()) -> str:
    """A grid of digits (0 blank) with ANSI colours; Sudoku-sized grids get their box lines."""
    rows, cols = len(grid), len(grid[0]) if grid else 0
    boxes = rows == cols == 9
    lines = []
    for r in range(rows):
        if boxes and r in (3, 6):
            lines.append("------+-------+------")
        cells = []
        for c in range(cols):
            i, v = r * cols + c, grid[r][c]
            text = str(v) if v else "."
            if i in given:
                style = BOLD
            elif i in committed:
                style = BOLD + BLUE
            else:
                a = agreement[r][c]
                style = BOLD + GREEN if a >= 0.9 else YELLOW if a >= 0.5 else DIM
            cells.append(f"{style}{text}{RESET}")
            if boxes and c in (2, 5):
                cells.append("|")
        lines.append(" ".join(cells))
    return "\n".join(lines)


class Watcher:
    def __init__(self, out: TextIO = sys.stdout, given: set[int] = frozenset(), tty: bool | None = None):
        self.out, self.given = out, given
        self.tty = out.isatty() if tty is None else tty
        self.drawn = 0  # lines of the last drawing, to move back over

    def progress(self, p: Progress) -> None:
        if not self.tty:
            print(summary(p), file=self.out, flush=True)
            return
        text = draw(p.grid, p.agreement, self.given, set(p.committed or ())) + "\n" + summary(p)
        self.clear()
        self.out.write(text + "\n")
        self.out.flush()
        self.drawn = text.count("\n") + 1

    def clear(self) -> None:
        """Erase the last drawing (before the final answer is printed in its place)."""
        if self.tty and self.drawn:
            self.out.write(f"\x1b[{self.drawn}F\x1b[J")  # to the start of the drawing's first line; erase below
            self.drawn = 0
