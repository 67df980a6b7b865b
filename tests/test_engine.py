import asyncio
import time

import numpy as np
import pytest
import torch

from engine.models import TRM, preset
from engine.runtime import (
    AsyncEngine,
    Cancelled,
    DeadlineExceeded,
    Engine,
    EngineStopped,
    InvalidRequest,
    Limits,
    Overloaded,
    Request,
    Runner,
    TooLarge,
    bucket_ladder,
)
from engine.runtime.runner import StepResult
from engine.search import SearchParams, run_rollouts
from engine.tasks import get_task
from engine.tasks.sudoku import Sudoku

SUDOKU = get_task("sudoku")


def puzzle(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 11, 81)


def engine(model, max_batch=16, static=False, task=SUDOKU, **limits) -> Engine:
    return Engine(Runner(model, max_batch=max_batch, static=static), task, Limits(max_batch=max_batch, **limits))


def solve(eng: Engine, *requests: Request) -> list:
    for r in requests:
        eng.submit(r)
    eng.run_until_idle()
    return [r.future.result() for r in requests]


def test_bucket_ladder():
    assert bucket_ladder(64) == [1, 2, 4, 8, 16, 32, 48, 64]
    assert bucket_ladder(20) == [1, 2, 4, 8, 16, 20]


def test_engine_equals_the_plain_rollout_loop(tiny_model):
    p = SearchParams(rollouts=5, steps=3, noise=0.7, seed=3)
    (res,) = solve(engine(tiny_model), Request(SUDOKU, puzzle(), p))
    ref = run_rollouts(tiny_model, puzzle(), p)
    assert np.array_equal(res.rows.answers, ref["answers"])
    np.testing.assert_allclose(res.rows.q, ref["q"], rtol=1e-5, atol=1e-5)
    assert res.selection.index == int(np.argmax(ref["q"]))
    assert (res.rollouts, res.row_steps, res.steps, res.finish) == (5, 15, 3, "completed")
    assert res.verified is False  # a random model's answer breaks the rules


@pytest.mark.parametrize("static", [False, True])
def test_same_seed_same_answer_alone_and_in_a_full_mixed_bucket(tiny_model, static):
    p = SearchParams(rollouts=3, steps=4, noise=0.5, seed=11)
    (alone,) = solve(engine(tiny_model, max_batch=3, static=static), Request(SUDOKU, puzzle(1), p))
    # The same request among others with other puzzles, seeds, noise targets and step counts, in a padded bucket.
    others = [
        Request(SUDOKU, puzzle(2), SearchParams(rollouts=6, steps=2, noise=1.0, seed=1)),
        Request(SUDOKU, puzzle(3), SearchParams(rollouts=4, steps=6, noise=0.2, noise_target="both")),
    ]
    mixed = solve(engine(tiny_model, max_batch=13, static=static), others[0], Request(SUDOKU, puzzle(1), p), others[1])
    assert np.array_equal(mixed[1].rows.answers, alone.rows.answers)
    np.testing.assert_allclose(mixed[1].rows.q, alone.rows.q, rtol=1e-5, atol=1e-5)
    assert mixed[1].selection.index == alone.selection.index


