"""HRM (issue 33): official HRM checkpoints convert with engine-convert and run in the engine as the official code does.

tests/fixtures/official/hrm/ holds a tiny random-weight HRM made once by the official code
(tests/fixtures/official/produce_hrm.py; README.md there): `checkpoint`, the compiled loss-wrapped model's state dict
as HRM's releases are saved (keys `_orig_mod.model.inner.*`), the all_config.yaml beside it (arch
`hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1`), and in forward.safetensors the official forward's logits, Q
logits and carries after each of 3 ACT steps, in float32 and bfloat16, with each row's official halting decision.
Sizes are asymmetric so that a swapped stack or loop shows: 1 H block and 2 L blocks, H_cycles 2 and L_cycles 3,
puzzle_emb_ndim 48 at hidden 32 (a 2-slot prefix, half of its second slot zero padding), RoPE, the Sudoku shape.

As in test_official_parity.py, the bit-exact comparison runs the project in a subprocess with the fixture's kernel
settings (they must be set before torch loads); this process's own kernels are compared within a tolerance.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, safe_open, save_file

from engine.checkpoint import CheckpointError, load_checkpoint, load_official
from engine.checkpoint import main as convert
from engine.models import HRM, TRM, HRMConfig, TRMConfig, preset
from engine.search.rollouts import search_step

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "official" / "hrm"
DTYPES = ("float32", "bfloat16")
OUTPUTS = ("logits", "q_halt_logits", "q_continue_logits", "z_H", "z_L")


def official() -> tuple[dict[str, torch.Tensor], dict]:
    path = FIXTURE / "forward.safetensors"
    with safe_open(path, "pt") as f:
        provenance = json.loads(f.metadata()["provenance"])
    return load_file(path), provenance


def num_steps(tensors: dict) -> int:
    return 1 + max(int(k.split(".")[1]) for k in tensors if k.startswith("float32."))


def project_outputs(ckpt_dir, inputs: torch.Tensor, puzzle_ids: torch.Tensor, dtype: str, steps: int) -> dict:
    """The project's HRM on the official batch, stepped by the search's step function (what the runner calls): per
    step what forward.safetensors records, plus the halting score the engine uses (`halt_logit`)."""
    model = load_checkpoint(ckpt_dir, forward_dtype=dtype).model
    out = {}
    inputs, puzzle_ids = inputs.long(), puzzle_ids.long()
    n = len(inputs)
    with torch.inference_mode():
        carry = model.initial_carry(n)
        for step in range(steps):
            carry, logits, q = model.step(carry, inputs, puzzle_ids)
            got = dict(logits=logits, q_halt_logits=q[:, 0], q_continue_logits=q[:, 1], z_H=carry.z_H, z_L=carry.z_L)
            out.update({f"{dtype}.{step}.{k}": v.contiguous() for k, v in got.items()})
        carry = model.initial_carry(n)
        for step in range(steps):
            seeds, steps_ = torch.zeros(n, dtype=torch.long), torch.full((n,), step)
            s = search_step(model, carry, inputs, puzzle_ids, seeds, steps_, None)
            carry = s.carry
            out[f"{dtype}.{step}.halt_logit"] = s.q.contiguous()
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hrm") / "ckpt"
    convert([str(FIXTURE / "checkpoint"), str(out)])  # no flags: the arch, sizes and task come from the yaml
    return out


@pytest.fixture(scope="module")
def portable(converted, tmp_path_factory) -> dict:
    """The project's outputs computed with the fixture's kernel settings, in a subprocess."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip(f"the fixture holds the bits of x86-64 kernels; this is {platform.machine()}")
    _, metadata = official()
    dst = tmp_path_factory.mktemp("hrm-out") / "project.safetensors"
    env = {**os.environ, **metadata["numerics_env"], "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, __file__, str(converted), str(dst)], env=env, check=True)
    return load_file(dst)


def test_official_hrm_converts_to_its_architecture(converted):
    ckpt = load_checkpoint(converted)
    c = ckpt.config
    assert ckpt.arch == "hrm" and isinstance(ckpt.model, HRM) and isinstance(c, HRMConfig) and ckpt.task == "sudoku"
    assert json.loads((converted / "config.json").read_text())["arch"] == "hrm"
    assert (c.H_layers, c.L_layers, c.H_cycles, c.L_cycles, c.halt_max_steps) == (1, 2, 2, 3, 3)
    assert (c.hidden_size, c.num_heads, c.expansion, c.pos_encodings, c.mlp_t) == (32, 2, 2, "rope", False)
    assert (c.seq_len, c.vocab_size, c.num_puzzle_identifiers, c.puzzle_emb_ndim) == (81, 11, 1, 48)
    assert c.prefix_len == 2  # ceil(48 / 32), not TRM's default 16
    assert len(ckpt.model.H_layers) == 1 and len(ckpt.model.layers) == 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_is_bit_exact_with_the_official_hrm(portable, dtype):
    """Every step's logits, Q logits and carries equal the official forward's bit for bit."""
    expected, metadata = official()
    for step in range(num_steps(expected)):
        for k in OUTPUTS:
            key = f"{dtype}.{step}.{k}"
            want, got = expected[key], portable[key]
            assert got.dtype == want.dtype and got.shape == want.shape, key
            diff = (got.float() - want.float()).abs().max().item()
            assert torch.equal(got, want), (
                f"{key}: max |project - official| = {diff:.3g} (fixture made with torch {metadata['torch']}, "
                f"this is {torch.__version__})"
            )


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_engine_halts_where_the_official_hrm_halts(portable, dtype):
    """The halting score the search uses is q_halt - q_continue: positive exactly on the rows the official HRM halts
    (the fixture has rows where q_halt > 0 but q_halt < q_continue, and the reverse, so TRM's rule fails here)."""
    expected, _ = official()
    steps = num_steps(expected)
    for step in range(steps):
        score = portable[f"{dtype}.{step}.halt_logit"]
        q_halt, q_continue = (expected[f"{dtype}.{step}.{k}"] for k in ("q_halt_logits", "q_continue_logits"))
        assert torch.equal(score, q_halt - q_continue)
        halted = (score > 0) | (step + 1 >= steps)
        assert torch.equal(halted, expected[f"{dtype}.{step}.halted"]), f"{dtype} step {step}"


def test_forward_matches_the_official_hrm_with_this_machines_kernels(converted):
    """float32 with whatever kernels this CPU gets, within a tolerance (see test_official_parity.py)."""
    expected, _ = official()
    got = project_outputs(converted, expected["inputs"], expected["puzzle_identifiers"], "float32", num_steps(expected))
    for key in [k for k in got if not k.endswith("halt_logit")]:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-4, msg=lambda m, key=key: f"{key}: {m}")


