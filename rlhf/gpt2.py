"""A lean path through a plain GPT-2: transformers' own kernels, in transformers' order, on
the same shapes, without its per-call machinery (module calls, output records, per-layer
mask handling, cache objects). On the toy world's models (2 layers, width 64-128) that
machinery costs as much as a good part of the arithmetic; the floats are the same (the
tests compare logits, values and gradients with transformers' forward bit for bit).

* :func:`step`: one decoding step against a KV cache (the sampler, ``rlhf/sampling.py``);
* :func:`hidden`: the final hidden states of a whole sequence, with autograd (the PPO
  forwards and the reward model's scores: ``rlhf.ppo.policy_forward``,
  ``rlhf.models.sequence_scores``).

Only a model :func:`eligible` says so takes it; every other model (Llama, LoRA, eager
attention, dropout or gradient checkpointing while training, FSDP's hooks) goes through
its own forward.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def eligible(model: torch.nn.Module) -> bool:
    """Whether the lean path computes what ``model``'s own forward computes: transformers'
    ``GPT2LMHeadModel`` or ``GPT2ForSequenceClassification`` with SDPA attention, no cross
    attention, no per-layer or upcast attention scaling, no module wrapping a base layer
    (peft's LoRA), no forward hooks (FSDP's gathers) and, in training mode, no active
    dropout and no gradient checkpointing (both are the model's own forward's business)."""
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel
    if type(model) not in (GPT2LMHeadModel, GPT2ForSequenceClassification):
        return False
    c = model.config
    if (c._attn_implementation != "sdpa" or c.add_cross_attention or c.scale_attn_by_inverse_layer_idx
            or c.reorder_and_upcast_attn):
        return False
    for m in model.modules():  # (dict lookups: a missing attribute's AttributeError costs more than the loop)
        if "base_layer" in m._modules or m._forward_hooks or m._forward_pre_hooks:
            return False
        if model.training and ((isinstance(m, torch.nn.Dropout) and m.p > 0)
                               or m.__dict__.get("gradient_checkpointing")):  # (transformers' per-module flag)
            return False
    return not (torch.nn.modules.module._global_forward_hooks or torch.nn.modules.module._global_forward_pre_hooks)


def weights(model) -> tuple:
    """The tensors the lean path reads, looked up once per call through the modules' own
    dicts (``nn.Module.__getattr__`` costs more than a small model's matmuls):
    (wte, wpe, layers, ln_f)."""
    def sub(m, *names):
        for n in names:
            m = m._modules[n]
        return m

    def prm(m, name):
        return m._parameters[name]

    def ln(m):
        return (m.normalized_shape, prm(m, "weight"), prm(m, "bias"), m.eps)
    tr = sub(model, "transformer")
    layers = []
    for b in sub(tr, "h")._modules.values():
        attn, mlp = sub(b, "attn"), sub(b, "mlp")
        ca, cp, fc, mp = sub(attn, "c_attn"), sub(attn, "c_proj"), sub(mlp, "c_fc"), sub(mlp, "c_proj")
        layers.append((ln(sub(b, "ln_1")), prm(ca, "bias"), prm(ca, "weight"), ca.nf, attn.split_size, attn.head_dim,
                       attn.scaling, prm(cp, "bias"), prm(cp, "weight"), cp.nf, ln(sub(b, "ln_2")), prm(fc, "bias"),
                       prm(fc, "weight"), fc.nf, sub(mlp, "act"), prm(mp, "bias"), prm(mp, "weight"), mp.nf))
    return prm(sub(tr, "wte"), "weight"), prm(sub(tr, "wpe"), "weight"), layers, ln(sub(tr, "ln_f"))


def causal_mask(attention_mask: torch.Tensor) -> Optional[torch.Tensor]:
    """The attention mask transformers' ``create_causal_mask`` builds for GPT-2's SDPA
    attention on a whole sequence (no cache): None when no position is padded (causal
    SDPA), else the boolean (N, 1, L, L) of causal AND key not padded (a padded query row
    attends to nothing). The same mask (``tests/test_gpt2.py`` compares them) for a
    tenth of its Python."""
    if bool(attention_mask.all()):
        return None
    L = attention_mask.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=attention_mask.device).tril()
    return causal[None, None] & attention_mask.bool()[:, None, None, :]


def blocks(layers: list, h: torch.Tensor, mask: Optional[torch.Tensor], keys: Optional[list] = None,
           values: Optional[list] = None) -> torch.Tensor:
    """GPT-2's transformer blocks (``layers`` from :func:`weights`) on the hidden states ``h``
    (N, L, D) under the boolean attention ``mask`` (broadcastable to (N, heads, L, S)), or,
    with none, causal attention (transformers' SDPA path when no position is padded). With
    ``keys``/``values`` (one per layer) the new keys and values are appended to them (in
    place) and attended to with the cached ones (a decoding step, L = 1)."""
    for i, (ln1, ab, aw, anf, split, hd, scale, pb, pw, pnf, ln2, fb, fw, fnf, act, mb, mw, mnf) in enumerate(layers):
        r = h
        y = F.layer_norm(h, *ln1)
        qkv = torch.addmm(ab, y.view(-1, y.size(-1)), aw).view(*y.shape[:-1], anf)
        q, k, v = qkv.split(split, dim=2)
        shape = (*k.shape[:-1], -1, hd)
        k, v = k.view(shape).transpose(1, 2), v.view(shape).transpose(1, 2)
        if keys is not None:
            keys[i] = k = torch.cat([keys[i], k], dim=-2)
            values[i] = v = torch.cat([values[i], v], dim=-2)
        o = F.scaled_dot_product_attention(q.view(shape).transpose(1, 2), k, v, attn_mask=mask, dropout_p=0.0,
                                           scale=scale, is_causal=mask is None and q.shape[1] > 1)
        o = o.transpose(1, 2).contiguous()
        o = o.reshape(*o.shape[:-2], -1).contiguous()
        o = torch.addmm(pb, o.view(-1, o.size(-1)), pw).view(*o.shape[:-1], pnf)
        h = o + r
        r = h
        y = F.layer_norm(h, *ln2)
        y = act(torch.addmm(fb, y.view(-1, y.size(-1)), fw).view(*y.shape[:-1], fnf))
        y = torch.addmm(mb, y.view(-1, y.size(-1)), mw).view(*y.shape[:-1], mnf)
        h = r + y
    return h


def hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """The final hidden states (N, L, D), after ``ln_f``, of an :func:`eligible` model on a
    whole sequence: what ``model.transformer(...).last_hidden_state`` gives (and the LM's
    ``hidden_states[-1]``), with autograd, under transformers' attention mask
    (:func:`causal_mask`), built once."""
    wte, wpe, layers, ln_f = weights(model)
    h = F.embedding(input_ids, wte) + F.embedding(position_ids, wpe)
    return F.layer_norm(blocks(layers, h, causal_mask(attention_mask)), *ln_f)


def step(w: tuple, head: torch.Tensor, x: torch.Tensor, pos: torch.Tensor, mask: Optional[torch.Tensor],
         keys: list, values: list) -> torch.Tensor:
    """One decoding step of an :func:`eligible` LM (weights ``w`` from :func:`weights`, LM head
    ``head``) on new tokens ``x`` (N, 1) at positions ``pos``, attending to the cached
    ``keys``/``values`` (one per layer, extended in place) under the boolean padding ``mask``
    (N, 1, 1, S) or None; returns the logits (N, 1, V): what the model's forward with a
    DynamicCache and ``logits_to_keep=1`` returns."""
    wte, wpe, layers, ln_f = w
    h = F.embedding(x, wte) + F.embedding(pos, wpe)
    h = F.layer_norm(blocks(layers, h, mask, keys, values), *ln_f)
    return F.linear(h[:, -1:, :], head)