def test_admission_refuses_past_the_request_and_row_limits(tiny_model):
    eng = engine(tiny_model, max_requests=2, max_rows=10)
    eng.submit(Request(SUDOKU, puzzle(), SearchParams(rollouts=4, steps=1)))
    eng.submit(Request(SUDOKU, puzzle(), SearchParams(rollouts=4, steps=1)))
    with pytest.raises(Overloaded, match="queued requests") as e:
        eng.submit(Request(SUDOKU, puzzle(), SearchParams(rollouts=1)))
    assert e.value.retry_after >= 1 and e.value.limit == 2
    eng2 = engine(tiny_model, max_rows=10)
    eng2.submit(Request(SUDOKU, puzzle(), SearchParams(rollouts=8)))
    with pytest.raises(Overloaded, match="queued rows"):
        eng2.submit(Request(SUDOKU, puzzle(), SearchParams(rollouts=3)))
    with pytest.raises(TooLarge, match="row limit 10"):
        eng2.submit(Request(SUDOKU, puzzle(), SearchParams(rollouts=11)))
    eng.run_until_idle()  # admitted work completes and frees its share
    eng.submit(Request(SUDOKU, puzzle(), SearchParams(rollouts=1)))
    with pytest.raises(InvalidRequest, match="selector 'likelihood' is not available"):  # TRM has no prior
        eng.submit(Request(SUDOKU, puzzle(), SearchParams(selector="likelihood")))
    with pytest.raises(InvalidRequest, match="needs 81"):
        eng.submit(Request(SUDOKU, puzzle()[:80], SearchParams()))
    load = eng.scheduler.snapshot()
    assert (load.requests_waiting, load.rows_waiting, load.requests_running) == (1, 1, 0)


def test_submit_refuses_out_of_range_tokens_and_puzzle_ids_naming_the_cell(tiny_model):
    eng = engine(tiny_model)
    bad = puzzle()
    bad[7] = 11  # vocab is 0..10: on a GPU this index would trip a device-side assert inside the graph
    with pytest.raises(InvalidRequest, match="token 11 at cell 7 is outside 0..10"):
        eng.submit(Request(SUDOKU, bad, SearchParams()))
    bad[7] = -1
    with pytest.raises(InvalidRequest, match="cell 7"):
        eng.submit(Request(SUDOKU, bad, SearchParams()))
    with pytest.raises(InvalidRequest, match="puzzle id 1 is outside 0..0"):
        eng.submit(Request(SUDOKU, puzzle(), SearchParams(), puzzle_id=1))
    assert not eng.busy


def test_fair_share_gives_every_request_a_row_and_a_lone_request_the_batch(tiny_model):
    eng = engine(tiny_model, max_batch=8)
    big = eng.submit(Request(SUDOKU, puzzle(), SearchParams(rollouts=20, steps=2)))
    eng.step()
    assert (big.steps_done == 1).sum() == 8  # alone: the whole batch
    small = eng.submit(Request(SUDOKU, puzzle(), SearchParams(rollouts=2, steps=2)))
    one = eng.submit(Request(SUDOKU, puzzle(), SearchParams(rollouts=1, steps=2)))
    eng.step()
    # rows dealt round-robin: big 3 (its started rows first), small 2 (all it has), one 1, then the rest to big
    assert small.steps_done.tolist() == [1, 1] and one.steps_done.tolist() == [1]
    assert (big.steps_done == 2).sum() == 5 and (big.steps_done == 1).sum() == 3
    eng.run_until_idle()
    assert small.future.result().row_steps == 4 and big.future.result().row_steps == 40


def test_fair_share_is_across_tenants_first(tiny_model):
    """A tenant's burst of many requests gets half the batch, not all of it, against another tenant's one request."""
    eng = engine(tiny_model, max_batch=8)
    burst = [eng.submit(Request(SUDOKU, puzzle(), SearchParams(rollouts=4, steps=4), tenant="a")) for _ in range(6)]
    lone = eng.submit(Request(SUDOKU, puzzle(), SearchParams(rollouts=8, steps=4), tenant="b"))
    eng.step()
    assert (lone.steps_done == 1).sum() == 4  # half the batch
    assert sum(int((r.steps_done == 1).sum()) for r in burst) == 4  # the other half, a row each to the oldest four
    assert [int(r.steps_done.sum()) for r in burst] == [1, 1, 1, 1, 0, 0]
    eng.run_until_idle()