def test_hrm_with_its_h_stack_equal_to_its_l_stack_is_trm_with_the_same_prefix():
    """Fixture-free: HRM differs from TRM only in the stack that updates z_H (and its halting rule)."""
    config = HRMConfig(
        seq_len=81,
        vocab_size=11,
        hidden_size=32,
        num_heads=2,
        expansion=2.0,
        puzzle_emb_ndim=48,
        H_layers=2,
        L_layers=2,
        H_cycles=2,
        L_cycles=3,
        halt_max_steps=3,
        forward_dtype="float32",
    )
    torch.manual_seed(0)
    hrm = HRM(config).eval()
    with torch.no_grad():
        hrm.puzzle_emb.normal_()
        hrm.q_head.weight.normal_()
    hrm.H_layers.load_state_dict(hrm.layers.state_dict())
    trm_fields = {k: v for k, v in dataclasses.asdict(config).items() if k != "H_layers"}
    trm = TRM(TRMConfig(**{**trm_fields, "puzzle_emb_len": 2})).eval()
    trm.load_state_dict({k: v for k, v in hrm.state_dict().items() if not k.startswith("H_layers.")})
    x = torch.randint(1, 11, (3, 81), generator=torch.Generator().manual_seed(3))
    pid = torch.zeros(3, dtype=torch.long)
    with torch.inference_mode():
        a, b = hrm.initial_carry(3), trm.initial_carry(3)
        for _ in range(3):
            a, logits_a, q_a = hrm.step(a, x, pid)
            b, logits_b, q_b = trm.step(b, x, pid)
            assert torch.equal(logits_a, logits_b) and torch.equal(q_a, q_b)
            assert torch.equal(a.z_H, b.z_H) and torch.equal(a.z_L, b.z_L)
        assert torch.equal(hrm.halt_logit(q_a), q_a[:, 0] - q_a[:, 1]) and torch.equal(trm.halt_logit(q_b), q_b[:, 0])


