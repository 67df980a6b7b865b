import math

import pytest
import torch

from engine.models import TRM, TRMConfig, preset
from engine.models.layers import RotaryEmbedding, apply_rope, swiglu_inter_size
from kernels.reference import add_rms_norm


def tiny(**overrides) -> TRM:
    torch.manual_seed(0)
    return TRM(preset("sudoku-tiny", **overrides))


def inputs(model: TRM, batch: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, model.config.vocab_size, (batch, model.config.seq_len), generator=g), torch.zeros(
        batch, dtype=torch.long
    )


def test_paper_parameter_counts():
    # TRM.md §10.1: model.parameters() without the puzzle-embedding table.
    for name, expected in [
        ("sudoku-mlp", 5_028_866),
        ("sudoku-attn", 6_828_034),
        ("maze-attn", 6_822_914),
        ("arc-attn", 6_829_058),
    ]:
        model = TRM(preset(name))
        assert sum(p.numel() for n, p in model.named_parameters() if n != "puzzle_emb") == expected, name


def test_swiglu_inner_sizes_round_up_to_256():
    assert swiglu_inter_size(512, 4) == 1536
    assert swiglu_inter_size(97, 4) == 512


def test_weights_are_fp32_masters_and_compute_is_bf16():
    model = tiny(forward_dtype="bfloat16")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.H_init.dtype == model.L_init.dtype == torch.bfloat16
    carry, logits, q = model.step(model.initial_carry(2), *inputs(model, 2))
    assert carry.z_H.dtype == logits.dtype == torch.bfloat16
    assert q.dtype == torch.float32 and q.shape == (2, 2)
    assert logits.shape == (2, 81, 11)


def test_embedding_prefix_and_scale():
    model = tiny(forward_dtype="float32", puzzle_emb_len=3, num_puzzle_identifiers=2)
    with torch.no_grad():
        model.puzzle_emb.copy_(torch.randn(2, 64))
    x, _ = inputs(model, 2)
    emb = model.embed(x, torch.tensor([1, 0]))
    scale = math.sqrt(64)
    assert emb.shape == (2, 3 + 81, 64)
    torch.testing.assert_close(emb[0, 0], scale * model.puzzle_emb[1])  # slot 0: the puzzle vector
    assert (emb[:, 1:3] == 0).all()  # slots 1.. stay exact zeros
    torch.testing.assert_close(emb[:, 3:], scale * model.embed_tokens.weight[x])


def test_learned_positions_are_added_then_scaled():
    model = tiny(forward_dtype="float32", pos_encodings="learned")
    x, pid = inputs(model, 1)
    tokens = torch.cat((torch.zeros(1, 2, 64), model.embed_tokens.weight[x]), dim=1)  # zero puzzle prefix
    torch.testing.assert_close(model.embed(x, pid), math.sqrt(64) * 0.707106781 * (tokens + model.embed_pos))


def test_rms_norm_is_weightless_fp32_inside_after_a_bf16_residual_add():
    x, r = (torch.randn(4, 7, 33, dtype=torch.bfloat16) * 5 for _ in range(2))
    y = add_rms_norm(x, r, 1e-5)
    assert y.dtype == torch.bfloat16
    s = (x + r).float()
    ref = (s / torch.sqrt(s.pow(2).mean(-1, keepdim=True) + 1e-5)).bfloat16()
    assert torch.equal(y, ref)


def test_mlp_t_block_normalises_over_the_sequence_axis():
    model = tiny(forward_dtype="float32")
    block = model.layers[0]
    with torch.no_grad():  # silence the channel MLP so the block output is the token-mixing norm, re-normed
        block.mlp.down_proj.weight.zero_()
    h = torch.randn(2, model.config.total_len, 64)
    t = h.transpose(1, 2)
    zero = torch.zeros_like(h)
    expected = add_rms_norm(add_rms_norm(t, block.mlp_t(t), 1e-5).transpose(1, 2), zero, 1e-5)
    torch.testing.assert_close(block(h, None), expected)
    # The token MLP works on sequence length total_len = 81 + 2 (SwiGLU inner size rounds up to 256).
    assert block.mlp_t.gate_up_proj.weight.shape == (2 * 256, 83)


def test_rope_is_rotate_half_with_positions_from_the_prefix():
    rope = RotaryEmbedding(head_dim=8, num_positions=20, base=10000.0)
    x = torch.randn(1, 20, 1, 8)
    out = apply_rope(x, rope.cos, rope.sin)
    # rotate-half pairs dimension i with i + 4 and rotates the pair by angle pos * base^(-2i/8).
    pos = torch.arange(20, dtype=torch.float32)[:, None]
    angle = pos * 10000.0 ** (-torch.arange(0, 8, 2) / 8)
    z = torch.complex(x[0, :, 0, :4], x[0, :, 0, 4:]) * torch.polar(torch.ones_like(angle), angle)
    torch.testing.assert_close(out[0, :, 0], torch.cat((z.real, z.imag), dim=-1))


