"""The official TRM dataset layout, as its builders write it and its `PuzzleDataset` reads it.

    DIR/identifiers.json                  puzzle identifier -> name ("<blank>" for 0 and unused ids)
    DIR/test_puzzles.json                 ARC only: the test subsets' tasks, with their test outputs
    DIR/{train,test}/dataset.json         metadata (METADATA_KEYS, in this order)
    DIR/{train,test}/{set}__{field}.npy   one file per set named in the metadata and per FIELD

Examples are rows of `inputs`/`labels`; `puzzle_indices[p]:puzzle_indices[p+1]` are puzzle p's examples and
`group_indices[g]:group_indices[g+1]` group g's puzzles (a task and its augmentations); `puzzle_identifiers[p]` is
puzzle p's row in the model's puzzle-embedding table. ARC: seq_len 900, vocab 12; Sudoku: seq_len 81, vocab 11.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.datasets import DatasetError

FIELDS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
METADATA_KEYS = (
    "pad_id",
    "ignore_label_id",
    "blank_identifier_id",
    "vocab_size",
    "seq_len",
    "num_puzzle_identifiers",
    "total_groups",
    "mean_puzzle_examples",
    "total_puzzles",
    "sets",
)


@dataclass(frozen=True)
class OfficialSet:
    inputs: np.ndarray  # [examples, seq_len] tokens
    labels: np.ndarray  # [examples, seq_len] tokens
    puzzle_identifiers: np.ndarray  # int32 [puzzles]
    puzzle_indices: np.ndarray  # int32 [puzzles + 1]: first example of each puzzle, then the example count
    group_indices: np.ndarray  # int32 [groups + 1]: first puzzle of each group, then the puzzle count


@dataclass(frozen=True)
class OfficialSplit:
    metadata: dict  # dataset.json as written
    sets: dict[str, OfficialSet]  # by set name ("all" from the official builders)

    @property
    def seq_len(self) -> int:
        return self.metadata["seq_len"]

    @property
    def vocab_size(self) -> int:
        return self.metadata["vocab_size"]

    def examples(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every set's examples in order: inputs and labels (dtypes as stored) and int64 puzzle ids (each example's
        puzzle identifier, repeated over the puzzle's examples)."""
        sets = self.sets.values()
        ids = [np.repeat(s.puzzle_identifiers, np.diff(s.puzzle_indices)) for s in sets]
        return (
            np.concatenate([s.inputs for s in sets]),
            np.concatenate([s.labels for s in sets]),
            np.concatenate(ids).astype(np.int64),
        )


def metadata(**values) -> dict:
    """dataset.json's fields in the official order (json.dump keeps it, and the files are compared byte for byte)."""
    values = {"pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, **values}
    if missing := [k for k in METADATA_KEYS if k not in values]:
        raise TypeError(f"metadata lacks {missing}")
    return {k: values[k] for k in METADATA_KEYS}


def write_split(root: Path, split: str, meta: dict, sets: dict[str, dict[str, np.ndarray]]) -> None:
    """One split's dataset.json and arrays, as the official builders save them (np.save, dtypes as given)."""
    folder = Path(root) / split
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "dataset.json", "w") as f:
        json.dump(meta, f)
    for name, arrays in sets.items():
        for field in FIELDS:
            np.save(folder / f"{name}__{field}.npy", arrays[field])


def write_answer_sets(root: Path, vocab_size: int, seq_len: int, splits: dict[str, tuple]) -> None:
    """A dataset of puzzles with many answers (N-Queens, graph colouring): split name -> (inputs [puzzles, seq_len],
    each puzzle's answers [count, seq_len]). Each input is one puzzle and one group whose examples are all its answers,
    puzzle identifier 0 (identifiers.json holds only the blank)."""
    for name, (inputs, answers) in splits.items():
        counts = np.array([len(a) for a in answers], np.int64)
        arrays = {
            "inputs": np.repeat(inputs, counts, axis=0),
            "labels": np.concatenate(answers) if len(counts) else np.zeros((0, seq_len), np.uint8),
            "puzzle_identifiers": np.zeros(len(counts), np.int32),
            "puzzle_indices": np.concatenate([[0], np.cumsum(counts)]).astype(np.int32),
            "group_indices": np.arange(len(counts) + 1, dtype=np.int32),
        }
        meta = metadata(
            vocab_size=vocab_size,
            seq_len=seq_len,
            num_puzzle_identifiers=1,
            total_groups=len(counts),
            mean_puzzle_examples=len(arrays["inputs"]) / len(counts) if len(counts) else 0,
            total_puzzles=len(counts),
            sets=["all"],
        )
        write_split(root, name, meta, {"all": arrays})
    with open(Path(root) / "identifiers.json", "w") as f:
        json.dump(["<blank>"], f)


