"""Checkpoints: a directory of `model.safetensors` (tensors only, never pickle) + `config.json` (+ `CARD.md`).

Also converts checkpoints written by the official TRM trainer (`torch.save`d state dicts of the compiled,
loss-wrapped model) and by the official HRM trainer (the same layout plus an `H_level` stack, e.g. the
`checkpoint` file of sapientinc/HRM-checkpoint-*) with `engine-convert`. Only the converter ever calls `torch.load`,
and always with `weights_only=True`; the service loads safetensors only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from engine.models import GRAM, HRM, TRM, GRAMConfig, HRMConfig, TRMConfig
from engine.models.config import compute_dtype
from engine.tasks import TASKS, get_task

WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "CARD.md"
# ARC: the names of the puzzle-embedding rows (one per augmented variant) and the tasks' test inputs, as the
# official dataset build that trained the checkpoint wrote them (engine-convert records them)
IDENTIFIERS, TEST_PUZZLES = "identifiers.json", "test_puzzles.json"
FORMAT_VERSION = 1
ARCHS: dict[str, tuple[type, type]] = {  # config.json "arch"
    "trm": (TRM, TRMConfig),
    "gram": (GRAM, GRAMConfig),
    "hrm": (HRM, HRMConfig),
}


def arch_of(model: TRM | GRAM) -> str:
    """config.json's "arch" of a model (HRM and GRAM before TRM: HRM is a TRM subclass)."""
    return "hrm" if isinstance(model, HRM) else "gram" if isinstance(model, GRAM) else "trm"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file, field or tensor at fault."""


@dataclass(frozen=True)
class Checkpoint:
    model: TRM | GRAM
    task: str
    meta: dict  # the rest of config.json: training summary, conversion source, ...
    path: Path | None = None
    identifiers: list[str] | None = None  # ARC: puzzle id -> "name|||t<d>|||<colours>" (identifiers.json)
    test_puzzles: dict | None = None  # ARC: task name -> {"test": [{"input": grid}, ...]} (test_puzzles.json)

    @property
    def config(self) -> TRMConfig | GRAMConfig:
        return self.model.config

    @property
    def arch(self) -> str:
        return arch_of(self.model)


# -- save / load ----------------------------------------------------------------------------------------------------


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh directory beside `path`; once the block succeeds, fsync its files and swap it in by renames,
    so a reader (or a killed writer) never sees a half-written `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = path.with_name(f".{path.name}.tmp-{os.getpid()}"), path.with_name(f".{path.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(
    path: str | os.PathLike,
    model: TRM | GRAM,
    task: str,
    meta: dict | None = None,
    card: str | None = None,
    files: dict[str, str] | None = None,
) -> Path:
    """Write a checkpoint directory atomically; `files`: more text files to hold (name -> content)."""
    with atomic_directory(path) as tmp:
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(tensors, tmp / WEIGHTS, metadata={"format": "pt"})
        config = {
            "format_version": FORMAT_VERSION,
            "arch": arch_of(model),
            "task": task,
            "model": model.config.to_dict(),
            **(meta or {}),
        }
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if card is not None:
            (tmp / CARD).write_text(card)
    return Path(path)


def read_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not (path / CONFIG).is_file():
        raise CheckpointError(f"{path} is not a checkpoint directory: {CONFIG} is missing")
    try:
        config = json.loads((path / CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / CONFIG} is not valid JSON: {e}") from None
    for field in ("arch", "task", "model"):
        if field not in config:
            raise CheckpointError(f"{path / CONFIG} has no {field!r} field")
    if config["arch"] not in ARCHS:
        raise CheckpointError(
            f"{path / CONFIG}: arch {config['arch']!r} is not supported (known: {', '.join(map(repr, ARCHS))})"
        )
    if config["task"] not in TASKS:
        raise CheckpointError(f"{path / CONFIG}: unknown task {config['task']!r} (known: {', '.join(sorted(TASKS))})")
    return config


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu", forward_dtype: str = "auto"
) -> Checkpoint:
    """Load and validate a checkpoint directory.

    `forward_dtype` "auto" means bf16 (the official numerics) on accelerators and float32 on CPU (`compute_dtype`),
    whatever the file's `forward_dtype` says: it records what the weights were trained with on their machine (CPU
    checkpoints say float32), not what to compute in here. Any explicit dtype is honoured."""
    path = Path(path)
    config = read_config(path)
    if forward_dtype == "auto":
        forward_dtype = compute_dtype(str(torch.device(device)))
    model_cls, config_cls = ARCHS[config["arch"]]
    try:
        model_config = dataclasses.replace(config_cls.from_dict(config["model"]), forward_dtype=forward_dtype)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path / CONFIG}: bad {config['arch']} model config: {e}") from None
    if not (path / WEIGHTS).is_file():
        raise CheckpointError(f"{path} has no {WEIGHTS}")
    model = model_cls(model_config)
    load_weights(model, load_file(path / WEIGHTS), source=str(path / WEIGHTS))
    meta = {k: v for k, v in config.items() if k not in ("arch", "task", "model")}
    identifiers, puzzles = _read_json(path / IDENTIFIERS), _read_json(path / TEST_PUZZLES)
    if identifiers is not None:
        check_identifiers(identifiers, model_config.num_puzzle_identifiers, str(path / IDENTIFIERS))
    return Checkpoint(model.to(device).eval(), config["task"], meta, path, identifiers, puzzles)


def _read_json(path: Path):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None


def check_identifiers(identifiers, table: int, source: str) -> None:
    """identifiers.json names every row of the puzzle-embedding table, no more and no fewer."""
    if not isinstance(identifiers, list) or not all(isinstance(i, str) for i in identifiers):
        raise CheckpointError(f"{source} is not a JSON list of identifier strings")
    if len(identifiers) != table:
        raise CheckpointError(
            f"{source} names {len(identifiers)} puzzle identifiers but the checkpoint's puzzle-embedding table has "
            f"{table} rows: it belongs to another dataset build"
        )


def load_weights(model: TRM | GRAM, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Check names, shapes and dtypes against the model, naming the first offending tensor, then load."""
    expected = model.state_dict()
    for name, t in expected.items():
        if name not in tensors:
            raise CheckpointError(f"{source} is missing tensor {name!r} (expected shape {list(t.shape)})")
    for name, t in tensors.items():
        if name not in expected:
            raise CheckpointError(
                f"{source} has unexpected tensor {name!r} {list(t.shape)}: the config describes no such weight"
            )
        if t.shape != expected[name].shape:
            raise CheckpointError(
                f"tensor {name!r} in {source} has shape {list(t.shape)}, "
                f"but the config implies {list(expected[name].shape)}"
            )
        if not t.is_floating_point():
            raise CheckpointError(f"tensor {name!r} in {source} has dtype {t.dtype}; expected a floating-point tensor")
    model.load_state_dict(tensors)


