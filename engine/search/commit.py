"""Commit search: commit the model's most certain cells as new givens, branch on the most certain open cell, and
backtrack at dead ends (SEARCH.md §1-2; beyond PTRM). Generation is the same search from the empty grid, with values
sampled at a temperature.

A *node* is the puzzle plus the cells committed so far. The engine *expands* a node: K diversified rows run D
supervision steps on it (`SearchParams.rollouts`, `.steps`, `.diversity`). This class only decides what to run next
from what the rows returned, so it is plain numpy, testable with made-up distributions:

    expanded(rows)  ->  the next node's grid, or a Final answer

From the rows' per-cell distributions (mapped back to the puzzle's frame and averaged), the task's legal-value mask
removes values the rules forbid. Open cells whose masked probability reaches `threshold` are committed together
(with `agree`, only those the parent node answered the same: two views of the grid, as two rows would give, for no
extra row-steps); the node's fallback (and its only choice when none reaches it) is a branch on the open cell of
largest margin (or max probability), its legal values most probable first. Committing also commits what the mask
then forces (cells left with one legal value); a cell left with none is a dead end: depth-first backtracking to the
last untried choice, a restart from the puzzle, or the end of the search (`backtrack`). A filled grid built under
the mask obeys the rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.search.params import SearchParams
from engine.tasks import Task

Choice = list[tuple[int, int]]  # (cell, token) pairs committed together


@dataclass(frozen=True)
class Final:
    answer: np.ndarray  # [seq_len] tokens
    finish: str  # "verified" (a row solved it), "filled" (every cell committed), "budget", "exhausted", "dead_end"
    q: float  # the halt logit behind the answer (-inf for a filled grid no row produced)


@dataclass
class _Node:
    grid: np.ndarray
    choices: list[Choice] = field(default_factory=list)  # untried children, best first
    answer: np.ndarray | None = None  # the node's most probable value per cell (what `agree` checks its children with)
    tried: int = 0


class CommitSearch:
    def __init__(self, task: Task, puzzle: np.ndarray, params: SearchParams, seed_words: tuple[int, ...] = ()):
        if task.blank is None or task.values is None:
            raise ValueError(f"commit search needs a fill-in task (blank cells to commit); {task.name} is not one")
        self.task, self.puzzle, self.params = task, np.asarray(puzzle, np.int64), params
        self.rng = np.random.default_rng([params.seed, *seed_words, 7])
        self.nodes = self.backtracks = 0
        self.row_steps = 0  # the engine keeps it up to date (every node's rows, early exits included)
        self.stack: list[_Node] = []
        self.best: tuple[float, np.ndarray] = (-np.inf, self.puzzle)
        self.current: np.ndarray | None = None

    # -- the interface the engine drives ----------------------------------------------------------------------------

    def start(self) -> np.ndarray | Final:
        """The first node's grid (the puzzle plus the cells the mask forces), or a Final answer."""
        grid = self._settle(self.puzzle.copy())
        if grid is None:
            return Final(self.puzzle, "dead_end", -np.inf)
        return self._visit(grid)

    def expanded(self, answers: np.ndarray, probs: np.ndarray, q: np.ndarray) -> np.ndarray | Final:
        """The current node's rows came back, none of them solving the puzzle (the engine ends the search at the first
        row whose answer passes the rule verifier): answers [K, L] and per-cell distributions [K, L, V] in the
        puzzle's frame, and halt logits [K]."""
        self.nodes += 1
        i = int(np.argmax(q))
        if q[i] > self.best[0]:
            self.best = (float(q[i]), answers[i].copy())
        p = self._masked(self.current, probs.mean(0))
        parent = self.stack[-1].answer if self.stack else None
        self.stack.append(_Node(self.current, self._choices(self.current, p, parent), p.argmax(-1)))
        return self._next()

    def uniform(self) -> Final:
        """The whole search with the network replaced by a uniform policy (legal values equally likely, random cell
        order): the baseline that shows what the network contributes. Nodes cost no row-steps."""
        step = self.start()
        while not isinstance(step, Final):
            self.nodes += 1
            self.stack.append(_Node(step, self._choices(step, self._masked(step, self._legal(step)))))
            step = self._next()
        return step

    # -- decisions --------------------------------------------------------------------------------------------------

    def _legal(self, grid: np.ndarray) -> np.ndarray:
        """float [L, V]: 1 where a value may go (the task's mask, or just its value tokens when the mask is off)."""
        legal = self.task.legal(grid) if self.params.mask else None
        if legal is None:
            legal = np.zeros((len(grid), self.task.vocab_size), bool)
            legal[:, self.task.values] = True
        return legal.astype(np.float64)

    def _masked(self, grid: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Per-cell distributions [L, V] restricted to the legal values and renormalised (uniform over them where the
        model gave them no mass)."""
        legal = self._legal(grid)
        p = p * legal
        mass = p.sum(-1, keepdims=True)
        return np.where(mass > 0, p / np.maximum(mass, 1e-30), legal / np.maximum(legal.sum(-1, keepdims=True), 1))

    def _choices(self, grid: np.ndarray, p: np.ndarray, parent: np.ndarray | None = None) -> list[Choice]:
        """A node's children, best first: the threshold commits (if any), then a branch on the most certain cell.
        `p`: masked distributions; `parent`: the parent node's answer, which `agree` holds the commits to (none at
        the root)."""
        prm = self.params
        open_cells = np.flatnonzero(grid == self.task.blank)
        top2 = np.sort(p[open_cells], axis=-1)[:, -2:]
        if prm.policy == "uniform":
            score = self.rng.random(len(open_cells))
        else:
            score = top2[:, 1] - top2[:, 0] if prm.order == "margin" else top2[:, 1]
        order = open_cells[np.argsort(-score, kind="stable")]
        choices = []
        sure = [c for c in order if p[c].max() >= prm.threshold] if prm.policy == "model" else []
        if prm.agree:
            sure = [c for c in sure if parent is not None and parent[c] == np.argmax(p[c])]
        if sure:
            choices.append(self._compatible(grid, [(int(c), int(np.argmax(p[c]))) for c in sure]))
        cell = int(order[0])
        values = np.flatnonzero(p[cell] > 0)
        keys = np.log(p[cell, values])
        if prm.policy == "uniform":
            keys = self.rng.random(len(values))
        elif prm.temperature > 0:  # Gumbel top-k: a sample without replacement, proportional to p^(1/T)
            keys = keys / prm.temperature + self.rng.gumbel(size=len(values))
        values = values[np.argsort(-keys, kind="stable")][: prm.width]
        choices += [[(cell, int(v))] for v in values if not (sure and choices[0] == [(cell, int(v))])]
        return choices

    def _compatible(self, grid: np.ndarray, commits: Choice) -> Choice:
        """The commits that can go in together, most certain first (two cells of a unit may both want one value)."""
        if not self.params.mask:
            return commits
        g, kept = grid.copy(), []
        for cell, value in commits:
            if self.task.legal(g)[cell, value]:
                g[cell] = value
                kept.append((cell, value))
        return kept

    def _settle(self, grid: np.ndarray) -> np.ndarray | None:
        """Commit what the legal mask forces (an open cell with a single legal value), until nothing changes; None at
        a dead end (an open cell with no legal value). Without the mask, the grid as it is."""
        if not self.params.mask or self.task.legal(grid) is None:
            return grid
        while True:
            open_cells = np.flatnonzero(grid == self.task.blank)
            if not len(open_cells):
                return grid
            legal = self.task.legal(grid)[open_cells]
            counts = legal.sum(-1)
            if (counts == 0).any():
                return None
            forced = np.flatnonzero(counts == 1)
            if not len(forced):
                return grid
            i = forced[0]  # one at a time: two forced cells of a unit may want the same value
            grid[open_cells[i]] = int(np.argmax(legal[i]))

    def _next(self) -> np.ndarray | Final:
        """Take the next untried choice (depth-first), settle it, and return the grid to expand or a Final answer."""
        while self.stack:
            node = self.stack[-1]
            if not node.choices:
                self.stack.pop()
                continue
            if node.tried:
                self.backtracks += 1
                if self.params.backtrack == "off":
                    return self._give_up("dead_end")
                if self.params.backtrack == "restart":
                    self.stack.clear()
                    return self.start()
            node.tried += 1
            grid = node.grid.copy()
            for cell, value in node.choices.pop(0):
                grid[cell] = value
            settled = self._settle(grid)
            if settled is not None:
                return self._visit(settled)
        return self._give_up("exhausted")

    def _visit(self, grid: np.ndarray) -> np.ndarray | Final:
        if not (grid == self.task.blank).any():
            return Final(grid, "filled", -np.inf)
        prm = self.params
        if self.nodes >= prm.max_nodes or (
            prm.max_row_steps is not None and self.row_steps + prm.rollouts * prm.steps > prm.max_row_steps
        ):
            return self._give_up("budget")
        self.current = grid
        return grid

    def _give_up(self, finish: str) -> Final:
        return Final(self.best[1], finish, self.best[0])

    @property
    def committed(self) -> int:
        """Cells filled beyond the puzzle's givens in the current node."""
        grid = self.current if self.current is not None else self.puzzle
        return int(((grid != self.task.blank) & (self.puzzle == self.task.blank)).sum())
