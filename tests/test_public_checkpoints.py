"""README's "Public checkpoints" table: every conversion command in it runs, as written, on small files laid out like
the hub repository it names (issue 33).

The hub is unreachable here: a fake `huggingface_hub` serves a local folder through engine-convert's real hf:// code
path, and each command runs in a scratch working directory (its `checkpoints/...` and `data/...` paths land there).
The files are random tiny models in the official layouts: HRM's `checkpoint` (compiled-model keys) beside its yaml,
a TRM `step_N` with its yaml, one without a yaml, one in a nested folder; the yamls carry keys the converter does not
know. HRM's forward itself is checked against the official code in test_hrm.py.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from engine.checkpoint import load_checkpoint
from engine.checkpoint import main as convert
from engine.models import HRM, TRM, HRMConfig, TRMConfig
from engine.tasks import get_task

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
HRM_FIXTURE = ROOT / "tests" / "fixtures" / "official" / "hrm"
ARC_BUILD = ROOT / "tests" / "fixtures" / "arc" / "official"  # the official builder's output: 28 puzzle identifiers

TRM_NAME = "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1"
HRM_NAME = "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1"
SMALL = dict(hidden_size=32, num_heads=2, expansion=2.0, H_cycles=2, L_cycles=2, halt_max_steps=4)


def official_state(model: TRM, prefix: str = "_orig_mod.model.inner.") -> dict[str, torch.Tensor]:
    """Our tensors under the official names, as the official trainers save them."""
    renames = [
        ("layers.", "L_level.layers."),
        ("H_layers.", "H_level.layers."),
        ("embed_tokens.weight", "embed_tokens.embedding_weight"),
        ("puzzle_emb", "puzzle_emb.weights"),
        ("embed_pos", "embed_pos.embedding_weight"),
    ]
    out = {}
    for name, t in model.state_dict().items():
        for ours, theirs in renames:
            if name.startswith(ours):
                name = theirs + name.removeprefix(ours)
                break
        out[prefix + name] = t.clone()
    return out


def official_yaml(name: str, data_path: str, upstream_hrm: bool = False, **arch) -> dict:
    """An all_config.yaml: TRM's (data_paths, a list) or upstream HRM's (data_path), with keys nobody here reads."""
    section = dict(name=name, loss=dict(name="losses@ACTLossHead", loss_type="stablemax_cross_entropy"), **arch)
    config = dict(arch=section, global_batch_size=768, lr=1e-4, seed=0, project_name="somebody's run")
    config.update({"data_path": data_path} if upstream_hrm else {"data_paths": [data_path], "ema": True})
    return config


def write(folder: Path, file: str, state: dict, config: dict | None) -> None:
    (folder / file).parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / file)
    if config is not None:
        (folder / file).parent.joinpath("all_config.yaml").write_text(yaml.safe_dump(config))


def hrm_repo(folder: Path, seq_len: int, vocab: int, data_path: str) -> None:
    torch.manual_seed(0)
    model = HRM(HRMConfig(seq_len=seq_len, vocab_size=vocab, puzzle_emb_ndim=32, H_layers=1, L_layers=1, **SMALL))
    arch = dict(H_layers=1, L_layers=1, puzzle_emb_ndim=32, pos_encodings="rope", **SMALL)
    write(folder, "checkpoint", official_state(model), official_yaml(HRM_NAME, data_path, upstream_hrm=True, **arch))


def trm_model(seq_len: int, vocab: int, identifiers: int = 1, **settings) -> TRM:
    torch.manual_seed(0)
    config = dict(SMALL, seq_len=seq_len, vocab_size=vocab, num_puzzle_identifiers=identifiers, puzzle_emb_ndim=32)
    return TRM(TRMConfig(**{**config, "L_layers": 1, **settings}))


def sapientinc_sudoku(folder: Path) -> None:  # the parity fixture itself: made by the official HRM code
    folder.mkdir(parents=True)
    for name in ("checkpoint", "all_config.yaml"):
        shutil.copy(HRM_FIXTURE / name, folder / name)


def sapientinc_maze(folder: Path) -> None:
    hrm_repo(folder, 900, 6, "data/maze-30x30-hard-1k")


def sapientinc_arc2(folder: Path) -> None:
    hrm_repo(folder, 900, 12, "data/arc-2-aug-1000")


def sanjin_maze(folder: Path) -> None:
    model = trm_model(900, 6)
    arch = dict(L_layers=1, H_layers=0, puzzle_emb_ndim=32, puzzle_emb_len=16, pos_encodings="rope", **SMALL)
    config = official_yaml(TRM_NAME, "data/maze-30x30-hard-1k", mlp_t=False, no_ACT_continue=True, **arch)
    write(folder, "step_9765", official_state(model), config)


def alphaxiv_sudoku(folder: Path) -> None:  # no yaml; the plain (DISABLE_COMPILE) key prefix
    model = trm_model(81, 11, mlp_t=True, pos_encodings="none", H_cycles=3, L_cycles=6, expansion=4.0)  # paper width
    write(folder, "step_N", official_state(model, prefix="model.inner."), None)


def arcprize_arc1(folder: Path) -> None:  # nested folder, an ARC table of the fixture build's 28 rows
    model = trm_model(900, 12, identifiers=28)
    arch = dict(L_layers=1, H_layers=0, puzzle_emb_ndim=32, puzzle_emb_len=16, pos_encodings="rope", **SMALL)
    write(folder, "arc_v1_public/step_518071", official_state(model), official_yaml(TRM_NAME, "data/arc1", **arch))


# README command -> (hub repository, its files, what the converted checkpoint must be; None: refused)
ROWS = {
    "engine-convert hf://sapientinc/HRM-checkpoint-sudoku-extreme/checkpoint checkpoints/hrm-sudoku": (
        sapientinc_sudoku,
        dict(arch="hrm", task="sudoku", seq_len=81, prefix_len=2),
    ),
    "engine-convert hf://sapientinc/HRM-checkpoint-maze-30x30-hard/checkpoint checkpoints/hrm-maze": (
        sapientinc_maze,
        dict(arch="hrm", task="maze", seq_len=900, prefix_len=1),
    ),
    "engine-convert hf://sapientinc/HRM-checkpoint-ARC-2/checkpoint checkpoints/hrm-arc2": (sapientinc_arc2, None),
    "engine-convert hf://Sanjin2024/TinyRecursiveModel-Maze-Hard/step_9765 checkpoints/trm-maze": (
        sanjin_maze,
        dict(arch="trm", task="maze", seq_len=900, prefix_len=16),
    ),
    "engine-convert hf://alphaXiv/trm-model-sudoku/step_N checkpoints/trm-sudoku --task sudoku --H-cycles 3 "
    "--L-cycles 6": (alphaxiv_sudoku, dict(arch="trm", task="sudoku", seq_len=81, prefix_len=16)),
    "engine-convert hf://arcprize/trm_arc_prize_verification/arc_v1_public/step_518071 checkpoints/trm-arc1 "
    "--identifiers data/arc1concept-aug-1000/identifiers.json": (
        arcprize_arc1,
        dict(arch="trm", task="arc", seq_len=900, prefix_len=16),
    ),
}


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """A fake huggingface_hub whose repositories are folders under the returned path; cwd is a scratch folder."""
    root = tmp_path / "hub"

    class EntryNotFoundError(Exception):
        pass

    def hf_hub_download(repo_id, filename, **_):
        if not (root / repo_id / filename).is_file():
            raise EntryNotFoundError(f"{repo_id}/{filename}")
        return str(root / repo_id / filename)

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(hf_hub_download=hf_hub_download))
    monkeypatch.setitem(
        sys.modules, "huggingface_hub.errors", types.SimpleNamespace(EntryNotFoundError=EntryNotFoundError)
    )
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return root


def test_every_row_of_the_readme_table_is_tested_here():
    table = README.split("### Public checkpoints")[1].split("\n\n")[2]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    commands = [c for row in rows for c in re.findall(r"`(engine-convert hf://[^`]*)`", row)]
    refused = [row.split("`")[1] for row in rows if "| refused |" in row]
    assert len(rows) == len(ROWS) == len(commands) + len(refused)
    assert set(commands) == {c for c, (_, want) in ROWS.items() if want is not None}
    assert refused == ["sapientinc/HRM-checkpoint-ARC-2"]


@pytest.mark.parametrize("command", ROWS)
def test_the_readme_command_converts_its_layout(hub, command, capsys):
    make, want = ROWS[command]
    argv = shlex.split(command)[1:]
    owner, repo = argv[0].removeprefix("hf://").split("/")[:2]
    make(hub / owner / repo)
    if "--identifiers" in argv:  # the exact rebuild's identifiers (here: the ARC fixture build)
        shutil.copytree(ARC_BUILD, Path("data/arc1concept-aug-1000"))
    if want is None:
        with pytest.raises(SystemExit, match="refuses rather than serve wrong puzzle embeddings"):
            convert(argv)
        assert not Path(argv[1]).exists()
        return
    convert(argv)
    ckpt = load_checkpoint(argv[1])
    got = dict(arch=ckpt.arch, task=ckpt.task, seq_len=ckpt.config.seq_len, prefix_len=ckpt.config.prefix_len)
    assert got == want
    assert f"wrote {argv[1]} ({want['arch']}, {want['task']}" in capsys.readouterr().out
    if want["task"] == "arc":
        assert ckpt.identifiers is not None and len(ckpt.identifiers) == 28 and ckpt.test_puzzles
    if argv[0].endswith("trm-model-sudoku/step_N"):
        assert ckpt.config.mlp_t and (ckpt.config.H_cycles, ckpt.config.L_cycles) == (3, 6)


def test_a_trm_that_halts_by_q_continue_is_refused(hub):
    sanjin_maze(hub / "x" / "y")
    config = yaml.safe_load((hub / "x" / "y" / "all_config.yaml").read_text())
    config["arch"]["no_ACT_continue"] = False
    (hub / "x" / "y" / "all_config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit, match="no_ACT_continue is False: this TRM halts on q_halt > q_continue"):
        convert(["hf://x/y/step_9765", "out"])


def test_a_converted_hrm_maze_checkpoint_solves_maze_requests(hub):
    """/solve with HRM's Maze layout converted: `task: "maze"`, the 30x30 text form in and out, the shortest-path
    verifier's verdict (a random model: a fault is named), the search's TRM defaults on HRM's halting score."""
    from fastapi.testclient import TestClient
    from live import app_for, wait_ready

    command = "engine-convert hf://sapientinc/HRM-checkpoint-maze-30x30-hard/checkpoint checkpoints/hrm-maze"
    sapientinc_maze(hub / "sapientinc" / "HRM-checkpoint-maze-30x30-hard")
    convert(shlex.split(command)[1:])
    row = (ROOT / "tests" / "fixtures" / "csv_datasets" / "maze" / "csv" / "test.csv").read_text().splitlines()[1]
    question = row.split(",")[1]
    puzzle = "\n".join(question[i : i + 30] for i in range(0, 900, 30))
    with TestClient(app_for(Path("checkpoints/hrm-maze"))) as client:
        wait_ready(client)
        r = client.post("/solve", json={"puzzle": puzzle, "task": "maze", "search": {"rollouts": 2, "steps": 2}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "maze" and body["selector"] == "q" and body["rollouts"] == 2
    assert len(body["solution"].replace("\n", "")) == 900
    assert body["verified"] is False and body["fault"]
    # what the service's warm-up sends (all PAD) is no maze: a rule broken, not a crash of the engine
    blank = np.zeros(900, np.int64)
    assert (
        get_task("maze").check(blank, blank)
        == "the puzzle is not a maze: row 1, column 1: token 0 is not a maze puzzle cell"
    )
