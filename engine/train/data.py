"""Sudoku training data: file and CSV readers, the official augmentation, a puzzle generator, a resumable stream.

Every array holds codec tokens (TRM.md §6.1): blank=1, digit d -> d+1; inputs and labels are uint8 [N, 81]. The
stream also carries other tasks' rows ([N, seq_len], each with its puzzle id: ARC, `engine.train.arc_data`).
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.datasets.official import read_split
from engine.tasks.base import PuzzleError
from engine.tasks.carve import carve
from engine.tasks.sudoku import BLANK, SYMMETRY_KEYS, Sudoku, symmetries
from engine.tasks.sudoku_solver import random_solution, search

TASK = Sudoku()
_BAD = 255
_TOKEN = np.full(256, _BAD, np.uint8)  # byte -> token lookup, so parsing is one fancy-index over the whole file
_TOKEN[ord(".")] = _TOKEN[ord("0")] = BLANK
_TOKEN[ord("1") : ord("9") + 1] = np.arange(2, 11)


def _tokens(lines: list[bytes], where: Callable[[int], str]) -> np.ndarray:
    """81-character lines -> tokens [N, 81]; `where(i)` names line i in error messages."""
    lengths = np.fromiter(map(len, lines), np.int64, len(lines))
    bad = np.flatnonzero(lengths != 81)
    if bad.size:
        raise PuzzleError(f"{where(bad[0])}: expected 81 characters, got {lengths[bad[0]]}")
    tokens = _TOKEN[np.frombuffer(b"".join(lines), np.uint8)].reshape(-1, 81)
    bad = np.argwhere(tokens == _BAD)
    if bad.size:
        i, c = bad[0]
        raise PuzzleError(f"{where(i)}, column {c + 1}: unexpected character {chr(lines[i][c])!r}")
    return tokens


def _check_pairs(inputs: np.ndarray, labels: np.ndarray, where: Callable[[int], str]) -> None:
    """Every label must be a valid grid that keeps its puzzle's givens (one vectorised pass, then one message)."""
    bad = np.flatnonzero(~TASK.verify_batch(inputs, labels))
    if bad.size:
        raise PuzzleError(f"{where(bad[0])}: {TASK.check(inputs[bad[0]], labels[bad[0]])}")


def _lines(path: Path) -> tuple[list[bytes], np.ndarray]:
    """The non-comment lines of a file and their 1-based line numbers in it."""
    raw = path.read_bytes().splitlines()
    keep = [i for i, line in enumerate(raw) if not line.startswith(b"#")]
    return [raw[i] for i in keep], np.array(keep, np.int64) + 1


