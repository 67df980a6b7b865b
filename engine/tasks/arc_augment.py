"""ARC augmentations as the official dataset names them (TRM.md §7.5): a dihedral transform and a colour permutation.

Every augmented variant of a task has its own puzzle identifier, `name|||t<dihedral>|||<colour map>`, where the colour
map lists the new colour of each colour 0-9 (0, black, always stays 0). The variant's grids are
`dihedral(mapping[grid], t)`, and a prediction made on a variant is read back with the inverse. Predictions are
compared by `grid_hash`, the official evaluator's hash of shape and bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

SEPARATOR = "|||"
INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)  # dihedral id -> the id that undoes it


def dihedral(grid: np.ndarray, tid: int) -> np.ndarray:
    """The 8 symmetries of the square, numbered as the official `dihedral_transform`."""
    if tid in (1, 2, 3):
        return np.rot90(grid, k=tid)
    return {
        0: lambda g: g,
        4: np.fliplr,
        5: np.flipud,
        6: lambda g: g.T,
        7: lambda g: np.fliplr(np.rot90(g, k=1)),
    }[tid](grid)


@dataclass(frozen=True)
class Augmentation:
    tid: int  # dihedral id 0-7
    mapping: tuple[int, ...]  # colour c -> mapping[c]; mapping[0] == 0

    def name(self, base: str) -> str:
        return f"{base}{SEPARATOR}t{self.tid}{SEPARATOR}{''.join(map(str, self.mapping))}"

    def apply(self, grid: np.ndarray) -> np.ndarray:
        return dihedral(np.asarray(self.mapping, np.uint8)[grid], self.tid)

    def invert(self, grid: np.ndarray) -> np.ndarray:
        return np.argsort(self.mapping).astype(np.uint8)[dihedral(grid, INVERSE[self.tid])]


IDENTITY = Augmentation(0, tuple(range(10)))


def parse(identifier: str) -> tuple[str, Augmentation]:
    """`name|||t3|||0213456789` -> ("name", Augmentation(3, (0, 2, 1, ...))); a plain name is the identity."""
    if SEPARATOR not in identifier:
        return identifier, IDENTITY
    base, tid, colours = identifier.rsplit(SEPARATOR, 2)
    mapping = tuple(int(c) for c in colours)
    if not (tid[:1] == "t" and tid[1:].isdigit() and int(tid[1:]) < 8) or sorted(mapping) != list(range(10)):
        raise ValueError(f"{identifier!r} is not an ARC augmentation identifier (name|||t<0-7>|||<10 colours>)")
    return base, Augmentation(int(tid[1:]), mapping)


def grid_hash(grid: np.ndarray) -> str:
    """The official evaluator's hash of a uint8 grid: sha256 of its shape (one byte per side) and its bytes."""
    grid = np.ascontiguousarray(grid, dtype=np.uint8)
    return hashlib.sha256(bytes(grid.shape) + grid.tobytes()).hexdigest()
