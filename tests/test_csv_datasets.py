"""engine-data sudoku and engine-data maze against the official builders' own output (issue 33).

tests/fixtures/csv_datasets/ holds small CSV inputs in the hub's format and what the official build_sudoku_dataset.py
and build_maze_dataset.py wrote from them, run once by hand after np.random.seed(SEED) (produce.py and README.md
there). Here the same CSVs, options and seed must give the same files, byte for byte; the result must read back as
an official-layout dataset, as engine-train and engine-eval read it.
"""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from engine.datasets import official
from engine.datasets.cli import main
from engine.datasets.csv_build import MazeBuildConfig, build_maze, csv_files
from engine.tasks import get_task

FIXTURES = Path(__file__).parent / "fixtures" / "csv_datasets"
# folder -> engine-data flags: the options and seed produce.py ran the official builder with
BUILDS = {
    ("sudoku", "official-plain"): [],
    ("sudoku", "official-aug"): ["--subsample-size", "5", "--min-difficulty", "6", "--num-aug", "4", "--seed", "7"],
    ("maze", "official-plain"): [],
    ("maze", "official-aug"): ["--subsample-size", "4", "--aug", "--seed", "5"],
}


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_bytes(built: Path, expected: Path) -> None:
    got, want = files(built), files(expected)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name


@pytest.mark.parametrize("kind, folder", BUILDS)
def test_engine_data_writes_the_official_builders_bytes(tmp_path, capsys, kind, folder):
    out = tmp_path / "out"
    main([kind, "--csv-dir", str(FIXTURES / kind / "csv"), "--output-dir", str(out), *BUILDS[kind, folder]])
    assert_same_bytes(out, FIXTURES / kind / folder)
    assert f"engine-data: {kind}: " in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # built beside, renamed into place


def test_another_seed_draws_other_shuffles(tmp_path):
    """The official draws are random: the bytes above hold for the seed the official builder ran with, not another."""
    flags = BUILDS["sudoku", "official-aug"][:-2]  # without --seed 7
    main(
        [
            "sudoku",
            "--csv-dir",
            str(FIXTURES / "sudoku" / "csv"),
            "--output-dir",
            str(tmp_path / "s1"),
            *flags,
            "--seed",
            "1",
        ]
    )
    built, official_build = files(tmp_path / "s1"), files(FIXTURES / "sudoku" / "official-aug")
    assert built["train/all__inputs.npy"] != official_build["train/all__inputs.npy"]
    assert built["test/all__inputs.npy"] == official_build["test/all__inputs.npy"]  # the test split draws nothing


@pytest.mark.parametrize("kind", ["sudoku", "maze"])
def test_the_build_reads_back_as_the_tasks_dataset(kind):
    """What engine-train and engine-eval read: the official reader, the task's shape and vocabulary, and every
    augmented Sudoku still a solution of its puzzle (maze images: the task's own dihedral maps)."""
    task = get_task(kind)
    for folder in ("official-plain", "official-aug"):
        for split in ("train", "test"):
            data = official.read_split(FIXTURES / kind / folder, split)
            assert (data.seq_len, data.vocab_size) == (task.seq_len, task.vocab_size)
            inputs, labels, ids = data.examples()
            assert (ids == 0).all() and len(inputs) == len(labels) > 0
            if kind == "sudoku":
                for x, y in zip(inputs.astype(np.int64), labels.astype(np.int64)):
                    grid = y.reshape(9, 9) - 1
                    boxes = grid.reshape(3, 3, 3, 3).transpose(0, 2, 1, 3).reshape(9, 9)
                    assert all((sorted(g) == list(range(1, 10))) for m in (grid, grid.T, boxes) for g in m)
                    assert ((x == 1) | (x == y)).all()  # clues kept, blanks (token 1) filled


def test_from_the_hub_fetches_both_csvs_as_the_official_builder(tmp_path, monkeypatch):
    """--hf: the hub is unreachable here; a fake huggingface_hub serves the fixture CSVs through the real path."""
    calls = []

    def hf_hub_download(repo_id, filename, repo_type=None):
        calls.append((repo_id, filename, repo_type))
        return str(FIXTURES / ("maze" if "maze" in repo_id else "sudoku") / "csv" / filename)

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(hf_hub_download=hf_hub_download))
    main(["maze", "--hf", "--output-dir", str(tmp_path / "out"), *BUILDS["maze", "official-aug"]])
    assert calls == [("sapientinc/maze-30x30-hard-1k", s, "dataset") for s in ("train.csv", "test.csv")]
    assert_same_bytes(tmp_path / "out", FIXTURES / "maze" / "official-aug")
    calls.clear()
    main(["sudoku", "--hf", "--output-dir", str(tmp_path / "s")])
    assert calls == [("sapientinc/sudoku-extreme", s, "dataset") for s in ("train.csv", "test.csv")]
    assert_same_bytes(tmp_path / "s", FIXTURES / "sudoku" / "official-plain")


def test_bad_input_is_named_and_leaves_nothing(tmp_path):
    folder = tmp_path / "csv"
    shutil.copytree(FIXTURES / "maze" / "csv", folder)
    text = (folder / "test.csv").read_text().splitlines()
    text[2] = text[2].replace("G", "X", 1)
    (folder / "test.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(SystemExit, match=r"test.csv, line 3: .*30x30 = 900 cells of '# SGo' \(found 'X'\)"):
        main(["maze", "--csv-dir", str(folder), "--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists() and len(list(tmp_path.iterdir())) == 1
    (folder / "train.csv").unlink()
    with pytest.raises(SystemExit, match="train.csv is missing"):
        main(["maze", "--csv-dir", str(folder), "--output-dir", str(tmp_path / "out")])
    sudoku = tmp_path / "sudoku"
    shutil.copytree(FIXTURES / "sudoku" / "csv", sudoku)
    (sudoku / "train.csv").write_text("source,question,answer,rating\nx,123,456,1\n")
    with pytest.raises(SystemExit, match=r"train.csv, line 2: the question .* must be 81 of"):
        main(["sudoku", "--csv-dir", str(sudoku), "--output-dir", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="no puzzle left to write"):
        csv_dir = str(FIXTURES / "sudoku" / "csv")
        main(["sudoku", "--csv-dir", csv_dir, "--output-dir", str(tmp_path / "o"), "--min-difficulty", "10"])
    with pytest.raises(official.DatasetError, match="already exists and is not empty"):
        build_maze(csv_files(FIXTURES / "maze" / "csv"), FIXTURES / "maze", MazeBuildConfig())


def test_engine_eval_scores_an_official_build_s_test_split(tmp_path, ckpt_dir, capsys):
    """engine-eval --dataset on an official Sudoku build: the test split's inputs, scored against its labels (the
    cell accuracy exists only with solutions); a dataset of another task's shape is refused by name."""
    import json

    from engine.eval import main as evaluate

    data = FIXTURES / "sudoku" / "official-plain"
    evaluate(["--checkpoint", str(ckpt_dir), "--dataset", str(data), "--json", str(tmp_path / "r.json")])
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["n"] == 4 and "cell_accuracy" in result and result["puzzles"] == str(data)
    evaluate(
        ["--checkpoint", str(ckpt_dir), "--dataset", str(data), "--limit", "2", "--json", str(tmp_path / "r.json")]
    )
    assert json.loads((tmp_path / "r.json").read_text())["n"] == 2
    maze = FIXTURES / "maze" / "official-plain"
    with pytest.raises(SystemExit, match=r"holds 900 tokens of vocabulary 6, not sudoku's 81 of 11"):
        evaluate(["--checkpoint", str(ckpt_dir), "--dataset", str(maze)])
