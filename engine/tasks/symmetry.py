"""Symmetries of a task: a permutation of cells and a relabelling of tokens that map valid puzzles to valid puzzles.

The `augment` diversity of search gives every row its own random symmetry of the puzzle (the symmetries the models
were trained with), runs the row on the transformed puzzle, and maps its answer and per-cell distribution back before
selection, voting and verification.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Symmetry:
    """out[i] = tokens[x[cells[i]]]: output cell i reads input cell cells[i], relabelled. Batched: [B, L], [B, V]."""

    cells: np.ndarray  # [..., L] int64
    tokens: np.ndarray  # [..., V] int64, a permutation (PAD and other fixed tokens map to themselves)

    @property
    def inverse(self) -> Symmetry:
        return Symmetry(np.argsort(self.cells, axis=-1), np.argsort(self.tokens, axis=-1))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Tokens [L], or [B, L] with one symmetry per row when batched. Plain fancy indexing: the engine maps every
        augmented row's answer back at every step (np.take_along_axis was most of that host time)."""
        if self.cells.ndim == 1:
            return self.tokens[x[..., self.cells]]
        rows = np.arange(len(self.cells))[:, None]
        return self.tokens[rows, x[rows, self.cells]]

    def apply_probs(self, p: np.ndarray) -> np.ndarray:
        """Per-cell distributions [L, V] or [B, L, V]: out[i, tokens[v]] = p[cells[i], v]."""
        inv = np.argsort(self.tokens, axis=-1)  # out[i, v] = moved[i, inv[v]]
        if self.cells.ndim == 1:
            return p[..., self.cells, :][..., inv]
        rows = np.arange(len(self.cells))[:, None, None]
        return p[rows, self.cells[:, :, None], inv[:, None, :]]

    @staticmethod
    def identity(seq_len: int, vocab_size: int, batch: tuple[int, ...] = ()) -> Symmetry:
        return Symmetry(
            np.broadcast_to(np.arange(seq_len), (*batch, seq_len)).copy(),
            np.broadcast_to(np.arange(vocab_size), (*batch, vocab_size)).copy(),
        )

    @staticmethod
    def stack(syms: list[Symmetry]) -> Symmetry:
        return Symmetry(np.stack([s.cells for s in syms]), np.stack([s.tokens for s in syms]))


def dihedral(side: int, vocab_size: int, rng: np.random.Generator) -> Symmetry:
    """One of the 8 rotations/reflections of a side x side board, tokens unchanged (maze, N-Queens)."""
    index = np.arange(side * side).reshape(side, side)
    k = int(rng.integers(8))
    cells = np.rot90(index, k % 4)
    if k >= 4:
        cells = cells.T
    return Symmetry(cells.reshape(-1).copy(), np.arange(vocab_size))
