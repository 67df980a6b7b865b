"""The loaded checkpoints: solvers (one Engine + AsyncEngine each) and generators (a GRAM model behind a lock)."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import kernels
from engine.checkpoint import Checkpoint, load_checkpoint
from engine.generate import generation_method
from engine.runtime import AsyncEngine, Engine, Limits, Runner
from engine.search import SearchParams, default_params
from engine.tasks import Task, get_task
from engine.tasks.arc_augment import Augmentation
from engine.tasks.arc_vote import variants
from engine.tasks.solvable import no_solution
from engine.tasks.sudoku import BLANK
from server.settings import Settings

log = logging.getLogger("server.models")


class ModelNotFound(LookupError):
    pass


def is_generator(ckpt: Checkpoint) -> bool:
    """An unconditional GRAM, or a checkpoint whose config.json says it serves /generate ("role": "generator")."""
    return ckpt.meta.get("role") == "generator" or generation_method(ckpt) == "prior"


@dataclass
class Solver:
    name: str
    ckpt: Checkpoint
    task: Task
    engine: Engine
    facade: AsyncEngine
    defaults: SearchParams
    role: str = "solver"  # or "generator": an unconditional GRAM, whose prior samples /generate draws
    started_at: float = field(default_factory=time.monotonic)
    # ARC: task name -> its variants' (puzzle id, augmentation), from the checkpoint's identifiers.json
    arc_variants: dict[str, list[tuple[int, Augmentation]]] | None = None

    def stalled_for(self) -> float:
        """Seconds the engine has made no step while admitted requests wait (0 when it is idle or progressing):
        the watchdog of SERVING.md §2.7."""
        active = list(self.engine.scheduler.active)
        if not active:
            return 0.0
        since = max(self.engine.stats.last_step_at, self.started_at, min(r.submitted for r in active))
        return max(0.0, time.monotonic() - since)


@dataclass
class Models:
    solvers: dict[str, Solver] = field(default_factory=dict)
    generators: dict[str, Solver] = field(default_factory=dict)  # each an engine too

    def solver(self, name: str | None, task: str | None) -> Solver:
        if name is not None:
            if name not in self.solvers:
                raise ModelNotFound(f"no solver named {name!r}; loaded: {', '.join(self.solvers) or 'none'}")
            return self.solvers[name]
        for s in self.solvers.values():
            if task is None or s.task.name == task:
                return s
        raise ModelNotFound(f"no solver for task {task!r}; loaded: {', '.join(self.solvers) or 'none'}")

    def all(self) -> list[Solver]:
        return [*self.solvers.values(), *self.generators.values()]


def pick_device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def load_models(settings: Settings) -> Models:
    """Load every checkpoint (blocking: call it off the event loop). A missing optional default is skipped."""
    device = pick_device(settings.device)
    models = Models()
    for path, required in settings.checkpoint_paths():
        if not (path / "config.json").is_file() and not required:
            log.info("optional checkpoint not found, skipped", extra={"fields": {"path": str(path)}})
            continue
        ckpt = load_checkpoint(path, device, settings.dtype)
        name = _unique(Path(path).name, models)
        if is_generator(ckpt):
            models.generators[name] = build_solver(name, ckpt, settings, role="generator")
        else:
            models.solvers[name] = build_solver(name, ckpt, settings)
        log.info("loaded checkpoint", extra={"fields": {"model": name, "path": str(path), "arch": ckpt.arch}})
    return models


def build_solver(name: str, ckpt: Checkpoint, s: Settings, role: str = "solver") -> Solver:
    runner = Runner(ckpt.model, max_batch=s.max_batch, static=s.static, cuda_graphs=s.cuda_graphs)
    limits = Limits(
        max_batch=s.max_batch,
        max_requests=s.max_queued_requests,
        max_rows=s.max_queued_rows,
    )
    task = get_task(ckpt.task)
    if task.name == "sudoku":  # the exact solver's first call may compile it: here, not on the first request
        no_solution(task, np.full(task.seq_len, BLANK, np.int64))
    engine = Engine(runner, task, limits)
    pace = engine.warm_up()  # before /readyz says ready: deadline admission knows the pace from the first request
    log.info("warmed up", extra={"fields": {"model": name, "row_steps_per_s": round(pace, 1)}})
    defaults = default_params(ckpt.task, ckpt.arch, ckpt.config.halt_max_steps, ckpt.meta.get("search"))
    defaults = defaults.replace(rollouts=min(defaults.rollouts, s.max_rollouts), steps=min(defaults.steps, s.max_steps))
    solver = Solver(name, ckpt, task, engine, AsyncEngine(engine), defaults, role)
    if ckpt.identifiers is not None:
        solver.arc_variants = variants(ckpt.identifiers)
    return solver


def _unique(name: str, models: Models) -> str:
    taken = set(models.solvers) | set(models.generators)
    base, i = name, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    return name


def shown_path(path: Path, root: Path) -> str:
    """A checkpoint path as responses show it: relative to the checkpoint root, else its directory name; never the
    host's absolute path (issue 16)."""
    path, root = Path(path).resolve(), Path(root).resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else path.name


ABSOLUTE = re.compile(r"(?<![\w.])/(?:[^\s'\"/]+/)*([^\s'\"/]+)")


def scrub_paths(text: str, settings: Settings) -> str:
    """`text` with the checkpoint paths shown as `shown_path` does, and any other absolute path cut to its last name."""
    for path, _ in settings.checkpoint_paths():
        for form in {str(path.resolve()), str(path)}:
            text = text.replace(form, shown_path(path, settings.checkpoint_root))
    return ABSOLUTE.sub(r"\1", text)


def card(m: Solver, root: Path) -> dict:
    ckpt = m.ckpt
    info = {
        "id": m.name,
        "role": m.role,
        "task": ckpt.task,
        "arch": ckpt.arch,
        "path": shown_path(ckpt.path, root),
        "device": str(next(ckpt.model.parameters()).device),
        "dtype": ckpt.config.forward_dtype,
        "parameters": sum(p.numel() for p in ckpt.model.parameters()),
        "status": ckpt.meta.get("status"),
    }
    d = m.defaults
    info.update(
        runner=m.engine.runner.mode,
        kernels=m.engine.runner.kernels,
        kernels_fallback=kernels.fallback(),  # why the fused kernels stopped (a failed launch), else None
        defaults={
            "rollouts": d.rollouts,
            "waves": d.waves,
            "steps": d.steps,
            "noise": d.noise,
            "selector": d.selector,
            "seed": d.seed,
            "early_exit": d.early_exit,
            "strategy": d.strategy,
            "diversity": d.diversity,
            "selectors": sorted(m.engine.selectors),
        },
    )
    return info
