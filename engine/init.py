"""`engine-init`: write a randomly initialised checkpoint from a named preset (official init scheme, TRM.md §1.5).

The starting point for training, and a real checkpoint for smoke tests of the solving path before trained weights exist.
"""

from __future__ import annotations

import argparse

import torch

from engine.checkpoint import save_checkpoint
from engine.models import GRAM, GRAM_PRESETS, HRM, HRM_PRESETS, PRESETS, TRM, preset


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="engine-init", description=__doc__.splitlines()[0])
    p.add_argument("dst", help="output checkpoint directory")
    p.add_argument("--preset", default="sudoku-tiny", choices=sorted([*PRESETS, *GRAM_PRESETS, *HRM_PRESETS]))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    model_cls = GRAM if args.preset in GRAM_PRESETS else HRM if args.preset in HRM_PRESETS else TRM
    model = model_cls(preset(args.preset))
    meta = {"training": {"status": "untrained", "preset": args.preset, "seed": args.seed}}
    task = args.preset.removeprefix("gram-").removeprefix("hrm-").split("-")[0]
    out = save_checkpoint(args.dst, model, task, meta=meta)
    print(f"wrote {out}: untrained {args.preset} ({sum(p.numel() for p in model.parameters()):,} parameters)")
