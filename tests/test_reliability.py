"""Reliability (issue 16): deadline-aware admission, the body limit on bytes received, parse errors named, no host
paths, strict types, idle connections closed, unsolvable puzzles refused, the resolve/cancel race, graceful shutdown
on a real SIGTERM, and a CPU-sized chaos/load run. Tiny random models built here; nothing read from ../shared/."""

from concurrent.futures import Future

from engine.runtime import Engine, Limits, Request, Runner
from engine.search import SearchParams
from engine.tasks import get_task

SUDOKU = get_task("sudoku")
PUZZLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"


# -- item 4: the resolve/cancel race -----------------------------------------------------------------------------------


class RacyFuture(Future):
    """Once armed, the client cancels right after the engine checked `cancelled()`: the racy moment."""

    armed = False

    def cancelled(self) -> bool:
        was = super().cancelled()
        if self.armed:
            self.armed = False
            self.cancel()
        return was

    def set_running_or_notify_cancel(self) -> bool:  # the same client, for an engine that claims atomically
        if self.armed:
            self.armed = False
            self.cancel()
        return super().set_running_or_notify_cancel()


def test_a_cancel_between_check_and_set_fails_no_other_request(tiny_model):
    eng = Engine(Runner(tiny_model, max_batch=8, static=False), SUDOKU, Limits(max_batch=8))
    racy = Request(SUDOKU, SUDOKU.encode(PUZZLE), SearchParams(rollouts=1, steps=1), future=RacyFuture())
    other = Request(SUDOKU, SUDOKU.encode(PUZZLE), SearchParams(rollouts=1, steps=3))
    remove = eng.scheduler.remove

    def remove_then_arm(req):  # _resolve/_fail remove the request, then look at its future
        remove(req)
        if req is racy:
            racy.future.armed = True

    eng.scheduler.remove = remove_then_arm
    eng.submit(racy)
    eng.submit(other)
    eng.start()
    try:
        result = other.future.result(timeout=30)  # before the fix: RequestError("engine error: InvalidStateError")
    finally:
        eng.shutdown(drain=False, timeout=5)
    assert result.row_steps == 3 and racy.future.cancelled()