def test_step_runs_T_times_n_plus_1_net_calls_with_grad_only_in_the_last_cycle():
    model = tiny(forward_dtype="float32", H_cycles=3, L_cycles=4)
    calls = []
    model.layers[0].register_forward_hook(lambda m, i, o: calls.append(torch.is_grad_enabled()))
    carry, logits, q = model.step(model.initial_carry(2), *inputs(model, 2))
    assert len(calls) == 3 * (4 + 1)
    assert calls == [False] * 10 + [True] * 5
    assert not carry.z_H.requires_grad and logits.requires_grad
    (logits.float().sum() + q.sum()).backward()
    assert model.layers[0].mlp.gate_up_proj.weight.grad is not None


def test_y_update_gets_no_input_injection():
    # z_H = f(z_H + z_L): the y update's injection is exactly the new z_L, without x (TRM.md §3.1).
    model = tiny(forward_dtype="float32", H_cycles=1, L_cycles=1)
    seen = []
    model.net = lambda h: seen.append(h) or TRM.net(model, h)
    carry, _, _ = model.step(model.initial_carry(1), *inputs(model, 1))
    assert len(seen) == 2 and torch.equal(seen[1], model.initial_carry(1).z_H + carry.z_L)


def test_reset_is_a_masked_operation():
    model = tiny()
    x, pid = inputs(model, 3)
    carry, _, _ = model.step(model.initial_carry(3), x, pid)
    reset = model.reset(carry, torch.tensor([True, False, True]))
    init = model.initial_carry(3)
    assert torch.equal(reset.z_H[0], init.z_H[0]) and torch.equal(reset.z_L[2], init.z_L[2])
    assert torch.equal(reset.z_H[1], carry.z_H[1]) and torch.equal(reset.z_L[1], carry.z_L[1])
    assert torch.equal(init.z_H[1, 5], model.H_init) and torch.equal(init.z_L[0, 0], model.L_init)


def test_rollout_is_deterministic_and_rows_do_not_depend_on_the_batch():
    model = tiny(forward_dtype="float32")
    x, pid = inputs(model, 4)
    logits, q = model.rollout(x, pid)
    logits2, q2 = model.rollout(x, pid)
    assert torch.equal(logits, logits2) and torch.equal(q, q2)
    single, q_single = model.rollout(x[2:3], pid[2:3])
    torch.testing.assert_close(single[0], logits[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q_single[0], q[2], rtol=1e-5, atol=1e-5)


def test_attention_variant_runs_with_rope():
    model = tiny(forward_dtype="float32", mlp_t=False, pos_encodings="rope")
    assert model.rope is not None and model.rope.cos.shape == (83, 32)
    logits, q = model.rollout(*inputs(model, 2), steps=2)
    assert logits.shape == (2, 81, 11) and torch.isfinite(logits).all()


def test_config_rejects_bad_fields():
    with pytest.raises(ValueError, match="pos_encodings"):
        preset("sudoku-tiny", pos_encodings="alibi")
    with pytest.raises(ValueError, match="unknown TRM config field"):
        TRMConfig.from_dict({"seq_len": 81, "vocab_size": 11, "hiden_size": 3})
    with pytest.raises(ValueError, match="puzzle_emb_ndim does not fit"):
        preset("sudoku-tiny", puzzle_emb_ndim=64 * 3)  # 3 slots' worth in a 2-slot prefix


def test_zero_padded_prefix_slots_hold_zeros_and_keep_the_grid():
    """puzzle_emb_ndim 0 with puzzle_emb_len > 0: prefix slots of zeros, no puzzle vector (GRAM's N-Queens setup);
    the official code would slice grid cells off the output instead."""
    torch.manual_seed(0)
    model = TRM(preset("sudoku-tiny", puzzle_emb_ndim=0, forward_dtype="float32"))
    assert model.config.prefix_len == 2 and not hasattr(model, "puzzle_emb")
    x, ids = inputs(model, 2)
    emb = model.embed(x, ids)
    assert emb.shape == (2, 83, 64) and not emb[:, :2].any() and emb[:, 2:].abs().sum() > 0
    logits, _ = model.rollout(x, ids, steps=1)
    assert logits.shape == (2, 81, 11)


@pytest.mark.gpu
def test_cuda_bf16_matches_cpu_fp32_closely():
    model = tiny(forward_dtype="float32")
    x, pid = inputs(model, 4)
    ref_logits, _ = model.rollout(x, pid)
    gpu = tiny(forward_dtype="bfloat16").cuda()
    gpu.load_state_dict(model.state_dict())
    logits, q = gpu.rollout(x.cuda(), pid.cuda())
    assert logits.dtype == torch.bfloat16
    agree = (logits.float().cpu().argmax(-1) == ref_logits.argmax(-1)).float().mean()
    assert agree > 0.95
