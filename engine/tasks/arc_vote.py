"""ARC answers by vote over augmented variants, exactly as the official evaluator (`evaluators/arc.py`, TRM.md §9).

Each row is one augmented variant of one test input: its prediction and its input are cropped, mapped back to the
task's frame by the inverse augmentation, and hashed. Predictions of one (task, test input) are ranked by
(votes, mean sigmoid(q)), highest first, ties kept in arrival order (Python's stable sort, as the official code).
pass@K counts a test input as solved when the label is among the top K; a task scores the share of its test inputs
solved; the score is the mean over tasks. The Kaggle submission lists the top 2 per test input (the first repeated
when there is only one).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from engine.tasks.arc import crop
from engine.tasks.arc_augment import Augmentation, grid_hash, parse

PASS_KS = (1, 2, 5, 10, 100, 1000)
ATTEMPTS = 2  # Kaggle's attempt_1 and attempt_2


@dataclass(frozen=True)
class Candidate:
    grid: np.ndarray  # uint8 [h, w], in the task's frame
    votes: int
    mean_q: float  # mean sigmoid(q halt logit) over its votes


def variants(identifiers: list[str]) -> dict[str, list[tuple[int, Augmentation]]]:
    """Task name -> its (puzzle id, augmentation) pairs in identifier order; id 0, `<blank>`, is no task."""
    out: dict[str, list[tuple[int, Augmentation]]] = {}
    for pid, identifier in enumerate(identifiers):
        if pid == 0:
            continue
        name, aug = parse(identifier)
        out.setdefault(name, []).append((pid, aug))
    return out


class Vote:
    """Predictions of augmented rows, gathered per task and test input."""

    def __init__(self) -> None:
        self.grids: dict[str, np.ndarray] = {}  # prediction hash -> grid
        self.preds: dict[str, dict[str, list[tuple[str, float]]]] = {}  # task -> input hash -> [(pred hash, q)]

    def add(self, name: str, aug: Augmentation, inputs: np.ndarray, answer: np.ndarray, q_logit: float) -> None:
        """One row: the variant's input and predicted tokens [900], and its q halt logit."""
        self._votes(name, aug, inputs).append(self._vote(aug, answer, q_logit))

    def add_result(self, name: str, aug: Augmentation, inputs: np.ndarray, result) -> None:
        """Every row of one variant's search result votes (K = 1: the official one row per variant)."""
        votes = self._votes(name, aug, inputs)  # the rows share the variant's input: mapped back and hashed once
        votes.extend(self._vote(aug, answer, float(q)) for answer, q in zip(result.rows.answers, result.rows.q))

    def _votes(self, name: str, aug: Augmentation, inputs: np.ndarray) -> list[tuple[str, float]]:
        """The votes for the test input that `inputs` (a variant's tokens) is in the task's frame."""
        return self.preds.setdefault(name, {}).setdefault(grid_hash(aug.invert(crop(inputs))), [])

    def _vote(self, aug: Augmentation, answer: np.ndarray, q_logit: float) -> tuple[str, float]:
        pred = aug.invert(crop(answer))
        key = grid_hash(pred)
        self.grids[key] = pred
        return key, float(1 / (1 + np.exp(-np.float64(q_logit))))  # float64, as the official evaluator takes sigmoid

    def ranked(self, name: str, test_input: np.ndarray) -> list[Candidate]:
        """The candidates for one test input (a grid in the task's frame), best first."""
        tally: dict[str, list] = {}
        for key, q in self.preds.get(name, {}).get(grid_hash(test_input), []):
            stats = tally.setdefault(key, [0, 0.0])
            stats[0] += 1
            stats[1] += q
        ranked = sorted(((n, total / n, key) for key, (n, total) in tally.items()), key=lambda c: c[:2], reverse=True)
        return [Candidate(self.grids[key], n, mean) for n, mean, key in ranked]

    def score(self, test_puzzles: dict, ks: Iterable[int] = PASS_KS) -> tuple[dict[str, float], dict]:
        """pass@K over the tasks of `test_puzzles` (the dataset's `test_puzzles.json`: name -> {"test": [{"input",
        "output"}]}) and the Kaggle submission {name: [{"attempt_1": grid, "attempt_2": grid}, ...]}. A test input
        without predictions counts as wrong and is left out of the submission, as in the official evaluator."""
        ks = tuple(ks)
        solved = np.zeros(len(ks))
        submission: dict[str, list] = {}
        for name, puzzle in test_puzzles.items():
            submission[name] = []
            hits = np.zeros(len(ks))
            for pair in puzzle["test"]:
                ranked = self.ranked(name, as_grid(pair["input"]))
                if not ranked:
                    continue
                label = grid_hash(as_grid(pair["output"]))
                hashes = [grid_hash(c.grid) for c in ranked]
                hits += [label in hashes[:k] for k in ks]
                picks = [c.grid for c in ranked[:ATTEMPTS]]
                picks += picks[:1] * (ATTEMPTS - len(picks))
                submission[name].append({f"attempt_{i + 1}": g.tolist() for i, g in enumerate(picks)})
            solved += hits / len(puzzle["test"])
        return {f"ARC/pass@{k}": float(s / len(test_puzzles)) for k, s in zip(ks, solved)}, submission


def vote_rows(names: list[str], augs: list[Augmentation], inputs: np.ndarray, results) -> Vote:
    """A vote over variants' search results, added in the given order (the official evaluation's is the dataset's;
    it breaks exact ties)."""
    vote = Vote()
    for name, aug, x, result in zip(names, augs, inputs, results):
        vote.add_result(name, aug, x, result)
    return vote


def as_grid(rows: list) -> np.ndarray:
    """A Kaggle JSON grid -> uint8 [h, w] (the dtype the hashes are taken in)."""
    return np.asarray(rows, dtype=np.uint8).reshape(len(rows), -1)
