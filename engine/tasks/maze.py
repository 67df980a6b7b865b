"""30x30 mazes (Maze-Hard): codec, a BFS shortest-path solver, and a verifier that accepts any shortest path.

Tokens follow the official TRM encoding (TRM.md §6.2): charset "# SGo" -> tokens 1-5 (wall, open, start, goal,
path), PAD 0, 900 cells row-major. A puzzle holds walls, open cells, one S and one G; its answer is the same maze
with one shortest S-G path marked 'o'. Mazes often have several shortest paths, so answers are judged by BFS
distance and path validity, never by matching one label (DATA.md §3).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from engine.tasks.base import PuzzleError, Task
from engine.tasks.grid import board, cell, parse_rows
from engine.tasks.symmetry import Symmetry, dihedral

SIDE = 30
CHARSET = "# SGo"
WALL, OPEN, START, GOAL, PATH = 1, 2, 3, 4, 5
TOKEN = {ch: i + 1 for i, ch in enumerate(CHARSET)}

Cell = tuple[int, int]


def _parse(maze: str | list, allow_path: bool) -> np.ndarray:
    """Text or nested lists -> validated 30x30 tokens; 'o' is allowed only in answers."""
    allowed = CHARSET if allow_path else CHARSET[:4]
    cells = np.empty((SIDE, SIDE), dtype=np.int64)
    for r, row in enumerate(parse_rows(maze, SIDE, SIDE)):
        for c, ch in enumerate(row):
            token = TOKEN.get(ch) if isinstance(ch, str) else None
            if token == PATH and not allow_path:
                raise PuzzleError(f"{cell(r, c)}: 'o' (path) is not allowed in a puzzle")
            if token is None:
                raise PuzzleError(
                    f"{cell(r, c)}: unexpected character {ch!r} (allowed: {', '.join(map(repr, allowed))})"
                )
            cells[r, c] = token
    _endpoints(cells)
    return cells


def _endpoints(cells: np.ndarray) -> tuple[Cell, Cell]:
    """(S, G) positions; raises unless there is exactly one of each."""
    found = []
    for token, what in ((START, "start"), (GOAL, "goal")):
        where = [(int(r), int(c)) for r, c in np.argwhere(cells == token)]
        ch = CHARSET[token - 1]
        if not where:
            raise PuzzleError(f"maze has no {ch!r} ({what})")
        if len(where) > 1:
            listed = " and ".join(cell(r, c) for r, c in where[:3])
            more = f" and {len(where) - 3} more" if len(where) > 3 else ""
            raise PuzzleError(f"maze has {len(where)} {ch!r} cells: {listed}{more}")
        found.append(where[0])
    return found[0], found[1]


def _bfs(cells: np.ndarray, start: Cell, passable: tuple[int, ...]) -> dict[Cell, Cell | None]:
    """Parent of every cell reachable from `start` through cells whose token is in `passable` (4-adjacency)."""
    grid = cells.tolist()  # plain ints: far faster than numpy scalar indexing in this loop
    parent: dict[Cell, Cell | None] = {start: None}
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if 0 <= nr < SIDE and 0 <= nc < SIDE and (nr, nc) not in parent and grid[nr][nc] in passable:
                parent[(nr, nc)] = (r, c)
                queue.append((nr, nc))
    return parent


def shortest_path(puzzle_tokens: np.ndarray) -> np.ndarray | None:
    """The puzzle with one shortest S-G path marked 'o' (tokens [900]), or None when G cannot be reached."""
    cells = board(puzzle_tokens, SIDE, SIDE)
    for r, c in np.argwhere((cells < WALL) | (cells > GOAL)):
        raise PuzzleError(f"{cell(r, c)}: token {cells[r, c]} is not a maze puzzle cell")
    start, goal = _endpoints(cells)
    parent = _bfs(cells, start, (OPEN, GOAL))
    if goal not in parent:
        return None
    answer = cells.copy()
    step = parent[goal]
    while step != start:
        answer[step] = PATH
        step = parent[step]
    return answer.reshape(-1)


class Maze(Task):
    """30x30 maze: find a shortest path from S to G. Text is 900 characters or 30 lines of 30 ('#', ' ', 'S', 'G';
    answers add 'o'); nested lists are 30 strings of 30 characters or 30 lists of 30 one-character strings."""

    name = "maze"
    seq_len = SIDE * SIDE
    vocab_size = len(CHARSET) + 1
    comment_prefix = None  # maze rows start with walls ("#")

    def encode(self, puzzle: str | list) -> np.ndarray:
        return _parse(puzzle, allow_path=False).reshape(-1)

    def encode_answer(self, answer: str | list) -> np.ndarray:
        return _parse(answer, allow_path=True).reshape(-1)

    def decode(self, tokens: np.ndarray) -> list[str]:
        # PAD or out-of-range tokens (possible in a model's argmax) show as '?', which encode refuses
        return [
            "".join(CHARSET[t - 1] if WALL <= t <= PATH else "?" for t in row)
            for row in board(tokens, SIDE, SIDE).tolist()
        ]

    def to_text(self, tokens: np.ndarray) -> str:
        return "\n".join(self.decode(tokens))

    def symmetry(self, rng: np.random.Generator) -> Symmetry:
        return dihedral(SIDE, self.vocab_size, rng)  # TRM's maze augmentation (TRM.md §7.4)

    def check(self, puzzle: np.ndarray, answer: np.ndarray) -> str | None:
        given = board(puzzle, SIDE, SIDE)
        cells = board(answer, SIDE, SIDE)
        try:
            best = shortest_path(given)
        except PuzzleError as e:  # e.g. the engine's warm-up rows (all PAD): no answer is valid, none is a crash
            return f"the puzzle is not a maze: {e}"
        if best is None:
            return "no path exists from S to G"
        for r, c in np.argwhere((cells < WALL) | (cells > PATH)):
            return f"{cell(r, c)}: token {cells[r, c]} is not a maze cell"
        kept = np.where(given == OPEN, (cells == OPEN) | (cells == PATH), cells == given)
        for r, c in np.argwhere(~kept):
            return (
                f"{cell(r, c)}: the answer has {CHARSET[cells[r, c] - 1]!r} "
                f"where the puzzle has {CHARSET[given[r, c] - 1]!r}"
            )
        marked, needed = int((cells == PATH).sum()), int((best == PATH).sum())
        if marked != needed:
            return f"the answer marks {marked} 'o' cells; a shortest path from S to G has {needed}"
        start, goal = _endpoints(given)
        # an S-G route needs >= `needed` distinct inner cells, so `needed` 'o' cells linking S to G are a shortest path
        if goal not in _bfs(cells, start, (PATH, GOAL)):
            return "the 'o' cells do not connect S to G"
        return None
