import json
import math
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from engine.checkpoint import load_checkpoint
from engine.tasks import get_task
from engine.train.config import train_preset
from engine.train.data import generate_puzzles
from engine.train.losses import act_loss, log_stablemax, token_cross_entropy
from engine.train.optim import EMA, AdamATan2, SignSGD, lr_at
from engine.train.trainer import Trainer


def test_stablemax_matches_its_definition_and_softmax_path_matches_torch():
    x = torch.tensor([[-2.0, 0.0, 3.0]])
    s = torch.tensor([1 / 3, 1.0, 4.0])
    torch.testing.assert_close(log_stablemax(x), torch.log(s / s.sum()).unsqueeze(0))
    logits, labels = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    ce = token_cross_entropy(logits, labels, "stablemax")
    assert ce.dtype == torch.float64 and ce.shape == (2, 5)
    torch.testing.assert_close(
        token_cross_entropy(logits, labels, "softmax"),
        F.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1), reduction="none").view(2, 5),
    )


def test_act_loss_is_sequence_mean_ce_plus_half_q_bce():
    labels = torch.randint(2, 11, (3, 81))
    logits = torch.randn(3, 81, 11)
    logits[0].scatter_(-1, labels[0, :, None], 10.0)  # row 0 exactly right
    q = torch.tensor([[1.5, 0.0], [-2.0, 0.0], [0.3, 0.0]])
    loss, correct = act_loss(logits, q, labels)
    assert correct.tolist() == [True, False, False]
    expected = token_cross_entropy(logits, labels).mean(-1).sum() + 0.5 * F.binary_cross_entropy_with_logits(
        q[:, 0], correct.float(), reduction="sum"
    )
    torch.testing.assert_close(loss, expected.to(loss.dtype))


def test_adam_atan2_step_matches_the_formula():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 3))
    p0, g1, g2 = p.detach().clone(), torch.randn(4, 3), torch.randn(4, 3)
    opt = AdamATan2([p], lr=0.01, betas=(0.9, 0.95), weight_decay=0.5)
    m, v, ref = torch.zeros(4, 3), torch.zeros(4, 3), p0.clone()
    for t, g in enumerate((g1, g2), start=1):
        p.grad = g.clone()
        opt.step()
        ref = ref * (1 - 0.01 * 0.5)
        m, v = 0.9 * m + 0.1 * g, 0.95 * v + 0.05 * g * g
        ref = ref - 0.01 * torch.atan2(m / (1 - 0.9**t), torch.sqrt(v / (1 - 0.95**t)))
    torch.testing.assert_close(p.detach(), ref)


def test_sign_sgd_updates_only_rows_with_gradient():
    w = torch.nn.Parameter(torch.ones(3, 2))
    w.grad = torch.tensor([[0.5, -2.0], [0.0, 0.0], [0.0, 1e-9]])
    SignSGD([w], lr=0.1, weight_decay=1.0).step()
    torch.testing.assert_close(w.detach(), torch.tensor([[0.8, 1.0], [1.0, 1.0], [0.9, 0.8]]))


def test_lr_warms_up_linearly_then_stays_constant_or_follows_cosine():
    assert [lr_at(s, 1.0, 4, 100) for s in (0, 1, 2, 4, 50, 100)] == [0.0, 0.25, 0.5, 1.0, 1.0, 1.0]
    assert lr_at(52, 1.0, 4, 100, min_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, 1.0, 4, 100, min_ratio=0.1) == pytest.approx(0.1)


def test_ema_averages_parameters_but_not_the_puzzle_embedding():
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.zeros(2))
    model.puzzle_emb = torch.nn.Parameter(torch.zeros(1, 2))
    ema = EMA(model, decay=0.9)
    assert set(ema.shadow) == {"w"}
    with torch.no_grad():
        model.w.fill_(1.0)
        model.puzzle_emb.fill_(5.0)
    ema.update(model)
    ema.copy_to(model)
    torch.testing.assert_close(model.w.detach(), torch.full((2,), 0.1))
    assert (model.puzzle_emb == 5.0).all()


@pytest.fixture(scope="module")
def puzzles():
    return generate_puzzles(120, np.random.default_rng(0), clues=(30, 40))