# -- the layouts HRM's and the community's checkpoints come in --------------------------------------------------------


def official_hrm(folder: Path, prefix: str = "_orig_mod.model.inner.", name: str = "checkpoint") -> Path:
    """The fixture's tensors under another key prefix and file name, in `folder` (no yaml)."""
    state = torch.load(FIXTURE / "checkpoint", weights_only=True)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({prefix + k.removeprefix("_orig_mod.model.inner."): v for k, v in state.items()}, folder / name)
    return folder / name


def fixture_yaml() -> dict:
    return yaml.safe_load((FIXTURE / "all_config.yaml").read_text())


def test_without_a_yaml_hrm_needs_arch_hrm_and_its_settings(tmp_path):
    src = official_hrm(tmp_path / "plain", prefix="model.inner.", name="step_100")
    with pytest.raises(SystemExit, match=r"H_level tensors \('H_level\.layers\.0\..*--arch hrm"):
        convert([str(src), str(tmp_path / "out")])
    flags = ["--arch", "hrm", "--task", "sudoku", "--num-heads", "2", "--expansion", "2", "--H-cycles", "2"]
    convert([str(src), str(tmp_path / "out"), *flags, "--L-cycles", "3", "--halt-max-steps", "3"])
    ckpt = load_checkpoint(tmp_path / "out")
    assert ckpt.arch == "hrm" and ckpt.config.prefix_len == 2 and (ckpt.config.H_layers, ckpt.config.L_layers) == (1, 2)
    direct, _, _ = load_official(FIXTURE / "checkpoint")
    for k, v in direct.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[k].to(v.dtype), v), k
    assert ckpt.config == dataclasses.replace(direct.config, forward_dtype=ckpt.config.forward_dtype)


