"""Request and response bodies. The per-request limits come from Settings and live in the schema (Field(le=...)), so
/docs shows the limits this server enforces; `build_requests` makes the request models for one app."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from engine.search.params import BACKTRACK, DIVERSITY, EARLY_EXIT, ORDERS, SELECTORS, STRATEGIES
from engine.tasks.carve import CLUE_FLOOR
from server.settings import Settings

Selector = Literal[SELECTORS]  # type: ignore[valid-type]
EarlyExit = Literal[EARLY_EXIT]  # type: ignore[valid-type]
Puzzle = str | list[Any]
PUZZLE_DOC = (
    "Text (Sudoku: 81 characters, '.' or '0' for blanks, whitespace ignored) or nested lists of ints (0 blank). "
    "The answer comes back in the same form."
)
STREAM_DOC = (
    "answer with Server-Sent Events (as does `Accept: text/event-stream`): `progress` after supervision steps, then "
    "`result` (this response body) or `error`, then `done`"
)
PUZZLE_FIELDS = ("clues", "minimal", "difficulty")  # /generate fields for kind "puzzle" only
SUDOKU_EXAMPLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"


class Strict(BaseModel):
    # strict: no "4" -> 4 or true -> 1 coercion at the HTTP boundary (an int still passes as a float); Python's JSON
    # parser reads NaN and Infinity, which would otherwise fail a bound ("less than or equal to 10") and say so
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


@dataclass(frozen=True)
class RequestModels:
    Search: type[BaseModel]
    Solve: type[BaseModel]
    Generate: type[BaseModel]


def build_requests(s: Settings) -> RequestModels:
    class SearchIn(Strict):
        """Search parameters; anything left out takes the checkpoint's default (GET /v1/models)."""

        rollouts: int | None = Field(None, ge=1, le=s.max_rollouts, description="K parallel rollouts (rows)")
        steps: int | None = Field(None, ge=1, le=s.max_steps, description="D supervision steps per rollout")
        noise: float | None = Field(None, ge=0, le=10, description="sigma of the latent noise (TRM; PTRM)")
        selector: Selector | None = Field(None, description="how one answer is chosen among the rollouts")
        seed: int | None = Field(
            None,
            ge=0,
            le=2**31 - 1,
            description="the rollouts' noise and symmetries; omitted: the checkpoint's (0), so the same request "
            "always gives the same answer",
        )
        early_exit: EarlyExit | None = Field(None, description="stop once a row's answer verifies (or is confident)")
        strategy: Literal[STRATEGIES] | None = Field(  # type: ignore[valid-type]
            None, description="rollouts (K rows, one selected) or commit (commit certain cells, branch, backtrack)"
        )
        diversity: Literal[DIVERSITY] | None = Field(  # type: ignore[valid-type]
            None, description="what makes the rows differ: PTRM noise, a random symmetry per row, both, none"
        )
        waves: int | None = Field(
            None, ge=1, le=s.max_waves, description="rollouts: rounds of K fresh rows, the next only if no early exit"
        )
        max_nodes: int | None = Field(None, ge=1, le=s.max_nodes, description="commit: nodes expanded at most")
        max_row_steps: int | None = Field(
            None, ge=1, le=s.max_rollouts * s.max_steps * s.max_nodes, description="commit: row-steps at most"
        )
        threshold: float | None = Field(None, gt=0, le=1, description="commit: cells at least this certain")
        agree: bool | None = Field(
            None, description="commit: a certain cell commits only if the parent node's rows answered it the same"
        )
        width: int | None = Field(None, ge=1, le=64, description="commit: values tried per branch (default all)")
        order: Literal[ORDERS] | None = Field(None, description="commit: most certain cell by margin or max")  # type: ignore[valid-type]
        mask: bool | None = Field(None, description="commit: the rules' legal-value mask")
        backtrack: Literal[BACKTRACK] | None = Field(None, description="commit: at a dead end")  # type: ignore[valid-type]
        strict_deadline: bool | None = Field(
            None,
            description="at the deadline, fail (504) instead of answering with the best found so far "
            "(`finish: \"deadline\"`, `verified` as it is)",
        )

    class SolveRequest(Strict):
        puzzle: Puzzle | None = Field(
            None, description=PUZZLE_DOC + " Required, except for ARC with `test_index`.", examples=[SUDOKU_EXAMPLE]
        )
        task: str | None = Field(None, max_length=64, description="defaults to the model's task")
        name: str | None = Field(
            None,
            max_length=256,
            description="ARC: the task's name as the checkpoint was trained on it (its identifiers.json); every "
            "augmented variant of it runs and votes",
        )
        test_index: int | None = Field(
            None, ge=0, le=1000, description="ARC: solve the task's test input of this index (instead of `puzzle`)"
        )
        model: str | None = Field(None, max_length=256, description="a solver from GET /v1/models; default: first")
        search: SearchIn | None = None
        timeout_s: float | None = Field(
            None, gt=0, le=s.max_timeout_s, description=f"deadline; default {s.default_timeout_s} s"
        )
        stream: bool = Field(False, description=STREAM_DOC)
        solutions: int | None = Field(
            None,
            ge=1,
            le=s.max_solutions,
            description="up to this many distinct verified solutions, for puzzles with several (N-Queens, an "
            "ambiguous Sudoku), in `solutions`, with `count` and `coverage` where the exact count is known",
        )

        @field_validator("puzzle", mode="before")
        @classmethod
        def _puzzle_not_null(cls, value):
            # an explicit null is a client bug, not an omitted field: "Field required" would hide that it was sent
            if value is None:
                raise PydanticCustomError("null_puzzle", "must not be null (leave it out for ARC's `test_index`)")
            return value

    class GenerateRequest(Strict):
        task: Literal["sudoku"] = "sudoku"
        count: int = Field(1, ge=1, le=s.max_generate_count)
        kind: Literal["grid", "puzzle"] = Field("grid", description="complete grids, or puzzles with a unique solution")
        clues: int = Field(
            30,
            ge=CLUE_FLOOR,
            le=80,
            description=f"kind=puzzle: givens left in each puzzle (unless minimal); at least {CLUE_FLOOR}, the fewest "
            "carving random grids reaches (1 minimal puzzle in 370 has 21; 17-20-clue puzzles exist, but this "
            "generator does not find them)",
        )
        minimal: bool = Field(
            False,
            description="kind=puzzle: minimal puzzles (no given can be removed without losing uniqueness, proven by "
            "the exact solver); their clue count is what the removal order leaves (typically 22-27), not `clues`",
        )
        seed: int | None = Field(
            None,
            ge=0,
            le=2**31 - 1,
            description="omitted: a fresh random seed, returned as `seed` (new items every call); "
            "send it back to replay the same items",
        )
        difficulty: Literal["any", "hard"] = Field(
            "any",
            description="kind=puzzle: 'hard' keeps only puzzles that one plain row of the solver fails and its default "
            "search solves (minimal puzzles unless `clues` is given); every puzzle carries its measured `difficulty`",
        )
        max_samples: int | None = Field(
            None,
            ge=1,
            le=s.max_generate_samples,
            description=f"generator samples this request may draw; default {s.max_generate_samples}",
        )
        method: Literal["commit", "prior"] | None = Field(
            None,
            description="commit: decode cell by cell from the empty grid on a solver (default); "
            "prior: one-shot samples of a GRAM generator (a research baseline: the shipped one makes no valid grid, "
            "see its `status` in GET /v1/models)",
        )
        temperature: float = Field(1.0, ge=0, le=10, description="commit: sampling temperature of committed values")
        model: str | None = Field(None, max_length=256)
        timeout_s: float | None = Field(None, gt=0, le=s.max_timeout_s)
        stream: bool = Field(False, description=STREAM_DOC)

        @model_validator(mode="after")
        def _fields_apply(self):
            """A field sent where it does not apply is refused, not silently ignored."""
            sent = self.model_fields_set
            if self.kind == "grid" and (unused := [f for f in PUZZLE_FIELDS if f in sent]):
                fields = " and ".join(f"`{f}`" for f in unused)
                verb = "applies" if len(unused) == 1 else "apply"
                raise PydanticCustomError("not_applicable", f"{fields} {verb} to kind 'puzzle' only, not 'grid'")
            if self.minimal and "clues" in sent:
                message = "`clues` does not apply to minimal puzzles (their clue count is what the carving leaves)"
                raise PydanticCustomError("not_applicable", message)
            return self

    return RequestModels(SearchIn, SolveRequest, GenerateRequest)