def read_puzzle_files(
    puzzles: str | Path, solutions: str | Path, start: int = 0, stop: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A puzzle file and its parallel solution file (shared/data/sudoku/README.md §3) -> (inputs, labels).

    `start`/`stop` slice the puzzle lines like a Python slice; the fixed dev split is `start=-2000` (README §6).
    """
    puzzles, solutions = Path(puzzles), Path(solutions)
    (p_lines, p_no), (s_lines, s_no) = _lines(puzzles), _lines(solutions)
    if len(p_lines) != len(s_lines):
        raise PuzzleError(f"{puzzles} has {len(p_lines)} puzzles but {solutions} has {len(s_lines)} solutions")
    window = slice(start, stop)
    p_lines, p_no, s_lines, s_no = p_lines[window], p_no[window], s_lines[window], s_no[window]
    inputs = _tokens(p_lines, lambda i: f"{puzzles} line {p_no[i]}")
    labels = _tokens(s_lines, lambda i: f"{solutions} line {s_no[i]}")
    _check_pairs(inputs, labels, lambda i: f"{solutions} line {s_no[i]} (puzzle at {puzzles} line {p_no[i]})")
    return inputs, labels


def read_sudoku_extreme_csv(path: str | Path, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sudoku-Extreme CSV (`source,question,answer,rating`; DATA.md §1.1) -> (inputs, labels), first `limit` rows."""
    questions, answers, line_no = [], [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"question", "answer"} - set(reader.fieldnames or ())
        if missing:
            raise PuzzleError(f"{path}: the header lacks column(s) {', '.join(sorted(missing))}")
        for row in itertools.islice(reader, limit):
            questions.append(row["question"].encode())
            answers.append(row["answer"].encode())
            line_no.append(reader.line_num)
    inputs = _tokens(questions, lambda i: f"{path} line {line_no[i]} (question)")
    labels = _tokens(answers, lambda i: f"{path} line {line_no[i]} (answer)")
    _check_pairs(inputs, labels, lambda i: f"{path} line {line_no[i]}")
    return inputs, labels


def read_official_dataset(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The train split of a Sudoku dataset in the official layout (the official `build_sudoku_dataset.py`'s output,
    its pre-made augmentations included) -> (inputs, labels). Its tokens are ours already (blank 1, digit d -> d+1).
    Another layout (ARC's 900 tokens, a maze's) raises PuzzleError naming what it holds (ARC: `arc_data`)."""
    split = read_split(path, "train")
    if (split.seq_len, split.vocab_size) != (81, 11):
        raise PuzzleError(
            f"{path} holds {split.seq_len}-token examples over a vocabulary of {split.vocab_size}; engine-train "
            "trains Sudoku (81 tokens, vocabulary 11: the official build_sudoku_dataset.py's layout) only, "
            "or ARC with --task arc"
        )
    inputs, labels, _ = split.examples()
    inputs, labels = inputs.astype(np.uint8), labels.astype(np.uint8)
    _check_pairs(inputs, labels, lambda i: f"{path}/train example {i} (0-based, sets concatenated)")
    return inputs, labels


def download_sudoku_extreme(split: str = "train", cache_dir: str | Path | None = None) -> Path:
    """The local path of Sudoku-Extreme's `{split}.csv`, fetched from the Hugging Face hub like the official builder
    does (TRM.md §7.3)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ImportError("downloading Sudoku-Extreme needs huggingface_hub: pip install huggingface_hub") from None
    return Path(
        hf_hub_download(
            repo_id="sapientinc/sudoku-extreme", filename=f"{split}.csv", repo_type="dataset", cache_dir=cache_dir
        )
    )


def augment(inputs: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The official validity-preserving shuffle (`shuffle_sudoku`, TRM.md §7.3), drawn independently per row.

    Each row takes one block of 34 uniform keys (`sudoku.symmetries`), so a batch of B rows draws exactly what B
    batches of one row would: results do not depend on batching.
    """
    inputs, labels = np.asarray(inputs, np.uint8), np.asarray(labels, np.uint8)
    sym = symmetries(rng.random((len(inputs), SYMMETRY_KEYS)))
    return sym.apply(inputs).astype(np.uint8), sym.apply(labels).astype(np.uint8)


def random_grids(n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` complete valid grids [n, 81]: randomly branched solutions of the empty grid, then augmented for mixing."""
    empty = np.full(81, BLANK, np.uint8)
    grids = np.array([random_solution(empty, rng) for _ in range(n)], np.uint8).reshape(n, 81)
    return augment(grids, grids, rng)[1]


def generate_puzzles(
    n: int, rng: np.random.Generator, clues: tuple[int, int] = (22, 30), min_guesses: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """`n` uniquely solvable puzzles with their solutions: (inputs, labels) uint8 [n, 81].

    From a random grid, cells are blanked in random order, skipping any whose removal makes the solution ambiguous,
    until the clue count reaches a target drawn uniformly from `clues` (inclusive). When the pass ends first, the
    puzzle is minimal and is kept only if its clue count is in range. Harder data: fewer clues, or `min_guesses`
    (keep puzzles whose exact search needs at least that many branches; DATA.md §1.5).

    Measured here (one core of a 2-core machine, warm numba cache, n=500): about 750 puzzles/s at clues (22, 30)
    and 1,300/s at (40, 50). Random removal rarely reaches a minimal puzzle under 23 clues, so (17, 21) drops to
    about 2/s; `min_guesses` divides the rate by the fraction that pass (min_guesses=5 at (22, 30): about 90/s).
    """
    lo, hi = clues
    if not 17 <= lo <= hi <= 81:
        raise ValueError(f"clues must satisfy 17 <= low <= high <= 81, got {clues}")
    inputs, labels = np.empty((n, 81), np.uint8), np.empty((n, 81), np.uint8)
    made = 0
    while made < n:
        solution = random_grids(1, rng)[0]
        puzzle, given = carve(solution, int(rng.integers(lo, hi + 1)), rng)
        if given > hi or search(puzzle).guesses < min_guesses:
            continue
        inputs[made], labels[made] = puzzle, solution
        made += 1
    return inputs, labels


def reveal_clues(inputs: np.ndarray, labels: np.ndarray, k: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Each puzzle with k extra correct givens copied from its solution, k uniform in `k` (inclusive) and capped by
    its blanks: the states a search visits after committing right cells (RRN's training data, SEARCH.md §2)."""
    return _set_cells(inputs, labels, k, rng, blank=True)


def blank_cells(grids: np.ndarray, k: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Infilling inputs: each complete grid with k random cells blanked, k uniform in `k` (inclusive). With k up to
    81 most inputs have many completions; the target stays the grid, so a model learns the completions' marginals."""
    return _set_cells(grids, np.full_like(grids, BLANK), k, rng, blank=False)


def _set_cells(x: np.ndarray, values: np.ndarray, k: tuple[int, int], rng: np.random.Generator, blank: bool):
    """Copy `values` into k random cells of each row of `x`: among its blank cells (`blank`) or among all cells."""
    lo, hi = k
    if not 0 <= lo <= hi <= 81:
        raise ValueError(f"cell counts must satisfy 0 <= low <= high <= 81, got {k}")
    x = np.array(x, np.uint8)
    counts = rng.integers(lo, hi + 1, len(x))
    keys = rng.random(x.shape)
    if blank:
        keys[x != BLANK] = np.inf  # givens are never chosen (they already hold their solution digit)
    rank = np.argsort(np.argsort(keys, axis=1), axis=1)  # each cell's place in the row's random order
    chosen = (rank < counts[:, None]) & np.isfinite(keys)
    x[chosen] = np.asarray(values, np.uint8)[chosen]
    return x


class SampleStream:
    """An endless, resumable stream of (augmented) training samples.

    Epoch e visits the dataset in the order `default_rng([seed, 0, e]).permutation(N)`, so an epoch's order needs no
    saved state; augmentation (and `reveal` / `blank`) draw from one Generator seeded `[seed, 1]` (distinct seed
    words: numpy treats `[seed]` and `[seed, 0]` as the same seed). Like the official loader (TRM.md §7.2) every visit
    gets a fresh random augmentation; unlike it, samples are not grouped, and epochs run on without dropping a
    remainder. `reveal`: k extra correct clues per puzzle; `blank`: infilling, k cells of a complete grid blanked.
    """

    def __init__(
        self,
        inputs: np.ndarray,
        labels: np.ndarray,
        seed: int,
        augment: bool = True,
        reveal: tuple[int, int] | None = None,
        blank: tuple[int, int] | None = None,
        ids: np.ndarray | None = None,
    ):
        self.inputs, self.labels = np.asarray(inputs, np.uint8), np.asarray(labels, np.uint8)
        if self.inputs.shape != self.labels.shape or self.inputs.ndim != 2 or not len(self.inputs):
            raise ValueError(
                f"inputs {self.inputs.shape} and labels {self.labels.shape} must both be non-empty [N, seq_len] "
                "token arrays"
            )
        if (augment or reveal or blank) and self.inputs.shape[1] != 81:
            raise ValueError("augmentation, extra clues and infilling are Sudoku's (81 tokens)")
        # each row's puzzle-embedding row (ARC: its variant's identifier); Sudoku's single table row is 0
        self.ids = np.zeros(len(self.inputs), np.int64) if ids is None else np.asarray(ids, np.int64)
        if self.ids.shape != (len(self.inputs),):
            raise ValueError(f"ids {self.ids.shape} must give one puzzle id per row ({len(self.inputs)})")
        self.seed, self.augment, self.reveal, self.blank = seed, augment, reveal, blank
        self.epoch = self.position = self.samples_seen = 0
        self._rng = np.random.default_rng([seed, 1])
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, 0, self.epoch]).permutation(len(self.inputs))

    @property
    def epoch_fraction(self) -> float:
        """Epochs consumed so far, fractional (samples seen / dataset size), for logging."""
        return self.samples_seen / len(self.inputs)

    def next(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next `n` samples (inputs, labels), crossing epoch boundaries as needed."""
        return self.draw(n)[:2]

    def draw(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The next `n` samples with their puzzle ids (inputs, labels, ids)."""
        parts, need = [], n
        while need:
            take = min(need, len(self._order) - self.position)
            parts.append(self._order[self.position : self.position + take])
            self.position, need = self.position + take, need - take
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
        index = np.concatenate(parts) if parts else np.empty(0, np.int64)
        self.samples_seen += n
        inputs, labels = self.inputs[index], self.labels[index]
        if self.augment:
            inputs, labels = augment(inputs, labels, self._rng)
        if self.reveal:
            inputs = reveal_clues(inputs, labels, self.reveal, self._rng)
        if self.blank:
            inputs = blank_cells(labels, self.blank, self._rng)
        return inputs, labels, self.ids[index]

    def state_dict(self) -> dict:
        """JSON-serialisable position of the stream; `load_state_dict` resumes it exactly."""
        return {
            "seed": self.seed,
            "size": len(self.inputs),
            "epoch": self.epoch,
            "position": self.position,
            "samples_seen": self.samples_seen,
            "augment_rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        if (state["seed"], state["size"]) != (self.seed, len(self.inputs)):
            raise ValueError(
                f"state is for seed {state['seed']} over {state['size']} samples, "
                f"but this stream has seed {self.seed} over {len(self.inputs)}"
            )
        self.epoch, self.position, self.samples_seen = state["epoch"], state["position"], state["samples_seen"]
        self._rng.bit_generator.state = state["augment_rng"]
        self._order = self._permutation()


@dataclass(frozen=True)
class Source:
    """One kind of training sample: puzzles with solutions (optionally with extra clues revealed) or complete grids
    to infill. `share` is its fraction of the samples drawn (None: in proportion to its size)."""

    name: str
    inputs: np.ndarray
    labels: np.ndarray
    share: float | None = None
    reveal: tuple[int, int] | None = None
    blank: tuple[int, int] | None = None
    ids: np.ndarray | None = None  # each row's puzzle id (None: all 0, Sudoku's single table row)
    augment: bool = True  # Sudoku's on-the-fly symmetries; off for datasets augmented when built (ARC)


class Mixture:
    """Samples from several sources at fixed shares, resumable like `SampleStream` (one stream per source).

    With `curriculum` c > 0 the shares move linearly over the first fraction c of training (`progress`, set by the
    trainer) from all-`easy` to the final shares: easy puzzles first, then the hard ones (and infilling)."""

    def __init__(self, sources: list[Source], seed: int, curriculum: float = 0.0, easy: str | None = None):
        if not sources:
            raise ValueError("a mixture needs at least one source")
        names = [s.name for s in sources]
        if curriculum and easy not in names:
            raise ValueError(f"a curriculum starts from an easy source; {easy!r} is not one of {names}")
        shares = np.array([len(s.inputs) if s.share is None else s.share for s in sources], np.float64)
        if (shares < 0).any() or shares.sum() <= 0:
            raise ValueError(f"source shares must be non-negative with a positive sum, got {shares.tolist()}")
        self.shares = shares / shares.sum()
        self.start = np.array([n == easy for n in names], np.float64) if curriculum else self.shares
        self.curriculum, self.progress, self.sources = curriculum, 0.0, sources
        self.streams = [
            SampleStream(
                s.inputs, s.labels, seed=seed * 100 + i, augment=s.augment, reveal=s.reveal, blank=s.blank, ids=s.ids
            )
            for i, s in enumerate(sources)
        ]
        self._rng = np.random.default_rng([seed, 2])

    def current_shares(self) -> np.ndarray:
        a = min(1.0, self.progress / self.curriculum) if self.curriculum else 1.0
        return (1 - a) * self.start + a * self.shares

    @property
    def samples_seen(self) -> int:
        return sum(s.samples_seen for s in self.streams)

    @property
    def epoch_fraction(self) -> float:
        return self.samples_seen / sum(len(s.inputs) for s in self.streams)

    def next(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self.draw(n)[:2]

    def draw(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The next `n` samples with their puzzle ids (inputs, labels, ids)."""
        counts = self._rng.multinomial(n, self.current_shares())
        parts = [stream.draw(int(c)) for stream, c in zip(self.streams, counts) if c]
        return tuple(np.concatenate(cols) for cols in zip(*parts))

    def state_dict(self) -> dict:
        return {
            "streams": [s.state_dict() for s in self.streams],
            "rng": self._rng.bit_generator.state,
            "progress": self.progress,
        }

    def load_state_dict(self, state: dict) -> None:
        if len(state["streams"]) != len(self.streams):
            raise ValueError(f"state is for {len(state['streams'])} sources, this mixture has {len(self.streams)}")
        for stream, s in zip(self.streams, state["streams"]):
            stream.load_state_dict(s)
        self._rng.bit_generator.state = state["rng"]
        self.progress = state["progress"]


def write_puzzle_files(prefix: str | Path, inputs: np.ndarray, labels: np.ndarray) -> tuple[Path, Path]:
    """Write PREFIX.txt ('.' blanks) and PREFIX.sol, the format `read_puzzle_files` and `engine-eval` read."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = prefix.with_suffix(".txt"), prefix.with_suffix(".sol")
    for path, rows in zip(paths, (inputs, labels)):
        path.write_text("".join(TASK.to_text(row) + "\n" for row in rows))
    return paths


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m engine.train.data", description="Write generated Sudoku puzzles and solutions."
    )
    p.add_argument("prefix", help="writes PREFIX.txt and PREFIX.sol")
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--clues", type=int, nargs=2, default=(22, 30), metavar=("MIN", "MAX"))
    p.add_argument("--min-guesses", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    inputs, labels = generate_puzzles(args.n, np.random.default_rng(args.seed), tuple(args.clues), args.min_guesses)
    print("wrote", *write_puzzle_files(args.prefix, inputs, labels))


if __name__ == "__main__":
    main()
