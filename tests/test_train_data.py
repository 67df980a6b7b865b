"""Training data: readers, augmentation, generator and the resumable sample stream. Builds its own small data."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from engine.tasks.base import PuzzleError
from engine.tasks.sudoku import Sudoku
from engine.tasks.sudoku_solver import count_solutions, search, solve
from engine.train.data import (
    SampleStream,
    augment,
    download_sudoku_extreme,
    generate_puzzles,
    random_grids,
    read_puzzle_files,
    read_sudoku_extreme_csv,
)

TASK = Sudoku()
# Arto Inkala's 2012 "world's hardest Sudoku" and its unique solution.
INKALA = "8..........36......7..9.2...5...7.......457.....1...3...1....68..85...1..9....4.."
INKALA_SOL = "812753649943682175675491283154237896369845721287169534521974368438526917796318452"


def text(tokens: np.ndarray) -> str:
    return TASK.to_text(tokens)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """Six generated puzzles plus Inkala's, as token arrays."""
    inputs, labels = generate_puzzles(6, np.random.default_rng(0), clues=(28, 36))
    return (
        np.vstack([inputs, TASK.encode(INKALA).astype(np.uint8)]),
        np.vstack([labels, TASK.encode(INKALA_SOL).astype(np.uint8)]),
    )


@pytest.fixture
def files(tmp_path, data):
    """A puzzle file with a comment line and its solution file."""
    inputs, labels = data
    puzzles, solutions = tmp_path / "p.txt", tmp_path / "p.sol"
    puzzles.write_text("# source: generated\n" + "".join(text(p) + "\n" for p in inputs))
    solutions.write_text("".join(text(s) + "\n" for s in labels))
    return puzzles, solutions


def test_read_puzzle_files_round_trip_and_slices(files, data):
    inputs, labels = read_puzzle_files(*files)
    assert inputs.dtype == labels.dtype == np.uint8 and inputs.shape == (7, 81)
    np.testing.assert_array_equal(inputs, data[0])
    np.testing.assert_array_equal(labels, data[1])
    tail = read_puzzle_files(*files, start=-2)
    np.testing.assert_array_equal(tail[0], data[0][-2:])
    np.testing.assert_array_equal(tail[1], data[1][-2:])
    np.testing.assert_array_equal(read_puzzle_files(*files, start=1, stop=3)[1], data[1][1:3])


def test_read_puzzle_files_errors(files):
    puzzles, solutions = files
    good = solutions.read_text()
    lines = good.splitlines()
    lines[2] = str(int(lines[2][0]) % 9 + 1) + lines[2][1:]  # a changed cell breaks its row at least
    solutions.write_text("\n".join(lines) + "\n")
    with pytest.raises(PuzzleError, match=r"p\.sol line 3 \(puzzle at .*p\.txt line 4\): "):
        read_puzzle_files(puzzles, solutions)
    read_puzzle_files(puzzles, solutions, stop=2)  # the bad line lies outside this slice

    solutions.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(PuzzleError, match=r"p\.txt has 7 puzzles but .*p\.sol has 6 solutions"):
        read_puzzle_files(puzzles, solutions)

    solutions.write_text(good)
    short = puzzles.read_text().splitlines()
    short[2] = short[2][:80]
    puzzles.write_text("\n".join(short) + "\n")
    with pytest.raises(PuzzleError, match=r"p\.txt line 3: expected 81 characters, got 80"):
        read_puzzle_files(puzzles, solutions)


def test_read_puzzle_files_names_a_given_clash(tmp_path):
    puzzles, solutions = tmp_path / "a.txt", tmp_path / "a.sol"
    puzzles.write_text(INKALA + "\n" + "x" + INKALA[1:] + "\n")
    solutions.write_text(INKALA_SOL + "\n" + INKALA_SOL + "\n")
    with pytest.raises(PuzzleError, match=r"a\.txt line 2, column 1: unexpected character 'x'"):
        read_puzzle_files(puzzles, solutions)
    other = "9" + INKALA[1:]  # a given the (valid) solution does not keep
    puzzles.write_text(INKALA + "\n" + other + "\n")
    with pytest.raises(PuzzleError, match=r"a\.sol line 2 .*row 1, column 1 changes the given 9 to 8"):
        read_puzzle_files(puzzles, solutions)


def test_read_sudoku_extreme_csv(tmp_path, data):
    inputs, labels = data
    path = tmp_path / "train.csv"
    rows = "".join(f"src{i},{text(p)},{text(s)},{i}\n" for i, (p, s) in enumerate(zip(inputs, labels)))
    path.write_text("source,question,answer,rating\n" + rows)
    got = read_sudoku_extreme_csv(path)
    np.testing.assert_array_equal(got[0], inputs)
    np.testing.assert_array_equal(got[1], labels)
    assert read_sudoku_extreme_csv(path, limit=3)[0].shape == (3, 81)
    path.write_text("source,question,answer,rating\n" + rows.replace(text(labels[1]), text(labels[1])[:-1]))
    with pytest.raises(PuzzleError, match=r"train\.csv line 3 \(answer\): expected 81 characters"):
        read_sudoku_extreme_csv(path)


def test_download_sudoku_extreme_uses_the_hub(monkeypatch, tmp_path):
    calls = []
    local = tmp_path / "test.csv"

    def hf_hub_download(**kwargs):
        calls.append(kwargs)
        return str(local)

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(hf_hub_download=hf_hub_download))
    assert download_sudoku_extreme("test", cache_dir=tmp_path) == local
    assert calls == [
        {"repo_id": "sapientinc/sudoku-extreme", "filename": "test.csv", "repo_type": "dataset", "cache_dir": tmp_path}
    ]
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install huggingface_hub"):
        download_sudoku_extreme()