class Timing(BaseModel):
    queued_s: float = Field(description="admission -> first supervision step")
    compute_s: float = Field(description="first step -> answer selected")
    total_s: float = Field(description="engine total: admission -> answer")
    server_s: float = Field(description="the HTTP handler's wall time, parsing and encoding included")


class ArcAttempt(BaseModel):
    grid: list[list[int]]
    votes: int = Field(description="rows (variants x rollouts) whose prediction, mapped back, is this grid")
    share: float = Field(description="votes / all votes")
    mean_q: float = Field(description="mean sigmoid(q halt logit) of its votes, the tie-break")


class FoundSolution(BaseModel):
    solution: Puzzle = Field(description="a verified solution, in the same form as the puzzle")
    grid: list[Any]
    samples: int = Field(description="rows (samples) whose answer it was")
    score: float = Field(description="mean sigmoid(q halt) of those rows")


class SolveResponse(BaseModel):
    solution: Puzzle = Field(description="the selected answer, in the same form as the puzzle")
    grid: list[Any] = Field(description="the answer as nested lists")
    verified: bool | None = Field(description="the answer obeys the rules and keeps the givens (None: no verifier)")
    fault: str | None = Field(None, description="the first rule the answer breaks")
    confidence: float = Field(description="sigmoid of the chosen rollout's Q halt logit")
    agreement: float = Field(description="share of rollouts whose answer equals the chosen one")
    selector: str = Field(description="the selector that chose (early_exit when a row verified first)")
    rollouts: int = Field(description="rollouts that ran at least one step")
    steps: int = Field(description="the most supervision steps any rollout ran")
    row_steps: int = Field(description="supervision steps summed over rollouts (and commit-search nodes)")
    finish: str = Field(
        description="rollouts: completed | early_exit; commit: verified | filled | budget | exhausted | dead_end; "
        "deadline: the best found when the deadline passed"
    )
    strategy: str
    diversity: str
    waves: int = Field(1, description="rollouts: rounds of K rows run")
    nodes: int = Field(0, description="commit: nodes expanded")
    backtracks: int = Field(0, description="commit: returns to an earlier choice")
    committed: int = Field(0, description="commit: cells committed beyond the givens in the last node")
    attempts: list[ArcAttempt] | None = Field(
        None, description="ARC: the two best candidates of the vote over variants (Kaggle's attempt_1, attempt_2)"
    )
    variants: int | None = Field(None, description="ARC: augmented variants run")
    solutions: list[FoundSolution] | None = Field(
        None, description="with `solutions`: the distinct verified solutions found, the most often found first"
    )
    count: int | None = Field(
        None, description="the puzzle's number of solutions, from the exact counter (None: unknown, or 1,000 or more)"
    )
    coverage: float | None = Field(None, description="with `solutions`: distinct solutions found / `count`")
    model: str
    task: str
    request_id: str
    timing: Timing


