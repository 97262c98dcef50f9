"""rlhf/gpt2.py: the lean GPT-2 path gives the floats of transformers' own forward, bit for
bit (logits, values, scores and, on whole sequences, every gradient), and only models it can
stand in for take it. Where PPO wants the last positions only (``start``), the outputs are
still bit for bit, and the weight gradients equal up to float rounding (sums over fewer rows)."""

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

from rlhf import gpt2
from rlhf.config import ModelConfig
from rlhf.models import add_lora, position_ids_from_mask, scratch_model, sequence_scores, set_gradient_checkpointing
from rlhf.ppo import Batch, policy_forward, policy_ptx_forward

V, P, T = 61, 7, 9


def models():
    torch.manual_seed(0)
    lm = scratch_model(ModelConfig(n_layer=2, n_embd=32, n_head=4, n_positions=64), V, 0, 1)
    rm = GPT2ForSequenceClassification(lm.config)
    rm.config.pad_token_id = 0
    rm.transformer.load_state_dict(lm.transformer.state_dict())
    return lm, rm


def batch(padded: bool):
    g = torch.Generator().manual_seed(1)
    pi, ri = torch.randint(2, V, (4, P), generator=g), torch.randint(2, V, (4, T), generator=g)
    pm, rmask = torch.ones(4, P, dtype=torch.long), torch.ones(4, T, dtype=torch.long)
    if padded:
        pm[1, :3] = 0  # left-padded prompts, as the sampler's
        pm[2, :6] = 0
        rmask[3, 5:] = 0  # a response that ended early
    return pi, pm, ri, rmask


def grads(model):
    out = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return out


def close(ga, gb) -> bool:
    """Gradients equal up to the rounding of sums over another set of rows: each tensor within
    1e-5 of its largest entry (float32 sums of a few hundred terms round at about 1e-7 of it;
    a wrong row set would be off by whole terms)."""
    return all(float((x - y).abs().max()) <= 1e-5 * float(y.abs().max()) + 1e-7 for x, y in zip(ga, gb))


def both_ways(model, fn, monkeypatch):
    """fn(model) -> tensor, once through the lean path and once through transformers' forward
    (gpt2.eligible patched to False), with the gradients of sum(out * w) for a fixed w."""
    runs = []
    for lean in (True, False):
        with monkeypatch.context() as mp:
            if not lean:
                mp.setattr(gpt2, "eligible", lambda m: False)
            else:
                assert gpt2.eligible(model)
            out = fn(model)
            w = torch.linspace(-1, 1, out.numel()).view_as(out)
            (out * w).sum().backward()
            runs.append((out.detach(), grads(model)))
    (a, ga), (b, gb) = runs
    return a, b, ga, gb


@pytest.mark.parametrize("padded", [True, False])
def test_policy_forward_logprobs_logits_and_gradients_bit_identical(padded, monkeypatch):
    lm, _ = models()
    lm.train()
    pi, pm, ri, rmask = batch(padded)

    def fn(m):
        logp, logits, _ = policy_forward(m, pi, pm, ri, rmask, temperature=0.7)
        return torch.cat([logp.flatten(), logits.flatten()])
    a, b, ga, gb = both_ways(lm, fn, monkeypatch)
    assert torch.equal(a, b)
    assert close(ga, gb)  # (the last block's MLP runs on the response's rows only: gpt2.blocks' start)
    assert any(x.abs().sum() > 0 for x in ga)


def test_value_head_values_bit_identical(monkeypatch):
    lm, _ = models()
    head = torch.nn.Linear(32, 1)
    pi, pm, ri, rmask = batch(True)
    a, b, ga, gb = both_ways(lm, lambda m: policy_forward(m, pi, pm, ri, rmask, value_head=head)[2], monkeypatch)
    assert torch.equal(a, b) and close(ga, gb)


