"""`engine-data nqueens`: GRAM's N-Queens completion data (arXiv:2605.19376 §4.2; docs/multi-solution.md) in the
official TRM layout.

1. Enumerate every solution of the n x n board (92 for n = 8, 724 for n = 10).
2. Remove k queens from each, k in {5, 6, 7} for 8x8 and {7, 8, 9} for 10x10: every subset of n - k queens kept.
3. Deduplicate the partial boards, then split them 85:15 train/test by unique input board (seeded shuffle).
4. Each input is one puzzle whose examples are *all* its valid completions (labels), so the dataset itself holds the
   set every coverage number is measured against. The solutions a removal came from are exactly the completions of
   the board it left, so the examples are also every (input, original board) pair the recipe makes, once each.

Choices the paper leaves open (README, "Many solutions"): one group per puzzle, puzzle identifier 0 for every row
(the 16 prefix slots are zero-padded), inputs and labels uint8, puzzles ordered by their tokens before the shuffle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from engine.datasets import DatasetError
from engine.datasets.official import fresh_directory, read_split, write_answer_sets
from engine.tasks.nqueens import EMPTY, QUEEN, completions

REMOVED = {8: (5, 6, 7), 10: (7, 8, 9)}  # queens removed per puzzle (paper §4.2)
TEST_FRACTION = 0.15


@dataclass(frozen=True)
class NQueensSplit:
    inputs: np.ndarray  # uint8 [puzzles, n*n], one row per unique input board
    completions: list[np.ndarray]  # per puzzle: uint8 [count, n*n], every valid completion, in search order


@dataclass(frozen=True)
class NQueensData:
    n: int
    solutions: np.ndarray  # uint8 [S, n*n]: every solution of the empty board
    train: NQueensSplit
    test: NQueensSplit


def board_tokens(columns: np.ndarray, n: int) -> np.ndarray:
    """Queen columns per row [..., n] -> board tokens [..., n*n]."""
    columns = np.asarray(columns)
    board = np.full((*columns.shape, n), EMPTY, np.uint8)
    np.put_along_axis(board, columns[..., None], QUEEN, axis=-1)
    return board.reshape(*columns.shape[:-1], n * n)


def make_nqueens(n: int, seed: int = 0, removed: tuple[int, ...] | None = None) -> NQueensData:
    """The recipe above, in memory."""
    removed = removed or REMOVED.get(n)
    if removed is None:
        raise DatasetError(f"no removal counts known for n = {n}; give --removed (the paper has 8: 5-7, 10: 7-9)")
    if not all(0 < k < n for k in removed):
        raise DatasetError(f"removed queens must be between 1 and {n - 1}, got {removed}")
    empty = np.full(n * n, EMPTY, np.uint8)
    solutions = board_tokens(np.array(list(completions(empty))), n)
    partial = set()
    for solution in solutions:
        queens = np.flatnonzero(solution == QUEEN)
        for k in removed:
            for kept in combinations(queens, n - k):
                board = empty.copy()
                board[list(kept)] = QUEEN
                partial.add(board.tobytes())
    inputs = np.frombuffer(b"".join(sorted(partial)), np.uint8).reshape(-1, n * n)
    order = np.random.default_rng(seed).permutation(len(inputs))
    n_test = round(TEST_FRACTION * len(inputs))
    split = lambda rows: NQueensSplit(rows, [board_tokens(np.array(list(completions(x))), n) for x in rows])  # noqa: E731
    return NQueensData(n, solutions, split(inputs[order[n_test:]]), split(inputs[order[:n_test]]))


def build_nqueens(output_dir: str | os.PathLike, n: int, seed: int = 0) -> NQueensData:
    """Write the dataset to `output_dir` (atomically: a failed build leaves nothing)."""
    data = make_nqueens(n, seed)
    with fresh_directory(output_dir) as tmp:
        splits = {"train": data.train, "test": data.test}
        write_answer_sets(tmp, 3, n * n, {name: (s.inputs, s.completions) for name, s in splits.items()})
    return data


def read_nqueens(path: str | os.PathLike, split: str = "test") -> NQueensSplit:
    """One split of an `engine-data nqueens` dataset: its unique inputs and each one's completions (its examples)."""
    data = read_split(path, split)
    inputs, labels, _ = data.examples()
    bounds = np.concatenate([[0], np.cumsum(np.concatenate([np.diff(s.puzzle_indices) for s in data.sets.values()]))])
    return NQueensSplit(inputs[bounds[:-1]], [labels[a:b] for a, b in zip(bounds[:-1], bounds[1:])])
