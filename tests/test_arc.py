import numpy as np
import pytest

from engine.tasks.arc import EOS, Arc
from engine.tasks.base import PAD, PuzzleError

TASK = Arc()


def grid(rows: int, cols: int) -> list[list[int]]:
    return [[(3 * r + c) % 10 for c in range(cols)] for r in range(rows)]


@pytest.mark.parametrize("rows, cols", [(1, 1), (3, 5), (30, 30), (30, 4), (4, 30)])
def test_round_trip_and_eos_layout(rows, cols):
    g = grid(rows, cols)
    tokens = TASK.encode(g)
    assert tokens.dtype == np.int64 and tokens.shape == (900,)
    canvas = tokens.reshape(30, 30)
    expected = np.zeros((30, 30), dtype=np.int64)
    expected[:rows, :cols] = np.array(g) + 2
    if rows < 30:
        expected[rows, :cols] = EOS  # the row below, across the grid's columns only
    if cols < 30:
        expected[:rows, cols] = EOS  # the column to the right, down the grid's rows only
    assert np.array_equal(canvas, expected)
    assert TASK.decode(tokens) == g
    text = TASK.to_text(tokens)
    assert text == "\n".join("".join(map(str, row)) for row in g)
    assert np.array_equal(TASK.encode(text), tokens)
    assert TASK.check(tokens, tokens) is None


def test_eos_corner_stays_pad():
    canvas = TASK.encode(grid(3, 5)).reshape(30, 30)
    assert canvas[3, 5] == PAD and canvas[3, :5].tolist() == [EOS] * 5 and canvas[:3, 5].tolist() == [EOS] * 3
    assert (canvas == EOS).sum() == 8


def test_text_forms():
    assert TASK.decode(TASK.encode("012\n345\n")) == [[0, 1, 2], [3, 4, 5]]
    assert TASK.decode(TASK.encode("0 1 2\n3 4 5")) == [[0, 1, 2], [3, 4, 5]]


def test_crop_ignores_garbage_after_eos():
    g = grid(3, 5)
    prediction = TASK.encode(g).reshape(30, 30)
    rng = np.random.default_rng(0)
    garbage = rng.integers(0, 12, size=(30, 30))
    outside = prediction == PAD
    prediction[outside] = garbage[outside]  # colours, EOS and PAD wherever the label had PAD
    assert TASK.decode(prediction.reshape(-1)) == g


def test_crop_keeps_largest_area_as_official_evaluator():
    canvas = np.full((30, 30), PAD, dtype=np.int64)
    canvas[0, :6] = 2 + 7  # row 1: six colours, then PAD
    canvas[1:10, :2] = 2 + 1  # rows 2-10: two colours, then PAD
    canvas[1:10, 2:6] = EOS  # the width shrinks to 2 at row 2 and never grows back
    canvas[10, :] = 2  # a full row of colours after the shrink does not widen the crop
    assert TASK.decode(canvas.reshape(-1)) == [[7, 7]] + [[1, 1]] * 9 + [[0, 0]]  # 11x2 = 22 beats 1x6


def reference_crop(canvas: np.ndarray) -> list[list[int]]:
    """The evaluator's loop, cell by cell, to cross-check the vectorised crop."""
    best, size, width = 0, (0, 0), 30
    for r in range(30):
        for c in range(width):
            if not 2 <= canvas[r, c] <= 11:
                width = c
                break
        if (r + 1) * width > best:
            best, size = (r + 1) * width, (r + 1, width)
    return (canvas[: size[0], : size[1]] - 2).tolist()


def test_crop_matches_reference_on_noisy_predictions():
    rng = np.random.default_rng(1)
    for _ in range(200):
        canvas = TASK.encode(grid(*rng.integers(1, 31, size=2))).reshape(30, 30)
        flips = rng.random((30, 30)) < rng.choice([0.001, 0.01, 0.1])
        canvas[flips] = rng.integers(0, 13, size=flips.sum())  # 12 is out of vocabulary, also not a colour
        assert TASK.decode(canvas.reshape(-1)) == reference_crop(canvas)


def test_empty_crop_is_not_a_grid():
    prediction = TASK.encode(grid(2, 2))
    prediction[0] = EOS
    assert TASK.decode(prediction) == [] and TASK.to_text(prediction) == ""
    message = TASK.check(TASK.encode(grid(2, 2)), prediction)
    assert message == "the answer holds no grid: its top-left token is not a colour"
    assert not TASK.has_rule_verifier


@pytest.mark.parametrize(
    "puzzle, message",
    [
        ([[1] * 5, [1] * 5, [1] * 4], "row 3 has 4 cells, expected 5"),
        ([[1, 2], [12, 3]], "row 2, column 1: 12 is not a colour 0-9"),
        ([[1, -1]], "row 1, column 2: -1 is not a colour 0-9"),
        ([[1, 2.0]], "row 1, column 2: 2.0 is not a colour 0-9"),
        ([[True]], "row 1, column 1: True is not a colour 0-9"),
        (grid(31, 2), "grid has 31 rows; at most 30"),
        (grid(2, 31), "grid has 31 columns; at most 30"),
        ([], "grid has no rows"),
        ([[]], "grid has no columns"),
        ([[1], 2], "row 2: expected a list, got int"),
        ("012\n3x5", "row 2, column 2: unexpected character 'x' (expected a digit 0-9)"),
        ("012\n34", "row 2 has 2 cells, expected 3"),
        ("", "grid has no rows"),
        (7, "expected text or nested lists, got int"),
    ],
)
def test_malformed_input(puzzle, message):
    with pytest.raises(PuzzleError) as err:
        TASK.encode(puzzle)
    assert str(err.value) == message
