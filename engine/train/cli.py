"""`engine-train`: train a TRM or GRAM checkpoint (runs under torchrun for data-parallel training).

engine-train --preset cpu-small --puzzles P.txt --solutions P.sol --dev-size 2000 --out runs/sudoku
engine-train --out runs/sudoku --resume           # continue a killed run from its last save, on its own data
engine-train --arch gram --generate 40000 --clues 30 45 --out runs/gram      # a GRAM solver (gram-cpu-small)
engine-train --arch gram --generator --grids 50000 --out runs/gram-gen     # an unconditional grid generator
engine-train --init-from checkpoints/sudoku-trm --puzzles hard.txt --solutions hard.sol --extra-clues 0 30 \
    --generate 20000 --clues 30 45 --infill 50000 --mix puzzles=0.6 generated=0.15 infill=0.25 --out runs/hard
engine-train --dataset data/sudoku-extreme-1k-aug-1000 --out runs/official   # an official-layout dataset's train split
engine-train --task arc --dataset data/arc-tiny --out runs/arc   # ARC (arc-tiny): each row with its puzzle id
torchrun --nproc_per_node 2 -m engine.train.cli --preset tiny --generate 2000 --out runs/ddp
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from engine.checkpoint import read_config
from engine.datasets import DatasetError, official
from engine.datasets.nqueens_build import read_nqueens
from engine.models import preset
from engine.tasks.base import PuzzleError
from engine.tasks.sudoku import BLANK
from engine.train.arc_data import read_arc_dataset
from engine.train.config import PRESETS, TrainConfig, train_preset
from engine.train.data import (
    Source,
    blank_cells,
    download_sudoku_extreme,
    generate_puzzles,
    random_grids,
    read_official_dataset,
    read_puzzle_files,
    read_sudoku_extreme_csv,
)
from engine.train.trainer import Dist, PosteriorCollapse, Trainer, describe_eval

DEFAULT_PRESET = {
    "trm": "cpu-small",
    "gram": "gram-cpu-small",
    "generator": "gram-gen-cpu-small",
    "arc": "arc-tiny",
    ("nqueens", "trm"): "nqueens",
    ("nqueens", "gram"): "gram-nqueens8",
    ("nqueens-10", "trm"): "nqueens",
    ("nqueens-10", "gram"): "gram-nqueens10",
}
QUEENS = ("nqueens", "nqueens-10")


# The flags that choose the training data: a run records them (`TrainConfig.data`), so `--resume` needs only --out.
DATA_FLAGS = (
    "task puzzles solutions csv hf dataset generate grids clues min_guesses extra_clues infill mix dev_size "
    "eval_puzzles eval_solutions"
).split()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="engine-train",
        description="Train a TRM or GRAM checkpoint with the papers' recipes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument(
        "--task",
        default="sudoku",
        choices=["sudoku", "arc", *QUEENS],
        help="puzzle task; arc and nqueens train on an official-layout --dataset (train split; engine-data arc or "
        "engine-data nqueens), held out: its test split",
    )
    p.add_argument("--arch", default="trm", choices=["trm", "gram"])
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="recipe and model size (default: cpu-small; gram-cpu-small or gram-gen-cpu-small for GRAM)",
    )
    p.add_argument(
        "--generator",
        action="store_true",
        help="GRAM unconditional generation: all-blank inputs, uniformly random complete grids as targets",
    )
    p.add_argument(
        "--out", required=True, help="run directory: train_state/ (resumable), checkpoint/ (EMA weights), log.jsonl"
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state with its saved settings")
    p.add_argument(
        "--init-from",
        metavar="CHECKPOINT",
        help="start from this checkpoint's weights and model config, with a fresh optimizer and warm-up",
    )
    data = p.add_argument_group(
        "data (sources are concatenated; the held-out split is the last --dev-size of the first)"
    )
    data.add_argument("--puzzles", help="file of 81-char puzzles ('.' blanks, '#' comments)")
    data.add_argument("--solutions", help="parallel file of 81-digit solutions")
    data.add_argument("--csv", help="Sudoku-Extreme CSV (source,question,answer,rating)")
    data.add_argument(
        "--dataset",
        metavar="DIR",
        help="train split of a dataset in the official layout: Sudoku (build_sudoku_dataset.py's output) or, with "
        "--task arc, ARC (engine-data arc or build_arc_dataset.py; held out: its test split)",
    )
    data.add_argument("--hf", action="store_true", help="download Sudoku-Extreme train.csv from the Hugging Face hub")
    data.add_argument(
        "--generate", type=int, metavar="N", help="N puzzles from the built-in generator (unique solutions)"
    )
    data.add_argument(
        "--grids", type=int, default=50_000, metavar="N", help="random complete grids for --generator (default 50000)"
    )
    data.add_argument(
        "--clues", type=int, nargs=2, default=(22, 30), metavar=("MIN", "MAX"), help="clue range for --generate"
    )
    data.add_argument("--min-guesses", type=int, default=0, help="--generate: keep puzzles needing this many guesses")
    data.add_argument(
        "--extra-clues",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="reveal k correct cells of each puzzle-file puzzle's solution, k uniform in [MIN, MAX] (RRN's data)",
    )
    data.add_argument(
        "--infill",
        type=int,
        metavar="N",
        help="infilling source: N random complete grids, each sample with a uniform 0-81 cells blanked",
    )
    data.add_argument(
        "--mix",
        nargs="+",
        metavar="SOURCE=SHARE",
        help="shares of the sources (puzzles, csv, dataset, hf, generated, infill); default: in proportion to their "
        "sizes",
    )
    data.add_argument(
        "--curriculum",
        type=float,
        metavar="FRACTION",
        help="move the shares from all-generated (easy) to --mix over this fraction of the steps",
    )
    data.add_argument(
        "--dev-size", type=int, default=2000, help="held-out puzzles taken from the end of the first source"
    )
    data.add_argument("--eval-puzzles", help="held-out puzzles file instead (with --eval-solutions)")
    data.add_argument("--eval-solutions")
    ov = p.add_argument_group("recipe overrides (ablations)")
    ov.add_argument("--steps", type=int, help="optimizer steps")
    ov.add_argument(
        "--minutes", type=float, help="wall-clock budget, evaluations included: stop, evaluate and save once spent"
    )
    ov.add_argument("--batch-size", type=int, dest="global_batch_size", help="global batch (rows of carries)")
    ov.add_argument("--lr", type=float)
    ov.add_argument("--warmup-steps", type=int)
    ov.add_argument("--weight-decay", type=float)
    ov.add_argument("--loss", choices=["stablemax", "softmax"])
    ov.add_argument("--no-ema", dest="ema", action="store_false", default=None)
    ov.add_argument("--H-cycles", type=int, help="T")
    ov.add_argument("--L-cycles", type=int, help="n")
    ov.add_argument("--hidden-size", type=int, help="model width (the puzzle embedding follows it)")
    ov.add_argument(
        "--group",
        type=int,
        help="rows per puzzle: each sample under G symmetries, trained on the solution's likelihood under their "
        "mixture (what a search over symmetries needs: one row that finishes)",
    )
    ov.add_argument("--eval-every", type=int)
    ov.add_argument("--eval-limit", type=int)
    ov.add_argument("--save-every", type=int)
    ov.add_argument("--seed", type=int)
    ov.add_argument("--beta", type=float, dest="kl_beta", help="GRAM KL weight (0.1 solving, 0.05 generation)")
    ov.add_argument("--ema-decay", type=float)
    ov.add_argument("--collapse-min-kl", type=float, help="GRAM: stop when the KL per position falls below this")
    ov.add_argument(
        "--collapse-max-gap", type=float, help="GRAM: stop when posterior exact accuracy exceeds prior's by this"
    )
    ov.add_argument("--collapse-after", type=int, help="GRAM: first step at which the collapse guard may stop")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is much faster on a machine other jobs load)")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return parser().parse_args(argv)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value  # as JSON gives it back


def restore_data(args: argparse.Namespace, cfg: TrainConfig) -> None:
    """`--resume` trains on the run's own data: its recorded flags replace the defaults, and a data flag given with
    another value is refused (the continuation would silently differ). Runs recorded before `TrainConfig.data` take
    the flags given."""
    defaults = parser()
    for name, value in {**cfg.data, "generator": cfg.generator, "curriculum": cfg.curriculum or None}.items():
        given = _plain(getattr(args, name))
        if given != _plain(defaults.get_default(name)) and given != value:
            raise SystemExit(
                f"engine-train: --resume continues the run on its own data: --{name.replace('_', '-')} {given} "
                f"differs from the run's {value}; start a new --out to change it"
            )
        setattr(args, name, value)


def build_config(args: argparse.Namespace) -> TrainConfig:
    state = Path(args.out) / "train_state" / "state.json"
    if args.resume:
        if not state.is_file():
            raise SystemExit(f"engine-train: nothing to resume: {state} does not exist")
        saved = json.loads(state.read_text())["config"]
        saved["betas"] = tuple(saved["betas"])
        return TrainConfig(
            **{**saved, "steps": args.steps or saved["steps"], "minutes": args.minutes or saved.get("minutes")}
        )
    if state.is_file():
        raise SystemExit(f"engine-train: {args.out} already holds a run; pass --resume or choose another --out")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in fields and v is not None and k != "generator"}
    model = {k: v for k, v in (("H_cycles", args.H_cycles), ("L_cycles", args.L_cycles)) if v is not None}
    if args.hidden_size:
        model.update(hidden_size=args.hidden_size)
        if preset(PRESETS[preset_name(args)]["model_preset"]).puzzle_emb_ndim:  # zero-padded slots stay zero
            model.update(puzzle_emb_ndim=args.hidden_size)
    if args.generator:
        if args.arch != "gram":
            raise SystemExit("engine-train: --generator needs --arch gram")
        overrides["generator"], model["unconditional"] = True, True
    if args.init_from:
        init = read_config(args.init_from)
        if init["arch"] != args.arch:
            raise SystemExit(f"engine-train: {args.init_from} is a {init['arch']} checkpoint, not --arch {args.arch}")
        model = {**{k: v for k, v in init["model"].items() if k != "forward_dtype"}, **model}
        overrides["init_from"] = str(args.init_from)
    overrides["data"] = {name: _plain(getattr(args, name)) for name in DATA_FLAGS}
    if args.task == "arc":
        meta = arc_metadata(args)
        model["num_puzzle_identifiers"] = meta["num_puzzle_identifiers"]
        overrides["ignore_label_id"] = meta["ignore_label_id"]
    if args.task in QUEENS:
        model["seq_len"] = queens_metadata(args)["seq_len"]
    name = preset_name(args)
    try:
        cfg = train_preset(name, **overrides)
    except ValueError as e:
        raise SystemExit(f"engine-train: {e}") from None
    cfg = dataclasses.replace(cfg, model_overrides={**cfg.model_overrides, **model})
    if args.task == "arc":
        shape = preset(cfg.model_preset, **cfg.model_overrides)
        if (shape.seq_len, shape.vocab_size) != (meta["seq_len"], meta["vocab_size"]):
            raise SystemExit(
                f"engine-train: --preset {name} builds a {shape.seq_len}-token model over {shape.vocab_size} tokens; "
                f"the ARC dataset has {meta['seq_len']} over {meta['vocab_size']} (try --preset arc-tiny)"
            )
    return cfg


def preset_name(args: argparse.Namespace) -> str:
    if args.preset:
        return args.preset
    if args.task in QUEENS:
        return DEFAULT_PRESET[args.task, args.arch]
    return DEFAULT_PRESET["arc" if args.task == "arc" else "generator" if args.generator else args.arch]


def queens_metadata(args: argparse.Namespace) -> dict:
    """The N-Queens dataset's train dataset.json, after refusing what N-Queens training does not take."""
    others = ("puzzles", "solutions", "csv", "hf", "generate", "infill", "extra_clues", "eval_puzzles", "generator")
    if given := [f"--{name.replace('_', '-')}" for name in others if getattr(args, name)]:
        raise SystemExit(f"engine-train: --task {args.task} trains on an N-Queens --dataset only; drop {', '.join(given)}")
    if not args.dataset:
        raise SystemExit(f"engine-train: --task {args.task} needs --dataset DIR (engine-data nqueens)")
    try:
        meta = official.read_split(args.dataset, "train").metadata
    except DatasetError as e:
        raise SystemExit(f"engine-train: --dataset: {e}") from None
    side = 10 if args.task == "nqueens-10" else 8
    if (meta["seq_len"], meta["vocab_size"]) != (side * side, 3):
        raise SystemExit(
            f"engine-train: --dataset holds {meta['seq_len']}-token examples over {meta['vocab_size']} tokens; "
            f"--task {args.task} needs {side * side} over 3 (engine-data nqueens --n {side})"
        )
    return meta


