"""Training configuration and named presets (TRM.md §8.5, §10.1)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TrainConfig:
    model_preset: str
    model_overrides: dict = field(default_factory=dict)  # e.g. {"H_cycles": 2, "L_cycles": 2} for the T/n ablations
    global_batch_size: int = 768
    steps: int = 65_100  # optimizer steps (one ACT step on a batch of carries each)
    # wall-clock budget, evaluations included: stop (evaluate, save) at the first step past it
    minutes: float | None = None
    lr: float = 1e-4
    lr_min_ratio: float = 1.0  # 1.0: constant after warm-up, as the paper
    warmup_steps: int = 2000
    weight_decay: float = 1.0
    puzzle_emb_lr: float = 1e-4
    puzzle_emb_weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.95)
    ema: bool = True
    ema_decay: float = 0.999
    loss: str = "stablemax"  # or "softmax"
    ignore_label_id: int | None = None  # a label token left out of the loss (ARC's PAD 0, from dataset.json)
    eval_every: int = 5000
    eval_limit: int | None = None  # held-out puzzles per evaluation (None: all)
    save_every: int = 1000
    seed: int = 0
    curriculum: float = 0.0  # fraction of training over which the data shares move from all-easy to final
    curriculum_easy: str = "generated"  # the easy source a curriculum starts from
    init_from: str | None = None  # checkpoint whose weights (and model config) the run started from
    data: dict = field(default_factory=dict)  # engine-train's data flags (paths as given), so --resume needs only --out
    # rows per puzzle: each sample under `group` random symmetries, halting together, scored by the likelihood of the
    # solution under their mixture (TRM only; 1 is the paper's per-row loss)
    group: int = 1
    # GRAM (PTRM_GRAM.md §4.3-4.5); ignored by TRM
    arch: str = "trm"  # or "gram"
    kl_beta: float = 0.1  # 0.1 Sudoku solving, 0.05 unconditional generation
    kl_balance: float = 0.8
    kl_sum: bool = False  # the KL of a whole row against the per-token CE, instead of per position (gram_loss)
    lprm_weight: float = 1.0
    generator: bool = False  # unconditional: all-blank inputs, complete grids as targets
    # Posterior-collapse guard, checked at each evaluation from step `collapse_after` on (None disables a test):
    collapse_min_kl: float | None = 1e-4  # stop when the KL per position (nats) falls below this
    collapse_max_gap: float | None = 0.5  # stop when posterior exact accuracy exceeds prior's by more than this
    collapse_after: int = 0

    def __post_init__(self):
        if self.arch not in ("trm", "gram"):
            raise ValueError(f"arch must be trm or gram, got {self.arch!r}")
        if (self.arch == "gram") != self.model_preset.startswith("gram-"):
            raise ValueError(f"model preset {self.model_preset!r} does not fit arch {self.arch!r}")
        if self.generator and self.arch != "gram":
            raise ValueError("generator training needs arch gram")
        if self.loss not in ("stablemax", "softmax"):
            raise ValueError(f"loss must be stablemax or softmax, got {self.loss!r}")
        for name in ("global_batch_size", "steps", "eval_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.group < 1 or self.global_batch_size % self.group:
            raise ValueError(f"group must be at least 1 and divide the global batch {self.global_batch_size}")
        if self.group > 1 and self.arch != "trm":
            raise ValueError("group training is for arch trm")
        if self.ignore_label_id is not None and (self.arch != "trm" or self.group != 1):
            raise ValueError("an ignore label (ARC) trains arch trm with group 1")
        if self.minutes is not None and self.minutes <= 0:
            raise ValueError(f"minutes must be positive, got {self.minutes}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict] = {
    # The paper's Sudoku-MLP recipe: 1 GPU (L40S) for < 36 h.
    "paper": dict(model_preset="sudoku-mlp"),
    # What 2 CPU cores can train in about an hour: a narrower net, fewer recursions, a shorter warm-up, a higher LR.
    "cpu-small": dict(
        model_preset="sudoku-small",
        global_batch_size=64,
        steps=6000,
        lr=1e-3,
        puzzle_emb_lr=1e-3,
        warmup_steps=100,
        weight_decay=0.1,
        puzzle_emb_weight_decay=0.1,
        eval_every=1000,
        eval_limit=500,
        save_every=100,
    ),
    # Seconds-long runs for tests and smoke checks.
    "tiny": dict(
        model_preset="sudoku-tiny",
        global_batch_size=16,
        steps=20,
        lr=1e-3,
        puzzle_emb_lr=1e-3,
        warmup_steps=5,
        eval_every=10,
        eval_limit=32,
        save_every=5,
    ),
    # ARC on CPU (a pipeline check, not an ARC solver): 900-token rows cost ~11x a Sudoku row. The official ARC
    # recipe's embedding LR (1e-2) and weight decay (0.1, both tables) (TRM.md §8.5).
    "arc-tiny": dict(
        model_preset="arc-tiny",
        global_batch_size=16,
        steps=2000,
        lr=1e-3,
        puzzle_emb_lr=1e-2,
        warmup_steps=50,
        weight_decay=0.1,
        puzzle_emb_weight_decay=0.1,
        ema_decay=0.99,
        eval_every=100,
        eval_limit=64,
        save_every=20,
    ),
}

# GRAM on CPU: the cpu-small recipe with softmax CE (a proper likelihood for the ELBO) and a shorter EMA horizon,
# since CPU runs last a few thousand steps only.
_GRAM_CPU = dict(
    PRESETS["cpu-small"],
    arch="gram",
    loss="softmax",
    ema_decay=0.995,
    steps=3000,
    eval_every=300,
    eval_limit=200,
    collapse_after=1200,
)
PRESETS.update(
    {
        "gram-cpu-small": dict(_GRAM_CPU, model_preset="gram-sudoku-small", kl_beta=0.1),
        "gram-gen-cpu-small": dict(
            _GRAM_CPU, model_preset="gram-sudoku-gen-small", kl_beta=0.05, generator=True, collapse_max_gap=None
        ),
        "gram-paper": dict(model_preset="gram-sudoku", arch="gram", loss="softmax", kl_beta=0.1),
        "gram-tiny": dict(PRESETS["tiny"], model_preset="gram-sudoku-tiny", arch="gram", loss="softmax"),
    }
)

# N-Queens completion on CPU (GRAM §4.2): the GRAM CPU recipe with the paper's beta per board (0.07 for 8x8, 0.045
# for 10x10); TRM trains with the same net, data and budget. Held-out accuracy is validity (any completion counts).
# The KL is charged per row (kl_sum): per position, beta 0.07 let the posterior pass y to h for 0.05 nats a token,
# and the prior never produced a valid board (docs/multi-solution.md).
_NQUEENS = dict(
    _GRAM_CPU, steps=6000, eval_every=500, eval_limit=None, save_every=100, collapse_after=2000, kl_sum=True
)
PRESETS.update(
    {
        "gram-nqueens8": dict(_NQUEENS, model_preset="gram-nqueens-small", kl_beta=0.07),
        "gram-nqueens10": dict(_NQUEENS, model_preset="gram-nqueens-small", kl_beta=0.045),
        "nqueens": dict(_NQUEENS, model_preset="nqueens-small", arch="trm", loss="stablemax"),
    }
)


def train_preset(name: str, **overrides) -> TrainConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown training preset {name!r}; known: {', '.join(PRESETS)}")
    return TrainConfig(**{**PRESETS[name], **overrides})