def test_group_loss_is_the_mixture_likelihood_and_credits_the_row_nearest_the_answer():
    labels = torch.randint(2, 11, (2, 81))
    logits = torch.randn(2, 81, 11)
    q, y = torch.zeros(2, 2), labels[:1].expand(2, -1)
    # identical rows: the mixture of one distribution is that distribution, so the loss is the per-row loss
    same = logits[:1].expand(2, -1, -1)
    torch.testing.assert_close(act_loss(same, q, y, group=2)[0], act_loss(same, q, y)[0])
    # distinct rows of one puzzle: -log mean_g p_g(grid), per cell, counted for both rows
    logits.requires_grad_(True)
    loss, _ = act_loss(logits, q, y, group=2)
    nll = token_cross_entropy(logits, y).sum(-1)
    mixture = -torch.logsumexp(-nll, 0) + math.log(2)
    q_bce = 2 * 0.5 * math.log(2)  # BCE of q = 0 against "wrong", twice
    torch.testing.assert_close(loss, (2 * mixture / 81 + q_bce).to(loss.dtype))
    loss.backward()
    near = int(nll.argmin())
    grad = logits.grad.abs().sum((1, 2))
    assert grad[near] > grad[1 - near]  # the row nearer the solution takes the larger share of the gradient


def test_group_rows_hold_one_puzzle_under_symmetries_and_halt_together_when_one_is_right(puzzles, tmp_path):
    trainer = Trainer(replace(train_preset("tiny"), group=4), "sudoku", puzzles, puzzles, tmp_path)
    step, halts = trainer.model.step, 0

    def step_right_at_random(*args):  # now and then a row is exactly right (and its Q head says done)
        carry, logits, q = step(*args)
        right = (torch.rand(len(logits)) < 0.1)[:, None, None]
        return carry, logits + 100 * right * F.one_hot(trainer.labels, logits.shape[-1]), q + 100 * right[:, :, 0]

    trainer.model.step = step_right_at_random
    for _ in range(6):
        trainer.train_step()
        halts += int((trainer.halted & (trainer.steps < 4)).sum())  # before N_sup = 4
        x, y = trainer.inputs.view(4, 4, 81).numpy(), trainer.labels.view(4, 4, 81).numpy()
        assert get_task("sudoku").verify_batch(x.reshape(16, 81), y.reshape(16, 81)).all()
        for rows in x:
            # invariants of the symmetries: the number of givens, and how many times each digit is given (sorted)
            givens = [np.sort(np.bincount(r[r != 1], minlength=11)[2:]) for r in rows]
            assert all((g == givens[0]).all() for g in givens)
            assert len({r.tobytes() for r in rows}) > 1  # different symmetries, not copies
        assert (trainer.halted.view(4, 4) == trainer.halted.view(4, 4)[:, :1]).all()
        assert (trainer.steps.view(4, 4) == trainer.steps.view(4, 4)[:, :1]).all()
    assert halts > 0  # some groups halted early, on a right row, so the rule above was exercised
    with pytest.raises(ValueError, match="divide"):
        replace(train_preset("tiny"), group=5)


def test_halted_rows_take_new_samples_and_the_rest_keep_their_carry(puzzles, tmp_path):
    trainer = Trainer(train_preset("tiny"), "sudoku", puzzles, puzzles, tmp_path)
    trainer.train_step()
    assert trainer.stream.samples_seen == 16  # every row started halted
    inputs, carry = trainer.inputs.clone(), trainer.carry
    keep = torch.tensor([i % 2 == 0 for i in range(16)])
    trainer.halted = ~keep
    trainer.train_step()
    assert trainer.stream.samples_seen == 16 + 8
    assert torch.equal(trainer.inputs[keep], inputs[keep]) and not torch.equal(trainer.inputs[~keep], inputs[~keep])
    assert trainer.steps[keep].eq(2).all() and trainer.steps[~keep].eq(1).all()
    assert not torch.equal(trainer.carry.z_H[keep], carry.z_H[keep])  # kept rows recursed on from their state


# A real kill: the training process SIGKILLs itself before a chosen step, with no chance to clean up.
KILLABLE = """
import os, signal, sys
from engine.train import cli, trainer
kill_at = int(os.environ.get("KILL_AT", "-1"))
step = trainer.Trainer.train_step
def train_step(self):
    if self.step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self)
trainer.Trainer.train_step = train_step
cli.main(sys.argv[1:])
"""