def load_queens(args: argparse.Namespace) -> tuple[list[Source], tuple, str]:
    """Every (input, completion) pair of the train split, no augmentation; held out: one row per test input (its
    first completion as the label; the trainer scores validity, so any completion counts)."""
    train, test = read_nqueens(args.dataset, "train"), read_nqueens(args.dataset, "test")
    x, y = np.repeat(train.inputs, [len(c) for c in train.completions], axis=0), np.concatenate(train.completions)
    described = (
        f"train: {args.dataset} (engine-data nqueens layout, train split: {len(x)} completions of "
        f"{len(train.inputs)} inputs); held out: its test split ({len(test.inputs)} inputs, validity); no augmentation"
    )
    dev = (test.inputs, np.stack([c[0] for c in test.completions]))
    return [Source("dataset", x, y, augment=False)], dev, described


def arc_metadata(args: argparse.Namespace) -> dict:
    """The ARC dataset's train dataset.json, after refusing what ARC training does not take."""
    if args.arch != "trm" or args.generator or args.group not in (None, 1):
        raise SystemExit("engine-train: --task arc trains arch trm, one row per example (no --group, no --generator)")
    others = ("puzzles", "solutions", "csv", "hf", "generate", "infill", "extra_clues", "eval_puzzles")
    if given := [f"--{name.replace('_', '-')}" for name in others if getattr(args, name)]:
        raise SystemExit(f"engine-train: --task arc trains on an ARC --dataset only; drop {', '.join(given)}")
    if not args.dataset:
        raise SystemExit("engine-train: --task arc needs --dataset DIR (engine-data arc or the official builder)")
    try:
        return official.read_split(args.dataset, "train", mmap=True).metadata
    except DatasetError as e:
        raise SystemExit(f"engine-train: --dataset: {e}") from None


