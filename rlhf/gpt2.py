"""A lean path through a plain GPT-2: transformers' own kernels, in transformers' order, on
the same shapes, without its per-call machinery (module calls, output records, per-layer
mask handling, cache objects). On the toy world's models (2 layers, width 64-128) that
machinery costs as much as a good part of the arithmetic; the floats are the same (the
tests compare logits, values and gradients with transformers' forward bit for bit). Where
only the last positions are wanted (PPO's response), the last block's work after its
attention runs on those rows alone (``start``): the same outputs where the BLAS computes a
row alike for fewer rows (:func:`blocks`), else equal up to float rounding, and weight
gradients equal up to float rounding.

* :func:`step`: one decoding step against a KV cache, or the prefill that fills it (the
  sampler, ``rlhf/sampling.py``);
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
    (wte, wpe, layers, ln_f). The activation is its module's ``forward`` (no module call:
    an eligible model has no hooks)."""
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
        layers.append((ln(sub(b, "ln_1")), prm(ca, "bias"), prm(ca, "weight"), attn.split_size, attn.head_dim,
                       attn.scaling, prm(cp, "bias"), prm(cp, "weight"), ln(sub(b, "ln_2")), prm(fc, "bias"),
                       prm(fc, "weight"), sub(mlp, "act").forward, prm(mp, "bias"), prm(mp, "weight")))
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


def additive(mask: Optional[torch.Tensor], dtype: torch.dtype = torch.float32) -> Optional[torch.Tensor]:
    """A boolean attention mask as the float bias SDPA makes of it on every call, in the
    attention's ``dtype`` (0 where attended, -inf where not): :func:`blocks` makes it once for
    all layers, the sampler once for all decoding steps (a slice per step). Given it, SDPA
    computes the same floats as from the boolean mask (``tests/test_gpt2.py``)."""
    return None if mask is None else torch.where(mask, 0.0, float("-inf")).to(dtype)