def test_yaml_with_extra_keys_and_a_nested_folder_converts(tmp_path):
    """A hub repository's layout (hf://OWNER/REPO/sub/dir/checkpoint): the yaml beside the file, with keys the
    converter does not know (and HRM's own code ignores, such as puzzle_emb_len)."""
    src = official_hrm(tmp_path / "repo" / "sudoku" / "run-1")
    config = fixture_yaml()
    config["arch"].update(puzzle_emb_len=16, some_future_setting=3)
    config["wandb"] = {"entity": "someone"}
    (src.parent / "all_config.yaml").write_text(yaml.safe_dump(config))
    convert([str(src), str(tmp_path / "out")])
    ckpt = load_checkpoint(tmp_path / "out")
    assert ckpt.arch == "hrm" and ckpt.config.prefix_len == 2 and ckpt.config.L_cycles == 3


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"arch": {"name": "recursive_reasoning.transformers_baseline@Model_ACTV2"}},
            r"arch 'recursive_reasoning.transformers_baseline@Model_ACTV2' is not one the engine runs exactly",
        ),
        ({"data_path": "data/arc-2-aug-1000"}, r"HRM ARC checkpoint .* refuses rather than serve wrong puzzle"),
        ({"arch": {"H_layers": 2}}, r"missing tensor 'H_layers\.1\.self_attn\.qkv_proj\.weight'"),
        ({"arch": {"puzzle_emb_ndim": 64}}, r"puzzle_emb_ndim|puzzle_emb"),
    ],
)
def test_what_the_engine_cannot_run_exactly_is_refused_by_name(tmp_path, change, message):
    src = official_hrm(tmp_path / "repo")
    config, change = fixture_yaml(), dict(change)
    config["arch"].update(change.pop("arch", {}))
    config.update(change)
    (src.parent / "all_config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit, match=message):
        convert([str(src), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_arch_flag_contradicting_the_yaml_and_a_prefix_other_than_hrms_are_refused(tmp_path):
    with pytest.raises(SystemExit, match=r"--arch trm contradicts .*'hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1'"):
        convert([str(FIXTURE / "checkpoint"), str(tmp_path / "out"), "--arch", "trm"])
    with pytest.raises(SystemExit, match=r"HRM's puzzle prefix is ceil\(puzzle_emb_ndim / hidden_size\) = 2 slots"):
        convert([str(FIXTURE / "checkpoint"), str(tmp_path / "out"), "--puzzle-emb-len", "3"])
    with pytest.raises(CheckpointError, match=r"puzzle_emb_ndim does not fit the prefix"):
        load_official(FIXTURE / "checkpoint", overrides={"puzzle_emb_len": 1})
    with pytest.raises(ValueError, match="HRM's puzzle prefix"):
        HRMConfig(seq_len=81, vocab_size=11, puzzle_emb_len=16)


def test_engine_init_writes_the_released_hrm_sizes(tmp_path):
    from engine.init import main as init

    for name, (seq_len, vocab) in {"hrm-sudoku": (81, 11), "hrm-maze": (900, 6)}.items():
        c = preset(name)
        assert isinstance(c, HRMConfig) and (c.seq_len, c.vocab_size) == (seq_len, vocab)
        assert (c.hidden_size, c.num_heads, c.H_layers, c.L_layers, c.H_cycles, c.L_cycles) == (512, 8, 4, 4, 2, 2)
        assert (c.prefix_len, c.halt_max_steps, c.pos_encodings, c.expansion) == (1, 16, "rope", 4.0)
    init([str(tmp_path / "hrm"), "--preset", "hrm-sudoku"])
    ckpt = load_checkpoint(tmp_path / "hrm")
    assert ckpt.arch == "hrm" and ckpt.task == "sudoku" and len(ckpt.model.H_layers) == 4


def test_solve_serves_a_converted_hrm_checkpoint(converted):
    """/solve on an HRM checkpoint works as on a TRM one: the search's defaults are TRM's (best-Q on HRM's halting
    score), and the reported confidence is sigmoid(q_halt - q_continue) of the chosen row."""
    from fastapi.testclient import TestClient
    from live import app_for, wait_ready

    from engine.search.params import default_params
    from engine.search.rollouts import run_rollouts
    from engine.tasks import get_task

    puzzle = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
    search = {"rollouts": 4, "steps": 3, "seed": 1}
    with TestClient(app_for(converted)) as client:
        wait_ready(client)
        models = client.get("/v1/models").json()
        r = client.post("/solve", json={"puzzle": puzzle, "search": search})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "sudoku" and body["selector"] == "q" and len(body["solution"]) == 81
    assert [m["arch"] for m in models["data"]] == ["hrm"]
    ckpt = load_checkpoint(converted)
    params = default_params("sudoku", "hrm", 3).replace(**search)
    assert params.noise > 0 and params.selector == "q"
    rows = run_rollouts(ckpt.model, get_task("sudoku").encode(puzzle), params)
    best = rows["q"].max()  # the plain model loop's halting scores, q_halt - q_continue
    assert body["confidence"] == pytest.approx(1 / (1 + np.exp(-best)), abs=1e-5)


if __name__ == "__main__":  # the `portable` fixture's subprocess: CKPT_DIR OUT
    torch.set_num_threads(1)
    ckpt_dir, dst = sys.argv[1:]
    expected, _ = official()
    outputs = {}
    for dtype in DTYPES:
        outputs.update(
            project_outputs(ckpt_dir, expected["inputs"], expected["puzzle_identifiers"], dtype, num_steps(expected))
        )
    save_file(outputs, dst)