def test_deadline_removes_the_rows(tiny_model):
    eng = engine(tiny_model)
    strict = SearchParams(rollouts=4, steps=1000, timeout_s=0.05, strict_deadline=True)  # else: its best (test_admission)
    slow = eng.submit(Request(SUDOKU, puzzle(), strict))
    fast = eng.submit(Request(SUDOKU, puzzle(), SearchParams(rollouts=2, steps=2)))
    eng.step()
    time.sleep(0.06)
    eng.run_until_idle()
    with pytest.raises(DeadlineExceeded):
        slow.future.result()
    assert fast.future.result().row_steps == 4
    assert eng.scheduler.active == [] and len(eng.scheduler.free_slots) == eng.runner.slots
    assert slow.steps_done.max() < 1000


def test_cancellation_removes_the_rows_at_the_next_step(tiny_model):
    eng = engine(tiny_model)
    req = eng.submit(Request(SUDOKU, puzzle(), SearchParams(rollouts=4, steps=50)))
    eng.step()
    eng.cancel(req)
    eng.step()
    with pytest.raises(Cancelled):
        req.future.result()
    assert req.steps_done.max() == 1 and not eng.busy and len(eng.scheduler.free_slots) == eng.runner.slots


class AlwaysValid(Sudoku):
    """Sudoku whose verifier accepts anything: exercises the early-exit path with a random model."""

    def verify_batch(self, puzzles, answers):
        return np.ones(len(answers), dtype=bool)


def test_early_exit_on_a_verified_row_stops_the_request(tiny_model):
    eng = engine(tiny_model, max_batch=4, task=AlwaysValid())
    p = SearchParams(rollouts=10, steps=16, early_exit="verified")
    (res,) = solve(eng, Request(eng.task, puzzle(), p))
    assert res.finish == "early_exit" and res.selection.selector == "early_exit"
    assert res.row_steps == 4 and res.rollouts == 4 and res.verified  # one step of the first 4 rows


def test_early_exit_on_confidence_without_a_verifier(tiny_model):
    with torch.no_grad():
        tiny_model.q_head.weight.zero_()
        tiny_model.q_head.bias.fill_(5.0)  # sigmoid(5) = 0.993
    eng = engine(tiny_model)
    p = SearchParams(rollouts=3, steps=8, early_exit="confident", confidence=0.99)
    (res,) = solve(eng, Request(SUDOKU, puzzle(), p))
    assert res.finish == "early_exit" and res.row_steps == 3
    (strict,) = solve(eng, Request(SUDOKU, puzzle(), p.replace(confidence=0.999)))
    assert strict.finish == "completed" and strict.row_steps == 24


def test_record_steps_keeps_the_depth_history(tiny_model):
    p = SearchParams(rollouts=2, steps=4, noise=0.3)
    req = Request(SUDOKU, puzzle(), p, record_steps=(1, 4))
    (res,) = solve(engine(tiny_model), req)
    short = run_rollouts(tiny_model, puzzle(), p.replace(steps=1))
    assert sorted(res.history) == [1, 4]
    assert np.array_equal(res.history[1].answers, short["answers"])
    assert np.array_equal(res.history[4].answers, res.rows.answers)


def test_async_facade_solves_and_a_cancelled_caller_frees_its_rows(tiny_model):
    async def main():
        fe = AsyncEngine(engine(tiny_model))
        res = await fe.search(puzzle(), SearchParams(rollouts=2, steps=2))
        assert res.row_steps == 4
        task = asyncio.create_task(fe.search(puzzle(), SearchParams(rollouts=4, steps=100_000)))
        while fe.engine.stats.row_steps < 12:  # the long search is running
            await asyncio.sleep(0.01)
        task.cancel()  # what a disconnecting HTTP client does
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(200):
            if not fe.engine.busy:
                break
            await asyncio.sleep(0.01)
        assert not fe.engine.busy and len(fe.engine.scheduler.free_slots) == fe.engine.runner.slots
        await fe.shutdown()
        with pytest.raises(EngineStopped):
            await fe.search(puzzle(), SearchParams())

    asyncio.run(main())


