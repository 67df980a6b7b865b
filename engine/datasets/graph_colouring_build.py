"""`engine-data graph-colouring`: GRAM's graph 3-colouring data (arXiv:2605.19376 §4.2 and its data appendix) in the
official TRM layout, beside `engine-data nqueens`.

1. Sample Erdős–Rényi graphs G(n, p), n = 8 or 10, p = 0.35 by default (the paper leaves p open; the choice is
   measured in engine/tasks/graph_colouring.py), keeping only distinct (by edge tokens) 3-colourable graphs.
2. Split them at random into train and test (the paper's sizes by default: 7,002 / 255 for n = 8, 13,465 / 192 for
   n = 10); the splits share no graph.
3. Each graph is one puzzle whose examples are *all* its canonical colourings (colours renumbered by first
   occurrence), so the dataset holds the set coverage is measured against.

Layout choices as for N-Queens: one group per puzzle, puzzle identifier 0 for every row, inputs and labels uint8,
identifiers.json ["<blank>"]; the seed fixes the graphs and the split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from engine.datasets import DatasetError
from engine.datasets.nqueens_build import read_nqueens
from engine.datasets.official import fresh_directory, write_answer_sets
from engine.tasks.base import PAD
from engine.tasks.graph_colouring import EDGE, FIRST_COLOUR, NO_EDGE, P, colourings, n_edges

SIZES = {8: (7002, 255), 10: (13465, 192)}  # train, test graphs (paper)
MAX_DRAWS_PER_GRAPH = 1000  # give up when graphs this rare (p too high, or too few distinct graphs) are asked for


@dataclass(frozen=True)
class ColouringSplit:
    inputs: np.ndarray  # uint8 [graphs, seq_len]: edge tokens, then n PAD vertex slots
    colourings: list[np.ndarray]  # per graph: uint8 [count, seq_len], every canonical colouring, lexicographic


@dataclass(frozen=True)
class ColouringData:
    n: int
    p: float
    draws: int  # graphs sampled in all (the 3-colourable share is graphs / draws, duplicates aside)
    train: ColouringSplit
    test: ColouringSplit


def random_graphs(n: int, p: float, count: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [count, n(n-1)/2 + n]: G(n, p) graphs as puzzles (edge tokens, then uncoloured vertex slots)."""
    tokens = np.full((count, n_edges(n) + n), PAD, np.uint8)
    tokens[:, : n_edges(n)] = np.where(rng.random((count, n_edges(n))) < p, EDGE, NO_EDGE)
    return tokens


def labels(puzzle: np.ndarray, found: list[list[int]]) -> np.ndarray:
    """A puzzle and its colourings (colour per vertex) -> label rows (edge tokens kept, colour tokens set)."""
    n = len(found[0])
    rows = np.repeat(puzzle[None], len(found), axis=0)
    rows[:, -n:] = FIRST_COLOUR + np.array(found, np.uint8)
    return rows


def make_graph_colouring(
    n: int, seed: int = 0, train: int | None = None, test: int | None = None, p: float = P
) -> ColouringData:
    """The recipe above, in memory."""
    default = SIZES.get(n)
    if (train is None or test is None) and default is None:
        raise DatasetError(f"no paper sizes for n = {n}; give --train and --test (the paper has 8 and 10)")
    train = default[0] if train is None else train
    test = default[1] if test is None else test
    if n < 2 or train < 0 or test < 0 or train + test == 0:
        raise DatasetError(f"need n >= 2 and at least one graph, got n = {n}, train = {train}, test = {test}")
    if not 0 < p < 1:
        raise DatasetError(f"the edge probability must be between 0 and 1, got {p}")
    rng = np.random.default_rng(seed)
    wanted = train + test
    seen: set[bytes] = set()
    kept: list[tuple[np.ndarray, np.ndarray]] = []
    draws = 0
    while len(kept) < wanted:
        if draws >= MAX_DRAWS_PER_GRAPH * wanted:
            raise DatasetError(
                f"only {len(kept)} distinct 3-colourable graphs in {draws} draws of G({n}, {p}); "
                f"lower --p or ask for fewer graphs"
            )
        batch = random_graphs(n, p, max(64, 2 * (wanted - len(kept))), rng)
        for graph in batch:
            draws += 1
            key = graph.tobytes()
            if key in seen:
                continue
            seen.add(key)
            found = list(colourings(graph))
            if found:
                kept.append((graph, labels(graph, found)))
                if len(kept) == wanted:
                    break
    order = rng.permutation(wanted)

    def split(indices: np.ndarray) -> ColouringSplit:
        inputs = np.stack([kept[i][0] for i in indices]) if len(indices) else np.zeros((0, n_edges(n) + n), np.uint8)
        return ColouringSplit(inputs, [kept[i][1] for i in indices])

    return ColouringData(n, p, draws, split(order[test:]), split(order[:test]))


def build_graph_colouring(
    output_dir: str | os.PathLike,
    n: int,
    seed: int = 0,
    train: int | None = None,
    test: int | None = None,
    p: float = P,
) -> ColouringData:
    """Write the dataset to `output_dir` (atomically: a failed build leaves nothing)."""
    data = make_graph_colouring(n, seed, train, test, p)
    with fresh_directory(output_dir) as tmp:
        splits = {"train": data.train, "test": data.test}
        write_answer_sets(tmp, 6, n_edges(n) + n, {name: (s.inputs, s.colourings) for name, s in splits.items()})
    return data


def read_graph_colouring(path: str | os.PathLike, split: str = "test") -> ColouringSplit:
    """One split of an `engine-data graph-colouring` dataset: its graphs and each one's colourings (its examples)."""
    data = read_nqueens(path, split)  # the same layout: one puzzle per input, its examples every answer
    return ColouringSplit(data.inputs, data.completions)


def measure(n: int, p: float, graphs: int = 20_000, seed: int = 0) -> dict:
    """Share of G(n, p) graphs that are 3-colourable, the mean number of canonical colourings of those, and the
    share of those with at least two (how the default p was chosen)."""
    counts = np.array(
        [sum(1 for _ in colourings(g)) for g in random_graphs(n, p, graphs, np.random.default_rng(seed))]
    )
    ok = counts[counts > 0]
    return {
        "colourable": float(len(ok) / graphs),
        "mean_colourings": float(ok.mean()) if len(ok) else 0.0,
        "several": float((ok >= 2).mean()) if len(ok) else 0.0,
    }