class Difficulty(BaseModel):
    one_row: bool = Field(description="one plain row of the solver (K = 1, no noise) solves it")
    solved: bool = Field(description="the solver's default search solves it")
    row_steps: int = Field(description="row-steps the default search spent on it")


class GeneratedItem(BaseModel):
    grid: list[list[int]] = Field(description="a complete grid, checked by the rule verifier")
    text: str
    valid: bool
    puzzle: str | None = Field(None, description="kind=puzzle: the puzzle, '.' for blanks")
    puzzle_grid: list[list[int]] | None = None
    clues: int | None = None
    unique: bool | None = Field(None, description="kind=puzzle: the exact solver found exactly one solution")
    minimal: bool | None = Field(
        None, description="kind=puzzle: no given can be removed without losing uniqueness (each checked by the solver)"
    )
    difficulty: Difficulty | None = Field(None, description="kind=puzzle: measured by the loaded solver")


class GenerateResponse(BaseModel):
    items: list[GeneratedItem]
    complete: bool = Field(
        description="as many items as asked for (false: the sample budget or the deadline ran out first; what was "
        "found is returned)"
    )
    sampled: int = Field(description="grids decoded for this request")
    valid: int = Field(description="of which valid complete grids")
    validity: float = Field(description="valid / sampled: the generator's raw validity")
    distinct: float = Field(description="share of distinct grids among the valid samples")
    row_steps: int = Field(description="model supervision steps (summed over rows) spent on this request")
    method: str
    kind: str
    model: str
    seed: int = Field(description="the seed the items were drawn with (fresh when the request gave none): replays them")
    request_id: str
    timing_s: float


class ErrorBody(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class ModelCard(BaseModel):
    id: str
    role: Literal["solver", "generator"]
    task: str
    arch: str
    path: str
    device: str
    dtype: str
    runner: str | None = None
    kernels: str | None = None
    kernels_fallback: str | None = None  # set when a fused kernel launch failed and the torch references took over
    parameters: int
    defaults: dict[str, Any] | None = None
    status: str | None = Field(None, description="a caveat from the checkpoint's config (e.g. a research baseline)")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
