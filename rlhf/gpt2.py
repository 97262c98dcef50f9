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
    if model.training and (model.is_activation_checkpointing if hasattr(type(model), "is_activation_checkpointing")
                           else model.is_gradient_checkpointing):  # transformers 5's name, or the older one
        return False
    for m in model.modules():
        if hasattr(m, "base_layer") or m._forward_hooks or m._forward_pre_hooks:
            return False
        if model.training and isinstance(m, torch.nn.Dropout) and m.p > 0:
            return False
    return not (torch.nn.modules.module._global_forward_hooks or torch.nn.modules.module._global_forward_pre_hooks)


def weights(model) -> tuple:
    """The tensors the lean path reads, looked up once per call (attribute lookups on
    modules cost more than a small model's matmuls): (wte, wpe, layers, ln_f)."""
    tr = model.transformer
    ln = lambda m: (m.normalized_shape, m.weight, m.bias, m.eps)  # noqa: E731
    layers = [(ln(b.ln_1), b.attn.c_attn.bias, b.attn.c_attn.weight, b.attn.c_attn.nf, b.attn.split_size,
               b.attn.head_dim, b.attn.scaling, b.attn.c_proj.bias, b.attn.c_proj.weight, b.attn.c_proj.nf, ln(b.ln_2),
               b.mlp.c_fc.bias, b.mlp.c_fc.weight, b.mlp.c_fc.nf, b.mlp.act, b.mlp.c_proj.bias, b.mlp.c_proj.weight,
               b.mlp.c_proj.nf) for b in tr.h]
    return tr.wte.weight, tr.wpe.weight, layers, ln(tr.ln_f)


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
    ``hidden_states[-1]``), with autograd. The attention mask is transformers' own
    (``create_causal_mask``: None when nothing is padded, then causal SDPA), built once."""
    from transformers.masking_utils import create_causal_mask
    wte, wpe, layers, ln_f = weights(model)
    h = F.embedding(input_ids, wte) + F.embedding(position_ids, wpe)
    mask = create_causal_mask(config=model.config, inputs_embeds=h, attention_mask=attention_mask,
                              past_key_values=None, position_ids=position_ids)
    return F.layer_norm(blocks(layers, h, mask), *ln_f)


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