@contextmanager
def fresh_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty directory beside `path`, renamed to `path` once the block succeeds and removed if it fails,
    so a killed or failed build leaves no half dataset. `path` must not exist yet (or be empty): a dataset is
    never written over other files."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise DatasetError(f"{path} already exists and is not empty; remove it or choose another output directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()  # not mkdtemp: its 0700 mode would stick to the dataset
    try:
        yield tmp
        if path.exists():
            path.rmdir()
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"{path} is missing: not a dataset in the official layout ({what})")
    return path


def _json(path: Path, what: str):
    try:
        return json.loads(_file(path, what).read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None


def _array(path: Path, mmap: bool) -> np.ndarray:
    try:
        # never unpickle: a dataset is data, and a pickled object array could run code
        return np.load(_file(path, "an array file"), mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as e:
        raise DatasetError(f"{path}: not a plain numpy array ({e})") from None


def _check_set(where: str, s: OfficialSet, meta: dict) -> None:
    n, seq_len = len(s.inputs), meta["seq_len"]
    if s.inputs.shape != (n, seq_len) or s.labels.shape != (n, seq_len):
        raise DatasetError(
            f"{where}: inputs {s.inputs.shape} and labels {s.labels.shape} must both be [examples, {seq_len}]"
        )
    p, g = s.puzzle_indices, s.group_indices
    for name, idx, end in (("puzzle_indices", p, n), ("group_indices", g, len(s.puzzle_identifiers))):
        if idx.ndim != 1 or len(idx) < 1 or idx[0] != 0 or idx[-1] != end or (np.diff(idx) < 0).any():
            raise DatasetError(f"{where}: {name} must rise from 0 to {end}")
    if len(p) != len(s.puzzle_identifiers) + 1:
        raise DatasetError(
            f"{where}: {len(s.puzzle_identifiers)} puzzle_identifiers for {len(p) - 1} puzzles (puzzle_indices)"
        )
    if n and max(int(s.inputs.max()), int(s.labels.max())) >= meta["vocab_size"]:
        raise DatasetError(f"{where}: a token is out of the vocabulary (vocab_size {meta['vocab_size']})")


def read_split(path: str | os.PathLike, split: str, mmap: bool = False) -> OfficialSplit:
    """One split ("train" or "test") of an official-layout dataset directory, checked for consistency. `mmap`:
    map inputs and labels instead of reading them (as the official loader does for large datasets)."""
    folder = Path(path) / split
    meta = _json(folder / "dataset.json", f"the {split} split's metadata")
    if not isinstance(meta, dict) or (missing := [k for k in METADATA_KEYS if k not in meta]):
        raise DatasetError(f"{folder / 'dataset.json'}: lacks {missing if isinstance(meta, dict) else 'an object'}")
    sets = {}
    for name in meta["sets"]:
        arrays = {f: _array(folder / f"{name}__{f}.npy", mmap and f in ("inputs", "labels")) for f in FIELDS}
        sets[name] = OfficialSet(**arrays)
        _check_set(f"{folder}, set {name!r}", sets[name], meta)
    return OfficialSplit(meta, sets)


def identifiers(path: str | os.PathLike) -> list[str]:
    """identifiers.json: the name of each puzzle identifier (ARC: `task|||t<dihedral>|||<colours>`)."""
    names = _json(Path(path) / "identifiers.json", "the puzzle identifier names")
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise DatasetError(f"{Path(path) / 'identifiers.json'}: expected a list of names")
    return names


def test_puzzles(path: str | os.PathLike) -> dict:
    """test_puzzles.json (ARC datasets): task id -> {"train": [...], "test": [...]}, test outputs included."""
    tasks = _json(Path(path) / "test_puzzles.json", "the ARC test tasks; Sudoku datasets have none")
    if not isinstance(tasks, dict):
        raise DatasetError(f"{Path(path) / 'test_puzzles.json'}: expected an object of tasks")
    return tasks


test_puzzles.__test__ = False  # a reader, not a pytest test, should a test module import it by name
