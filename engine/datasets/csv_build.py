"""Sudoku-Extreme and Maze-Hard from the hub's CSV files -> the official layout (`official`), byte for byte what the
official `dataset/build_sudoku_dataset.py` and `dataset/build_maze_dataset.py` write from the same files and options.

Both read a `train.csv` and a `test.csv` (a header line, then `source,question,answer,rating` rows: Sudoku's 81 cells
with '.' for a blank; a maze's n x n cells in "# SGo", wall, open, start, goal, path), from a local folder or from the
hub's dataset repository (`sapientinc/sudoku-extreme`, `sapientinc/maze-30x30-hard-1k`) as the official builders
fetch them. Each puzzle is one group; Sudoku's train puzzles are each followed by `num_aug` shuffled copies (digits,
transpose, bands and rows in them, stacks and columns in them: the official `shuffle_sudoku`), a maze's by its 7 other
dihedral images with `aug`. Tokens: Sudoku PAD 0, digit d -> d + 1 (blank 0 -> 1); maze PAD 0, "# SGo" -> 1-5.

The random draws are part of the format. The official builders draw from numpy's global generator without seeding
it, so their output differs from run to run; here one legacy RandomState seeded with `seed` is drawn in the official
order (train: the subsample, `choice` without replacement and only when subsample_size is below the row count, then
per kept puzzle and per augmentation the shuffle's permutations and coin; test: nothing), which is the official
builder's output after `np.random.seed(seed)`. Quirks kept for the bytes: an unaugmented Sudoku build stores uint8
tokens and an augmented one int64 (the shuffle's digit map is int64), `total_puzzles` counts groups, and
`mean_puzzle_examples` is 1.0.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.datasets import DatasetError
from engine.datasets.official import fresh_directory, metadata, write_split
from engine.tasks.arc_augment import dihedral

SPLITS = ("train", "test")
SUDOKU_REPO = "sapientinc/sudoku-extreme"
MAZE_REPO = "sapientinc/maze-30x30-hard-1k"
MAZE_CHARSET = "# SGo"


@dataclass(frozen=True)
class SudokuBuildConfig:
    """The official build_sudoku_dataset.py's options (train split only), with its defaults, plus the seed."""

    subsample_size: int | None = None
    min_difficulty: int | None = None  # keep rows rated at least this (both splits)
    num_aug: int = 0
    seed: int = 0


@dataclass(frozen=True)
class MazeBuildConfig:
    """The official build_maze_dataset.py's options (train split only), with its defaults, plus the seed."""

    subsample_size: int | None = None
    aug: bool = False  # the 8 dihedral images of every train maze
    seed: int = 0


@dataclass(frozen=True)
class BuildSummary:
    rows: dict[str, int]  # CSV rows kept per split (after the difficulty filter and the subsample)
    examples: dict[str, int]  # examples written per split (augmentations included)
    seq_len: int


def csv_files(folder: str | os.PathLike | None = None, hf_repo: str | None = None) -> dict[str, Path]:
    """split -> its CSV: `folder`/{train,test}.csv, or the hub dataset repository's files (needs huggingface_hub
    and a network), fetched as the official builders fetch them."""
    if hf_repo is not None:
        try:
            from huggingface_hub import hf_hub_download
        except ImportError:
            raise DatasetError("--hf needs huggingface_hub: pip install huggingface_hub") from None
        return {s: Path(hf_hub_download(hf_repo, f"{s}.csv", repo_type="dataset")) for s in SPLITS}
    paths = {s: Path(folder) / f"{s}.csv" for s in SPLITS}
    for path in paths.values():
        if not path.is_file():
            raise DatasetError(f"{path} is missing: give a folder holding train.csv and test.csv (the hub's files)")
    return paths