# -- official TRM and HRM checkpoints -------------------------------------------------------------------------------

# Official name -> ours, applied after the `_orig_mod.` / `model.` / `inner.` prefixes are stripped.
_RENAMES = [
    (r"^L_level\.layers\.", "layers."),
    (r"^H_level\.layers\.", "H_layers."),  # HRM's z_H stack
    (r"^embed_tokens\.embedding_weight$", "embed_tokens.weight"),
    (r"^embed_pos\.embedding_weight$", "embed_pos"),
    (r"^puzzle_emb\.weights$", "puzzle_emb"),
]
_PREFIX = re.compile(r"^(_orig_mod\.)?(model\.)?(inner\.)?")


def rename_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, t in state_dict.items():
        name = _PREFIX.sub("", key)
        for pattern, repl in _RENAMES:
            name = re.sub(pattern, repl, name)
        out[name] = t
    return out


# The official `arch.name`s (module@class in all_config.yaml) the engine runs exactly: TRM, and HRM as its own
# repository names it (sapientinc/HRM, the released checkpoints) and as the TRM repository's copy does. Any other
# (trm_singlez, trm_hier6, transformers_baseline, ...) computes something else from tensors of the same names.
OFFICIAL_ARCHS = {
    "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1": "trm",
    "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1": "hrm",
    "recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1": "hrm",
}


