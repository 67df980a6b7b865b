import numpy as np
import pytest
import torch

import kernels
from engine.search import Rows, SearchParams, default_params, run_rollouts, select
from engine.tasks import get_task

SUDOKU = get_task("sudoku")


def puzzle(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 11, 81)


def test_k1_without_noise_is_the_deterministic_trm(tiny_model):
    model, x = tiny_model, puzzle()
    out = run_rollouts(model, x, SearchParams(rollouts=1, steps=3, noise=0.0))
    with torch.no_grad():
        logits, q = model.rollout(torch.as_tensor(x)[None], torch.zeros(1, dtype=torch.long), 3)
    assert np.array_equal(out["answers"][0], logits.argmax(-1)[0].numpy())
    assert out["q"][0] == q[0, 0].item()


def test_noise_makes_rows_differ_and_a_seed_repeats_them(tiny_model):
    model, x = tiny_model, puzzle()
    p = SearchParams(rollouts=4, steps=2, noise=1.0, seed=7)
    a, b = run_rollouts(model, x, p), run_rollouts(model, x, p)
    assert np.array_equal(a["q"], b["q"]) and np.array_equal(a["answers"], b["answers"])
    assert len(set(a["q"].tolist())) == 4  # every row has its own stream
    c = run_rollouts(model, x, p.replace(seed=8))
    assert not np.array_equal(a["q"], c["q"])
    # Row r of a K-row search is row r of any larger search with the same seed (width sweeps reuse one run).
    wide = run_rollouts(model, x, p.replace(rollouts=6))
    np.testing.assert_allclose(wide["q"][:4], a["q"], rtol=1e-5, atol=1e-6)


def _moved_rollouts(model, x, params: SearchParams, moved: tuple[str, ...]) -> dict:
    """The noisy search by hand: before every step, the states named in `moved` ("z" = z_L, "y" = z_H) get
    sigma * N(0, 1) from their own counter stream (STREAM_Z, STREAM_Y), then the clean step runs."""
    from engine.models import Carry
    from engine.search.rollouts import row_seeds

    K = params.rollouts
    inputs, pids = torch.as_tensor(x).expand(K, -1), torch.zeros(K, dtype=torch.long)
    seeds, sigma = torch.tensor(row_seeds(params.seed, range(K))), torch.full((K,), params.noise)
    carry = model.initial_carry(K)
    with torch.no_grad():
        for d in range(params.steps):
            steps = torch.full((K,), d, dtype=torch.long)
            z_H, z_L = carry.z_H, carry.z_L
            if "y" in moved:
                z_H = kernels.reference.add_noise(z_H, sigma, seeds, steps, kernels.STREAM_Y)
            if "z" in moved:
                z_L = kernels.reference.add_noise(z_L, sigma, seeds, steps, kernels.STREAM_Z)
            carry, logits, q = model.step(Carry(z_H, z_L), inputs, pids)
    return {"answers": logits.argmax(-1).numpy(), "q": q[:, 0].numpy()}


@pytest.mark.parametrize(
    "target, moved, unmoved",
    [("z", ("z",), ("y",)), ("y", ("y",), ("z",)), ("both", ("z", "y"), ("z",))],
)
def test_noise_targets(target, moved, unmoved, tiny_model):
    """noise_target picks WHICH state moves: z = z_L (the paper's), y = z_H (the answer state) or both; the search
    equals the clean step run from the states moved by hand, and not from the other choice."""
    model, x = tiny_model, puzzle()
    params = SearchParams(rollouts=2, steps=2, noise=0.5, noise_target=target, seed=3)
    clean = run_rollouts(model, x, SearchParams(rollouts=2, steps=2))
    noisy = run_rollouts(model, x, params)
    assert not np.array_equal(clean["q"], noisy["q"])
    expected, other = _moved_rollouts(model, x, params, moved), _moved_rollouts(model, x, params, unmoved)
    np.testing.assert_allclose(noisy["q"], expected["q"], rtol=1e-5, atol=1e-5)
    assert np.array_equal(noisy["answers"], expected["answers"])
    assert np.abs(other["q"] - expected["q"]).max() > 1e-3  # the check tells the targets apart