class Cache:
    """The sampler's KV cache: per layer, keys and values in buffers of ``capacity``
    positions, (N, heads, capacity, head_dim), the first ``n`` of them filled. A step writes
    its new positions in place and attends to a view of the filled ones (a concatenation
    would copy the whole cache per token and layer); the prefill attends to its own keys,
    as transformers' first step does."""

    def __init__(self, capacity: int):
        self.capacity, self.n = capacity, 0
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []

    def extend(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``i``'s new keys and values (N, heads, L, head_dim) written at positions
        n..n+L; returns what the step attends to (:attr:`n` moves on in :func:`step`)."""
        if i == len(self.k):
            shape = (k.shape[0], k.shape[1], self.capacity, k.shape[3])
            self.k.append(k.new_empty(shape))
            self.v.append(v.new_empty(shape))
        n, L = self.n, k.shape[2]
        self.k[i].narrow(2, n, L).copy_(k)
        self.v[i].narrow(2, n, L).copy_(v)
        if n == 0:
            return k, v
        return self.k[i].narrow(2, 0, n + L), self.v[i].narrow(2, 0, n + L)

    def repeat_interleave(self, r: int) -> None:
        """Each row r times (n samples per prompt after a shared prefill)."""
        self.k = [x.repeat_interleave(r, 0) for x in self.k]
        self.v = [x.repeat_interleave(r, 0) for x in self.v]


def blocks(layers: list, h: torch.Tensor, mask: Optional[torch.Tensor], cache: Optional[Cache] = None,
           start: int = 0) -> torch.Tensor:
    """GPT-2's transformer blocks (``layers`` from :func:`weights`) on the hidden states ``h``
    (N, L, D) under the attention ``mask`` (boolean or :func:`additive`, broadcastable to
    (N, heads, L, S)), or, with none, causal attention (transformers' SDPA path when no
    position is padded). With a ``cache`` the new keys and values go into it and the step
    attends to all of its filled positions. The rows stay (N·L, D) between the attention
    calls, and q, k, v are views of the fused projection with the strides transformers'
    split, view and transpose give them (the same kernels on the same memory, fewer view
    ops and autograd nodes).

    ``start``: only positions ``start..L-1`` of the output are wanted, (N, L - start, D). The
    last block's attention still runs on every query row (how SDPA blocks its sums over keys
    depends on the query rows it is given), and what follows it (the output projection, the
    residual, the MLP) on the wanted rows alone: the work after the last attention, and its
    backward, shrink by start / L. Each kept row's floats are the whole computation's where
    the BLAS computes a row of a matrix product alike for fewer rows (MKL here from 4 rows
    at one thread, 12 at two; ``tests/test_gpt2.py``), else equal up to float rounding; the
    weight gradients sum the same non-zero terms over fewer rows, so they equal the whole
    computation's up to float rounding."""
    N, L, D = h.shape
    if not 0 <= start < max(L, 1):
        raise ValueError(f"gpt2.blocks: start {start} outside the sequence's {L} positions")
    h = h.view(N * L, D)
    M = L  # the rows after the attention: L, and L - start in the last block
    for i, (ln1, ab, aw, split, hd, scale, pb, pw, ln2, fb, fw, act, mb, mw) in enumerate(layers):
        r = h
        qkv = torch.addmm(ab, F.layer_norm(h, *ln1), aw)
        q, k, v = qkv.view(N, L, 3, split // hd, hd).permute(2, 0, 3, 1, 4).unbind(0)  # each (N, heads, L, hd)
        if cache is not None:
            k, v = cache.extend(i, k, v)
        if mask is not None and mask.dtype == torch.bool:
            mask = additive(mask, q.dtype)  # what SDPA does on every call, once for all layers
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, scale=scale,
                                           is_causal=mask is None and L > 1)
        if start and i == len(layers) - 1:  # the last block: only the wanted rows from here on
            M = L - start
            o, r = o[:, :, start:], r.view(N, L, D)[:, start:].reshape(N * M, D)
        h = torch.addmm(pb, o.transpose(1, 2).reshape(N * M, split), pw) + r
        r = h
        y = act(torch.addmm(fb, F.layer_norm(h, *ln2), fw))
        h = r + torch.addmm(mb, y, mw)
    return h.view(N, M, D)


def hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
           start: int = 0) -> torch.Tensor:
    """The final hidden states (N, L, D), after ``ln_f``, of an :func:`eligible` model on a
    whole sequence: what ``model.transformer(...).last_hidden_state`` gives (and the LM's
    ``hidden_states[-1]``), with autograd, under transformers' attention mask
    (:func:`causal_mask`), built once. With ``start``, those of positions ``start..L-1``
    only, (N, L - start, D), with less work (:func:`blocks`)."""
    wte, wpe, layers, ln_f = weights(model)
    h = F.embedding(input_ids, wte) + F.embedding(position_ids, wpe)
    return F.layer_norm(blocks(layers, h, causal_mask(attention_mask), start=start), *ln_f)


def step(w: tuple, head: torch.Tensor, x: torch.Tensor, pos: torch.Tensor, mask: Optional[torch.Tensor],
         cache: Cache) -> torch.Tensor:
    """One decoding step of an :func:`eligible` LM (weights ``w`` from :func:`weights`, LM head
    ``head``) on new tokens ``x`` (N, L) at positions ``pos``, attending to the ``cache``
    (extended by L positions; empty: the prefill) under ``mask``: for L = 1 the padding mask
    (N, 1, 1, S), for a prefill :func:`causal_mask` (boolean or :func:`additive`), None where
    nothing is padded; returns the last position's logits (N, 1, V): what the model's
    forward with a DynamicCache and ``logits_to_keep=1`` returns."""
    wte, wpe, layers, ln_f = w
    h = F.embedding(x, wte) + F.embedding(pos, wpe)
    h = F.layer_norm(blocks(layers, h, mask, cache), *ln_f)
    cache.n += x.shape[1]
    return F.linear(h[:, -1:, :], head)