def test_augment_preserves_validity_and_consistency(data):
    inputs, labels = (np.repeat(a, 50, axis=0) for a in data)
    rng = np.random.default_rng(1)
    aug_in, aug_lab = augment(inputs, labels, rng)
    assert aug_in.dtype == np.uint8 and aug_in.shape == inputs.shape
    assert TASK.verify_batch(aug_lab, aug_lab).all()  # every solution is still a valid grid
    assert TASK.verify_batch(aug_in, aug_lab).all()  # and keeps its puzzle's givens
    np.testing.assert_array_equal((aug_in == 1).sum(1), (inputs == 1).sum(1))  # blanks move, never appear
    assert (aug_lab != labels).any(1).mean() > 0.99
    assert len({row.tobytes() for row in aug_lab}) > 0.99 * len(aug_lab)  # independent per row
    assert all(count_solutions(p) == 1 for p in aug_in[::25])
    # Batching does not change the draws: one row at a time gives the same result.
    rng_a, rng_b = np.random.default_rng(2), np.random.default_rng(2)
    whole = augment(inputs[:4], labels[:4], rng_a)[0]
    rows = np.vstack([augment(inputs[i : i + 1], labels[i : i + 1], rng_b)[0] for i in range(4)])
    np.testing.assert_array_equal(whole, rows)


def test_generate_puzzles_unique_and_in_range():
    rng = np.random.default_rng(3)
    for clues in [(22, 30), (40, 50)]:
        inputs, labels = generate_puzzles(8, rng, clues=clues)
        given = (inputs > 1).sum(1)
        assert ((given >= clues[0]) & (given <= clues[1])).all()
        assert TASK.verify_batch(inputs, labels).all()
        for p, s in zip(inputs, labels):
            assert count_solutions(p) == 1
            np.testing.assert_array_equal(solve(p), s)
    hard, _ = generate_puzzles(3, rng, min_guesses=2)
    assert all(search(p).guesses >= 2 for p in hard)
    with pytest.raises(ValueError, match="clues"):
        generate_puzzles(1, rng, clues=(30, 20))


def test_random_grids_valid_and_distinct():
    grids = random_grids(200, np.random.default_rng(4))
    assert grids.dtype == np.uint8 and grids.shape == (200, 81)
    assert TASK.verify_batch(grids, grids).all()
    assert len({g.tobytes() for g in grids}) == 200
    assert random_grids(0, np.random.default_rng(4)).shape == (0, 81)


def test_sample_stream_epochs_and_determinism(data):
    inputs, labels = data
    plain = SampleStream(inputs, labels, seed=5, augment=False)
    first, second = plain.next(7), plain.next(7)
    assert sorted(map(text, first[0])) == sorted(map(text, inputs))  # an epoch visits every sample once
    assert sorted(map(text, second[1])) == sorted(map(text, labels))
    assert (plain.epoch, plain.position, plain.epoch_fraction) == (2, 0, 2.0)
    assert [text(x) for x in first[0]] != [text(x) for x in second[0]]  # epochs are reshuffled

    a, b = SampleStream(inputs, labels, seed=5), SampleStream(inputs, labels, seed=5)
    np.testing.assert_array_equal(np.vstack([a.next(3)[1], a.next(9)[1]]), b.next(12)[1])  # chunking is free
    assert TASK.verify_batch(*b.next(20)).all()
    assert not np.array_equal(
        SampleStream(inputs, labels, seed=6).next(12)[1], SampleStream(inputs, labels, seed=5).next(12)[1]
    )


def test_sample_stream_resumes_exactly(data):
    inputs, labels = data
    stream = SampleStream(inputs, labels, seed=7)
    stream.next(5)
    state = json.loads(json.dumps(stream.state_dict()))  # must survive JSON
    assert state["epoch"] == 0 and state["position"] == 5 and state["samples_seen"] == 5
    expected = [stream.next(n) for n in (4, 11, 1)]  # crosses two epoch boundaries
    restored = SampleStream(inputs, labels, seed=7)
    restored.load_state_dict(state)
    for (x, y), n in zip(expected, (4, 11, 1)):
        got = restored.next(n)
        np.testing.assert_array_equal(got[0], x)
        np.testing.assert_array_equal(got[1], y)
    assert restored.state_dict() == stream.state_dict() and restored.epoch_fraction == pytest.approx(21 / 7)
    with pytest.raises(ValueError, match="seed 7"):
        SampleStream(inputs, labels, seed=8).load_state_dict(state)


def test_generated_puzzles_write_files_that_read_back(tmp_path):
    from engine.train.data import main, write_puzzle_files

    main([str(tmp_path / "gen"), "-n", "5", "--clues", "35", "40", "--seed", "3"])
    inputs, labels = read_puzzle_files(tmp_path / "gen.txt", tmp_path / "gen.sol")
    assert inputs.shape == labels.shape == (5, 81)
    assert ((inputs > 1).sum(1) >= 35).all() and ((inputs > 1).sum(1) <= 40).all()
    write_puzzle_files(tmp_path / "again", inputs, labels)
    assert (tmp_path / "again.txt").read_text() == (tmp_path / "gen.txt").read_text()
