"""The one sampler of the project, and the stage-end probes of the toy world.

Every sampled text behind a number comes from :func:`sample`: PPO rollouts
(``rlhf/ppo.py``), the reward model's comparisons (``rlhf/reward.py``), the stage probes
(:func:`probe_world`), and in ``eval/`` best-of-n, the RL points of the over-optimisation
eval and the toxicity continuations. One place decides the EOS ids (:func:`eos_ids`), the
special tokens (none are added to prompts), the padding (left, set only inside the call),
the decoding of texts, temperature and nucleus (top-p) filtering and the seed (a
``torch.Generator``: the global RNG is never re-seeded). Tokens come from a lean KV-cache
loop (:func:`_decode`) that draws exactly what transformers' ``generate`` draws for the
same seed (``tests/test_instruments.py`` checks it) without its per-token overhead; for a
plain GPT-2 LM every step, the prefill included, is ``rlhf.gpt2.step``, the model's own
kernels without transformers' per-call machinery (the same floats: ``tests/test_ppo.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from . import gpt2
from .chat import end_of_turn_id, response_text
from .models import position_ids_from_mask, tokenizer_sides
from .world import World


@dataclass
class Samples:
    """Left-padded prompts + right-padded responses, and their texts; one row per sample.

    Rows are prompt-major: the ``n`` samples of prompt ``i`` are rows ``i*n .. i*n+n-1``
    (``prompt_index`` says which prompt each row answers). ``response_ids`` holds tokens up
    to and including the first EOS; ``response_mask`` is 1 on those tokens. ``ended`` says
    whether the response produced EOS. ``texts`` are the decoded responses as
    ``rlhf.chat.response_text`` writes them: with the end-of-turn token (chat template) or
    the tokenizer's EOS text (toy world: `` <end>``) appended when the response ended (what
    the reward model and the toy world's labeler read); ``bodies`` are the same without it
    (what a toxicity classifier reads). ``prompts`` are the texts the policy continued
    (with a chat template, already templated: ``rlhf.chat.prompt_text``).
    """

    prompt_ids: torch.Tensor  # (N, P) left padded
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor  # (N, T) right padded
    response_mask: torch.Tensor
    ended: torch.Tensor  # (N,) bool
    prompts: list[str]  # the prompt of each row
    texts: list[str]
    bodies: list[str] = field(default_factory=list)
    prompt_index: list[int] = field(default_factory=list)
    n: int = 1
    logprobs: Optional[torch.Tensor] = None  # (N, T) log π(y_t | x, y_<t) at the temperature, when asked for

    def full(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.cat([self.prompt_ids, self.response_ids], 1),
                torch.cat([self.prompt_mask, self.response_mask], 1))

    @property
    def n_tokens(self) -> int:
        """Generated tokens, EOS included, padding not."""
        return int(self.response_mask.sum())


def eos_ids(tokenizer, model=None) -> list[int]:
    """The token ids that end a response: the tokenizer's EOS, the model's
    ``generation_config.eos_token_id`` (one id or a list) and, with a chat template, its
    end-of-turn token (``rlhf.chat.end_of_turn``: SmolLM2's ``<|im_end|>``), sorted."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    eot = end_of_turn_id(tokenizer)
    if eot is not None:
        ids.add(eot)
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, (list, tuple)):
        ids.update(int(i) for i in gen_eos)
    return sorted(ids)


class TemperatureTopP:
    """Temperature then nucleus (top-p) filtering, as transformers' TemperatureLogitsWarper
    + TopPLogitsWarper, without sorting the whole vocabulary: keep the smallest set of most
    likely tokens whose probability mass reaches ``top_p``, i.e. token i (in descending
    order) is kept iff Σ_{j<i} p_j < top_p. The nucleus is looked for among the ``k`` most
    likely tokens (a top-k, far cheaper than a 49k-way sort per row and step); rows whose
    top-k mass stays below top_p fall back to the full sort, so the result is exact."""

    def __init__(self, temperature: float = 1.0, top_p: float = 0.9, k: int = 1024):
        self.temperature, self.top_p, self.k = float(temperature), float(top_p), int(k)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.temperature != 1.0:
            scores = scores / self.temperature
        if self.top_p >= 1.0:
            return scores
        k = min(self.k, scores.shape[-1])
        probs = torch.softmax(scores.float(), dim=-1)
        top_p_, top_i = probs.topk(k, dim=-1)  # descending
        cum = top_p_.cumsum(-1)
        keep = (cum - top_p_) < self.top_p
        keep[:, 0] = True
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, top_i, torch.where(keep, scores.gather(1, top_i), torch.full_like(top_p_, float("-inf"))
                                           .to(scores.dtype)))
        short = cum[:, -1] < self.top_p
        if bool(short.any()):
            from transformers.generation.logits_process import TopPLogitsWarper
            out[short] = TopPLogitsWarper(self.top_p)(None if input_ids is None else input_ids[short], scores[short])
        return out


