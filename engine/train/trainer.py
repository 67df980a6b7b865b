"""The TRM and GRAM training loop (TRM.md §3.2, §4, §8; PTRM_GRAM.md §4.3-4.5): deep supervision with carries that
persist across batches.

Every optimizer step is one supervision step on a batch of carries. Rows that halted (Q head says "done", or N_sup
steps reached, with exploration) are reset and take fresh samples; the others keep their state and data. The whole
state — weights, EMA, optimizer moments, carries, data position and RNG streams — is saved atomically, so a killed
run resumes exactly where its last save left it. Under torchrun every rank holds global_batch / world rows and
gradients are summed across ranks, which keeps the replicas identical. With `group` > 1 each sample fills G rows
under different symmetries that are scored as a mixture and halt together (`act_loss`).

GRAM trains on trajectories sampled from its posterior q(eps | u, y) (noise from a saved per-rank generator, so resumes
are exact) with the truncated ELBO of `gram_loss`. Each evaluation runs prior-sampled rollouts next to posterior ones
and stops the run (`PosteriorCollapse`) when the KL collapses or the prior falls far behind the posterior.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from engine.checkpoint import atomic_directory, save_checkpoint
from engine.eval import predict
from engine.generate import generation_report, sample_grids
from engine.models import GRAM, TRM, counter_noise, preset
from engine.models.config import compute_dtype
from engine.tasks import get_task
from engine.train.config import TrainConfig
from engine.train.data import Mixture, Source, augment
from engine.train.losses import act_loss, gram_loss
from engine.train.optim import EMA, AdamATan2, SignSGD, lr_at


class PosteriorCollapse(RuntimeError):
    """GRAM training stopped by the collapse guard; the message says which test fired and how to react."""


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"  # where collectives run: nccl reduces device tensors only

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, returned on t's device."""
        if self.world == 1:
            return t
        x = t.to(self.device)
        dist.all_reduce(x)
        return x.to(t.device)

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """[world, *t.shape], rank order."""
        if self.world == 1:
            return t.unsqueeze(0)
        parts = [torch.empty_like(t, device=self.device) for _ in range(self.world)]
        dist.all_gather(parts, t.to(self.device).contiguous())
        return torch.stack(parts)


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        task: str,
        train: tuple[np.ndarray, np.ndarray] | list[Source],
        dev: tuple[np.ndarray, ...],  # held-out (inputs, labels) or (inputs, labels, puzzle ids)
        out: str | Path,
        device: str = "cpu",
        ddp: Dist = Dist(),
        data: str = "",
        files: dict[str, str] | None = None,
    ):
        if cfg.global_batch_size % (ddp.world * cfg.group):
            raise ValueError(
                f"global batch {cfg.global_batch_size} does not split into groups of {cfg.group} over {ddp.world} ranks"
            )
        self.cfg, self.task, self.dev, self.out, self.device, self.ddp = cfg, task, dev, Path(out), device, ddp
        self.data = data  # where the samples came from, for the checkpoint's training summary
        self.files = files or {}  # text files every saved checkpoint holds (ARC: identifiers.json, test_puzzles.json)
        torch.manual_seed(cfg.seed)
        dtype = compute_dtype(device)
        model_cls = GRAM if cfg.arch == "gram" else TRM
        self.model = model_cls(preset(cfg.model_preset, **{**cfg.model_overrides, "forward_dtype": dtype})).to(device)
        self.is_gram = cfg.arch == "gram"
        self.many_answers = get_task(task).many_answers
        if ddp.world > 1:  # identical replicas, whatever each rank's init RNG did
            for t in self.model.state_dict().values():
                dist.broadcast(t, src=0)
        named = dict(self.model.named_parameters())
        self.opt = AdamATan2([p for n, p in named.items() if n != "puzzle_emb"], cfg.lr, cfg.betas, cfg.weight_decay)
        self.emb_opt = (
            SignSGD([named["puzzle_emb"]], cfg.puzzle_emb_lr, cfg.puzzle_emb_weight_decay)
            if "puzzle_emb" in named
            else None
        )
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.ema else None

        B, L = cfg.global_batch_size // ddp.world, self.model.config.seq_len
        sources = train if isinstance(train, list) else [Source("train", *train)]
        self.stream = Mixture(sources, cfg.seed * 1000 + ddp.rank, cfg.curriculum, cfg.curriculum_easy)
        self.explore = torch.Generator().manual_seed(cfg.seed * 1000 + ddp.rank + 1)
        self.noise_rng = torch.Generator(device).manual_seed(cfg.seed * 1000 + ddp.rank + 2)  # GRAM's eps
        self.carry = self.model.initial_carry(B)
        self.inputs = torch.zeros(B, L, dtype=torch.long, device=device)
        self.labels = torch.zeros(B, L, dtype=torch.long, device=device)
        self.puzzle_ids = torch.zeros(B, dtype=torch.long, device=device)
        self.steps = torch.zeros(B, dtype=torch.long, device=device)
        self.halted = torch.ones(B, dtype=torch.bool, device=device)  # every row starts by taking a sample
        self.step, self.elapsed, self.last_eval = 0, 0.0, None

    # -- one optimizer step -----------------------------------------------------------------------------------------

    def train_step(self) -> torch.Tensor:
        """One supervision step; returns [halted rows, of them exact, of them Q right, their steps, summed loss,
        summed KL per position (GRAM; 0 for TRM)]."""
        cfg, model, G = self.cfg, self.model, self.cfg.group
        self.step += 1
        h = self.halted
        if n := int(h.sum()):
            self.stream.progress = self.step / cfg.steps
            x, y, ids = self.stream.draw(n // G)
            if G > 1:  # each sample under G fresh symmetries, drawn per step so a resume redraws the same
                rng = np.random.default_rng([cfg.seed, self.step, self.ddp.rank])
                x, y = augment(x.repeat(G, 0), y.repeat(G, 0), rng)
                ids = ids.repeat(G, 0)
            self.inputs[h] = torch.from_numpy(x).to(self.device, torch.long)
            self.labels[h] = torch.from_numpy(y).to(self.device, torch.long)
            self.puzzle_ids[h] = torch.from_numpy(ids).to(self.device, torch.long)
        self.carry = model.reset(self.carry, h)
        self.steps = torch.where(h, 0, self.steps)

        if self.is_gram:
            out = model.step(self.carry, self.inputs, self.puzzle_ids, self._noise, target=self.labels)
            self.carry, q = out.carry, out.q
            loss, correct, kl = gram_loss(
                out, self.labels, cfg.kl_beta, cfg.kl_balance, cfg.lprm_weight, cfg.loss, cfg.kl_sum
            )
            kl = kl.sum()
        else:
            self.carry, logits, q = model.step(self.carry, self.inputs, self.puzzle_ids)
            loss, correct = act_loss(logits, q, self.labels, cfg.loss, G, cfg.ignore_label_id)
            kl = torch.zeros(())
        (loss / cfg.global_batch_size).backward()
        for p in model.parameters():  # sum over ranks: the official global-batch mean
            if p.grad is not None:
                p.grad.copy_(self.ddp.all_reduce(p.grad))
        self._set_lr(self.opt, lr_at(self.step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.lr_min_ratio))
        self.opt.step()
        if self.emb_opt:
            self._set_lr(
                self.emb_opt, lr_at(self.step, cfg.puzzle_emb_lr, cfg.warmup_steps, cfg.steps, cfg.lr_min_ratio)
            )
            self.emb_opt.step()
        model.zero_grad(set_to_none=True)
        if self.ema:
            self.ema.update(model)

        with torch.no_grad():  # ACT halting with exploration (TRM.md §4)
            self.steps += 1
            q_halt = q[:, 0]
            # A row alone stops when its Q head says done (TRM.md §4). A group stops together when one of its rows is
            # right, as the search stops at its first verified row, so a hard puzzle keeps its rows for all N steps.
            N = model.config.halt_max_steps
            halted = ((self.steps >= N) | (correct if G > 1 else q_halt > 0)).view(-1, G).any(1)
            explore = torch.rand(len(halted), generator=self.explore) < model.config.halt_exploration_prob
            min_steps = explore * torch.randint(2, N + 1, halted.shape, generator=self.explore)
            done = halted & (self.steps[::G] >= min_steps.to(self.device))
            self.halted = done = done.repeat_interleave(G)
            stats = [
                done.sum(),
                (done & correct).sum(),
                (done & ((q_halt >= 0) == correct)).sum(),
                self.steps[done].sum(),
                loss,
                kl,
            ]
            return torch.stack([s.double().cpu() for s in stats])

    def _noise(self, t: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Training noise for GRAM's posterior samples, from a generator that the train state saves."""
        return torch.randn(len(self.inputs), *shape, generator=self.noise_rng, device=self.device)

    def fit(self, log_every: int = 10) -> dict:
        """Train to cfg.steps or cfg.minutes with a progress bar, logging to out/log.jsonl, evaluating and saving."""
        cfg, main = self.cfg, self.ddp.is_main
        log_path = self.out / "log.jsonl"
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            kept = [
                line
                for line in (log_path.read_text().splitlines() if log_path.exists() else [])
                if json.loads(line)["step"] <= self.step
            ]  # drop what a killed run logged after its last save
            log_path.write_text("".join(line + "\n" for line in kept))
        bar = tqdm(total=cfg.steps, initial=self.step, unit="step", dynamic_ncols=True, disable=not main)
        sums = torch.zeros(6, dtype=torch.float64)  # metrics since the last log line
        start = time.perf_counter() - self.elapsed  # the clock continues across resumes
        mark = (self.step, time.perf_counter())
        last = self.step >= cfg.steps
        while not last:
            sums += self.train_step()
            self.elapsed = time.perf_counter() - start
            last = self.step == cfg.steps or self._out_of_time(log_every)
            entry = {}
            # Close the metrics window at every save too, so a resumed run logs exactly what an uninterrupted one would.
            if self.step % log_every == 0 or self.step % cfg.save_every == 0 or last:
                count, exact, q_ok, steps, loss, kl = self.ddp.all_reduce(sums).tolist()
                rows_s = (self.step - mark[0]) * cfg.global_batch_size / (time.perf_counter() - mark[1])
                entry = {
                    "loss": loss / ((self.step - mark[0]) * cfg.global_batch_size),
                    "rows_per_second": rows_s,
                    "lr": self.opt.param_groups[0]["lr"],
                    "halted": int(count),
                    "epochs": round(self.stream.epoch_fraction, 3),
                }
                if self.is_gram:  # training KL of the last transitions, nats per position
                    entry["kl"] = kl / ((self.step - mark[0]) * cfg.global_batch_size)
                if count:  # accuracy over the rows that halted in this window, as the official train metrics
                    entry.update(exact_accuracy=exact / count, q_halt_accuracy=q_ok / count, mean_steps=steps / count)
                bar.set_postfix(
                    loss=f"{entry['loss']:.3f}",
                    exact=f"{entry.get('exact_accuracy', float('nan')):.3f}",
                    rows_s=f"{rows_s:.0f}",
                )
                sums.zero_()
                mark = (self.step, time.perf_counter())
            collapse = None
            if self.step % cfg.eval_every == 0 or last:
                self.last_eval = entry["eval"] = self.evaluate()
                bar.write(f"step {self.step}: {describe_eval(self.last_eval)}")
                collapse = self.collapse_reason(self.last_eval)
                if collapse:
                    entry["stopped"] = collapse
            if entry and main:
                with open(log_path, "a") as f:
                    f.write(json.dumps({"step": self.step, "elapsed": round(self.elapsed, 2), **entry}) + "\n")
            if self.step % cfg.save_every == 0 or last or collapse:
                self.save()
            if collapse:
                bar.close()
                raise PosteriorCollapse(f"stopped at step {self.step}: {collapse}")
            bar.update(1)
        bar.close()
        return self.summary()

    def _out_of_time(self, every: int) -> bool:
        """Whether the --minutes budget is spent; checked every few steps and agreed by all ranks."""
        if self.cfg.minutes is None or self.step % every:
            return False
        over = torch.tensor([float(self.elapsed >= 60 * self.cfg.minutes)])
        return bool(self.ddp.all_reduce(over).item() > 0)

    @staticmethod
    def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
        for group in opt.param_groups:
            group["lr"] = lr

    def init_from(self, path: str | Path) -> None:
        """Start from a checkpoint's weights (and EMA), with fresh optimizer state: training continues from committed
        weights. The model config must match (the CLI takes it from the checkpoint)."""
        from engine.checkpoint import load_checkpoint

        source = load_checkpoint(path, self.device, forward_dtype=self.model.config.forward_dtype).model
        if source.config != self.model.config:
            raise ValueError(
                f"{path}: its model config differs from this run's: {source.config} vs {self.model.config}"
            )
        self.model.load_state_dict(source.state_dict())
        if self.ema:
            self.ema = EMA(self.model, self.cfg.ema_decay)

    # -- evaluation and checkpoints ---------------------------------------------------------------------------------

    def eval_model(self) -> TRM:
        """The weights that get evaluated and shipped: the EMA copy when EMA is on (TRM.md §8.4)."""
        model = copy.deepcopy(self.model)
        if self.ema:
            self.ema.copy_to(model)
        return model.eval()

    def evaluate(self) -> dict:
        """Exact and cell accuracy of all N_sup steps on the held-out split, sharded over ranks. A held-out split with
        puzzle ids (ARC's test split: inputs, labels, ids) runs each row with its id and scores the labels that are
        not `ignore_label_id`, per row; the vote over variants is engine-eval's."""
        limit = self.cfg.eval_limit or len(self.dev[0])
        inputs, labels, *ids = (a[:limit][self.ddp.rank :: self.ddp.world] for a in self.dev)
        if self.is_gram:
            return self.evaluate_gram(inputs.astype(np.int64), labels.astype(np.int64))
        answers, _ = predict(self.eval_model(), inputs, 256, None, self.device, False, ids[0] if ids else None)
        ignore = self.cfg.ignore_label_id
        scored = labels != ignore if ignore is not None else np.ones_like(labels, bool)
        hits = (answers == labels) | ~scored
        cells = (hits & scored).sum(1) / np.maximum(scored.sum(1), 1)
        exact = self._valid(inputs, answers) if self.many_answers else hits.all(1)
        sums = torch.tensor([len(answers), exact.sum(), cells.sum()], dtype=torch.float64)
        n, exact, cells = self.ddp.all_reduce(sums).tolist()
        return {"n": int(n), "exact_accuracy": exact / max(n, 1), "cell_accuracy": cells / max(n, 1)}

    @torch.no_grad()
    def evaluate_gram(self, inputs: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> dict:
        """Prior-sampled rollouts next to posterior ones (target = label) on the held-out rows, one seeded sample
        each; for a generator the prior side is the validity and distinct share of generated grids instead."""
        model, cfg = self.eval_model(), self.cfg
        sums = torch.zeros(6, dtype=torch.float64)  # rows, prior exact, prior cells, posterior exact, KL, LPRM error
        for start in range(0, len(inputs), batch_size):
            x = torch.as_tensor(inputs[start : start + batch_size], device=self.device)
            y = torch.as_tensor(labels[start : start + batch_size], device=self.device)
            ids = torch.zeros(len(x), dtype=torch.long, device=self.device)
            rows = torch.arange(start, start + len(x), device=self.device) * self.ddp.world + self.ddp.rank
            noise = counter_noise(rows + (cfg.seed << 20))
            post = model.trajectory(x, ids, noise=noise, target=y)
            post_hits = post.logits.argmax(-1) == y
            parts = [len(x), 0.0, 0.0, post_hits.all(-1).sum(), post.kl.sum()]
            if not cfg.generator:
                prior = model.trajectory(x, ids, noise=noise)
                answers = prior.logits.argmax(-1)
                hits = answers == y
                exact = self._valid(x, answers) if self.many_answers else hits.all(-1)
                parts[1:3] = exact.sum(), hits.float().mean(-1).sum()
                value_err = (prior.value - hits.float().mean(-1)).abs().sum() if prior.value is not None else 0.0
            else:
                value_err = 0.0
            sums += torch.tensor([float(v) for v in (*parts, value_err)], dtype=torch.float64)
        n, exact, cells, post_exact, kl, value_err = self.ddp.all_reduce(sums).tolist()
        n = max(n, 1)
        c = model.config
        result = {
            "n": int(n),
            "posterior_exact": post_exact / n,
            "kl": kl / (n * c.halt_max_steps * c.total_len),  # nats per position per supervision step
        }
        if cfg.generator:
            samples = sample_grids(model, int(n), seed=cfg.seed + 1, device=self.device)
            report = generation_report(get_task(self.task), samples)
            result.update(validity=report["validity"], distinct=report["distinct"], units=report["units"])
        else:
            result.update(exact_accuracy=exact / n, cell_accuracy=cells / n, lprm_abs_error=value_err / n)
            result["prior_gap"] = result["posterior_exact"] - result["exact_accuracy"]  # the collapse guard's test
        return result

    def _valid(self, inputs, answers) -> np.ndarray | torch.Tensor:
        """Held-out accuracy of a many-answer task: the rule verifier (any valid completion counts, not only the
        label). `exact_accuracy` in its log means this."""
        task = get_task(self.task)
        if isinstance(answers, torch.Tensor):
            return torch.from_numpy(task.verify_batch(inputs.cpu().numpy(), answers.cpu().numpy()))
        return task.verify_batch(inputs, answers)

    def collapse_reason(self, ev: dict) -> str | None:
        """Why GRAM training should stop (PTRM_GRAM.md §7), or None."""
        cfg = self.cfg
        if not self.is_gram or self.step < cfg.collapse_after:
            return None
        if cfg.collapse_min_kl is not None and ev["kl"] < cfg.collapse_min_kl:
            return (
                f"posterior collapse: the KL fell to {ev['kl']:.2e} nats per position (< collapse_min_kl "
                f"{cfg.collapse_min_kl:g}); the noise carries no information. Try a smaller --beta or restart"
            )
        prior = ev.get("exact_accuracy")
        if (
            cfg.collapse_max_gap is not None
            and prior is not None
            and ev["posterior_exact"] - prior > cfg.collapse_max_gap
        ):
            return (
                f"the prior fell behind the posterior: prior exact {prior:.3f}, "
                f"posterior exact {ev['posterior_exact']:.3f} "
                f"(gap > collapse_max_gap {cfg.collapse_max_gap:g}); eps has become a private channel for y. "
                "Try a larger --beta"
            )
        return None

    def save(self) -> None:
        """Write the resumable train state and the EMA checkpoint, each atomically (rank 0 writes; all ranks send)."""
        per_rank = {
            "z_H": self.carry.z_H,
            "z_L": self.carry.z_L,
            "inputs": self.inputs,
            "labels": self.labels,
            "steps": self.steps,
            "halted": self.halted.to(torch.uint8),
            "puzzle_ids": self.puzzle_ids,
            "explore_rng": self.explore.get_state(),
            "noise_rng": self.noise_rng.get_state(),
        }
        gathered = {k: self.ddp.all_gather(v) for k, v in per_rank.items()}
        streams = [None] * self.ddp.world
        if self.ddp.world > 1:
            dist.all_gather_object(streams, self.stream.state_dict())
        else:
            streams = [self.stream.state_dict()]
        if not self.ddp.is_main:
            return
        tensors = {f"rank.{k}": v for k, v in gathered.items()}
        tensors.update({f"model.{k}": v for k, v in self.model.state_dict().items()})
        if self.ema:
            tensors.update({f"ema.{k}": v for k, v in self.ema.shadow.items()})
        for opt_name, opt in (("opt", self.opt), ("emb_opt", self.emb_opt)):
            for i, p in enumerate(self.params_of(opt)):
                tensors.update({f"{opt_name}.{i}.{k}": v for k, v in opt.state.get(p, {}).items()})
        meta = {
            "step": self.step,
            "elapsed": self.elapsed,
            "world": self.ddp.world,
            "streams": streams,
            "last_eval": self.last_eval,
            "config": self.cfg.to_dict(),
        }
        with atomic_directory(self.out / "train_state") as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp / "state.safetensors")
            (tmp / "state.json").write_text(json.dumps(meta))
        save_checkpoint(
            self.out / "checkpoint", self.eval_model(), self.task, meta={"training": self.summary()}, files=self.files
        )

    def resume(self) -> bool:
        """Restore the last saved state from out/train_state; False when there is none."""
        path = self.out / "train_state"
        if not (path / "state.json").is_file():
            return False
        meta = json.loads((path / "state.json").read_text())
        if meta["world"] != self.ddp.world:
            raise ValueError(
                f"{path} was written by {meta['world']} ranks; resume with the same number (got {self.ddp.world})"
            )
        tensors = load_file(path / "state.safetensors", device=str(self.device))
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if self.ema:
            self.ema.shadow = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        for opt_name, opt in (("opt", self.opt), ("emb_opt", self.emb_opt)):
            for i, p in enumerate(self.params_of(opt)):
                state = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"{opt_name}.{i}.")}
                if state:
                    state["step"] = state["step"].cpu()
                    opt.state[p] = state
        r = {k[5:]: v[self.ddp.rank] for k, v in tensors.items() if k.startswith("rank.")}
        self.carry = type(self.carry)(r["z_H"], r["z_L"])
        self.inputs, self.labels, self.steps, self.halted = r["inputs"], r["labels"], r["steps"], r["halted"].bool()
        self.explore.set_state(r["explore_rng"].cpu())
        if "noise_rng" in r:
            self.noise_rng.set_state(r["noise_rng"].cpu())
        if "puzzle_ids" in r:  # states saved before rows carried ids hold zeros there anyway
            self.puzzle_ids = r["puzzle_ids"]
        self.stream.load_state_dict(meta["streams"][self.ddp.rank])
        self.step, self.elapsed, self.last_eval = meta["step"], meta["elapsed"], meta.get("last_eval")
        return True

    @staticmethod
    def params_of(opt: torch.optim.Optimizer | None) -> list[torch.Tensor]:
        return [p for g in opt.param_groups for p in g["params"]] if opt else []

    def summary(self) -> dict:
        return {
            "step": self.step,
            "wall_seconds": round(self.elapsed, 1),
            "world_size": self.ddp.world,
            "device": str(self.device),
            "samples_seen": self.stream.samples_seen * self.ddp.world,
            "data": self.data,
            "last_eval": self.last_eval,
            "config": self.cfg.to_dict(),
        }


def describe_eval(ev: dict) -> str:
    """One line for the progress bar and the CLI."""
    if "validity" in ev:
        return (
            f"generated validity {ev['validity']:.4f}, distinct {ev['distinct']:.4f}, units {ev.get('units', 0):.4f} "
            f"(n={ev['n']}); "
            f"posterior reconstruction {ev['posterior_exact']:.4f}, KL {ev['kl']:.4f}"
        )
    line = f"held-out exact accuracy {ev['exact_accuracy']:.4f} (cells {ev['cell_accuracy']:.4f}, n={ev['n']})"
    if "posterior_exact" in ev:
        line += f"; posterior exact {ev['posterior_exact']:.4f}, KL {ev['kl']:.4f}"
    return line
