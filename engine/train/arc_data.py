"""ARC training data: an official-layout ARC dataset (`engine-data arc` or the official builder) as rows with ids.

Every example row carries its puzzle's identifier (`puzzle_identifiers[p]` repeated over `puzzle_indices[p]:
puzzle_indices[p+1]`), the row of the puzzle-embedding table the model learns for that augmented variant. The
augmentations were made when the dataset was built, so the stream does not augment (as the official loader).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.checkpoint import IDENTIFIERS, TEST_PUZZLES
from engine.datasets import DatasetError
from engine.datasets.official import OfficialSplit, identifiers, read_split, test_puzzles

SEQ_LEN, VOCAB = 900, 12  # TRM.md §6.3: 30x30 canvas; PAD 0, EOS 1, colours 2-11


@dataclass(frozen=True)
class Rows:
    inputs: np.ndarray  # uint8 [n, 900]
    labels: np.ndarray  # uint8 [n, 900]
    ids: np.ndarray  # int64 [n]: each row's puzzle identifier


@dataclass(frozen=True)
class ArcData:
    train: Rows
    test: Rows  # the held-out test inputs, one row per (variant, test input), as engine-eval runs them
    num_puzzle_identifiers: int  # dataset.json: the size of the puzzle-embedding table
    ignore_label_id: int | None  # dataset.json: labels with this token (PAD) are not scored
    files: dict[str, str]  # identifiers.json and test_puzzles.json as written, for the checkpoint


def rows(split: OfficialSplit) -> Rows:
    """All sets of a split concatenated, each example with its puzzle's identifier."""
    inputs, labels, ids = split.examples()
    return Rows(inputs.astype(np.uint8), labels.astype(np.uint8), ids)


def read_arc_dataset(path: str | Path) -> ArcData:
    """Both splits of an ARC dataset in the official layout, checked to be ARC's shape and to agree with each other
    and with identifiers.json; DatasetError names what does not."""
    path = Path(path)
    train, test = read_split(path, "train"), read_split(path, "test")
    for name, split in (("train", train), ("test", test)):
        if (split.seq_len, split.vocab_size) != (SEQ_LEN, VOCAB):
            raise DatasetError(
                f"{path}/{name} holds {split.seq_len}-token examples over a vocabulary of {split.vocab_size}; "
                f"ARC's are {SEQ_LEN} tokens over {VOCAB} (the official build_arc_dataset.py's layout)"
            )
    meta = train.metadata
    if test.metadata["num_puzzle_identifiers"] != meta["num_puzzle_identifiers"]:
        raise DatasetError(f"{path}: the train and test splits disagree on num_puzzle_identifiers")
    names = identifiers(path)
    if len(names) != meta["num_puzzle_identifiers"]:
        raise DatasetError(
            f"{path}: identifiers.json names {len(names)} puzzle ids, dataset.json counts "
            f"{meta['num_puzzle_identifiers']}"
        )
    test_puzzles(path)  # present and an object: the checkpoint ships it for engine-serve and engine-eval
    data = ArcData(
        rows(train),
        rows(test),
        meta["num_puzzle_identifiers"],
        meta["ignore_label_id"],
        {name: (path / name).read_text() for name in (IDENTIFIERS, TEST_PUZZLES)},
    )
    for name, r in (("train", data.train), ("test", data.test)):
        if len(r.ids) and (r.ids.min() < 0 or r.ids.max() >= data.num_puzzle_identifiers):
            raise DatasetError(f"{path}/{name}: a puzzle identifier is outside 0-{data.num_puzzle_identifiers - 1}")
    if not len(data.train.ids):
        raise DatasetError(f"{path}/train holds no examples")
    return data
