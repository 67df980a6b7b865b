"""Choosing one answer among a request's K rollouts (PTRM_GRAM.md §3.2, §4.6, §5).

- `q`: best-Q@K, the largest halt logit at the final step (PTRM).
- `vote`: mode@K over whole grids; ties by mean sigmoid(q), as TRM's ARC evaluator ranks (SERVING.md §2.1).
- `verifier`: rows whose answer passes the task's rule verifier first, ties by q; plain `q` without a verifier.
- `likelihood` (GRAM): distinct candidates ranked by a lower bound on log p(y | x) from posterior passes.
- `prior` (GRAM): the row whose sampled trajectory has the largest prior log-density (cheap: no extra passes).
- `lprm`: the largest LPRM value-head estimate, for checkpoints that have one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Rows:
    """What a request's rows produced at their last step, row index order."""

    answers: np.ndarray  # [K, seq_len] argmax tokens
    q: np.ndarray  # [K] halt logits (fp32)
    verified: np.ndarray | None = None  # [K] bool; None when the task has no rule verifier
    value: np.ndarray | None = None  # [K] LPRM estimates
    log_prior: np.ndarray | None = None  # [K] prior log-density of the sampled GRAM trajectory

    @staticmethod
    def concat(parts: list[Rows]) -> Rows:
        """The rows of several waves, in order."""
        cat = lambda name: (  # noqa: E731
            None if getattr(parts[0], name) is None else np.concatenate([getattr(p, name) for p in parts])
        )
        return Rows(*(cat(name) for name in ("answers", "q", "verified", "value", "log_prior")))


@dataclass(frozen=True)
class Selection:
    index: int  # the chosen row
    selector: str
    confidence: float  # sigmoid of the chosen row's halt logit
    agreement: float  # share of rows whose answer equals the chosen one


Likelihood = Callable[[np.ndarray], np.ndarray]  # distinct candidates [C, seq_len] -> lower bounds on log p(y|x) [C]


def select(rows: Rows, selector: str, likelihood: Likelihood | None = None) -> Selection:
    q = rows.q.astype(np.float64)
    if selector == "q":
        index = int(np.argmax(q))
    elif selector == "vote":
        index = _vote(rows.answers, q)
    elif selector == "verifier":
        ok = rows.verified
        index = int(np.argmax(np.where(ok, q, -np.inf))) if ok is not None and ok.any() else int(np.argmax(q))
    elif selector == "lprm":
        index = int(np.argmax(_need(rows.value, "lprm", "an LPRM value head")))
    elif selector == "prior":
        index = int(np.argmax(_need(rows.log_prior, "prior", "a GRAM prior")))
    elif selector == "likelihood":
        if likelihood is None:
            raise ValueError("selector 'likelihood' needs a GRAM checkpoint")
        distinct, inverse = np.unique(rows.answers, axis=0, return_inverse=True)
        best = int(np.argmax(likelihood(distinct)))
        members = np.flatnonzero(inverse.reshape(-1) == best)
        index = int(members[np.argmax(q[members])])
    else:
        raise ValueError(f"unknown selector {selector!r}")
    return selection_of(rows, index, selector)


def selection_of(rows: Rows, index: int, selector: str) -> Selection:
    agreement = float((rows.answers == rows.answers[index]).all(axis=1).mean())
    return Selection(index, selector, float(1 / (1 + np.exp(-float(rows.q[index])))), agreement)


def _vote(answers: np.ndarray, q: np.ndarray) -> int:
    _, inverse, counts = np.unique(answers, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    conf = 1 / (1 + np.exp(-q))
    mean_conf = np.bincount(inverse, weights=conf) / counts
    best = max(range(len(counts)), key=lambda g: (counts[g], mean_conf[g]))
    members = np.flatnonzero(inverse == best)
    return int(members[np.argmax(q[members])])


def _need(x: np.ndarray | None, selector: str, what: str) -> np.ndarray:
    if x is None:
        raise ValueError(f"selector {selector!r} needs a checkpoint with {what}")
    return x