def test_shutdown_drains_admitted_requests(tiny_model):
    eng = engine(tiny_model)
    eng.start()
    req = eng.submit(Request(SUDOKU, puzzle(), SearchParams(rollouts=2, steps=3)))
    eng.shutdown(drain=True)
    assert req.future.result(timeout=0).row_steps == 6


def test_gram_rows_sample_the_prior_with_their_own_streams_and_select_by_likelihood():
    from engine.models import GRAM, counter_noise, preset
    from engine.search.rollouts import row_seeds

    torch.manual_seed(0)
    gram = GRAM(preset("gram-sudoku-tiny", forward_dtype="float32")).eval()
    p = SearchParams(rollouts=4, steps=3, seed=5, selector="likelihood")
    (alone,) = solve(engine(gram), Request(SUDOKU, puzzle(), p))
    other = Request(SUDOKU, puzzle(1), p.replace(rollouts=5, seed=9, selector="prior"))
    mixed = solve(engine(gram), other, Request(SUDOKU, puzzle(), p))
    assert np.array_equal(mixed[1].rows.answers, alone.rows.answers)
    # The engine's rows are GRAM's own prior trajectories under the same counter-based noise.
    seeds = torch.tensor(row_seeds(5, range(4)))
    x = torch.as_tensor(puzzle()).expand(4, -1)
    ref = gram.trajectory(x, torch.zeros(4, dtype=torch.long), 3, counter_noise(seeds))
    assert np.array_equal(alone.rows.answers, ref.logits.argmax(-1).numpy())
    np.testing.assert_allclose(alone.rows.log_prior, ref.log_prior.numpy(), rtol=1e-4)
    assert alone.rows.value is not None and alone.selection.selector == "likelihood"
    assert mixed[0].selection.index == int(np.argmax(mixed[0].rows.log_prior))


# A solvable hard puzzle (generate_puzzles(1, default_rng(1), clues=(22, 26), min_guesses=3); unique solution, 24
# clues) that the rule mask alone does not fill: commit search on a tiny random model expands nodes and backtracks.
HARD = "..54.....8....2...2...71..6..85..1.36.4....8....8.....4...2.7......6...8...9..23."


def mixed_workload(task=SUDOKU) -> list[Request]:
    """Requests that make rows join and leave at different steps (so buckets switch), with z and y noise, augmented
    rows and a commit search (which asks for distributions) that expands several nodes and backtracks."""
    return [
        Request(task, puzzle(1), SearchParams(rollouts=3, steps=4, noise=0.5, seed=11)),
        Request(task, puzzle(2), SearchParams(rollouts=6, steps=2, noise=1.0, noise_target="y", seed=1)),
        Request(task, puzzle(3), SearchParams(rollouts=4, steps=6, noise=0.2, noise_target="both")),
        Request(task, puzzle(4), SearchParams(rollouts=2, steps=3, diversity="augment", seed=3)),
        Request(task, task.encode(HARD), SearchParams(rollouts=2, steps=2, strategy="commit", max_nodes=40, seed=4)),
    ]


def searched(results: list) -> None:
    """The workload's commit search really searched: several nodes expanded (each asked the rows for distributions),
    at least one backtrack, and the hard puzzle solved by the mask and DFS (a random net's choices, rule-checked)."""
    commit = results[4]
    assert commit.nodes > 1 and commit.backtracks >= 1, (commit.finish, commit.nodes, commit.backtracks)
    assert commit.finish == "filled" and commit.verified and commit.row_steps == commit.nodes * 2 * 2


def same_results(a: list, b: list) -> None:
    for x, y in zip(a, b):
        assert np.array_equal(x.rows.answers, y.rows.answers) and np.array_equal(x.answer, y.answer)
        assert (x.finish, x.backtracks) == (y.finish, y.backtracks)
        np.testing.assert_allclose(x.rows.q, y.rows.q, rtol=1e-5, atol=1e-5)
        assert (x.row_steps, x.nodes, x.selection.index) == (y.row_steps, y.nodes, y.selection.index)
        for name in ("value", "log_prior"):
            u, v = getattr(x.rows, name), getattr(y.rows, name)
            assert (u is None) == (v is None) and (u is None or np.allclose(u, v, rtol=1e-4, atol=1e-5))