def test_ptx_forward_bit_identical(monkeypatch):
    lm, _ = models()
    pi, pm, ri, rmask = batch(True)
    mb = Batch(pi, pm, ri, rmask.float(), *([torch.zeros(4, T)] * 5))
    ptx = torch.randint(2, V, (3, 12), generator=torch.Generator().manual_seed(2))

    def fn(m):
        logp, logits, _, loss = policy_ptx_forward(m, mb, ptx)
        return torch.cat([logp.flatten(), logits.flatten(), loss.view(1)])
    a, b, ga, gb = both_ways(lm, fn, monkeypatch)
    assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(ga, gb))


@pytest.mark.parametrize("all_positions", [True, False])
@pytest.mark.parametrize("padded", [True, False])
def test_sequence_scores_bit_identical(all_positions, padded, monkeypatch):
    _, rm = models()
    rm.config.reward_offset = 0.25
    pi, pm, ri, rmask = batch(padded)
    ids, mask = torch.cat([pi, ri], 1), torch.cat([pm, rmask], 1)
    a, b, ga, gb = both_ways(rm, lambda m: sequence_scores(m, ids, mask, all_positions=all_positions), monkeypatch)
    assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(ga, gb))


@pytest.mark.parametrize("padded", [True, False])
def test_critic_values_from_the_prompts_last_position_on(padded, monkeypatch):
    """critic_values asks sequence_scores for positions P-1.. only (``start``): the values of
    transformers' forward, bit for bit; the gradients up to rounding."""
    from rlhf.ppo import critic_values
    _, rm = models()
    pi, pm, ri, rmask = batch(padded)
    a, b, ga, gb = both_ways(rm, lambda m: critic_values(m, pi, pm, ri, rmask), monkeypatch)
    assert a.shape[:2] == (4, T) and torch.equal(a, b) and close(ga, gb)


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("n_layer", [1, 3])
def test_hidden_from_start_is_the_whole_sequences_rows(padded, n_layer):
    """gpt2.hidden(start=s): the rows s.. of the whole computation, bit for bit (across SDPA's
    32-row query blocks: 40 positions; 4 sequences, so the kept rows are a multiple of 4,
    which MKL computes row by row alike at one or two threads), with weight gradients equal
    up to rounding."""
    torch.manual_seed(0)
    lm = scratch_model(ModelConfig(n_layer=n_layer, n_embd=32, n_head=4, n_positions=64), V, 0, 1)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(2, V, (4, 40), generator=g)
    mask = torch.ones(4, 40, dtype=torch.long)
    if padded:
        mask[0, :5] = 0
        mask[2, :17] = 0
    pos = position_ids_from_mask(mask)
    w = torch.linspace(-1, 1, 4 * 40 * 32, dtype=torch.float32).view(4, 40, 32)
    whole = gpt2.hidden(lm, ids, mask, pos)
    for s in (0, 1, 7, 20, 33, 37):
        lm.zero_grad(set_to_none=True)
        h = gpt2.hidden(lm, ids, mask, pos, start=s)
        assert h.shape == (4, 40 - s, 32)
        assert torch.equal(h.detach(), whole.detach()[:, s:])
        (h * w[:, s:]).sum().backward()
        gs = grads(lm)
        (whole * torch.cat([torch.zeros_like(w[:, :s]), w[:, s:]], 1)).sum().backward(retain_graph=True)
        assert close(gs, grads(lm))