def _rows(path: Path) -> Iterator[tuple[int, str, str, str]]:
    """(line number, question, answer, rating) per row after the header."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        if next(reader, None) is None:
            raise DatasetError(f"{path} is empty: expected a header, then source,question,answer,rating rows")
        for row in reader:
            if len(row) != 4:
                raise DatasetError(
                    f"{path}, line {reader.line_num}: {len(row)} fields, expected 4 (source,question,answer,rating)"
                )
            yield reader.line_num, row[1], row[2], row[3]


def _subsample(split: str, pairs: list, size: int | None, rng: np.random.RandomState) -> list:
    if split == "train" and size is not None and size < len(pairs):
        pairs = [pairs[i] for i in rng.choice(len(pairs), size=size, replace=False)]
    return pairs


def _arrays(examples: list[tuple[np.ndarray, np.ndarray]], group_sizes: list[int], tokens) -> dict[str, np.ndarray]:
    """The official builders' five arrays: one example per puzzle, `group_sizes` puzzles per group."""
    return {
        "inputs": tokens([e[0] for e in examples]),
        "labels": tokens([e[1] for e in examples]),
        "group_indices": np.concatenate([[0], np.cumsum(group_sizes)]).astype(np.int32),
        "puzzle_indices": np.arange(len(examples) + 1, dtype=np.int32),
        "puzzle_identifiers": np.zeros(len(examples), dtype=np.int32),
    }


def _write(output_dir, splits: dict[str, tuple[dict, int]], seq_len: int, vocab_size: int) -> None:
    """Both splits' files and identifiers.json, atomically; `splits`: split -> (arrays, groups)."""
    with fresh_directory(output_dir) as tmp:
        for split, (arrays, groups) in splits.items():
            meta = metadata(
                vocab_size=vocab_size,
                seq_len=seq_len,
                num_puzzle_identifiers=1,
                total_groups=groups,
                mean_puzzle_examples=1.0,
                total_puzzles=groups,  # sic: the official builders count groups here
                sets=["all"],
            )
            write_split(tmp, split, meta, {"all": arrays})
        with open(tmp / "identifiers.json", "w") as f:
            json.dump(["<blank>"], f)


# -- Sudoku -----------------------------------------------------------------------------------------------------------