@pytest.mark.parametrize("arch", ["trm", "gram"])
def test_static_buffers_give_the_eager_answers_as_rows_join_and_leave(tiny_model, arch):
    """The static path (what CUDA graphs capture: one metadata copy in, carries gathered and scattered inside the
    step, one results buffer out, y noise always an input) answers exactly as the eager path, in a small ladder
    whose bucket changes as rows join and leave."""
    from engine.models import GRAM

    model = tiny_model
    if arch == "gram":
        torch.manual_seed(0)
        model = GRAM(preset("gram-sudoku-tiny", forward_dtype="float32")).eval()
    eager = solve(engine(model, max_batch=8, static=False), *mixed_workload())
    static_engine = engine(model, max_batch=8, static=True)
    static = solve(static_engine, *mixed_workload())
    searched(eager)
    same_results(eager, static)
    assert static_engine.stats.padded_row_steps > static_engine.stats.row_steps  # padding rows did run
    runner = static_engine.runner
    assert runner.pool_H.shape[0] == runner.slots + 1  # + the padding rows' scratch slot


def test_pipelined_engine_keeps_a_step_in_flight_and_answers_as_the_plain_one(tiny_model):
    """With a step in flight while the previous one is booked (the CUDA default), every request gets the same rows
    and answers as in the plain loop: a request in flight waits for its results before it is picked again."""

    def workload():
        waves = SearchParams(rollouts=2, steps=2, diversity="augment", waves=3, early_exit="verified", seed=7)
        return [*mixed_workload(), Request(SUDOKU, puzzle(6), waves)]

    plain = solve(engine(tiny_model, max_batch=8, static=True), *workload())
    searched(plain)
    piped = Engine(Runner(tiny_model, max_batch=8, static=True), SUDOKU, Limits(max_batch=8), pipeline=True)
    launch, collect, uncollected = piped.runner.launch, piped.runner.collect, [0]

    def counted_launch(batch):
        uncollected.append(uncollected[-1] + 1)
        return launch(batch)

    def counted_collect(step):
        uncollected.append(uncollected[-1] - 1)
        return collect(step)

    piped.runner.launch, piped.runner.collect = counted_launch, counted_collect
    same_results(plain, solve(piped, *workload()))
    assert max(uncollected) == 2 and uncollected[-1] == 0  # two steps were in flight at once: the overlap happened
    assert piped.stats.row_steps == sum(r.row_steps for r in plain) and not piped._flight


@pytest.mark.gpu
def test_cuda_graphs_give_the_eager_answers_as_rows_join_and_leave(tiny_model):
    """Graphs replay for every bucket, y noise included (no eager fallback), and a replay never syncs the host."""
    model = tiny_model.cuda()
    eager = solve(engine(model, max_batch=8, static=False), *mixed_workload())
    graphs = Engine(Runner(model, max_batch=8), SUDOKU, Limits(max_batch=8))
    assert graphs.runner.mode == "cuda-graphs"
    replays = []

    def checked(graph, size):
        def replay():
            replays.append(size)
            torch.cuda.set_sync_debug_mode("error")
            try:
                type(graph).replay(graph)
            finally:
                torch.cuda.set_sync_debug_mode("default")

        return replay

    for size, graph in graphs.runner.graphs.items():
        graph.replay = checked(graph, size)
    searched(eager)
    same_results(eager, solve(graphs, *mixed_workload()))
    assert len(replays) == graphs.stats.steps and len(set(replays)) > 1  # every step replayed, buckets switched