def load_arc(args: argparse.Namespace) -> tuple[list[Source], tuple, str, dict[str, str]]:
    """ARC's train rows with their puzzle ids, the test split's rows as the held-out set, a description, and the
    dataset files a checkpoint needs (identifiers.json, test_puzzles.json)."""
    try:
        data = read_arc_dataset(args.dataset)
    except DatasetError as e:
        raise SystemExit(f"engine-train: --dataset: {e}") from None
    train, test = data.train, data.test
    source = Source("dataset", train.inputs, train.labels, ids=train.ids, augment=False)
    described = (
        f"train: {args.dataset} (official ARC layout, train split: {len(train.ids)} examples of "
        f"{len(np.unique(train.ids))} puzzle ids); held out: its test split ({len(test.ids)} rows, per-row exact, "
        "PAD labels ignored); no on-the-fly augmentation"
    )
    return [source], (test.inputs, test.labels, test.ids), described, data.files


def load_data(args: argparse.Namespace, seed: int) -> tuple[tuple | list[Source], tuple, str]:
    """(train inputs, labels), (held-out inputs, labels), and a one-line description for the checkpoint."""
    if args.generator:
        if args.puzzles or args.csv or args.dataset or args.hf or args.generate:
            raise SystemExit("engine-train: --generator trains on random complete grids; give no puzzle source")
        if args.grids <= args.dev_size:
            raise SystemExit(f"engine-train: --grids {args.grids} must exceed --dev-size {args.dev_size}")
        grids = random_grids(args.grids, np.random.default_rng(seed))
        blank = np.full_like(grids, BLANK)
        train, dev = (
            (blank[: -args.dev_size], grids[: -args.dev_size]),
            (blank[-args.dev_size :], grids[-args.dev_size :]),
        )
        return (
            train,
            dev,
            (
                f"train: {args.grids - args.dev_size} random complete grids from an all-blank board (seed {seed}); "
                f"held out: the last {args.dev_size}; augmented on the fly"
            ),
        )
    sources: list[Source] = []
    reveal = tuple(args.extra_clues) if args.extra_clues else None
    if args.puzzles or args.solutions:
        if not (args.puzzles and args.solutions):
            raise SystemExit("engine-train: --puzzles and --solutions go together")
        x, y = read_puzzle_files(args.puzzles, args.solutions)
        sources.append(Source("puzzles", x, y, reveal=reveal))
    if args.csv:
        sources.append(Source("csv", *read_sudoku_extreme_csv(args.csv), reveal=reveal))
    if args.dataset:
        try:
            sources.append(Source("dataset", *read_official_dataset(args.dataset), reveal=reveal))
        except (DatasetError, PuzzleError) as e:
            raise SystemExit(f"engine-train: --dataset: {e}") from None
    if args.hf:
        sources.append(Source("hf", *read_sudoku_extreme_csv(download_sudoku_extreme("train")), reveal=reveal))
    if args.generate:
        rng = np.random.default_rng(seed)
        x, y = generate_puzzles(args.generate, rng, clues=tuple(args.clues), min_guesses=args.min_guesses)
        sources.append(Source("generated", x, y))  # easy by design: no extra clues
    if args.infill:
        grids = random_grids(args.infill, np.random.default_rng([seed, 3]))
        sources.append(Source("infill", grids, grids, blank=(0, 81)))
    if not sources:
        raise SystemExit(
            "engine-train: no training data: give --puzzles/--solutions, --csv, --dataset, --hf, --generate or --infill"
        )
    names = {
        "puzzles": f"{Path(args.puzzles or '').name} + {Path(args.solutions or '').name}",
        "csv": Path(args.csv or "").name,
        "hf": "sapientinc/sudoku-extreme train.csv",
        "dataset": f"{args.dataset} (official layout, train split)",
        "generated": f"{args.generate} generated puzzles (clues {args.clues[0]}-{args.clues[1]}, "
        + (f"min guesses {args.min_guesses}, " if args.min_guesses else "")
        + f"seed {seed})",
        "infill": f"{args.infill} random complete grids with 0-81 cells blanked (infilling)",
    }
    if args.eval_puzzles:
        dev = read_puzzle_files(args.eval_puzzles, args.eval_solutions)
        held_out = Path(args.eval_puzzles).name
    else:
        first = sources[0]
        if len(first.inputs) <= args.dev_size:
            raise SystemExit(
                f"engine-train: the first source has {len(first.inputs)} samples, not more than --dev-size "
                f"{args.dev_size}"
            )
        dev = (first.inputs[-args.dev_size :], first.labels[-args.dev_size :])
        if first.blank:  # infilling alone: held-out grids blanked once, with a fixed draw
            dev = (blank_cells(dev[1], first.blank, np.random.default_rng([seed, 4])), dev[1])
        sources[0] = dataclasses.replace(
            first, inputs=first.inputs[: -args.dev_size], labels=first.labels[: -args.dev_size]
        )
        held_out = f"the last {args.dev_size} of {names[first.name]}"
    sources = _with_shares(sources, args.mix)
    described = "; ".join(
        f"{names[s.name]}"
        + (f" with {s.reveal[0]}-{s.reveal[1]} extra clues" if s.reveal else "")
        + (f" (share {s.share:g})" if s.share is not None else "")
        for s in sources
    )
    if args.curriculum:
        described += f"; curriculum from generated puzzles over the first {args.curriculum:g} of training"
    return sources, dev, f"train: {described}; held out: {held_out}; augmented on the fly"


