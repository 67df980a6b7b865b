from pathlib import Path

import numpy as np
import torch

from engine.checkpoint import load_checkpoint
from engine.tasks import get_task
from engine.train.data import generate_puzzles

SHIPPED = Path(__file__).resolve().parent.parent / "checkpoints" / "sudoku-trm"


def test_shipped_sudoku_checkpoint_solves_easy_puzzles():
    ckpt = load_checkpoint(SHIPPED)
    assert ckpt.task == "sudoku" and (SHIPPED / "CARD.md").is_file()
    task = get_task("sudoku")
    inputs, labels = generate_puzzles(4, np.random.default_rng(2026), clues=(38, 45))
    classic = task.encode("53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79")
    x = torch.as_tensor(np.vstack([inputs.astype(np.int64), classic]))
    logits, q = ckpt.model.rollout(x, torch.zeros(len(x), dtype=torch.long))
    answers = logits.argmax(-1).numpy()
    assert task.verify_batch(x.numpy(), answers).all()
    assert (answers[:4] == labels).all() and (q[:, 0] > 0).all()  # solved, and the Q head knows it
