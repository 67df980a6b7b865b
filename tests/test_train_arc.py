"""engine-train --task arc (issue 25): an official-layout ARC dataset's rows train with their puzzle ids, PAD labels
are left out of the loss, a killed run resumes bit for bit, and the checkpoint serves and evaluates by name.

The dataset is built here by `engine.datasets.arc_build` from the synthetic Kaggle files in tests/fixtures/arc/kaggle
(3 tasks x 3 variants: 21 train rows, 9 test rows); the model is arc-tiny narrowed to seconds-long runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_train import KILLABLE, assert_same_saved_state, run_log

from engine.checkpoint import load_checkpoint
from engine.datasets.arc_build import ArcBuildConfig, build_arc, read_kaggle
from engine.datasets.official import read_split
from engine.eval import predict
from engine.train.arc_data import read_arc_dataset
from engine.train.cli import build_config, load_arc, parse_args
from engine.train.losses import act_loss, token_cross_entropy
from engine.train.trainer import Trainer

KAGGLE = Path(__file__).parent / "fixtures" / "arc" / "kaggle"
# arc-tiny at width 32 with one recursion per cycle: a 900-token step of 8 rows takes well under a second
SMALL = "--preset arc-tiny --hidden-size 32 --H-cycles 1 --L-cycles 1 --batch-size 8 --threads 1".split()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("arc") / "tiny"
    subsets, _ = read_kaggle(str(KAGGLE / "tiny"), ["training", "evaluation"])
    build_arc(subsets, out, ArcBuildConfig(("training", "evaluation"), "evaluation", seed=42, num_aug=2))
    return out


def trainer_for(dataset: Path, out: Path, *flags: str) -> Trainer:
    args = parse_args([*SMALL, "--task", "arc", "--dataset", str(dataset), "--out", str(out), *flags])
    train, dev, data, files = load_arc(args)
    return Trainer(build_config(args), "arc", train, dev, out, files=files)


def test_rows_carry_their_puzzles_identifiers(dataset):
    data, split = read_arc_dataset(dataset), read_split(dataset, "train").sets["all"]
    for p, pid in enumerate(split.puzzle_identifiers):  # puzzle p's examples, and only they, carry its id
        rows = slice(split.puzzle_indices[p], split.puzzle_indices[p + 1])
        assert (data.train.ids[rows] == pid).all()
    assert len(data.train.ids) == 21 and len(data.test.ids) == 9 and data.num_puzzle_identifiers == 10
    assert data.ignore_label_id == 0 and (data.train.labels == 0).any()  # PAD around every grid
    assert json.loads(data.files["identifiers.json"])[0] == "<blank>" and 0 not in data.train.ids


def test_the_rows_a_step_refills_take_their_ids_and_only_those_embedding_rows_move(dataset, tmp_path):
    trainer = trainer_for(dataset, tmp_path / "run")
    cfg = trainer.cfg
    assert (cfg.ignore_label_id, trainer.model.config.num_puzzle_identifiers) == (0, 10)
    assert trainer.model.config.puzzle_emb_ndim == trainer.model.config.hidden_size == 32
    data = read_arc_dataset(dataset)
    with torch.no_grad():  # nonzero rows, so weight decay on a row the batch did not use would show
        trainer.model.puzzle_emb.normal_()
    before = trainer.model.puzzle_emb.detach().clone()
    trainer.train_step()
    for x, pid in zip(trainer.inputs.numpy(), trainer.puzzle_ids.numpy()):  # each row's id is its example's
        (match,) = np.flatnonzero((data.train.inputs == x).all(1))
        assert data.train.ids[match] == pid
    used = torch.zeros(10, dtype=torch.bool)
    used[trainer.puzzle_ids] = True
    moved = (trainer.model.puzzle_emb.detach() != before).any(1)
    assert used.sum() >= 3 and torch.equal(moved, used)  # sign-SGD on the batch's rows; row 0 (blank) untouched


def test_pad_labels_are_left_out_of_the_loss_and_of_exactness():
    torch.manual_seed(0)
    labels = torch.randint(1, 12, (3, 900))
    labels[:, 20:] = 0  # PAD beyond a small grid
    logits = torch.randn(3, 900, 12)
    logits[0, :20].scatter_(-1, labels[0, :20, None], 10.0)  # row 0: every non-PAD token right, PAD ones wrong
    logits[0, 20:, 0] = -10.0
    q = torch.zeros(3, 2)
    loss, correct = act_loss(logits, q, labels, ignore=0)
    assert correct.tolist() == [True, False, False]
    ce = token_cross_entropy(logits, labels)[:, :20].mean(-1).sum()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(q[:, 0], correct.double(), reduction="sum")
    torch.testing.assert_close(loss, ce + 0.5 * bce)
    moved = logits.clone()
    moved[:, 20:] = torch.randn(3, 880, 12)  # what PAD positions predict is not scored
    torch.testing.assert_close(act_loss(moved, q, labels, ignore=0)[0], loss)


def test_held_out_eval_runs_each_test_row_with_its_id(dataset, tmp_path, monkeypatch):
    from engine.train import trainer as trainer_module

    trainer = trainer_for(dataset, tmp_path / "run")
    with torch.no_grad():
        trainer.model.puzzle_emb.normal_()  # distinct rows, so a wrong id shows
    x, y, ids = trainer.dev
    seen = []
    monkeypatch.setattr(trainer_module, "predict", lambda m, x, *a: seen.append(a[-1]) or predict(m, x, *a))
    ev = trainer.evaluate()
    assert len(seen) == 1 and np.array_equal(seen[0], ids) and ids.max() > 0
    answers = predict(trainer.eval_model(), x, 64, None, "cpu", False, ids)[0]
    scored = y != 0
    hits = (answers == y) | ~scored
    assert ev["n"] == 9 and ev["exact_accuracy"] == hits.all(1).mean()
    assert ev["cell_accuracy"] == pytest.approx(((hits & scored).sum(1) / scored.sum(1)).mean())
    assert not np.array_equal(predict(trainer.eval_model(), x, 64, None, "cpu", False)[0], answers)
    right = np.where(y != 0, y, 5)  # every scored token right, every PAD one wrong: exact
    monkeypatch.setattr(trainer_module, "predict", lambda m, x, *a: (right[: len(x)], None))
    assert trainer.evaluate() == {"n": 9, "exact_accuracy": 1.0, "cell_accuracy": 1.0}


def run_arc(out: Path, dataset: Path, *extra: str, kill_at: int = -1, data: bool = True):
    args = [*SMALL, "--task", "arc", "--dataset", str(dataset)] if data else []
    args += [*"--steps 12 --save-every 3 --eval-every 6 --eval-limit 6".split(), "--out", str(out), *extra]
    env = {**os.environ, "KILL_AT": str(kill_at), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", KILLABLE, *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    straight = run_arc(root / "straight", dataset)
    assert straight.returncode == 0, straight.stderr
    # N_sup is 4, so at the step-9 save the rows refilled at step 9 are mid-flight: resuming them needs their ids
    killed = run_arc(root / "killed", dataset, kill_at=11)  # steps 10-11 run after the step-9 save, then die
    assert killed.returncode == -9
    resumed = run_arc(root / "killed", dataset, "--resume", data=False)  # the run recorded --task and --dataset
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 9" in resumed.stdout
    return root


def test_a_killed_arc_run_resumes_to_the_same_state_as_an_uninterrupted_one(runs):
    assert "rank.puzzle_ids" in load_file(runs / "killed" / "train_state/state.safetensors")
    assert_same_saved_state(runs / "straight", runs / "killed")
    log = run_log(runs / "killed")
    assert log == run_log(runs / "straight") and log[-1][2]["n"] == 6


def test_the_checkpoint_holds_the_datasets_names_and_serves_and_evaluates_by_them(runs, dataset, tmp_path):
    from fastapi.testclient import TestClient
    from live import app_for, wait_ready

    from engine.eval import main as eval_main

    path = runs / "killed" / "checkpoint"
    ckpt = load_checkpoint(path)
    assert ckpt.task == "arc" and ckpt.identifiers == json.loads((dataset / "identifiers.json").read_text())
    assert ckpt.test_puzzles == json.loads((dataset / "test_puzzles.json").read_text())
    assert "official ARC layout" in ckpt.meta["training"]["data"]
    summary = tmp_path / "summary.json"
    eval_main(["--checkpoint", str(path), "--task", "arc", "--dataset", str(dataset), "--json", str(summary)])
    result = json.loads(summary.read_text())
    assert (result["n"], result["test_inputs"], result["variants"]) == (2, 3, 9) and "ARC/pass@2" in result
    name = next(iter(ckpt.test_puzzles))
    with TestClient(app_for(path, max_steps=16, max_batch=16)) as client:
        wait_ready(client)
        r = client.post("/solve", json={"task": "arc", "name": name, "test_index": 0})
    assert r.status_code == 200, r.text
    assert r.json()["variants"] == 3 and r.json()["attempts"]


def test_arc_training_refuses_what_it_does_not_take(dataset, tmp_path):
    base = ["--task", "arc", "--out", str(tmp_path / "x")]
    with pytest.raises(SystemExit, match="--task arc needs --dataset"):
        build_config(parse_args(base))
    with pytest.raises(SystemExit, match="drop --generate"):
        build_config(parse_args([*base, "--dataset", str(dataset), "--generate", "10"]))
    with pytest.raises(SystemExit, match="no --group"):
        build_config(parse_args([*base, "--dataset", str(dataset), "--group", "2"]))
    with pytest.raises(SystemExit, match="builds a 81-token model over 11 tokens"):
        build_config(parse_args([*base, "--dataset", str(dataset), "--preset", "tiny"]))


def test_the_shipped_arc_demo_solves_the_task_its_card_claims_and_only_that_one():
    """checkpoints/arc-tiny/CARD.md: by the vote over 9 variants, b1948b0a's held-out test input is solved (9 of 9
    votes) and the four other tasks' are not."""
    from fastapi.testclient import TestClient
    from live import app_for, wait_ready

    path = Path(__file__).parent.parent / "checkpoints" / "arc-tiny"
    puzzles = load_checkpoint(path).test_puzzles
    solved = {}
    with TestClient(app_for(path, max_steps=16, max_batch=16)) as client:
        wait_ready(client)
        for name, task in puzzles.items():
            for i, pair in enumerate(task["test"]):
                body = client.post("/solve", json={"task": "arc", "name": name, "test_index": i}).json()
                assert body["variants"] == 9
                solved[name, i] = (body["grid"] == pair["output"], body["attempts"][0]["votes"])
    assert solved.pop(("b1948b0a", 0)) == (True, 9)
    assert len(solved) == 5 and not any(ok for ok, _ in solved.values())