def _with_shares(sources: list[Source], mix: list[str] | None) -> list[Source]:
    if not mix:
        return sources
    shares = {}
    for item in mix:
        name, _, share = item.partition("=")
        try:
            shares[name] = float(share)
        except ValueError:
            raise SystemExit(f"engine-train: --mix takes SOURCE=SHARE, got {item!r}") from None
    known = {s.name for s in sources}
    if unknown := set(shares) - known:
        raise SystemExit(f"engine-train: --mix names {sorted(unknown)}, but the sources are {sorted(known)}")
    if missing := known - set(shares):
        raise SystemExit(f"engine-train: --mix gives no share for {sorted(missing)}")
    return [dataclasses.replace(s, share=shares[s.name]) for s in sources]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device, ddp = args.device, Dist()
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # launched by torchrun
        if device.startswith("cuda"):
            device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        ddp = Dist(dist.get_rank(), dist.get_world_size(), device)
    cfg = build_config(args)
    if args.resume:
        restore_data(args, cfg)
    if args.threads:
        torch.set_num_threads(args.threads)
    files = None
    if args.task == "arc":
        train, dev, data, files = load_arc(args)
    elif args.task in QUEENS:
        train, dev, data = load_queens(args)
    else:
        train, dev, data = load_data(args, cfg.seed)
    trainer = Trainer(cfg, args.task, train, dev, args.out, device, ddp, data, files)
    if args.resume:
        trainer.resume()
    elif cfg.init_from:
        trainer.init_from(cfg.init_from)
    if ddp.is_main:
        samples = sum(len(s.inputs) for s in train) if isinstance(train, list) else len(train[0])
        print(
            f"engine-train: {samples:,} training samples, {len(dev[0]):,} held out; {cfg.model_preset} "
            f"{dict(cfg.model_overrides)}; {cfg.steps} steps of {cfg.global_batch_size} rows on {ddp.world} x {device}"
            + (f"; resumed at step {trainer.step}" if args.resume else "")
        )
    try:
        summary = trainer.fit()
    except PosteriorCollapse as e:
        raise SystemExit(f"engine-train: {e} (state saved in {Path(args.out) / 'train_state'})") from None
    if ddp.is_main:
        print(
            f"engine-train: done at step {summary['step']} in {summary['wall_seconds']:.0f} s; "
            f"{describe_eval(summary['last_eval'])}; checkpoint {Path(args.out) / 'checkpoint'}"
        )
    if ddp.world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