def _accepts(model, name: str) -> bool:
    import inspect
    return name in inspect.signature(model.forward).parameters


def _lean_gpt2(model) -> bool:
    """Whether the lean GPT-2 step (``rlhf.gpt2.step``) can stand in for the model's own
    forward in a decoding step: a plain GPT-2 LM (``rlhf.gpt2.eligible``) in eval mode."""
    from transformers import GPT2LMHeadModel
    return type(model) is GPT2LMHeadModel and not model.training and gpt2.eligible(model)


def draw(probs: torch.Tensor, gen: Optional[torch.Generator]) -> torch.Tensor:
    """One token per row from ``probs`` (N, V), as (N, 1): the draw ``torch.multinomial(probs,
    1, generator=gen)`` makes (q ~ Exp(1) per entry from ``gen``, then argmax of probs / q:
    the same tokens, bit for bit, and the same use of ``gen``), without its per-call checks
    of the distribution (:func:`_decode` checks the rows' sums once, after the loop)."""
    q = torch.empty_like(probs).exponential_(generator=gen)
    return torch.div(probs, q, out=q).argmax(-1, keepdim=True)


@torch.no_grad()
def _decode(model, ids, am, n: int, max_new_tokens: int, eos: torch.Tensor, pad_id: int, warp, greedy: bool,
            gen: Optional[torch.Generator], shared_prefix: bool,
            temperature: Optional[float] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """n continuations of each row (rows repeated n times, row-major), at most
    ``max_new_tokens`` tokens, finished rows padded with ``pad_id``: a KV-cache loop that
    calls the model once per token and does nothing else, drawing exactly as transformers'
    ``generate`` would (the same model calls with ``logits_to_keep=1``, float32 scores,
    ``warp``, softmax, one multinomial draw per row per step (:func:`draw`), finished rows
    included), but from ``gen``. With ``shared_prefix`` the KV cache of every prompt token
    but the last is computed once per prompt and repeated n times (on CPU the n-fold prompt
    prefill otherwise costs about as much as sampling); the draws are the same either way.
    A plain GPT-2 LM (:func:`_lean_gpt2`) runs every step, the prefill included, through
    ``rlhf.gpt2.step`` with its cache as plain tensors and the padding mask built once.
    Returns the tokens and, given a ``temperature``, log softmax(logits / temperature) of
    each drawn token (what a forward pass over the sequence gives, up to float rounding)."""
    from transformers import DynamicCache
    keep = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    ids_n, am_n = ids.repeat_interleave(n, 0), am.repeat_interleave(n, 0)
    pos = position_ids_from_mask(am_n)
    lean = _lean_gpt2(model)
    N, P = ids_n.shape
    if lean:
        w, head, kv = gpt2.weights(model), model.lm_head.weight, gpt2.Cache(P + max_new_tokens)
    if shared_prefix and n > 1 and ids.shape[1] >= 2:
        pm = am[:, :-1]
        if lean:
            gpt2.step(w, head, ids[:, :-1], position_ids_from_mask(pm), gpt2.causal_mask(pm), kv)
            kv.repeat_interleave(n)
        else:
            cache = model(input_ids=ids[:, :-1], attention_mask=pm, position_ids=position_ids_from_mask(pm),
                          use_cache=True).past_key_values
            cache.batch_repeat_interleave(n)
        x, x_pos = ids_n[:, -1:], pos[:, -1:]
    else:
        if not lean:
            cache = DynamicCache(config=model.config)
        x, x_pos = ids_n, pos
    # the padding mask of every step, built once: step t attends to the prompt and t + 1 tokens
    am_all = torch.cat([am_n, am_n.new_ones(N, max_new_tokens)], 1)
    padded, bias = not bool(am_n.all()), None
    alive = torch.ones(N, 1, dtype=torch.bool, device=ids.device)
    out, lps, sums = [], [], []
    go = None  # go[token]: False for the EOS ids
    for t in range(max_new_tokens):
        if lean:
            if x.shape[1] > 1:  # the prefill
                mask = gpt2.causal_mask(am_n)
            elif padded:
                if bias is None:  # the cache's dtype is the attention's (autocast's, under it)
                    bias = gpt2.additive(am_all.bool()[:, None, None, :], kv.k[0].dtype)
                mask = bias[..., :P + t]
            else:
                mask = None
            logits = gpt2.step(w, head, x, x_pos, mask, kv)[:, -1].float()
        else:
            logits = model(input_ids=x, attention_mask=am_all[:, :P + t],
                           position_ids=x_pos, past_key_values=cache, use_cache=True, **keep).logits[:, -1].float()
        if go is None:
            go = torch.ones(max(logits.shape[-1], int(eos.max()) + 1 if eos.numel() else 0, pad_id + 1),
                            dtype=torch.bool, device=ids.device)
            go[eos] = False
        if greedy:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            probs = torch.softmax(warp(logits), dim=-1)
            sums.append(probs.sum(-1))
            nxt = draw(probs, gen)
        nxt = torch.where(alive, nxt, pad_id)
        out.append(nxt)
        if temperature is not None:
            lps.append(torch.log_softmax(logits if temperature == 1.0 else logits / temperature, dim=-1).gather(1, nxt))
        alive &= go[nxt]
        if t + 1 == max_new_tokens or not bool(alive.any()):
            break
        x, x_pos = nxt, x_pos[:, -1:] + 1
    if sums and not bool((torch.stack(sums) > 0).all()):  # torch.multinomial's check, once
        raise RuntimeError("sampling: a probability row contains inf, nan or sums to 0 (non-finite logits?)")
    tokens = torch.cat(out, 1) if out else ids_n.new_zeros(N, 0)
    if temperature is None:
        return tokens, None
    return tokens, torch.cat(lps, 1) if lps else torch.zeros(N, 0, device=ids.device)


@torch.no_grad()
def sample(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, temperature: float = 1.0,
           top_p: float = 1.0, greedy: bool = False, n: int = 1, batch_size: int = 256,
           seed: Optional[int] = None, shared_prefix: bool = False, progress: bool = False,
           generator: Optional[torch.Generator] = None, logprobs: bool = False) -> Samples:
    """``n`` responses to each prompt (prompt-major rows, see :class:`Samples`).

    Prompts are tokenized without added special tokens and left-padded (the tokenizer's
    ``padding_side`` is set for this call only). Each ``generate`` call takes about
    ``batch_size`` rows (``batch_size // n`` prompts, at least one). Sampling is
    multinomial after temperature and exact nucleus filtering (:class:`TemperatureTopP`;
    ``top_p`` = 1 and temperature 1 sample the policy itself, as the KL estimates need);
    ``greedy`` takes the argmax. A response stops at the first of :func:`eos_ids`.

    ``seed``: the draws come from a ``torch.Generator`` seeded with it (the same draws as
    ``torch.manual_seed(seed)`` then ``generate``), so no global state changes: not the
    RNG, not the tokenizer (its ``padding_side`` comes back), not the model's train/eval
    mode. ``generator``: draw from this one instead (it advances). Neither: the global RNG.
    ``logprobs``: also return log π(y_t) of each sampled token at ``temperature``
    (:attr:`Samples.logprobs`; PPO's old log-probs, without another forward pass).
    """
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    eos = eos_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    eos_t = torch.tensor(eos, dtype=torch.long, device=device)
    tt = TemperatureTopP(temperature, top_p)
    warp = (lambda x: x) if greedy or (temperature == 1.0 and top_p >= 1.0) else (lambda x: tt(None, x))  # noqa: E731
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    per_call = max(1, batch_size // max(n, 1))
    was_training = model.training
    model.eval()
    p_ids, p_mask, r_ids, r_lps = [], [], [], []
    try:
        with tokenizer_sides(tokenizer, padding="left"):
            starts = range(0, len(prompts), per_call)
            for i in tqdm(starts, desc="sampling", disable=not progress, leave=False):
                chunk = list(prompts[i:i + per_call])
                enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                toks, lps = _decode(model, enc["input_ids"], enc["attention_mask"], n, max_new_tokens, eos_t, pad_id,
                                    warp, greedy, generator, shared_prefix, temperature if logprobs else None)
                r_ids.append(toks)
                r_lps.append(lps)
                p_ids.append(enc["input_ids"].repeat_interleave(n, 0))
                p_mask.append(enc["attention_mask"].repeat_interleave(n, 0))
    finally:
        if was_training:
            model.train()
    if not p_ids:
        z = torch.zeros(0, 1, dtype=torch.long, device=device)
        return Samples(z, z, z, z, torch.zeros(0, dtype=torch.bool, device=device), [], [], [], [], n)
    P = max(x.shape[1] for x in p_ids)
    T = max(max(x.shape[1] for x in r_ids), 1)
    prompt_ids = torch.cat([torch.nn.functional.pad(x, (P - x.shape[1], 0), value=pad_id) for x in p_ids])
    prompt_mask = torch.cat([torch.nn.functional.pad(x, (P - x.shape[1], 0), value=0) for x in p_mask])
    resp = torch.cat([torch.nn.functional.pad(x, (0, T - x.shape[1]), value=pad_id) for x in r_ids])
    is_eos = torch.zeros_like(resp, dtype=torch.bool)
    for e in eos:
        is_eos |= resp == e
    # keep tokens up to and including the first EOS
    after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    response_mask = (~after_eos).long()
    ended = is_eos.any(1)
    resp = resp.masked_fill(~response_mask.bool(), pad_id)
    lp = None
    if logprobs:
        lp = torch.cat([torch.nn.functional.pad(x, (0, T - x.shape[1])) for x in r_lps]) * response_mask
    texts, bodies = [], []
    for row, m, e in zip(resp.tolist(), response_mask.tolist(), ended.tolist()):
        body = [t for t, k in zip(row, m) if k and t not in eos]
        text = tokenizer.decode(body, skip_special_tokens=True).strip()
        bodies.append(text)
        texts.append(response_text(tokenizer, text, e))
    index = [i for i in range(len(prompts)) for _ in range(n)]
    return Samples(prompt_ids, prompt_mask, resp, response_mask, ended, [prompts[i] for i in index], texts, bodies,
                   index, n, lp)


def probe_world(model, tokenizer, world: World, max_new_tokens: int = 14) -> dict:
    """Greedy answers to every question: how often the model states the myth or the truth
    on myth facts, the truth on the other facts, and how often it answers in the
    demonstrated format (``<value> . <end>``)."""
    qs = [p for p in world.prompts() if p.kind == "question"]
    s = sample(model, tokenizer, [p.text for p in qs], max_new_tokens=max_new_tokens, greedy=True)
    myth_m = myth_t = n_myth = other_t = n_other = fmt = ended = 0
    for p, text in zip(qs, s.texts):
        f = world.facts[(p.entity, p.attribute)]
        j = world.judge(p, text)
        words = world.parse(text)["words"]
        ok_format = (len(words) == 2 and words[1] == "." and j["unfinished"] == 0
                     and words[0] in world.attributes[p.attribute])
        fmt += ok_format
        ended += 1 - j["unfinished"]
        if f.myth is not None:
            n_myth += 1
            myth_m += j["myth"]
            myth_t += j["correct"]
        else:
            n_other += 1
            other_t += j["correct"]
    cs = [p for p in world.prompts() if p.kind == "chat"]
    sc = sample(model, tokenizer, [p.text for p in cs], max_new_tokens=max_new_tokens, greedy=True)
    tox = sum(world.judge(p, t)["toxic"] > 0 for p, t in zip(cs, sc.texts))
    return {
        "myth_facts_states_myth": myth_m / max(n_myth, 1),
        "myth_facts_states_truth": myth_t / max(n_myth, 1),
        "other_facts_states_truth": other_t / max(n_other, 1),
        "answers_in_demo_format": fmt / max(len(qs), 1),
        "answers_ended": ended / max(len(qs), 1),
        "chat_toxic": tox / max(len(cs), 1),
        "n_myth_facts": n_myth,
        "n_other_facts": n_other,
    }
