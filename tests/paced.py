"""A fixed-pace runner for the timing tests (issue 28): the real Runner's interface, with every step of n rows
taking a fixed time (a sleep, so the machine's load barely moves it) and answering a fixed rule-breaking grid
with q = -5 (no row verifies or is confident: every request runs its full budget). Admission, deadlines, bursts and
drains then play out the same way on an idle and on a loaded machine.

`python tests/paced.py ARGS` is engine-serve (server.main) on this runner, for tests that need a real process.
"""

import sys
import time

import numpy as np

from engine.runtime import Runner
from engine.runtime.runner import StepResult


class PacedRunner(Runner):
    # A step of n rows takes step_s + n x row_s seconds. The default is a CPU's pace (time grows with the rows: a step
    # of the small test batch, 8 rows, takes 40 ms, far above host work); row_s = 0 with step_s > 0 is a GPU's.
    row_s = 0.005
    step_s = 0.0
    steps = 0  # steps launched: a clock in steps, which no stall of the process moves

    def launch(self, batch):
        self.steps += 1
        # steps queue one after another, as on a device: this one is ready a step's time after the later of now and
        # the previous one's end
        cost = self.step_s + len(batch.slots) * self.row_s
        self._ready = max(time.perf_counter(), getattr(self, "_ready", 0.0)) + cost
        return batch, self._ready

    def collect(self, launched) -> StepResult:
        batch, ready = launched
        time.sleep(max(0.0, ready - time.perf_counter()))
        n, (seq_len, vocab) = len(batch.slots), (batch.inputs.shape[1], self.model.config.vocab_size)
        answers = np.full((n, seq_len), vocab - 1, np.int64)  # one value everywhere: breaks every Sudoku rule
        probs = np.full((n, seq_len, vocab), 1 / vocab, np.float32) if batch.want_probs else None
        return StepResult(answers, np.full(n, -5.0, np.float32), None, None, probs)


def pace(monkeypatch) -> None:
    """Engines built from now on (server.models.build_solver) run on the paced runner."""
    import server.models

    monkeypatch.setattr(server.models, "Runner", PacedRunner)


if __name__ == "__main__":
    import server.main
    import server.models

    server.models.Runner = PacedRunner
    server.main.main(sys.argv[1:])