def rows(answers, q, verified=None, **kw) -> Rows:
    return Rows(
        np.array(answers), np.array(q, dtype=np.float32), None if verified is None else np.array(verified), **kw
    )


def test_q_selects_the_largest_halt_logit():
    s = select(rows([[1, 2], [3, 4], [1, 2]], [0.5, 2.0, -1.0]), "q")
    assert s.index == 1 and s.agreement == pytest.approx(1 / 3) and s.confidence == pytest.approx(1 / (1 + np.exp(-2)))


def test_vote_selects_the_mode_and_breaks_ties_by_mean_confidence():
    r = rows([[1, 2], [3, 4], [1, 2], [5, 6]], [-3.0, 9.0, -2.0, 0.0])
    s = select(r, "vote")
    assert s.index == 2 and s.agreement == 0.5  # the [1, 2] pair wins; its higher-q member is returned
    tie = rows([[1, 2], [3, 4], [3, 4], [1, 2]], [0.0, 1.0, 1.0, 0.0])
    assert select(tie, "vote").index == 1


def test_verifier_prefers_verified_rows_then_q():
    r = rows([[1], [2], [3]], [5.0, 1.0, 2.0], verified=[False, True, True])
    assert select(r, "verifier").index == 2
    assert select(rows([[1], [2]], [0.0, 1.0], verified=[False, False]), "verifier").index == 1


def test_value_and_prior_selectors_need_their_heads():
    r = rows([[1], [2], [3]], [5.0, 1.0, 2.0], value=np.array([0.1, 0.9, 0.5]), log_prior=np.array([-3.0, -9, -1]))
    assert select(r, "lprm").index == 1 and select(r, "prior").index == 2
    with pytest.raises(ValueError, match="LPRM"):
        select(rows([[1]], [0.0]), "lprm")
    with pytest.raises(ValueError, match="GRAM"):
        select(rows([[1]], [0.0]), "likelihood")


def test_likelihood_ranks_distinct_candidates():
    seen = []

    def elbo(candidates):
        seen.append(candidates)
        return -np.abs(candidates[:, 0] - 3).astype(float)  # candidate [3, *] is the likeliest

    r = rows([[1, 0], [3, 0], [1, 0], [3, 0]], [9.0, 0.0, 9.0, 1.0])
    s = select(r, "likelihood", elbo)
    assert s.index == 3 and len(seen[0]) == 2  # scored once per distinct answer; best-q member of the group


def test_params_validation_and_defaults():
    with pytest.raises(ValueError, match="rollouts"):
        SearchParams(rollouts=0)
    with pytest.raises(ValueError, match="selector"):
        SearchParams(selector="best")
    p = default_params("maze", "trm", 16)
    assert (p.noise, p.selector, p.steps) == (1.0, "q", 16)
    assert default_params("sudoku", "trm", 16, {"rollouts": 4}).rollouts == 4
    assert SearchParams(noise=0.3, noise_target="both").sigma_y == 0.3
    assert SearchParams(noise=0.3).sigma_y == 0.0


def test_the_waves_curve_reads_fewer_waves_off_one_run():
    from types import SimpleNamespace

    from engine.eval import waves_curve

    task = get_task("sudoku")
    solution = task.encode("534678912672195348198342567859761423426853791713924856961537284287419635345286179")
    puzzles = np.stack([solution, solution])
    wrong = np.full(81, 2)
    # waves of K = 2, D = 2: the first puzzle solved in wave 2; the second's best-q row of wave 1 happens to be right
    rows = Rows(np.stack([wrong, solution, wrong, wrong]), np.array([0.0, 1.0, 2.0, 0.5], np.float32))
    results = [
        SimpleNamespace(finish="early_exit", steps=1, row_steps=5, answer=solution, waves=2, rows=rows),
        SimpleNamespace(finish="completed", steps=2, row_steps=8, answer=wrong, waves=2, rows=rows),
    ]
    curve = waves_curve(task, puzzles, results, puzzles, SearchParams(rollouts=2, steps=2, waves=2))
    assert curve[1] == {"exact_accuracy": 1.0, "row_steps_per_puzzle": 4.0}  # both end on wave 1's best-q row
    assert curve[2] == {"exact_accuracy": 0.5, "row_steps_per_puzzle": 6.5}
