"""Batched sampling from a causal LM, and the stage-end probes of the toy world."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from transformers import GenerationConfig

from .world import EOS, World


@dataclass
class Samples:
    """Left-padded prompts + right-padded responses, and their texts.

    ``response_ids`` holds tokens up to and including the first EOS; ``response_mask``
    is 1 on those tokens. ``ended`` says whether the response produced EOS.
    """

    prompt_ids: torch.Tensor  # (N, P) left padded
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor  # (N, T) right padded
    response_mask: torch.Tensor
    ended: torch.Tensor  # (N,) bool
    prompts: list[str]
    texts: list[str]  # decoded responses; "<end>" kept when the response ended

    def full(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.cat([self.prompt_ids, self.response_ids], 1),
                torch.cat([self.prompt_mask, self.response_mask], 1))


def _eos_ids(tokenizer, model) -> list[int]:
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, (list, tuple)):
        ids.update(int(i) for i in gen_eos)
    return sorted(ids)


@torch.no_grad()
def sample(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, temperature: float = 1.0,
           top_p: float = 1.0, greedy: bool = False, batch_size: int = 256,
           generator_seed: Optional[int] = None) -> Samples:
    """Sample one response per prompt (repeat a prompt in ``prompts`` for several)."""
    device = next(model.parameters()).device
    eos_ids = _eos_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    gen_cfg = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=not greedy, temperature=None if greedy else temperature,
        top_p=None if (greedy or top_p >= 1.0) else top_p, top_k=None, eos_token_id=eos_ids, pad_token_id=pad_id,
        bos_token_id=None,
    )
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    p_ids, p_mask, r_ids = [], [], []
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i:i + batch_size])
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        out = model.generate(**enc, generation_config=gen_cfg)
        p_ids.append(enc["input_ids"])
        p_mask.append(enc["attention_mask"])
        r_ids.append(out[:, enc["input_ids"].shape[1]:])
    tokenizer.padding_side = old_side
    if was_training:
        model.train()
    P = max(x.shape[1] for x in p_ids)
    T = max(max(x.shape[1] for x in r_ids), 1)
    prompt_ids = torch.cat([torch.nn.functional.pad(x, (P - x.shape[1], 0), value=pad_id) for x in p_ids])
    prompt_mask = torch.cat([torch.nn.functional.pad(x, (P - x.shape[1], 0), value=0) for x in p_mask])
    resp = torch.cat([torch.nn.functional.pad(x, (0, T - x.shape[1]), value=pad_id) for x in r_ids])
    is_eos = torch.zeros_like(resp, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= resp == e
    # keep tokens up to and including the first EOS
    after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    response_mask = (~after_eos).long()
    ended = is_eos.any(1)
    resp = resp.masked_fill(~response_mask.bool(), pad_id)
    texts = []
    for row, m, e in zip(resp.tolist(), response_mask.tolist(), ended.tolist()):
        toks = [t for t, k in zip(row, m) if k]
        body = [t for t in toks if t not in eos_ids]
        text = tokenizer.decode(body, skip_special_tokens=True).strip()
        texts.append(f"{text} {EOS}".strip() if e else text)
    return Samples(prompt_ids, prompt_mask, resp, response_mask, ended, list(prompts), texts)


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