def test_hidden_is_the_transformer_output_and_causal_without_padding():
    lm, _ = models()
    pi, pm, ri, rmask = batch(False)
    ids, mask = torch.cat([pi, ri], 1), torch.cat([pm, rmask], 1)
    with torch.no_grad():
        h = gpt2.hidden(lm, ids, mask, position_ids_from_mask(mask))
        ref = lm.transformer(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        assert torch.equal(h, ref)
        # causal: changing the last token changes no earlier position's state
        ids2 = ids.clone()
        ids2[:, -1] = (ids2[:, -1] + 1) % V
        h2 = gpt2.hidden(lm, ids2, mask, position_ids_from_mask(mask))
    assert torch.equal(h[:, :-1], h2[:, :-1]) and not torch.equal(h[:, -1], h2[:, -1])


def test_only_models_the_lean_path_computes_are_eligible():
    lm, rm = models()
    assert gpt2.eligible(lm) and gpt2.eligible(rm)
    eager = GPT2LMHeadModel(GPT2Config(**{**lm.config.to_dict(), "_attn_implementation": "eager"}))
    eager.config._attn_implementation = "eager"
    assert not gpt2.eligible(eager)
    dropout = scratch_model(ModelConfig(n_layer=1, n_embd=16, n_head=2), V, 0, 1)
    dropout.transformer.drop.p = 0.1
    assert gpt2.eligible(dropout.eval()) and not gpt2.eligible(dropout.train())
    ckpt = set_gradient_checkpointing(copy.deepcopy(lm), True)
    assert not gpt2.eligible(ckpt.train()) and not gpt2.eligible(ckpt.eval())  # (its input-grad hook)
    assert not gpt2.eligible(add_lora(copy.deepcopy(lm), 4, 8.0, ["c_attn"]))
    hooked = copy.deepcopy(lm)
    hooked.transformer.h[0].register_forward_pre_hook(lambda m, a: None)
    assert not gpt2.eligible(hooked)
    assert not gpt2.eligible(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("rows", [
    [[1, 1, 1, 1, 1, 1]], [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], [[1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0]],
    [[0, 0, 0, 1, 1, 1]] * 3])
def test_causal_mask_is_the_one_transformers_builds(rows):
    from transformers.masking_utils import create_causal_mask
    lm, _ = models()
    mask = torch.tensor(rows)
    pos = position_ids_from_mask(mask)
    theirs = create_causal_mask(config=lm.config, inputs_embeds=torch.zeros(*mask.shape, 32), attention_mask=mask,
                                past_key_values=None, position_ids=pos)
    ours = gpt2.causal_mask(mask)
    assert (ours is None) == (theirs is None)
    if ours is not None:
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_additive_mask_gives_sdpa_the_floats_of_the_boolean_one(dtype):
    """gpt2.additive: SDPA's outputs and input gradients from the float bias, built once, are
    those from the boolean mask it converts on every call; so is a slice of the sampler's
    whole-loop bias (a non-contiguous view)."""
    F = torch.nn.functional
    g = torch.Generator().manual_seed(0)
    B, H, L, D = 4, 2, 9, 8
    keep = torch.ones(B, L + 5, dtype=torch.bool)
    for b in range(B):
        keep[b, :b] = False  # left padding
    bool_mask = gpt2.causal_mask(keep[:, :L].long())
    bias = gpt2.additive(bool_mask, dtype)
    assert bias.dtype == dtype and torch.equal(bias == 0, bool_mask) and bool(torch.isinf(bias[~bool_mask]).all())
    qkv = [torch.randn(B, H, L, D, generator=g).to(dtype).requires_grad_(True) for _ in range(3)]
    outs = []
    for m in (bool_mask, bias):
        o = F.scaled_dot_product_attention(*qkv, attn_mask=m, scale=0.3)
        o.float().square().sum().backward()
        outs.append((o.detach(), [x.grad.clone() for x in qkv]))
        for x in qkv:
            x.grad = None
    assert torch.equal(outs[0][0], outs[1][0]) and all(torch.equal(a, b) for a, b in zip(outs[0][1], outs[1][1]))
    whole = gpt2.additive(keep[:, None, None, :], dtype)  # a decoding step attends to the first S positions
    with torch.no_grad():
        for S in (3, L, L + 5):
            q, k, v = (torch.randn(B, H, n, D, generator=g).to(dtype) for n in (1, S, S))
            assert torch.equal(F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :S]),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=whole[..., :S]))
