"""TRM and GRAM architecture configs (field names follow the official TRM `arch` section, TRM.md §1.1) and named
presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

POS_ENCODINGS = ("rope", "learned", "none")
FORWARD_DTYPES = ("bfloat16", "float16", "float32")


def compute_dtype(device: str, preferred: str = "bfloat16") -> str:
    """`preferred` (the official bf16) on accelerators; float32 on CPU, where bf16 matmuls without native support
    ran 8-23x slower (benchmarks/RESULTS.md)."""
    return "float32" if device.split(":")[0] == "cpu" else preferred


@dataclass(frozen=True, slots=True)
class TRMConfig:
    seq_len: int
    vocab_size: int
    num_puzzle_identifiers: int = 1
    puzzle_emb_ndim: int = 512  # 0: no puzzle vector; the puzzle_emb_len prefix slots (if any) are then all zero
    puzzle_emb_len: int = 16  # prefix slots; 0 means ceil(puzzle_emb_ndim / hidden_size)
    hidden_size: int = 512
    num_heads: int = 8
    expansion: float = 4.0
    L_layers: int = 2
    H_cycles: int = 3  # T: latent-recursion cycles per supervision step
    L_cycles: int = 6  # n: latent updates per cycle
    pos_encodings: str = "rope"
    mlp_t: bool = False  # token-mixing MLP instead of attention (the Sudoku "TRM-MLP")
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    halt_max_steps: int = 16  # N_sup supervision steps
    halt_exploration_prob: float = 0.1
    forward_dtype: str = "bfloat16"

    def __post_init__(self):
        _require(
            self.pos_encodings in POS_ENCODINGS,
            f"pos_encodings must be one of {POS_ENCODINGS}, got {self.pos_encodings!r}",
        )
        _require(
            self.forward_dtype in FORWARD_DTYPES,
            f"forward_dtype must be one of {FORWARD_DTYPES}, got {self.forward_dtype!r}",
        )
        _require(self.hidden_size % self.num_heads == 0, "hidden_size must be divisible by num_heads")
        _require(self.pos_encodings != "rope" or self.head_dim % 2 == 0, "RoPE needs an even head_dim")
        for name in (
            "seq_len",
            "vocab_size",
            "num_puzzle_identifiers",
            "L_layers",
            "H_cycles",
            "L_cycles",
            "halt_max_steps",
        ):
            _require(getattr(self, name) >= 1, f"{name} must be at least 1")
        if self.puzzle_emb_ndim > 0:
            _require(
                self.puzzle_emb_ndim <= self.prefix_len * self.hidden_size, "puzzle_emb_ndim does not fit the prefix"
            )

    @property
    def prefix_len(self) -> int:
        if self.puzzle_emb_len == 0:
            return -(self.puzzle_emb_ndim // -self.hidden_size)
        return self.puzzle_emb_len

    @property
    def total_len(self) -> int:
        return self.seq_len + self.prefix_len

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TRMConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            kind = cls.__name__.removesuffix("Config")  # TRM or GRAM
            raise ValueError(f"unknown {kind} config field(s): {', '.join(unknown)}")
        return cls(**d)


@dataclass(frozen=True, slots=True)
class GRAMConfig(TRMConfig):
    """TRM's fields, read the GRAM way (PTRM_GRAM.md §4.1): H_cycles = T stochastic high-level transitions per
    supervision step, L_cycles = K deterministic low-level updates per transition; plus the noise heads."""

    sigma_min: float = 0.01  # the Gaussians' scale is sigma_min + (sigma_max - sigma_min) * sigmoid(s)
    sigma_max: float = 1.0
    sigma_init: float = 0.1  # scale of both heads at initialisation
    lprm: bool = True  # the LPRM value head
    unconditional: bool = False  # a generator: trained on all-blank inputs
    posterior_on: str = "last"  # transitions drawn from q given a target: "last" of each step, or "all"

    def __post_init__(self):
        TRMConfig.__post_init__(self)  # explicit: zero-argument super() breaks in slots dataclasses
        _require(0 < self.sigma_min < self.sigma_init < self.sigma_max, "need 0 < sigma_min < sigma_init < sigma_max")
        _require(self.posterior_on in ("last", "all"), f"posterior_on must be last or all, got {self.posterior_on!r}")


@dataclass(frozen=True, slots=True)
class HRMConfig(TRMConfig):
    """HRM (arXiv:2506.21734) as the official `hrm_act_v1` code builds it: TRM's fields, plus H_layers blocks of a
    second stack that updates z_H (TRM updates both states with one stack). Defaults are the released checkpoints'
    sizes. The puzzle prefix is always ceil(puzzle_emb_ndim / hidden_size) slots (HRM has no puzzle_emb_len)."""

    puzzle_emb_len: int = 0  # 0: ceil(puzzle_emb_ndim / hidden_size), the only prefix HRM has
    L_layers: int = 4
    H_cycles: int = 2
    L_cycles: int = 2
    H_layers: int = 4

    def __post_init__(self):
        TRMConfig.__post_init__(self)  # explicit: zero-argument super() breaks in slots dataclasses
        _require(self.H_layers >= 1, "H_layers must be at least 1")
        ceil = -(self.puzzle_emb_ndim // -self.hidden_size)
        _require(
            self.prefix_len == ceil,
            f"HRM's puzzle prefix is ceil(puzzle_emb_ndim / hidden_size) = {ceil} slots; puzzle_emb_len "
            f"{self.puzzle_emb_len} would give {self.prefix_len}",
        )


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


_PAPER = dict(hidden_size=512, num_heads=8, expansion=4.0, L_layers=2, H_cycles=3, halt_max_steps=16)

# Paper configurations (TRM.md §10.1) plus small ones for CPU training and tests; names start with the task.
PRESETS: dict[str, dict] = {
    "sudoku-mlp": dict(_PAPER, seq_len=81, vocab_size=11, L_cycles=6, mlp_t=True, pos_encodings="none"),
    "sudoku-attn": dict(_PAPER, seq_len=81, vocab_size=11, L_cycles=6, pos_encodings="rope"),
    "maze-attn": dict(_PAPER, seq_len=900, vocab_size=6, L_cycles=4, pos_encodings="rope"),
    "arc-attn": dict(_PAPER, seq_len=900, vocab_size=12, L_cycles=4, pos_encodings="rope"),
    # Sized for CPU training: one prefix slot and expansion 2 keep both SwiGLU inner sizes at 256.
    "sudoku-small": dict(
        seq_len=81,
        vocab_size=11,
        hidden_size=128,
        num_heads=4,
        expansion=2.0,
        puzzle_emb_ndim=128,
        puzzle_emb_len=1,
        H_cycles=2,
        L_cycles=2,
        mlp_t=True,
        pos_encodings="none",
    ),
    "sudoku-tiny": dict(
        seq_len=81,
        vocab_size=11,
        hidden_size=64,
        num_heads=2,
        expansion=2.0,
        puzzle_emb_ndim=64,
        puzzle_emb_len=2,
        H_cycles=2,
        L_cycles=2,
        halt_max_steps=4,
        mlp_t=True,
        pos_encodings="none",
    ),
    # ARC's shape (30x30 canvas, 12 tokens) at sudoku-tiny's width, with RoPE attention; engine-train sets
    # num_puzzle_identifiers from the dataset (one embedding row per augmented variant).
    "arc-tiny": dict(
        seq_len=900,
        vocab_size=12,
        hidden_size=64,
        num_heads=2,
        expansion=2.0,
        puzzle_emb_ndim=64,
        puzzle_emb_len=1,
        H_cycles=2,
        L_cycles=2,
        halt_max_steps=4,
        pos_encodings="rope",
    ),
    # N-Queens completion (GRAM §4.2) on CPU: the paper's 16 zero-padded prefix slots (no puzzle vector), sudoku-small's
    # width and token-mixing MLP (a small fixed board, where TRM-MLP beat attention on Sudoku), N_sup 8 so a CPU hour
    # sees twice the samples; engine-train sets seq_len from the dataset (64 or 100 cells).
    "nqueens-small": dict(
        seq_len=64,
        vocab_size=3,
        hidden_size=128,
        num_heads=4,
        expansion=2.0,
        puzzle_emb_ndim=0,
        puzzle_emb_len=16,
        H_cycles=2,
        L_cycles=2,
        halt_max_steps=8,
        mlp_t=True,
        pos_encodings="none",
    ),
}


# GRAM (PTRM_GRAM.md §4.7): the paper's Sudoku net is TRM-MLP sized with T = 3, K = 6, N_sup = 16; the small ones
# mirror sudoku-small / sudoku-tiny for CPU training and tests.
GRAM_PRESETS: dict[str, dict] = {
    "gram-sudoku": dict(PRESETS["sudoku-mlp"]),
    "gram-sudoku-small": dict(PRESETS["sudoku-small"]),
    "gram-sudoku-gen-small": dict(PRESETS["sudoku-small"], unconditional=True),
    "gram-sudoku-tiny": dict(PRESETS["sudoku-tiny"]),
    "gram-nqueens-small": dict(PRESETS["nqueens-small"]),
}


# HRM's released checkpoints (sapientinc/HRM-checkpoint-*): 4 + 4 layers, H_cycles 2, L_cycles 2, one prefix slot.
HRM_PRESETS: dict[str, dict] = {
    "hrm-sudoku": dict(seq_len=81, vocab_size=11, puzzle_emb_ndim=512, pos_encodings="rope"),
    "hrm-maze": dict(seq_len=900, vocab_size=6, puzzle_emb_ndim=512, pos_encodings="rope"),
}


def preset(name: str, **overrides) -> TRMConfig:
    """A TRMConfig, or a GRAMConfig for the `gram-*` names, an HRMConfig for the `hrm-*` ones."""
    if name in GRAM_PRESETS:
        return GRAMConfig(**{**GRAM_PRESETS[name], **overrides})
    if name in HRM_PRESETS:
        return HRMConfig(**{**HRM_PRESETS[name], **overrides})
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join([*PRESETS, *GRAM_PRESETS, *HRM_PRESETS])}")
    return TRMConfig(**{**PRESETS[name], **overrides})