@pytest.mark.gpu
def test_graph_memory_is_one_step_not_one_set_of_outputs_per_bucket():
    """Graphs share one memory pool and one output buffer, and scatter carries into the slot pool themselves: all 20
    buckets' graphs at max_batch 256 cost about one step's activations (their kept outputs took 0.44 GB before)."""
    torch.manual_seed(0)
    model = TRM(preset("sudoku-mlp", forward_dtype="bfloat16")).cuda().eval()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    static = Runner(model, max_batch=256, static=True, cuda_graphs=False)
    buffers = torch.cuda.memory_allocated() - base
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        static._static_step(256)
    torch.cuda.synchronize()
    step_peak = torch.cuda.max_memory_allocated() - base - buffers
    del static
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()
    runner = Runner(model, max_batch=256)
    used = torch.cuda.memory_reserved() - before
    assert len(runner.graphs) == len(bucket_ladder(256))
    assert used < buffers + 1.5 * step_peak, (used, buffers, step_peak)


@pytest.mark.gpu
def test_paper_size_bf16_graph_capture_matches_eager():
    torch.manual_seed(0)
    model = TRM(preset("sudoku-mlp", forward_dtype="bfloat16")).cuda().eval()
    p = SearchParams(rollouts=4, steps=2, noise=0.3, seed=2)
    eager = solve(
        Engine(Runner(model, max_batch=16, static=False), SUDOKU, Limits(max_batch=16)), Request(SUDOKU, puzzle(), p)
    )
    graphs = solve(Engine(Runner(model, max_batch=16), SUDOKU, Limits(max_batch=16)), Request(SUDOKU, puzzle(), p))
    agree = (eager[0].rows.answers == graphs[0].rows.answers).mean()
    assert agree > 0.99, agree  # bf16: the same kernels, possibly other reduction orders


@pytest.mark.gpu
def test_gram_under_cuda_graphs_matches_eager():
    from engine.models import GRAM

    torch.manual_seed(0)
    gram = GRAM(preset("gram-sudoku-tiny", forward_dtype="float32")).cuda().eval()
    eager = solve(engine(gram, max_batch=8, static=False), *mixed_workload()[:3])
    graphs = solve(Engine(Runner(gram, max_batch=8), SUDOKU, Limits(max_batch=8)), *mixed_workload()[:3])
    same_results(eager, graphs)


@pytest.mark.gpu
def test_cuda_graph_runner_matches_the_eager_runner(tiny_model):
    model = tiny_model.cuda()
    p = SearchParams(rollouts=3, steps=3, noise=0.5, seed=2)
    eager = Engine(Runner(model, max_batch=8, static=False, cuda_graphs=False), SUDOKU)
    graphs = Engine(Runner(model, max_batch=8), SUDOKU)
    assert graphs.runner.mode == "cuda-graphs" and set(graphs.runner.graphs) == {1, 2, 4, 8}
    (a,), (b,) = solve(eager, Request(SUDOKU, puzzle(), p)), solve(graphs, Request(SUDOKU, puzzle(), p))
    assert np.array_equal(a.rows.answers, b.rows.answers)
    np.testing.assert_allclose(a.rows.q, b.rows.q, rtol=1e-4, atol=1e-4)


def test_runner_casts_weights_to_the_compute_dtype_once_with_unchanged_answers():
    torch.manual_seed(0)
    model = TRM(preset("sudoku-tiny", forward_dtype="bfloat16")).eval()
    torch.nn.init.normal_(model.q_head.weight)
    x, pid = torch.as_tensor(puzzle())[None].repeat(3, 1), torch.zeros(3, dtype=torch.long)
    before = model.rollout(x, pid, 3)
    runner = Runner(model, max_batch=4, static=False)
    assert {p.dtype for p in runner.model.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in runner.model.parameters())
    after = model.rollout(x, pid, 3)
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # every use cast them to bf16 already