# A seconds-long training run on generated puzzles, shared by the subprocess tests.
TINY_RUN = "--preset tiny --generate 150 --dev-size 20".split()


def run_train(out, *extra, kill_at=-1, data=TINY_RUN):
    args = [*data, *"--steps 12 --save-every 4 --eval-every 6".split(), "--out", str(out), *extra]
    env = {**os.environ, "KILL_AT": str(kill_at)}
    return subprocess.run([sys.executable, "-c", KILLABLE, *args], env=env, capture_output=True, text=True, timeout=300)


def assert_same_saved_state(a, b):
    """Two run directories saved the same train state and checkpoint, tensor for tensor."""
    for part in ("train_state/state.safetensors", "checkpoint/model.safetensors"):
        x, y = load_file(a / part), load_file(b / part)
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), f"{part}: {k} differs"


def run_log(run):
    """(step, loss, eval) of every line of a run directory's log.jsonl."""
    lines = (run / "log.jsonl").read_text().splitlines()
    return [(e["step"], e.get("loss"), e.get("eval")) for e in map(json.loads, lines)]


@pytest.mark.parametrize("group", [[], ["--group", "4"]], ids=["rows", "groups"])
def test_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_one(tmp_path, group):
    straight = run_train(tmp_path / "straight", *group)
    assert straight.returncode == 0, straight.stderr
    killed = run_train(tmp_path / "killed", *group, kill_at=10)  # steps 9-10 run after the step-8 save, then die
    assert killed.returncode == -9
    assert json.loads((tmp_path / "killed" / "train_state" / "state.json").read_text())["step"] == 8
    resumed = run_train(tmp_path / "killed", "--resume", data=[])  # the run recorded its data flags
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 8" in resumed.stdout
    assert_same_saved_state(tmp_path / "straight", tmp_path / "killed")
    log = run_log(tmp_path / "killed")
    assert log == run_log(tmp_path / "straight")  # same numbers, nothing logged twice after the resume
    assert [step for step, _, _ in log] == [4, 6, 8, 10, 12]
    ckpt = load_checkpoint(tmp_path / "killed" / "checkpoint")
    assert ckpt.meta["training"]["step"] == 12 and ckpt.meta["training"]["last_eval"]["n"] == 20
    data = ckpt.meta["training"]["data"]
    assert data.startswith("train: 150 generated puzzles (clues 22-30, seed 0); held out: the last 20 of")


def test_cli_refuses_to_overwrite_or_resume_nothing(tmp_path):
    from engine.train.cli import main

    with pytest.raises(SystemExit, match="nothing to resume"):
        main(["--out", str(tmp_path), "--resume", "--generate", "50", "--dev-size", "5"])
    (tmp_path / "train_state").mkdir()
    (tmp_path / "train_state" / "state.json").write_text("{}")
    with pytest.raises(SystemExit, match="already holds a run"):
        main(["--out", str(tmp_path), "--generate", "50", "--dev-size", "5"])


def test_cli_documented_flags_reach_the_config_and_the_trainer(tmp_path):
    """The README's ablation and budget flags land in the TrainConfig engine-train builds, and the Trainer built from
    it (model shape, optimizer, EMA, loss) uses them: no training step runs."""
    from engine.train.cli import build_config, load_data, parse_args

    argv = ["--preset", "tiny", "--out", str(tmp_path / "run"), "--generate", "40", "--clues", "30", "40"]
    argv += ["--dev-size", "8", "--lr", "0.003", "--weight-decay", "0.25", "--H-cycles", "3", "--L-cycles", "1"]
    argv += ["--hidden-size", "32", "--no-ema", "--loss", "softmax", "--batch-size", "12", "--steps", "77"]
    argv += ["--group", "3", "--minutes", "1.5", "--warmup-steps", "9", "--seed", "5", "--eval-every", "7"]
    argv += ["--save-every", "11", "--eval-limit", "4", "--ema-decay", "0.9"]
    args = parse_args(argv)
    cfg = build_config(args)
    expected = dict(lr=0.003, weight_decay=0.25, ema=False, loss="softmax", global_batch_size=12, steps=77, group=3)
    expected.update(minutes=1.5, warmup_steps=9, seed=5, eval_every=7, save_every=11, eval_limit=4, ema_decay=0.9)
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert cfg.model_overrides == {"H_cycles": 3, "L_cycles": 1, "hidden_size": 32, "puzzle_emb_ndim": 32}
    assert cfg.data["generate"] == 40 and cfg.data["clues"] == [30, 40] and cfg.data["dev_size"] == 8
    defaults = build_config(parse_args(["--preset", "tiny", "--out", str(tmp_path / "plain")]))
    assert all(getattr(defaults, k) != v for k, v in expected.items())  # each flag changed something
    assert defaults.model_overrides == {}

    train, dev, _ = load_data(args, cfg.seed)
    trainer = Trainer(cfg, "sudoku", train, dev, tmp_path / "run")
    c = trainer.model.config
    assert (c.H_cycles, c.L_cycles, c.hidden_size) == (3, 1, 32) and trainer.ema is None
    group = trainer.opt.param_groups[0]
    assert group["lr"] == 0.003 and group["weight_decay"] == 0.25
    assert trainer.inputs.shape[0] == 12 and len(dev[0]) == 8


