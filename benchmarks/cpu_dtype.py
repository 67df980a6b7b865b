"""One supervision step of the paper Sudoku-MLP TRM on CPU: float32 vs bfloat16 compute.

Backs the `forward_dtype="auto"` policy of `engine.checkpoint.load_checkpoint` (float32 on CPU). Times are the
median of `--repeats` runs after one warm-up; compare the ratio, not the absolute numbers (shared machines).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from engine.machine import describe
from engine.models import TRM, preset


@torch.no_grad()
def time_step(model: TRM, batch: int, repeats: int) -> float:
    x = torch.randint(1, 11, (batch, model.config.seq_len))
    pid = torch.zeros(batch, dtype=torch.long)
    carry = model.initial_carry(batch)
    model.step(carry, x, pid)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.step(carry, x, pid)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"machine: {describe()}, {torch.get_num_threads()} threads\n")
    print("| rows | float32 s/step | bfloat16 s/step | bf16 / fp32 |")
    print("|---:|---:|---:|---:|")
    for batch in args.batches:
        fp32 = time_step(TRM(preset("sudoku-mlp", forward_dtype="float32")), batch, args.repeats)
        bf16 = time_step(TRM(preset("sudoku-mlp", forward_dtype="bfloat16")), batch, args.repeats)
        print(f"| {batch} | {fp32:.3f} | {bf16:.3f} | {bf16 / fp32:.1f}x |")


if __name__ == "__main__":
    main()