class ScriptedRunner:
    """The runner's interface without a model: step n (counted from 1) answers `answer_at(n)` for every row."""

    static, mode, kernels, device = False, "scripted", "none", torch.device("cpu")

    def __init__(self, answer_at, max_batch=8):
        self.model = TRM(preset("sudoku-tiny"))  # only its config is read
        self.max_batch, self.slots, self.calls, self.answer_at = max_batch, 2 * max_batch, 0, answer_at

    def padded(self, rows):
        return rows

    def launch(self, batch):
        self.calls += 1
        return batch

    def collect(self, batch):
        n = len(batch.slots)
        return StepResult(np.tile(self.answer_at(self.calls), (n, 1)), np.full(n, -3.0, np.float32), None, None)


def test_waves_start_fresh_rows_until_one_verifies():
    solution = SUDOKU.encode("534678912672195348198342567859761423426853791713924856961537284287419635345286179")
    puzzle = solution.copy()
    puzzle[::2] = 1
    wrong = np.full(81, 2)
    eng = Engine(ScriptedRunner(lambda n: solution if n >= 3 else wrong), SUDOKU, Limits(max_batch=8))
    p = SearchParams(rollouts=2, steps=2, waves=4, early_exit="verified")
    (res,) = solve(eng, Request(SUDOKU, puzzle, p))
    # wave 1: steps 1-2 fail; wave 2's first step verifies
    assert (res.waves, res.row_steps, res.rollouts, res.finish, res.verified) == (2, 6, 4, "early_exit", True)
    assert res.selection.index >= 2 and (res.answer == solution).all()


def test_waves_without_a_verified_row_run_them_all_and_select_over_every_wave(tiny_model):
    p = SearchParams(rollouts=3, steps=2, noise=0.5, seed=7, early_exit="verified")
    (one,) = solve(engine(tiny_model), Request(SUDOKU, puzzle(), p))
    (three,) = solve(engine(tiny_model), Request(SUDOKU, puzzle(), p.replace(waves=3)))
    assert (three.waves, three.rollouts, three.row_steps, three.finish) == (3, 9, 18, "completed")
    assert np.array_equal(three.rows.answers[:3], one.rows.answers)  # wave 1 is the plain rollouts
    assert not np.array_equal(three.rows.answers[3:6], one.rows.answers)  # later waves draw new noise
    assert three.selection.index == int(np.argmax(three.rows.q))


def test_later_waves_put_every_row_on_a_new_symmetry():
    req = Request(SUDOKU, puzzle(), SearchParams(rollouts=3, diversity="augment", waves=2))
    first = req.inputs.copy()
    assert (first[0] == req.puzzle).all() and not (first[1:] == req.puzzle).all(axis=1).any()
    req.start_node(req.puzzle)
    assert not (req.inputs == req.puzzle).all(axis=1).any() and not (req.inputs == first).all(axis=1).any()


def test_a_wave_that_could_not_finish_before_the_deadline_is_not_started():
    """Waves stop early and answer with the best row so far, rather than run into the deadline and fail."""

    class Slow(ScriptedRunner):
        def launch(self, batch):
            time.sleep(0.2)  # one row-step per 0.2 s: the pace the engine measures
            return super().launch(batch)

    eng = Engine(Slow(lambda n: np.full(81, 2)), SUDOKU, Limits(max_batch=8))
    p = SearchParams(rollouts=1, steps=1, waves=8, early_exit="verified", timeout_s=1.0)
    (res,) = solve(eng, Request(SUDOKU, puzzle(), p))  # all 8 waves would take 1.6 s
    assert 2 <= res.waves < 8 and res.finish == "completed" and res.rollouts == res.waves


def test_waves_need_an_early_exit_rule():
    """Without early exit there is no reason to stop, so a checkpoint's default waves must not multiply the work."""
    eng = Engine(ScriptedRunner(lambda n: np.full(81, 2)), SUDOKU, Limits(max_batch=8))
    (res,) = solve(eng, Request(SUDOKU, puzzle(), SearchParams(rollouts=2, steps=2, waves=4, early_exit="off")))
    assert (res.waves, res.row_steps) == (1, 4)