def test_resume_takes_the_run_data_flags_and_refuses_different_ones(tmp_path):
    from engine.train.cli import build_config, parse_args, restore_data

    fresh = ["--out", str(tmp_path), "--generate", "50", "--clues", "30", "45", "--dev-size", "5"]
    cfg = build_config(parse_args(fresh))
    (tmp_path / "train_state").mkdir()
    (tmp_path / "train_state" / "state.json").write_text(json.dumps({"config": cfg.to_dict()}))

    for same in ([], ["--clues", "30", "45"]):
        args = parse_args(["--out", str(tmp_path), "--resume", *same])
        restore_data(args, build_config(args))
        assert (args.generate, args.clues, args.dev_size, args.puzzles) == (50, [30, 45], 5, None)
    args = parse_args(["--out", str(tmp_path), "--resume", "--clues", "22", "30", "--generate", "60"])
    with pytest.raises(SystemExit, match=r"--generate 60 differs from the run's 50"):
        restore_data(args, build_config(args))


# Runs the real CLI under torchrun; after training each rank dumps its own weights for comparison.
DDP = """
import sys
from safetensors.torch import save_file
from engine.train import cli, trainer
fit = trainer.Trainer.fit
def fit_and_dump(self):
    summary = fit(self)
    weights = {k: v.contiguous() for k, v in self.model.state_dict().items()}
    save_file(weights, f"{self.out}/rank{self.ddp.rank}.safetensors")
    return summary
trainer.Trainer.fit = fit_and_dump
cli.main(sys.argv[1:])
"""


def test_torchrun_two_cpu_ranks_end_with_identical_weights(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP)
    out = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    args = [*TINY_RUN, *"--steps 6 --eval-every 3".split(), "--out", str(out)]
    proc = subprocess.run([*torchrun, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    saved = load_file(out / "train_state" / "state.safetensors")
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    state = json.loads((out / "train_state" / "state.json").read_text())
    assert state["world"] == 2 and len(state["streams"]) == 2 and state["streams"][0] != state["streams"][1]
    assert saved["rank.z_H"].shape[0] == 2  # both ranks' carries are saved


def test_minutes_budget_stops_evaluates_and_saves_and_hidden_size_sets_the_width(tmp_path):
    from engine.train.cli import main

    out = tmp_path / "run"
    argv = ["--preset", "tiny", "--generate", "60", "--clues", "30", "40", "--dev-size", "10", "--hidden-size", "32"]
    main([*argv, "--steps", "100000", "--minutes", "0.002", "--save-every", "1000", "--out", str(out)])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    stop = log[-1]
    assert 10 <= stop["step"] < 100000 and stop["step"] % 10 == 0  # the budget is checked every 10 steps
    assert stop["elapsed"] >= 0.12 and "eval" in stop
    ckpt = load_checkpoint(out / "checkpoint")
    assert ckpt.config.hidden_size == 32 and ckpt.config.puzzle_emb_ndim == 32
    assert ckpt.meta["training"]["step"] == stop["step"]
    assert json.loads((out / "train_state" / "state.json").read_text())["step"] == stop["step"]
