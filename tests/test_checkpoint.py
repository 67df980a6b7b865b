import json
import sys
import types

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from engine.checkpoint import CheckpointError, load_checkpoint, load_official, save_checkpoint
from engine.checkpoint import main as convert
from engine.models import TRM, preset
from engine.models.config import compute_dtype

# The official Sudoku-MLP state dict (TRM.md §2.2): key order, shapes and dtypes as the official trainer saves them.
SUDOKU_MLP = [
    ("H_init", [512], torch.bfloat16),
    ("L_init", [512], torch.bfloat16),
    ("embed_tokens.embedding_weight", [11, 512], torch.float32),
    ("lm_head.weight", [11, 512], torch.float32),
    ("q_head.weight", [2, 512], torch.float32),
    ("q_head.bias", [2], torch.float32),
    ("puzzle_emb.weights", [1, 512], torch.float32),
    *[
        (f"L_level.layers.{i}.{name}", shape, torch.float32)
        for i in range(2)
        for name, shape in [
            ("mlp_t.gate_up_proj.weight", [1024, 97]),
            ("mlp_t.down_proj.weight", [97, 512]),
            ("mlp.gate_up_proj.weight", [3072, 512]),
            ("mlp.down_proj.weight", [512, 1536]),
        ]
    ],
]
SUDOKU_ATTN = [(k, s, d) for k, s, d in SUDOKU_MLP if ".mlp_t." not in k] + [
    (f"L_level.layers.{i}.self_attn.{name}", shape, torch.float32)
    for i in range(2)
    for name, shape in [("qkv_proj.weight", [1536, 512]), ("o_proj.weight", [512, 512])]
]
BUFFERS = ("H_init", "L_init", "puzzle_emb.weights")


