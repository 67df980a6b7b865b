"""Training data modes (extra clues, infilling, mixtures with a curriculum) and --init-from. Builds its own data."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.models import TRM, preset
from engine.tasks import get_task
from engine.train.cli import main as train_main
from engine.train.data import Mixture, Source, blank_cells, generate_puzzles, random_grids, reveal_clues

SUDOKU = get_task("sudoku")


@pytest.fixture(scope="module")
def data():
    return generate_puzzles(40, np.random.default_rng(0), clues=(24, 28))


def test_extra_clues_are_correct_and_keep_the_givens(data):
    inputs, labels = data
    out = reveal_clues(inputs, labels, (5, 10), np.random.default_rng(1))
    added = (out != 1).sum(1) - (inputs != 1).sum(1)
    assert added.min() >= 5 and added.max() <= 10
    kept = inputs != 1
    assert (out[kept] == inputs[kept]).all()  # never a given changed
    assert (out[out != 1] == labels[out != 1]).all()  # every revealed cell is the solution's
    assert SUDOKU.verify_batch(out, labels).all()
    capped = reveal_clues(inputs, labels, (81, 81), np.random.default_rng(2))
    assert (capped == labels).all()  # more than the blanks: the whole solution


def test_infilling_blanks_a_uniform_number_of_cells_of_valid_grids():
    grids = random_grids(400, np.random.default_rng(3))
    out = blank_cells(grids, (0, 81), np.random.default_rng(4))
    blanks = (out == 1).sum(1)
    assert blanks.min() <= 5 and blanks.max() >= 76  # the whole range is drawn
    assert abs(blanks.mean() - 40.5) < 4  # uniform on 0..81: mean 40.5, sd of the mean ~1.2
    assert SUDOKU.verify_batch(out, grids).all()  # the target completes the input and is valid
    assert ((out == grids) | (out == 1)).all()


def test_mixture_draws_at_its_shares_follows_a_curriculum_and_resumes_exactly(data):
    inputs, labels = data
    grids = random_grids(30, np.random.default_rng(5))
    sources = [
        Source("puzzles", inputs, labels, share=0.75, reveal=(0, 5)),
        Source("infill", grids, grids, share=0.25, blank=(0, 81)),
        Source("generated", inputs[:10], labels[:10], share=0.0),
    ]
    mix = Mixture(sources, seed=1)
    mix.next(400)
    seen = np.array([s.samples_seen for s in mix.streams])
    assert abs(seen[0] / 400 - 0.75) < 0.08 and seen[2] == 0
    easy = Mixture(sources, seed=1, curriculum=0.5, easy="generated")
    assert easy.next(20)[0].shape == (20, 81) and easy.streams[2].samples_seen == 20  # progress 0: all easy
    easy.progress = 1.0
    assert np.allclose(easy.current_shares(), [0.75, 0.25, 0.0])
    state = json.loads(json.dumps(mix.state_dict()))
    expected = [mix.next(n) for n in (7, 13)]
    restored = Mixture(sources, seed=1)
    restored.load_state_dict(state)
    for (x, y), n in zip(expected, (7, 13)):
        rx, ry = restored.next(n)
        assert (rx == x).all() and (ry == y).all()
    with pytest.raises(ValueError, match="curriculum"):
        Mixture(sources, seed=1, curriculum=0.5, easy="nope")


def _write(prefix, inputs, labels):
    from engine.train.data import write_puzzle_files

    return write_puzzle_files(prefix, inputs, labels)


def test_init_from_loads_the_weights_and_the_split_keeps_dev_puzzles_out(tmp_path, data):
    # The trainer seeds 0 and builds the same tiny model, so the start checkpoint must differ from that build: another
    # seed, and every weight nudged (the constant-initialised ones too), or a run that ignores --init-from would pass.
    torch.manual_seed(0)
    fresh = TRM(preset("sudoku-tiny")).state_dict()
    torch.manual_seed(1234)
    model = TRM(preset("sudoku-tiny"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.25 * torch.randn_like(p).sign())  # every element moves by 0.25
    start = save_checkpoint(tmp_path / "start", model, "sudoku")
    inputs, labels = data
    puzzles, solutions = _write(tmp_path / "p", inputs, labels)
    args = ["--preset", "tiny", "--puzzles", str(puzzles), "--solutions", str(solutions), "--dev-size", "10"]
    args += ["--extra-clues", "0", "20", "--infill", "30", "--mix", "puzzles=0.7", "infill=0.3"]
    train_main([*args, "--init-from", str(start), "--steps", "1", "--out", str(tmp_path / "run")])
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert ckpt.meta["training"]["config"]["init_from"] == str(start)
    before, after = (
        load_file(start / "model.safetensors"),
        load_file(tmp_path / "run" / "checkpoint" / "model.safetensors"),
    )
    # one step of EMA 0.999 from the loaded weights: close to them, unlike a fresh init
    assert all(torch.allclose(before[k].float(), after[k].float(), atol=1e-2) for k in before)
    # and far from what seed 0 builds: the start really is another model (every tensor, not only the random ones)
    for k in before:
        assert (after[k].float() - fresh[k].float()).abs().max() > 0.1, k
    data_line = ckpt.meta["training"]["data"]
    assert "with 0-20 extra clues (share 0.7)" in data_line and "infilling" in data_line
    assert "held out: the last 10 of p.txt" in data_line
    # the held-out split is the file's last 10 puzzles; the training source has only the first 30
    from engine.train.cli import load_data, parse_args

    sources, dev, _ = load_data(parse_args([*args, "--out", str(tmp_path / "x")]), 0)
    train_keys = {row.tobytes() for row in sources[0].inputs}
    assert len(sources[0].inputs) == 30 and not train_keys & {row.tobytes() for row in dev[0]}
    assert (dev[0] == inputs[-10:]).all()
