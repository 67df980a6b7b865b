import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.eval import main as eval_main
from engine.eval import read_lines, score
from engine.init import main as init_main
from engine.search import Rows
from engine.solve import main as solve_main
from engine.tasks import get_task
from engine.tasks.sudoku_solver import solve

PUZZLES = [  # small hand-made set; tests never read ../shared
    "8..........36......7..9.2...5...7.......457.....1...3...1....68..85...1..9....4..",
    "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79",
    "..9748...7.........2.1.9.....7...24..64.1.59..98...3.....8.3.2.........6...2759..",
]


def test_init_then_solve_prints_the_grid_and_verdict(tmp_path, capsys):
    init_main([str(tmp_path / "ck"), "--preset", "sudoku-tiny"])
    assert "untrained sudoku-tiny" in capsys.readouterr().out
    solve_main(["--checkpoint", str(tmp_path / "ck"), PUZZLES[1]])
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 11 + 3 and out[3] == "------+-------+------"
    assert out[11].startswith("verified: ") and out[12].startswith("confidence: ")
    assert "steps: 4" in out[13] and "float32" in out[13]


def test_solve_reports_bad_input_with_the_cell(tiny_checkpoint):
    with pytest.raises(SystemExit, match=r"row 1, column 3: unexpected character 'x'"):
        solve_main(["--checkpoint", str(tiny_checkpoint), "12x" + "." * 78])
    with pytest.raises(SystemExit, match="is not a checkpoint directory"):
        solve_main(["--checkpoint", str(tiny_checkpoint.parent), PUZZLES[0]])


def test_eval_writes_json(tiny_checkpoint, tmp_path, capsys):
    task = get_task("sudoku")
    (tmp_path / "p.txt").write_text("# a comment line\n" + "\n".join(PUZZLES) + "\n")
    (tmp_path / "s.sol").write_text("\n".join(task.to_text(solve(task.encode(p))) for p in PUZZLES) + "\n")
    eval_main(
        [
            "--checkpoint",
            str(tiny_checkpoint),
            "--puzzles",
            str(tmp_path / "p.txt"),
            "--solutions",
            str(tmp_path / "s.sol"),
            "--limit",
            "2",
            "--steps",
            "2",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["n"] == 2 and result["steps"] == 2 and result["rollouts"] == 1
    assert 0 <= result["exact_accuracy"] <= result["cell_accuracy"] <= 1
    assert "exact_accuracy" in capsys.readouterr().out


def test_score_reports_ptrm_metrics_and_every_selector():
    task = get_task("sudoku")
    puzzles = np.stack([task.encode(p) for p in PUZZLES])
    solutions = np.stack([solve(p) for p in puzzles])
    wrong = solutions.copy()
    wrong[:, 0] = wrong[:, 1]  # one wrong cell: breaks a row
    # Puzzle 0: the right answer has the top q. Puzzle 1: right once, but a wrong answer has more q and more votes.
    # Puzzle 2: never right.
    rows = [
        Rows(np.stack([solutions[0], wrong[0], wrong[0]]), np.array([3.0, 1.0, 1.0], np.float32)),
        Rows(np.stack([solutions[1], wrong[1], wrong[1]]), np.array([1.0, 2.0, 0.0], np.float32)),
        Rows(np.stack([wrong[2]] * 3), np.array([-1.0, -2.0, -3.0], np.float32)),
    ]
    r = score(task, puzzles, rows, solutions, "q")
    assert r["n"] == 3 and r["exact_accuracy"] == r["best_q_at_k"] == pytest.approx(1 / 3)
    assert r["pass_at_k"] == pytest.approx(2 / 3) and r["mode_at_k"] == 0
    assert r["selector_accuracy"] == pytest.approx({"q": 1 / 3, "vote": 0, "verifier": 2 / 3})
    assert r["verified"] == pytest.approx(1 / 3) and r["cell_accuracy"] == pytest.approx(1 - 2 / 243)
    # Without solutions the rule verifier decides; here it agrees with them.
    assert score(task, puzzles, rows, None, "verifier")["exact_accuracy"] == pytest.approx(2 / 3)


def test_eval_with_rollouts_sweeps_and_plots(tiny_checkpoint, tmp_path):
    (tmp_path / "p.txt").write_text("\n".join(PUZZLES) + "\n")
    eval_main(
        ["--checkpoint", str(tiny_checkpoint), "--puzzles", str(tmp_path / "p.txt"), "-K", "3", "-D", "2"]
        + ["--sweep", "--plot", str(tmp_path / "s.png"), "--coverage", "--json", str(tmp_path / "r.json")]
    )
    r = json.loads((tmp_path / "r.json").read_text())
    assert (r["rollouts"], r["steps"], r["noise"], r["row_steps"]) == (3, 2, 0.3, 18)
    assert {"pass_at_k", "best_q_at_k", "mode_at_k", "validity", "coverage"} <= set(r)
    assert list(r["sweep"]["width"]) == ["1", "2", "3"] and list(r["sweep"]["depth"]) == ["1", "2"]
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_without_early_exit_runs_one_wave_whatever_the_checkpoint_default(tiny_checkpoint, tmp_path):
    """Waves need an early exit: a checkpoint's default waves must not inflate the budget (row_steps_saved) or the
    curve of a run with --early-exit off, and an explicit --waves there is refused."""
    config = tiny_checkpoint / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "search": {"waves": 4, "early_exit": "verified"}}))
    (tmp_path / "p.txt").write_text("\n".join(PUZZLES) + "\n")
    args = ["--checkpoint", str(tiny_checkpoint), "--puzzles", str(tmp_path / "p.txt"), "-K", "3", "-D", "2"]
    eval_main([*args, "--early-exit", "off", "--json", str(tmp_path / "r.json")])
    r = json.loads((tmp_path / "r.json").read_text())
    assert (r["waves"], r["row_steps"], r["row_steps_saved"]) == (1, 18, 0) and "by_waves" not in r
    with pytest.raises(SystemExit, match="--waves needs an early exit"):
        eval_main([*args, "--early-exit", "off", "--waves", "2"])