def official_arch(src: Path, name: str | None, flag: str | None, tensors: dict[str, torch.Tensor]) -> str:
    """The official model, "trm" or "hrm": all_config.yaml's arch name, else `--arch` (default trm); never the tensor
    names alone: the official transformers baseline has `H_level` tensors too, with another forward."""
    if name is not None:
        if name not in OFFICIAL_ARCHS:
            raise CheckpointError(
                f"{src.parent / 'all_config.yaml'}: arch {name!r} is not one the engine runs exactly (known: "
                f"{', '.join(OFFICIAL_ARCHS)}); refusing rather than computing another model's forward"
            )
        kind = OFFICIAL_ARCHS[name]
        if flag is not None and flag != kind:
            raise CheckpointError(f"--arch {flag} contradicts {src.parent / 'all_config.yaml'}'s arch {name!r}")
        return kind
    kind = flag or "trm"
    if kind == "trm" and (h := next((k for k in tensors if k.startswith("H_layers.")), None)):
        raise CheckpointError(
            f"{src} has H_level tensors ({h.replace('H_layers.', 'H_level.layers.', 1)!r}) and no all_config.yaml "
            "naming its arch: an official HRM checkpoint converts with --arch hrm (other models with an H_level, "
            "such as the transformers baseline, the engine does not run)"
        )
    return kind


