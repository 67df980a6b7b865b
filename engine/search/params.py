"""SearchParams: how one request is searched (K rollouts, D supervision steps, noise, selection, early exit, deadline).

Defaults come from the checkpoint: its config.json may hold a "search" section; otherwise PTRM's per-task settings
(PTRM_GRAM.md §1, table) with K capped at 16 so a default request stays cheap on a CPU, and D = the trained N_sup.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

NOISE_TARGETS = ("z", "y", "both")  # z = z_L, the paper's target; y = z_H; both
SELECTORS = ("q", "vote", "verifier", "likelihood", "prior", "lprm")
EARLY_EXIT = ("off", "verified", "confident")
STRATEGIES = ("rollouts", "commit")
DIVERSITY = ("noise", "augment", "both", "none")  # what makes a request's rows differ
ORDERS = ("margin", "max")  # commit search: which undecided cell is most certain (SEARCH.md §1)
BACKTRACK = ("dfs", "restart", "off")
POLICIES = ("model", "uniform")  # uniform: legal values equally likely, random cell order (the baseline)

# PTRM's per-task noise scale (PTRM_GRAM.md §1): Sudoku-Extreme 0.3, Maze-Hard 1.0, ARC-AGI-2 0.2.
PTRM_NOISE = {"sudoku": 0.3, "maze": 1.0, "arc": 0.2}
DEFAULT_ROLLOUTS = 16


@dataclass(frozen=True, slots=True)
class SearchParams:
    rollouts: int = 1  # K rows, each an independent rollout
    # rollouts: up to this many rounds of K fresh rows (new seeds and symmetries) on the puzzle, the next only when
    # the last ended without an early exit (so only with early_exit on); K rows at a time, so hard puzzles get more
    # rows and easy ones pay for one
    waves: int = 1
    steps: int = 16  # D supervision steps per row (no ACT halting: PTRM §3.2)
    noise: float = 0.0  # sigma of the N(0, sigma^2) added before every step (TRM); unused by GRAM (learned prior)
    noise_target: str = "z"
    selector: str = "q"
    seed: int = 0
    early_exit: str = "off"  # "verified": stop once a row's answer passes the rule verifier; "confident": sigmoid(q)
    confidence: float = 0.95  # the "confident" threshold on sigmoid(q_halt)
    timeout_s: float | None = None  # deadline, counted from submission
    # at the deadline a search answers with the best it has (finish "deadline"); strict: it fails instead (HTTP 504)
    strict_deadline: bool = False
    strategy: str = "rollouts"  # or "commit": commit certain cells, branch and backtrack (engine/search/commit.py)
    diversity: str = "noise"  # noise: PTRM; augment: a random task symmetry per row; both; none
    # commit search (one node = K rows for D steps on the puzzle plus the cells committed so far)
    max_nodes: int = 64
    max_row_steps: int | None = None
    threshold: float = 0.9  # commit undecided cells whose (masked) probability reaches this
    # a cell reaching the threshold commits only if the parent node's rows (another random symmetry when augmented)
    # answered it the same: two views instead of one, at no extra row-steps (commit.py)
    agree: bool = False
    width: int | None = None  # values tried when branching on a cell (None: every legal value)
    order: str = "margin"
    mask: bool = True  # the task's legal-value mask (and commits it forces)
    temperature: float = 0.0  # 0: most probable value first; > 0: values sampled (generation)
    backtrack: str = "dfs"  # at a dead end: depth-first backtracking, restart from the puzzle, or stop
    policy: str = "model"

    def __post_init__(self):
        _require(self.rollouts >= 1, f"rollouts must be at least 1, got {self.rollouts}")
        _require(self.waves >= 1, f"waves must be at least 1, got {self.waves}")
        _require(self.steps >= 1, f"steps must be at least 1, got {self.steps}")
        _require(self.noise >= 0, f"noise must be non-negative, got {self.noise}")
        _require(self.noise_target in NOISE_TARGETS, f"noise_target must be one of {NOISE_TARGETS}")
        _require(self.selector in SELECTORS, f"selector must be one of {SELECTORS}, got {self.selector!r}")
        _require(self.early_exit in EARLY_EXIT, f"early_exit must be one of {EARLY_EXIT}, got {self.early_exit!r}")
        _require(0 < self.confidence < 1, f"confidence must be in (0, 1), got {self.confidence}")
        _require(self.timeout_s is None or self.timeout_s > 0, f"timeout_s must be positive, got {self.timeout_s}")
        for name, allowed in (
            ("strategy", STRATEGIES),
            ("diversity", DIVERSITY),
            ("order", ORDERS),
            ("backtrack", BACKTRACK),
            ("policy", POLICIES),
        ):
            value = getattr(self, name)
            _require(value in allowed, f"{name} must be one of {allowed}, got {value!r}")
        _require(self.max_nodes >= 1, f"max_nodes must be at least 1, got {self.max_nodes}")
        _require(
            self.max_row_steps is None or self.max_row_steps >= 1,
            f"max_row_steps must be at least 1, got {self.max_row_steps}",
        )
        _require(0 < self.threshold <= 1, f"threshold must be in (0, 1], got {self.threshold}")
        _require(self.width is None or self.width >= 1, f"width must be at least 1, got {self.width}")
        _require(self.temperature >= 0, f"temperature must be non-negative, got {self.temperature}")

    @property
    def noisy(self) -> bool:
        return self.diversity in ("noise", "both")

    @property
    def augmented(self) -> bool:
        return self.diversity in ("augment", "both")

    @property
    def sigma_z(self) -> float:
        return self.noise if self.noisy and self.noise_target in ("z", "both") else 0.0

    @property
    def sigma_y(self) -> float:
        return self.noise if self.noisy and self.noise_target in ("y", "both") else 0.0

    @property
    def wave_limit(self) -> int:
        """Waves a search can run: a next wave starts only after one ended without an early exit, so there is only
        one without an early-exit rule."""
        return self.waves if self.early_exit != "off" else 1

    def replace(self, **changes) -> SearchParams:
        return dataclasses.replace(self, **changes)


def default_params(task: str, arch: str, halt_max_steps: int, search: dict | None = None) -> SearchParams:
    """A checkpoint's defaults: its config.json "search" section over PTRM's per-task settings."""
    base = SearchParams(
        rollouts=DEFAULT_ROLLOUTS,
        steps=halt_max_steps,
        # HRM (TRM's loop with a second stack) searches as TRM does: PTRM noise on z_L, best-Q on its halting score
        noise=PTRM_NOISE.get(task, 0.3) if arch in ("trm", "hrm") else 0.0,
        selector="q" if arch in ("trm", "hrm") else "vote",  # GRAM selects by vote (or LPRM) in its paper (§4.6)
    )
    if task == "arc":  # the augmented variants are the samples, one plain row each, all voting (TRM.md §9)
        base = base.replace(rollouts=1, noise=0.0, early_exit="off")
    return base.replace(**(search or {}))


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