def official_state_dict(spec, prefix: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Scaled like the official init so 16 steps of bf16 recursion stay in a realistic range.
    return {
        prefix + k: (torch.randn(s, generator=g) * (1.0 if len(s) == 1 else s[-1] ** -0.5)).to(d) for k, s, d in spec
    }


def sudoku_batch(n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randint(1, 11, (n, 81), generator=g), torch.zeros(n, dtype=torch.long)


def test_official_sudoku_mlp_has_15_tensors_and_5028866_parameters():
    assert len(SUDOKU_MLP) == 15
    assert sum(torch.Size(s).numel() for k, s, _ in SUDOKU_MLP if k not in BUFFERS) == 5_028_866


@pytest.mark.parametrize("variant", ["mlp", "attn"])
def test_convert_keeps_the_official_tensors(tmp_path, variant):
    """engine-convert on official-shaped state dicts at the paper's sizes: the checkpoint directory holds the tensors
    unchanged and computes what the same state dict loaded directly (`load_official`) computes. This compares the
    project with itself; parity with the official code's forward is tests/test_official_parity.py."""
    if variant == "mlp":  # compiled-model prefix, settings from flags (no all_config.yaml)
        state = official_state_dict(SUDOKU_MLP, "_orig_mod.model.inner.")
        flags = ["--task", "sudoku", "--H-cycles", "1", "--L-cycles", "2"]
    else:  # plain prefix, settings from the all_config.yaml the official trainer writes beside step_N
        state = official_state_dict(SUDOKU_ATTN, "model.inner.", seed=1)
        arch = dict(
            name="recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1",
            H_cycles=1,
            L_cycles=2,
            H_layers=0,
            L_layers=2,
            hidden_size=512,
            expansion=4,
            num_heads=8,
            pos_encodings="rope",
            puzzle_emb_ndim=512,
            halt_max_steps=16,
            halt_exploration_prob=0.1,
            forward_dtype="bfloat16",
            mlp_t=False,
            puzzle_emb_len=16,
        )
        (tmp_path / "all_config.yaml").write_text(
            yaml.safe_dump({"arch": arch, "data_paths": ["data/sudoku-extreme-1k-aug-1000"]})
        )
        flags = []
    torch.save(state, tmp_path / "step_100")
    convert([str(tmp_path / "step_100"), str(tmp_path / "converted"), *flags])

    direct, task, _ = load_official(tmp_path / "step_100", "sudoku", {"H_cycles": 1, "L_cycles": 2})
    ckpt = load_checkpoint(tmp_path / "converted", forward_dtype="bfloat16")
    assert task == ckpt.task == "sudoku"
    assert ckpt.config == direct.config and ckpt.config.mlp_t == (variant == "mlp")
    assert ckpt.config.pos_encodings == ("none" if variant == "mlp" else "rope") and ckpt.config.seq_len == 81
    x, pid = sudoku_batch()
    carry_a, carry_b = direct.initial_carry(2), ckpt.model.initial_carry(2)
    for _ in range(2):
        carry_a, logits_a, q_a = direct.step(carry_a, x, pid)
        carry_b, logits_b, q_b = ckpt.model.step(carry_b, x, pid)
        assert logits_a.dtype == torch.bfloat16
        assert torch.equal(logits_a, logits_b) and torch.equal(q_a, q_b)
    # The safetensors file holds the official tensors unchanged (bf16 buffers stay bf16).
    saved = load_file(tmp_path / "converted" / "model.safetensors")
    prefix = next(iter(state)).split("H_init")[0]
    assert torch.equal(saved["layers.1.mlp.down_proj.weight"], state[prefix + "L_level.layers.1.mlp.down_proj.weight"])
    assert saved["H_init"].dtype == torch.bfloat16 and torch.equal(saved["H_init"], state[prefix + "H_init"])


def test_auto_dtype_is_bf16_on_accelerators_and_fp32_on_cpu_whatever_the_file_says(tmp_path):
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "fp32", TRM(preset("sudoku-tiny", forward_dtype="float32")), "sudoku")
    assert json.loads((path / "config.json").read_text())["model"]["forward_dtype"] == "float32"
    assert compute_dtype("cuda:0") == compute_dtype("cuda") == "bfloat16"
    assert load_checkpoint(path).config.forward_dtype == "float32"
    assert load_checkpoint(path, forward_dtype="bfloat16").config.forward_dtype == "bfloat16"  # explicit wins
    if torch.cuda.is_available():
        assert load_checkpoint(path, "cuda").config.forward_dtype == "bfloat16"


def test_save_and_load_round_trip(tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    assert ckpt.task == "sudoku" and ckpt.config.forward_dtype == "float32"  # "auto" on CPU
    assert json.loads((tiny_checkpoint / "config.json").read_text())["model"]["forward_dtype"] == "bfloat16"
    torch.manual_seed(0)
    reference = TRM(preset("sudoku-tiny"))
    for name, t in reference.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[name].to(t.dtype), t), name
    assert sorted(p.name for p in tiny_checkpoint.iterdir()) == ["config.json", "model.safetensors"]


def test_save_replaces_an_existing_checkpoint_and_leaves_no_temporaries(tiny_checkpoint):
    save_checkpoint(tiny_checkpoint, TRM(preset("sudoku-tiny", H_cycles=1)), "sudoku", card="# tiny\n")
    assert load_checkpoint(tiny_checkpoint).config.H_cycles == 1
    assert (tiny_checkpoint / "CARD.md").read_text() == "# tiny\n"
    assert [p.name for p in tiny_checkpoint.parent.iterdir()] == ["tiny"]


def _rewrite_weights(path, change):
    tensors = load_file(path / "model.safetensors")
    change(tensors)
    save_file(tensors, path / "model.safetensors")


def test_wrong_shape_names_the_tensor(tiny_checkpoint):
    _rewrite_weights(tiny_checkpoint, lambda t: t.update({"lm_head.weight": torch.zeros(12, 64)}))
    with pytest.raises(
        CheckpointError, match=r"tensor 'lm_head.weight' .* has shape \[12, 64\], but the config implies \[11, 64\]"
    ):
        load_checkpoint(tiny_checkpoint)


def test_missing_and_unexpected_tensors_are_named(tiny_checkpoint):
    _rewrite_weights(tiny_checkpoint, lambda t: t.pop("layers.1.mlp.down_proj.weight"))
    with pytest.raises(
        CheckpointError, match=r"missing tensor 'layers.1.mlp.down_proj.weight' \(expected shape \[64, 256\]\)"
    ):
        load_checkpoint(tiny_checkpoint)
    _rewrite_weights(
        tiny_checkpoint,
        lambda t: t.update({"layers.1.mlp.down_proj.weight": torch.zeros(64, 256), "extra.bias": torch.zeros(3)}),
    )
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'extra.bias' \[3\]"):
        load_checkpoint(tiny_checkpoint)


def test_bad_config_is_reported(tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_checkpoint(tmp_path)
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    for change, message in [
        ({"arch": "transformers_baseline"}, "arch 'transformers_baseline' is not supported"),
        ({"task": "chess"}, "unknown task 'chess'"),
        ({"model": {**config["model"], "hidden_size": 63}}, "hidden_size must be divisible by num_heads"),
    ]:
        (tiny_checkpoint / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(tiny_checkpoint)


def test_convert_refuses_non_trm_files(tmp_path):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "step_1")
    with pytest.raises(SystemExit, match="not a TRM checkpoint"):
        convert([str(tmp_path / "step_1"), str(tmp_path / "out")])
    torch.save({"a": [1, 2]}, tmp_path / "step_2")
    with pytest.raises(SystemExit, match="does not hold a state dict of tensors"):
        convert([str(tmp_path / "step_2"), str(tmp_path / "out")])


def test_convert_from_the_hub_downloads_step_and_config(tmp_path, monkeypatch):
    """The hub is unreachable here: a fake huggingface_hub serves a local repository through the real code path."""
    repo = tmp_path / "repo"
    repo.mkdir()
    torch.save(official_state_dict(SUDOKU_MLP, "_orig_mod.model.inner."), repo / "step_5")
    arch = {"H_cycles": 1, "L_cycles": 1, "pos_encodings": "none", "mlp_t": True}
    (repo / "all_config.yaml").write_text(yaml.safe_dump({"arch": arch, "data_paths": ["data/sudoku-extreme"]}))

    class EntryNotFoundError(Exception):
        pass

    calls = []

    def hf_hub_download(repo_id, filename):
        calls.append((repo_id, filename))
        if not (repo / filename).exists():
            raise EntryNotFoundError(filename)
        return str(repo / filename)

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(hf_hub_download=hf_hub_download))
    errors = types.SimpleNamespace(EntryNotFoundError=EntryNotFoundError)
    monkeypatch.setitem(sys.modules, "huggingface_hub.errors", errors)
    convert(["hf://someone/sudoku-mlp/step_5", str(tmp_path / "out")])
    assert calls == [("someone/sudoku-mlp", "step_5"), ("someone/sudoku-mlp", "all_config.yaml")]
    ckpt = load_checkpoint(tmp_path / "out")
    assert ckpt.task == "sudoku" and ckpt.config.H_cycles == 1 and ckpt.config.L_cycles == 1
    with pytest.raises(SystemExit, match="expected hf://OWNER/REPO/PATH/step_N"):
        convert(["hf://someone/step_5", str(tmp_path / "out2")])
