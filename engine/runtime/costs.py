"""What a request is expected to cost, learned online (issue 34): row-steps per finished request, per search setting.

Admission by the worst case refused work that would finish: `sudoku-trm`'s default search may run 4 waves of 128
rows x 16 steps, yet spends about 470 row-steps on a hard puzzle, since it stops at the first verified row. So the
scheduler admits by a high quantile (QUANTILE) of the row-steps that the last WINDOW finished requests with the same
settings (the search parameters less seed and deadline; one engine is one model) ran, once MIN_SAMPLES of them
finished; before that it charges what it charged before: the current wave or node at full depth.

A request cut by its deadline ran less than it needed, so it counts as its worst case: were it counted at what it ran,
an overload would teach admission that requests are cheap and admit more of them. With more than 1 - QUANTILE of
them cut, the quantile is the worst case, and admission is as cautious as it used to be until they stop.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import fields

from engine.search import SearchParams

QUANTILE = 0.9
WINDOW = 64  # recent finished requests per setting
MIN_SAMPLES = 8
SETTINGS = 256  # settings remembered (the least recently admitted one is forgotten first)


class Cost:
    """One search setting's recent row-steps per finished request, and their quantile (None until MIN_SAMPLES)."""

    def __init__(self):
        self.samples: deque[int] = deque(maxlen=WINDOW)
        self.expected: int | None = None  # read by admission on any thread; written by the engine thread

    def observe(self, row_steps: int) -> None:
        self.samples.append(row_steps)
        if len(self.samples) >= MIN_SAMPLES:
            ordered = sorted(self.samples)
            self.expected = ordered[math.ceil(QUANTILE * len(ordered)) - 1]  # the nearest-rank quantile


# What makes two requests' costs comparable: every search parameter but the seed and the deadline
SETTING = tuple(f.name for f in fields(SearchParams) if f.name not in ("seed", "timeout_s", "strict_deadline"))


class Costs:
    """Cost records by search setting (callers hold the scheduler's lock)."""

    def __init__(self):
        self._by_setting: OrderedDict[tuple, Cost] = OrderedDict()

    def of(self, params: SearchParams) -> Cost:
        key = tuple(getattr(params, name) for name in SETTING)
        cost = self._by_setting.pop(key, None) or Cost()
        self._by_setting[key] = cost
        while len(self._by_setting) > SETTINGS:
            self._by_setting.popitem(last=False)
        return cost
