"""What every puzzle task provides: a codec (text or nested lists <-> tokens), a rule verifier, clear errors."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from engine.tasks.symmetry import Symmetry

PAD = 0  # token 0 pads batch rows in every task (TRM.md §6)


class PuzzleError(ValueError):
    """Malformed puzzle input. The message names the row, cell or character at fault."""


class Task(ABC):
    name: str
    seq_len: int
    vocab_size: int
    has_rule_verifier: bool = True  # False where `check` can only judge well-formedness (ARC)
    # True where a puzzle usually has several valid answers (N-Queens): accuracy is validity, not a match with a label
    many_answers: bool = False
    comment_prefix: str | None = "#"  # puzzle files skip lines starting with it; None where '#' is a cell (maze)
    # Fill-in tasks (the answer keeps the puzzle and fills its blanks) name the blank token and the tokens a blank
    # may take; commit search and generation need both.
    blank: int | None = None
    values: np.ndarray | None = None

    def symmetry(self, rng: np.random.Generator) -> Symmetry | None:
        """A random symmetry of the task (search's `augment` diversity); None where the task has none."""
        return None

    def canonical(self, tokens: np.ndarray) -> np.ndarray:
        """Answers [..., seq_len] -> one representative per class of answers the rules treat as the same (graph
        colouring: colours renumbered by first occurrence), so distinct answers are counted once; most tasks: as is."""
        return np.asarray(tokens)

    def legal(self, tokens: np.ndarray) -> np.ndarray | None:
        """bool [seq_len, vocab]: the values each cell may take under the rules given the filled cells (commit
        search's legal-value mask); None where the task has no such rule."""
        return None

    @abstractmethod
    def encode(self, puzzle: str | list) -> np.ndarray:
        """A puzzle as text or nested lists -> int64 tokens [seq_len]. Raises PuzzleError."""

    def encode_answer(self, answer: str | list) -> np.ndarray:
        """A full answer (a label) -> tokens. Tasks whose answers use symbols puzzles may not hold override this."""
        return self.encode(answer)

    @abstractmethod
    def decode(self, tokens: np.ndarray) -> list:
        """Tokens (e.g. a model's argmax) -> nested lists, the task's grid form."""

    @abstractmethod
    def to_text(self, tokens: np.ndarray) -> str:
        """Tokens -> the task's canonical text form (what `encode` accepts)."""

    def render(self, tokens: np.ndarray) -> str:
        """Tokens -> a human-friendly multi-line picture for terminals."""
        return self.to_text(tokens)

    @abstractmethod
    def check(self, puzzle: np.ndarray, answer: np.ndarray) -> str | None:
        """The first rule the answer breaks (as a sentence), or None when it is a valid answer to the puzzle."""

    def verify(self, puzzle: np.ndarray, answer: np.ndarray) -> bool:
        return self.check(puzzle, answer) is None

    def verify_batch(self, puzzles: np.ndarray, answers: np.ndarray) -> np.ndarray:
        """[B, seq_len] token arrays -> bool[B]. Tasks with a vectorised check override this."""
        return np.array([self.verify(p, a) for p, a in zip(puzzles, answers)], dtype=bool)
