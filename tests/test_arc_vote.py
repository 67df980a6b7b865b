"""The ARC vote (issue 25): predictions made in augmented frames are mapped back, ranked by votes then mean
sigmoid(q), ties in arrival order; pass@K and the Kaggle submission as the official evaluator writes them. The
bit-for-bit comparison with the official evaluator is test_arc_parity.py; these tests pin each rule alone."""

import numpy as np
import pytest

from engine.tasks.arc import Arc
from engine.tasks.arc_augment import IDENTITY, Augmentation, dihedral, grid_hash, parse
from engine.tasks.arc_vote import PASS_KS, Vote, as_grid, variants

ARC = Arc()
TEST = np.array([[1, 2, 0, 3, 4], [5, 0, 6, 7, 8], [9, 1, 0, 2, 3]], np.uint8)  # 3x5: dihedrals change its shape
RIGHT = np.array([[2, 2], [0, 7]], np.uint8)
WRONG = np.array([[3, 3, 3]], np.uint8)
OTHER = np.array([[4]], np.uint8)
AUGS = [IDENTITY] + [Augmentation(t, (0, *np.random.default_rng(t).permutation(np.arange(1, 10)))) for t in range(1, 8)]


def tokens(grid: np.ndarray) -> np.ndarray:
    return ARC.encode(grid.tolist())


def row(vote: Vote, aug: Augmentation, prediction: np.ndarray, q_logit: float, name: str = "t") -> None:
    """One variant's row: its input and its prediction, both in the variant's frame."""
    vote.add(name, aug, tokens(aug.apply(TEST)), tokens(aug.apply(prediction)), q_logit)


def test_augmentations_invert_and_name_themselves():
    for aug in AUGS:
        assert np.array_equal(aug.invert(aug.apply(TEST)), TEST)
        assert parse(aug.name("007bbfc7")) == ("007bbfc7", aug)
    shapes = [(3, 5), (5, 3), (3, 5), (5, 3), (3, 5), (3, 5), (5, 3), (5, 3)]
    assert [dihedral(TEST, t).shape for t in range(8)] == shapes
    with pytest.raises(ValueError, match="not an ARC augmentation"):
        parse("x|||t9|||0123456789")
    assert grid_hash(TEST) != grid_hash(TEST.reshape(5, 3))  # the shape is part of the hash


def test_variants_map_each_task_to_its_puzzle_ids():
    names = ["<blank>", "a", AUGS[3].name("a"), "b", AUGS[5].name("b"), AUGS[2].name("a")]
    assert variants(names) == {"a": [(1, IDENTITY), (2, AUGS[3]), (5, AUGS[2])], "b": [(3, IDENTITY), (4, AUGS[5])]}


def test_votes_are_mapped_back_and_ranked_by_count_then_mean_q():
    vote = Vote()
    # WRONG: 3 votes of low q; RIGHT: 2 votes of high q; OTHER: 1 vote of the highest q. Each from other frames.
    for aug, pred, q in [(AUGS[1], WRONG, -2.0), (AUGS[2], WRONG, -2.0), (AUGS[3], WRONG, -1.0)]:
        row(vote, aug, pred, q)
    for aug, pred, q in [(AUGS[4], RIGHT, 1.0), (AUGS[5], RIGHT, 3.0), (AUGS[6], OTHER, 5.0)]:
        row(vote, aug, pred, q)
    ranked = vote.ranked("t", TEST)
    assert [c.votes for c in ranked] == [3, 2, 1]
    assert [grid_hash(c.grid) for c in ranked] == [grid_hash(WRONG), grid_hash(RIGHT), grid_hash(OTHER)]
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    assert ranked[1].mean_q == pytest.approx((sig(1.0) + sig(3.0)) / 2, abs=1e-15)
    # One more RIGHT vote ties the count: then the mean q decides
    row(vote, AUGS[7], RIGHT, 0.0)
    assert [grid_hash(c.grid) for c in vote.ranked("t", TEST)][:2] == [grid_hash(RIGHT), grid_hash(WRONG)]


def test_exact_ties_keep_arrival_order():
    for first, second in [(RIGHT, WRONG), (WRONG, RIGHT)]:
        vote = Vote()
        row(vote, AUGS[1], first, 0.5)
        row(vote, AUGS[2], second, 0.5)
        assert [grid_hash(c.grid) for c in vote.ranked("t", TEST)] == [grid_hash(first), grid_hash(second)]


def test_rows_of_another_test_input_or_task_do_not_mix():
    vote = Vote()
    row(vote, AUGS[1], RIGHT, 0.0)
    row(vote, AUGS[1], WRONG, 0.0, name="other-task")
    other_input = np.array([[7]], np.uint8)
    vote.add("t", AUGS[2], tokens(AUGS[2].apply(other_input)), tokens(AUGS[2].apply(WRONG)), 0.0)
    assert [c.votes for c in vote.ranked("t", TEST)] == [1]
    assert [c.votes for c in vote.ranked("t", other_input)] == [1]


def test_pass_at_k_and_the_submission():
    vote = Vote()
    row(vote, AUGS[1], WRONG, 0.0)
    row(vote, AUGS[2], WRONG, 0.0)
    row(vote, AUGS[3], RIGHT, 0.0)
    lone = np.array([[8, 8]], np.uint8)  # a second test input with one candidate only: attempt_2 repeats it
    vote.add("t", AUGS[4], tokens(AUGS[4].apply(lone)), tokens(AUGS[4].apply(RIGHT)), 0.0)
    unseen = np.array([[6]], np.uint8)  # a third with no row at all: wrong, and left out of the submission
    puzzles = {
        "t": {"test": [{"input": g.tolist(), "output": RIGHT.tolist()} for g in (TEST, lone, unseen)]},
        "u": {"test": [{"input": TEST.tolist(), "output": RIGHT.tolist()}]},  # a task nobody predicted
    }
    metrics, submission = vote.score(puzzles)
    assert list(metrics) == [f"ARC/pass@{k}" for k in PASS_KS]
    # task t: input 1 right at K >= 2, input 2 right at K >= 1, input 3 never; task u: 0. Mean over the 2 tasks.
    assert metrics["ARC/pass@1"] == pytest.approx((1 / 3) / 2)
    assert metrics["ARC/pass@2"] == metrics["ARC/pass@1000"] == pytest.approx((2 / 3) / 2)
    assert submission == {
        "t": [
            {"attempt_1": WRONG.tolist(), "attempt_2": RIGHT.tolist()},
            {"attempt_1": RIGHT.tolist(), "attempt_2": RIGHT.tolist()},
        ],
        "u": [],
    }
    assert as_grid([[1, 2, 3]]).shape == (1, 3)
