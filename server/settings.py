"""Service settings: environment variables prefixed `TRM_` (e.g. `TRM_PORT=9000`), overridden by `engine-serve` flags.

Checkpoint paths that do not exist as given (relative to the working directory) are looked up under
`checkpoint_root` (TRM_CHECKPOINT_ROOT, or `--checkpoint-root`). By default that is `./checkpoints` when the working
directory has one, else the `checkpoints/` directory of the source tree (a repo checkout with an editable install);
the Docker image sets it to /app/checkpoints. With no checkpoints named, the service loads `sudoku-trm` (the shipped
solver, required; /generate's commit decoding runs on it) and the GRAM generator for /generate's `method: prior`,
skipped when absent: `sudoku-gram-gen`. `sudoku-trm-fill` (the earlier commit decoder) loads when named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
DEFAULT_SOLVERS = ("sudoku-trm",)
DEFAULT_GENERATORS = ("sudoku-gram-gen",)  # /generate's commit decoding runs on the solver (sudoku-trm v2)


def default_root() -> Path:
    here = Path.cwd() / "checkpoints"
    return here if here.is_dir() else REPO_CHECKPOINTS


class Settings(BaseSettings):
    # hide_input_in_errors: a refused setting's message must not echo an API key
    model_config = SettingsConfigDict(env_prefix="TRM_", extra="forbid", hide_input_in_errors=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    checkpoints: list[str] = Field(default_factory=list, description="checkpoint dirs; empty: the shipped defaults")
    checkpoint_root: Path = Field(default_factory=lambda: default_root())
    device: str = "auto"  # auto: cuda when available, else cpu
    dtype: str = "auto"  # compute dtype passed to load_checkpoint
    static: bool | None = None  # runner static buffers (None: on CUDA)
    cuda_graphs: bool | None = None  # (None: on CUDA)

    # engine admission (engine.runtime.Limits)
    max_batch: int = Field(64, ge=1)
    max_queued_requests: int = Field(256, ge=1)
    max_queued_rows: int = Field(4096, ge=1)

    # per-request limits, shown in the OpenAPI schema
    max_rollouts: int = Field(256, ge=1)
    max_steps: int = Field(64, ge=1)
    max_nodes: int = Field(256, ge=1)  # commit search: nodes one request may expand
    max_waves: int = Field(8, ge=1)  # rollouts: rounds of K fresh rows one request may run
    max_solutions: int = Field(32, ge=1)  # /solve's `solutions`: distinct answers one request may ask for
    max_timeout_s: float = Field(300.0, gt=0)
    default_timeout_s: float = Field(60.0, gt=0)
    max_body_bytes: int = Field(64 * 1024, ge=256)

    # /generate
    max_generate_count: int = Field(128, ge=1)
    max_generate_samples: int = Field(256, ge=1)  # grids one request may decode to find valid distinct ones
    generate_batch: int = Field(128, ge=1)  # grids one /generate request decodes at once (a round)

    # streamed answers (server/stream.py): progress events per second at most, per request; the result always goes
    stream_max_events_per_s: float = Field(10.0, gt=0)

    drain_timeout_s: float = Field(30.0, ge=0)
    idle_timeout_s: float = Field(5.0, gt=0)  # a connection with no request (or headers still coming) is closed
    watchdog_s: float = Field(120.0, gt=0)  # /readyz turns 503 when an engine makes no step this long with work
    threads: int | None = Field(None, ge=1)  # torch CPU threads; None: torch's default (one per core)
    log_level: str = "info"

    # API keys (server/keys.py): TRM_API_KEY (comma-separated) or --api-key, and a TOML keys file with quotas
    api_key: Annotated[list[str], NoDecode] = Field(default_factory=list, repr=False)
    api_keys_file: Path | None = None
    metrics_auth: bool = False  # /metrics needs a key too (else it stays open for Prometheus)

    @field_validator("api_key", mode="before")
    @classmethod
    def _split_keys(cls, value):
        """TRM_API_KEY's comma-separated keys (a string), or --api-key's (a list). An empty key is refused, naming
        where it came from: dropping it would quietly turn keys off (TRM_API_KEY=" , "), and a key with surrounding
        whitespace could never match (the presented key is stripped)."""
        if isinstance(value, str):
            keys = [k.strip() for k in value.split(",")]
            if not all(keys):
                message = "TRM_API_KEY holds an empty key (blank, or empty between commas)"
                raise PydanticCustomError("empty_key", message)
            return keys
        if any(isinstance(k, str) and (not k.strip() or k != k.strip()) for k in value):
            message = "--api-key was given an empty key, or one with surrounding whitespace"
            raise PydanticCustomError("empty_key", message)
        return value

    def resolve(self, name: str) -> Path:
        """A checkpoint argument as given if it exists, else under checkpoint_root."""
        path = Path(name)
        if path.exists() or path.is_absolute():
            return path
        return self.checkpoint_root / name

    def checkpoint_paths(self) -> list[tuple[Path, bool]]:
        """(path, required): named checkpoints are required; of the defaults only the solvers are."""
        if self.checkpoints:
            return [(self.resolve(c), True) for c in self.checkpoints]
        return [(self.checkpoint_root / n, True) for n in DEFAULT_SOLVERS] + [
            (self.checkpoint_root / n, False) for n in DEFAULT_GENERATORS
        ]