def shuffle_sudoku(board: np.ndarray, solution: np.ndarray, rng: np.random.RandomState):
    """The official `shuffle_sudoku`, drawing from `rng` in its order: a digit permutation (blank stays), a
    transpose coin, the band order, each band's row order, the stack order, each stack's column order."""
    digit_map = np.pad(rng.permutation(np.arange(1, 10)), (1, 0))
    transpose = rng.rand() < 0.5
    bands = rng.permutation(3)
    row_perm = np.concatenate([b * 3 + rng.permutation(3) for b in bands])
    stacks = rng.permutation(3)
    col_perm = np.concatenate([s * 3 + rng.permutation(3) for s in stacks])
    mapping = np.array([row_perm[i // 9] * 9 + col_perm[i % 9] for i in range(81)])

    def apply(x: np.ndarray) -> np.ndarray:
        if transpose:
            x = x.T
        return digit_map[x.flatten()[mapping].reshape(9, 9)]

    return apply(board), apply(solution)


def _sudoku_grid(path: Path, line: int, text: str, blanks: bool) -> np.ndarray:
    allowed = set("0123456789." if blanks else "0123456789")
    if len(text) != 81 or not set(text) <= allowed:
        what = "question (digits, '.' for a blank)" if blanks else "answer (digits)"
        raise DatasetError(f"{path}, line {line}: the {what} must be 81 of {''.join(sorted(allowed))!r}: {text!r}")
    return np.frombuffer(text.replace(".", "0").encode(), dtype=np.uint8).reshape(9, 9) - ord("0")


def _sudoku_tokens(grids: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(grids).reshape(len(grids), -1) + 1


def build_sudoku(files: dict[str, Path], output_dir: str | os.PathLike, config: SudokuBuildConfig) -> BuildSummary:
    """Write the dataset to `output_dir` (which must not exist yet, or be empty), atomically."""
    if config.num_aug < 0 or (config.subsample_size is not None and config.subsample_size < 1):
        raise DatasetError("num_aug must be at least 0 and subsample_size at least 1")
    rng = np.random.RandomState(config.seed)  # legacy seeding: the official builder's global np.random draws
    splits, rows, examples = {}, {}, {}
    for split in SPLITS:
        pairs = []
        for line, q, a, rating in _rows(files[split]):
            if config.min_difficulty is not None:
                try:
                    if int(rating) < config.min_difficulty:
                        continue
                except ValueError:
                    raise DatasetError(f"{files[split]}, line {line}: rating {rating!r} is not an integer") from None
            pairs.append((_sudoku_grid(files[split], line, q, True), _sudoku_grid(files[split], line, a, False)))
        pairs = _subsample(split, pairs, config.subsample_size, rng)
        if not pairs:
            raise DatasetError(f"{files[split]}: no puzzle left to write (min_difficulty {config.min_difficulty})")
        num_aug = config.num_aug if split == "train" else 0
        out = []
        for inp, label in pairs:
            out.append((inp, label))
            out.extend(shuffle_sudoku(inp, label, rng) for _ in range(num_aug))
        splits[split] = (_arrays(out, [1 + num_aug] * len(pairs), _sudoku_tokens), len(pairs))
        rows[split], examples[split] = len(pairs), len(out)
    _write(output_dir, splits, seq_len=81, vocab_size=11)  # PAD + "0" ... "9"
    return BuildSummary(rows, examples, 81)


# -- Maze -------------------------------------------------------------------------------------------------------------


def _maze_tokens(grids: list[np.ndarray]) -> np.ndarray:
    char2id = np.zeros(256, np.uint8)
    char2id[np.array(list(map(ord, MAZE_CHARSET)))] = np.arange(len(MAZE_CHARSET)) + 1
    return np.vstack([char2id[g.reshape(-1)] for g in grids])


def build_maze(files: dict[str, Path], output_dir: str | os.PathLike, config: MazeBuildConfig) -> BuildSummary:
    """Write the dataset to `output_dir` (which must not exist yet, or be empty), atomically. The grid side is the
    first row's (30 for Maze-Hard); every row must have it."""
    if config.subsample_size is not None and config.subsample_size < 1:
        raise DatasetError("subsample_size must be at least 1")
    rng = np.random.RandomState(config.seed)  # legacy seeding: the official builder's global np.random draws
    splits, rows, examples, side = {}, {}, {}, None
    for split in SPLITS:
        pairs = []
        for line, q, a, _ in _rows(files[split]):
            side = side or int(len(q) ** 0.5)
            bad = set(q + a) - set(MAZE_CHARSET)
            if bad or len(q) != side * side or len(a) != side * side:
                raise DatasetError(
                    f"{files[split]}, line {line}: question and answer must be {side}x{side} = {side * side} cells "
                    f"of {MAZE_CHARSET!r}" + (f" (found {''.join(sorted(bad))!r})" if bad else "")
                )
            pairs.append(tuple(np.frombuffer(t.encode(), dtype=np.uint8).reshape(side, side) for t in (q, a)))
        pairs = _subsample(split, pairs, config.subsample_size, rng)
        if not pairs:
            raise DatasetError(f"{files[split]}: no maze to write")
        images = 8 if split == "train" and config.aug else 1
        out = [(dihedral(inp, t), dihedral(label, t)) for inp, label in pairs for t in range(images)]
        splits[split] = (_arrays(out, [images] * len(pairs), _maze_tokens), len(pairs))
        rows[split], examples[split] = len(pairs), len(out)
    _write(output_dir, splits, seq_len=side * side, vocab_size=len(MAZE_CHARSET) + 1)  # PAD + charset
    return BuildSummary(rows, examples, side * side)