def infer_config(tensors: dict[str, torch.Tensor], arch: dict, task: str, kind: str = "trm") -> TRMConfig:
    """Architecture from the official `arch` settings, filling what they lack from tensor shapes and the task.
    `kind` "hrm": an HRMConfig (H_layers from the H stack's tensors, the release's cycles, the ceil prefix)."""
    hidden = tensors["embed_tokens.weight"].shape[1]
    mlp_t = any(".mlp_t." in k for k in tensors)
    cfg = dict(
        vocab_size=tensors["embed_tokens.weight"].shape[0],
        hidden_size=hidden,
        L_layers=len({k.split(".")[1] for k in tensors if k.startswith("layers.")}),
        mlp_t=mlp_t,
        pos_encodings="learned" if "embed_pos" in tensors else ("none" if mlp_t else "rope"),
        puzzle_emb_len=16,
        L_cycles=6 if task == "sudoku" else 4,  # the paper's n per task (TRM.md §10.1)
    )
    if kind == "hrm":  # the released configs' cycles; HRM's prefix is always ceil(puzzle_emb_ndim / hidden)
        cfg.update(H_layers=len({k.split(".")[1] for k in tensors if k.startswith("H_layers.")}), puzzle_emb_len=0)
        cfg.update(H_cycles=2, L_cycles=2)
    if "puzzle_emb" in tensors:
        cfg["num_puzzle_identifiers"], cfg["puzzle_emb_ndim"] = tensors["puzzle_emb"].shape
    else:
        cfg["puzzle_emb_ndim"] = cfg["puzzle_emb_len"] = 0
    config_cls = HRMConfig if kind == "hrm" else TRMConfig
    fields = {f.name for f in dataclasses.fields(config_cls)}
    cfg.update({k: v for k, v in arch.items() if k in fields})
    if "seq_len" not in arch:
        prefix = cfg["puzzle_emb_len"] or -(cfg["puzzle_emb_ndim"] // -cfg["hidden_size"])
        if mlp_t:
            cfg["seq_len"] = tensors["layers.0.mlp_t.down_proj.weight"].shape[0] - prefix
        elif "embed_pos" in tensors:
            cfg["seq_len"] = tensors["embed_pos"].shape[0] - prefix
        else:
            cfg["seq_len"] = get_task(task).seq_len
    return config_cls(**cfg)


def _guess_task(official: dict, vocab_size: int) -> str:
    data = " ".join(map(str, official.get("data_paths") or [official.get("data_path", "")])).lower()
    for name in ("sudoku", "maze", "arc"):
        if name in data:
            return name
    by_vocab = {11: "sudoku", 6: "maze", 12: "arc"}
    if vocab_size not in by_vocab:
        raise CheckpointError(f"cannot tell the task of a vocabulary of {vocab_size} tokens; pass --task")
    return by_vocab[vocab_size]


def load_official(
    src: str | os.PathLike, task: str | None = None, overrides: dict | None = None, arch: str | None = None
) -> tuple[TRM, str, dict]:
    """An official TRM `step_N` or HRM `checkpoint` file (+ the `all_config.yaml` beside it, if any) -> (model, task,
    source info). `arch` ("trm" or "hrm") is needed only where no all_config.yaml names the official arch."""
    src = Path(src)
    state = torch.load(src, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{src} does not hold a state dict of tensors")
    tensors = rename_official(state)
    if "embed_tokens.weight" not in tensors:
        raise CheckpointError(
            f"{src} has no token embedding ('...inner.embed_tokens.embedding_weight'): not a TRM checkpoint"
        )
    yaml_path = src.parent / "all_config.yaml"
    full = yaml.safe_load(yaml_path.read_text()) if yaml_path.is_file() else {}
    official = dict(full.get("arch") or {})
    kind = official_arch(src, official.pop("name", None), arch, tensors)
    if kind == "hrm":
        official.pop("puzzle_emb_len", None)  # not an HRM setting: its code ignores it
    elif official.get("no_ACT_continue", True) is not True:
        raise CheckpointError(
            f"{yaml_path}: arch.no_ACT_continue is {official['no_ACT_continue']!r}: this TRM halts on q_halt > "
            "q_continue, a rule the engine applies to HRM only; refusing rather than halting it by another rule"
        )
    task = task or _guess_task(full, tensors["embed_tokens.weight"].shape[0])
    if kind == "hrm" and task == "arc":
        raise CheckpointError(
            f"{src}: an HRM ARC checkpoint (HRM-checkpoint-ARC-2) was trained on HRM's own ARC build, whose puzzle "
            "identifiers a fresh official TRM build does not reproduce: the engine cannot tell which embedding row "
            "is which task variant, and refuses rather than serve wrong puzzle embeddings"
        )
    try:
        model = ARCHS[kind][0](infer_config(tensors, {**official, **(overrides or {})}, task, kind))
    except ValueError as e:
        raise CheckpointError(f"{src}: {e}") from None
    load_weights(model, tensors, source=str(src))
    source = {"converted_from": src.name, "official_config": yaml_path.name if full else None, "arch": kind}
    return model.eval(), task, source


def fetch_from_hub(src: str) -> Path:
    """`hf://OWNER/REPO/PATH/step_N` -> the local path of the step file downloaded from the Hugging Face hub, with
    the repository's `all_config.yaml` beside it when there is one (e.g. hf://Sanjin2024/TinyRecursiveModels-...)."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError:
        raise CheckpointError("hf:// sources need huggingface_hub: pip install huggingface_hub") from None
    parts = src.removeprefix("hf://").split("/")
    if len(parts) < 3 or not all(parts):
        raise CheckpointError(f"expected hf://OWNER/REPO/PATH/step_N, got {src!r}")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    path = Path(hf_hub_download(repo_id=repo, filename=filename))
    try:  # the hub's cache mirrors the repository layout, so this lands beside the step file
        hf_hub_download(repo_id=repo, filename="/".join([*parts[2:-1], "all_config.yaml"]))
    except EntryNotFoundError:
        pass
    return path


def _data_identifiers(src: Path) -> Path | None:
    """identifiers.json in a data path of the all_config.yaml beside `src` (relative to here, or to the file)."""
    yaml_path = src.parent / "all_config.yaml"
    full = yaml.safe_load(yaml_path.read_text()) if yaml_path.is_file() else {}
    paths = full.get("data_paths") or ([full["data_path"]] if full.get("data_path") else [])
    for data in paths:
        for base in (Path(data), src.parent / data):
            if (base / IDENTIFIERS).is_file():
                return base / IDENTIFIERS
    return None


def _dataset_files(identifiers: Path | None, model: TRM) -> dict[str, str]:
    """The ARC files a converted checkpoint keeps: identifiers.json (checked against the embedding table) and the
    test_puzzles.json beside it."""
    if identifiers is None:
        return {}
    if not identifiers.is_file():
        raise CheckpointError(f"{identifiers} does not exist")
    names = _read_json(identifiers)
    check_identifiers(names, model.config.num_puzzle_identifiers, str(identifiers))
    files = {IDENTIFIERS: json.dumps(names)}
    if (identifiers.parent / TEST_PUZZLES).is_file():
        files[TEST_PUZZLES] = (identifiers.parent / TEST_PUZZLES).read_text()
    return files


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="engine-convert",
        description="Convert an official TRM step_N (or HRM checkpoint) file into a checkpoint directory.",
    )
    p.add_argument(
        "src",
        help="official checkpoint file (e.g. step_65100, or HRM's checkpoint), or hf://OWNER/REPO/PATH/FILE on the "
        "Hugging Face hub; all_config.yaml beside it is read if present",
    )
    p.add_argument("dst", help="output checkpoint directory")
    p.add_argument(
        "--task", choices=sorted(TASKS), help="puzzle task (default: from all_config.yaml or the vocabulary)"
    )
    p.add_argument(
        "--arch",
        choices=["trm", "hrm"],
        help="the official model, where no all_config.yaml beside the file names it (default trm)",
    )
    p.add_argument("--seq-len", type=int, help="sequence length without the puzzle prefix")
    p.add_argument("--num-heads", type=int)
    p.add_argument("--expansion", type=float)
    p.add_argument("--H-cycles", type=int, dest="H_cycles", help="T")
    p.add_argument("--L-cycles", type=int, dest="L_cycles", help="n")
    p.add_argument("--pos-encodings", choices=["rope", "learned", "none"])
    p.add_argument("--puzzle-emb-len", type=int)
    p.add_argument("--halt-max-steps", type=int)
    p.add_argument(
        "--identifiers",
        help="ARC: the identifiers.json of the dataset build the checkpoint was trained on (default: the one in a "
        "data path of all_config.yaml); test_puzzles.json beside it is kept too",
    )
    args = p.parse_args(argv)
    named = ("src", "dst", "task", "identifiers", "arch")
    flags = {k: v for k, v in vars(args).items() if k not in named and v is not None}
    try:
        src = fetch_from_hub(args.src) if args.src.startswith("hf://") else args.src
        model, task, source = load_official(src, args.task, flags, args.arch)
        files = _dataset_files(Path(args.identifiers) if args.identifiers else _data_identifiers(Path(src)), model)
    except CheckpointError as e:
        raise SystemExit(f"engine-convert: {e}") from None
    if task == "arc" and IDENTIFIERS not in files:
        print(
            f"engine-convert: warning: no {IDENTIFIERS} found (give --identifiers): the puzzle ids of this ARC "
            "checkpoint stay unnamed, so /solve cannot find a task's variants"
        )
    out = save_checkpoint(args.dst, model, task, meta={"source": source}, files=files)
    n = sum(p.numel() for name, p in model.named_parameters() if name != "puzzle_emb")
    c = model.config
    print(
        f"wrote {out} ({arch_of(model)}, {task}, {n:,} parameters, T={c.H_cycles}, n={c.L_cycles}, "
        f"{'mlp_t' if c.mlp_t else 'attention'}, pos={c.pos_encodings}, {c.prefix_len} prefix slots)"
    )