def test_read_lines_skips_comments_except_where_hash_is_a_cell(tmp_path):
    (tmp_path / "f.txt").write_text("# source: somewhere\n S.\n\n#S #\n")
    assert read_lines(tmp_path / "f.txt") == [" S."]
    assert read_lines(tmp_path / "f.txt", comment_prefix=get_task("maze").comment_prefix) == [
        "# source: somewhere",
        " S.",
        "#S #",
    ]
    assert read_lines(tmp_path / "f.txt", offset=-2, comment_prefix=None) == [" S.", "#S #"]
    assert read_lines(tmp_path / "f.txt", offset=1, limit=1, comment_prefix=None) == [" S."]


def test_console_scripts_are_installed():
    bin_dir = Path(sys.executable).parent
    for script in ("engine-convert", "engine-eval", "engine-init", "engine-solve"):
        path = shutil.which(script, path=str(bin_dir))
        assert path, f"{script} is not installed next to {sys.executable}"
        assert subprocess.run([path, "--help"], capture_output=True, timeout=120).returncode == 0


def test_eval_generate_reports_validity_by_commit_decoding_and_raw(tmp_path):
    init_main([str(tmp_path / "trm"), "--preset", "sudoku-tiny"])
    eval_main(["--checkpoint", str(tmp_path / "trm"), "--generate", "3", "-D", "1", "--json", str(tmp_path / "g.json")])
    r = json.loads((tmp_path / "g.json").read_text())
    # a random net: the legal mask and backtracking still make every grid valid; they are what raw validity removes
    assert r["n"] == 3 and r["method"] == "commit" and r["validity"] == 1 and r["distinct"] == 1 and r["steps"] == 1
    assert r["row_steps_per_grid"] > 0 and r["mask"] and r["backtrack"] == "dfs" and not r["agree"]
    eval_main(
        [
            "--checkpoint",
            str(tmp_path / "trm"),
            "--generate",
            "3",
            "-D",
            "1",
            "--no-mask",
            "--backtrack",
            "off",
            "--agree",
            "--json",
            str(tmp_path / "raw.json"),
        ]
    )
    raw = json.loads((tmp_path / "raw.json").read_text())
    assert raw["validity"] < 1 and not raw["mask"] and raw["backtrack"] == "off" and raw["agree"]
    init_main([str(tmp_path / "maze"), "--preset", "maze-attn"])
    with pytest.raises(SystemExit, match="needs a fill-in solver"):
        eval_main(["--checkpoint", str(tmp_path / "maze"), "--generate", "3"])
