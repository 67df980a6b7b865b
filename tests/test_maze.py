import numpy as np
import pytest

from engine.tasks.base import PuzzleError
from engine.tasks.maze import GOAL, OPEN, PATH, START, WALL, Maze, shortest_path

TASK = Maze()


def maze(*rows: str) -> list[str]:
    """A few top-left rows, padded with walls to 30x30."""
    return [row.ljust(30, "#") for row in rows] + ["#" * 30] * (30 - len(rows))


# S at (1,1), G at (3,4): distance 5, so a shortest path marks 4 'o' cells; two routes around the inner walls
PUZZLE = maze("S   ", " ## ", "   G", "    ")
RIGHT_THEN_DOWN = maze("Sooo", " ##o", "   G", "    ")
DOWN_THEN_RIGHT = maze("S   ", "o## ", "oooG", "    ")


def check(answer: list[str], puzzle: list[str] = PUZZLE) -> str | None:
    return TASK.check(TASK.encode(puzzle), TASK.encode_answer(answer))


def test_token_values_and_round_trip():
    tokens = TASK.encode(PUZZLE)
    assert tokens.dtype == np.int64 and tokens.shape == (900,)
    assert tokens[:4].tolist() == [START, OPEN, OPEN, OPEN] and tokens[4] == WALL and tokens[63] == GOAL
    assert TASK.decode(tokens) == PUZZLE
    text = TASK.to_text(tokens)
    assert text == "\n".join(PUZZLE)
    assert np.array_equal(TASK.encode(text), tokens)
    assert np.array_equal(TASK.encode(text + "\n"), tokens)
    assert np.array_equal(TASK.encode("".join(PUZZLE)), tokens)
    assert np.array_equal(TASK.encode([list(row) for row in PUZZLE]), tokens)
    answer = TASK.encode_answer(RIGHT_THEN_DOWN)
    assert (answer == PATH).sum() == 4 and TASK.decode(answer) == RIGHT_THEN_DOWN


def test_spaces_are_cells_not_whitespace():
    rows = ["S" + " " * 29] + [" " * 30] * 28 + [" " * 29 + "G"]
    tokens = TASK.encode("\n".join(rows) + "\n")
    assert (tokens == OPEN).sum() == 898 and tokens[-1] == GOAL


def test_every_shortest_path_is_accepted():
    assert check(RIGHT_THEN_DOWN) is None
    assert check(DOWN_THEN_RIGHT) is None
    assert TASK.verify(TASK.encode(PUZZLE), shortest_path(TASK.encode(PUZZLE)))


def test_longer_path_is_rejected():
    detour = maze("S   ", "o## ", "o  G", "oooo")
    assert check(detour) == "the answer marks 6 'o' cells; a shortest path from S to G has 4"


def test_path_through_a_wall_is_rejected():
    through_wall = maze("So  ", " #o ", "  oG", "    ")
    assert check(through_wall) == "row 2, column 3: the answer has 'o' where the puzzle has '#'"


def test_changed_start_is_rejected():
    answer = TASK.encode_answer(RIGHT_THEN_DOWN)
    answer[0] = WALL
    assert TASK.check(TASK.encode(PUZZLE), answer) == "row 1, column 1: the answer has '#' where the puzzle has 'S'"


def test_disconnected_path_is_rejected():
    assert check(maze("Soo ", " ##o", "   G", "o   ")) == "the 'o' cells do not connect S to G"
    broken = maze("Soo ", " ## ", "   G", "    ")
    assert check(broken) == "the answer marks 2 'o' cells; a shortest path from S to G has 4"


def test_invalid_answer_token_is_reported():
    answer = TASK.encode_answer(RIGHT_THEN_DOWN)
    answer[31] = 0
    assert TASK.check(TASK.encode(PUZZLE), answer) == "row 2, column 2: token 0 is not a maze cell"
    assert TASK.decode(answer)[1].startswith(" ?#o")


def test_unsolvable_maze():
    walled_in = maze("S # ", "  #G")
    assert shortest_path(TASK.encode(walled_in)) is None
    assert check(walled_in, walled_in) == "no path exists from S to G"


def test_long_shortest_path_on_open_board():
    rows = ["S" + " " * 29] + [" " * 30] * 28 + [" " * 29 + "G"]
    puzzle = TASK.encode(rows)
    answer = shortest_path(puzzle)
    assert (answer == PATH).sum() == 57
    assert TASK.check(puzzle, answer) is None


def bad(rows: list[str], line: int, text: str) -> list[str]:
    rows = list(rows)
    rows[line] = text
    return rows


@pytest.mark.parametrize(
    "puzzle, message",
    [
        ("\n".join(PUZZLE[:29]), "expected 30 rows, got 29"),
        ("\n".join(bad(PUZZLE, 4, "#" * 28)), "row 5 has 28 characters, expected 30"),
        ("".join(PUZZLE)[:899], "expected 900 characters, got 899"),
        (
            bad(PUZZLE, 2, "   G  x" + "#" * 23),
            "row 3, column 7: unexpected character 'x' (allowed: '#', ' ', 'S', 'G')",
        ),
        (bad(PUZZLE, 1, " ##o" + "#" * 26), "row 2, column 4: 'o' (path) is not allowed in a puzzle"),
        (bad(PUZZLE, 0, "#" * 30), "maze has no 'S' (start)"),
        (bad(PUZZLE, 2, "#" * 30), "maze has no 'G' (goal)"),
        (
            bad(bad(PUZZLE, 0, "##S" + "#" * 27), 6, "########S" + "#" * 21),
            "maze has 2 'S' cells: row 1, column 3 and row 7, column 9",
        ),
        (PUZZLE[:29], "expected 30 rows, got 29"),
        ([list(row) for row in PUZZLE[:4]] + [list("#" * 29)] + PUZZLE[5:], "row 5 has 29 cells, expected 30"),
        ([["##"] * 30] + PUZZLE[1:], "row 1, column 1: unexpected character '##' (allowed: '#', ' ', 'S', 'G')"),
        (PUZZLE[:29] + [5], "row 30: expected a list, got int"),
        (42, "expected text or nested lists, got int"),
    ],
)
def test_malformed_input(puzzle, message):
    with pytest.raises(PuzzleError) as err:
        TASK.encode(puzzle)
    assert str(err.value) == message


def test_answer_allows_path_but_still_needs_one_start():
    with pytest.raises(PuzzleError, match=r"unexpected character 'x' \(allowed: '#', ' ', 'S', 'G', 'o'\)"):
        TASK.encode_answer(bad(RIGHT_THEN_DOWN, 0, "Sx" + "#" * 28))
    with pytest.raises(PuzzleError, match="maze has no 'S'"):
        TASK.encode_answer(bad(RIGHT_THEN_DOWN, 0, "#" * 30))
