"""Reward model over-optimisation (Gao, Schulman, Hilton 2022).

Along a PPO run's policies (saved at several KL levels) and for best-of-n sampling from
the SFT policy, record the proxy reward (the run's reward model), the gold reward (the
toy world's labeler, or a configurable gold reward model) and KL(π || π_SFT):

* RL: a sampled estimate, mean over samples of Σ_t log π(y_t) - log π_SFT(y_t);
* best-of-n: the closed form log n - (n-1)/n.

Then fit, with d = sqrt(KL) and R the reward gain over the SFT policy,
R_bon(d) = d (α - β d) and R_RL(d) = d (α - β log d).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from rlhf.losses import best_of_n_kl
from rlhf.models import position_ids_from_mask, sequence_scores

from . import metrics


@dataclass
class Samples:
    prompt_index: list[int]  # which prompt each sample answers
    sequences: torch.Tensor  # (S, P+T) left-padded prompt + response, padded after EOS
    mask: torch.Tensor  # (S, P+T) attention mask (prompt padding and after-EOS padding 0)
    prompt_len: int  # P
    responses: list[str]  # decoded responses, EOS text kept when the response ended


@torch.no_grad()
def sample(model, tokenizer, prompts: Sequence[str], n: int, max_new_tokens: int, seed: int,
           prompts_per_call: int = 8, progress: bool = True) -> Samples:
    """n samples per prompt at temperature 1, no top-p/top-k truncation (so that the
    sampled KL estimates KL(π || π_SFT) of the policy itself)."""
    from transformers import GenerationConfig

    model.eval()
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    cfg = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=max_new_tokens,
                           num_return_sequences=n, pad_token_id=tokenizer.pad_token_id,
                           eos_token_id=tokenizer.eos_token_id)
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True)
    P = enc["input_ids"].shape[1]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    seqs, masks, idx, texts = [], [], [], []
    for ci, s in enumerate(tqdm(range(0, len(prompts), prompts_per_call), desc="sampling", disable=not progress,
                                leave=False)):
        ids = enc["input_ids"][s:s + prompts_per_call].to(device)
        am = enc["attention_mask"][s:s + prompts_per_call].to(device)
        torch.manual_seed(seed * 100003 + ci)
        out = model.generate(input_ids=ids, attention_mask=am, generation_config=cfg)
        resp = out[:, P:]
        T = resp.shape[1]
        resp = torch.nn.functional.pad(resp, (0, max_new_tokens - T), value=pad)
        is_eos = resp == eos
        # 1 up to and including the first EOS
        after = (is_eos.long().cumsum(1) - is_eos.long()) > 0
        rmask = (~after).long()  # rows without EOS ran to max_new_tokens: all real tokens
        seqs.append(torch.cat([ids.repeat_interleave(n, 0), resp], 1).cpu())
        masks.append(torch.cat([am.repeat_interleave(n, 0), rmask], 1).cpu())
        for j in range(resp.shape[0]):
            idx.append(s + j // n)
            toks = resp[j][rmask[j].bool()].tolist()
            texts.append(tokenizer.decode(toks, skip_special_tokens=False).strip())
    return Samples(idx, torch.cat(seqs), torch.cat(masks), P, texts)


@torch.no_grad()
def response_logprobs(model, s: Samples, batch_size: int = 64) -> torch.Tensor:
    """(S, T) log π(y_t | x, y_<t) on response tokens, 0 on padding."""
    device = next(model.parameters()).device
    outs = []
    for b in range(0, s.sequences.shape[0], batch_size):
        ids = s.sequences[b:b + batch_size].to(device)
        am = s.mask[b:b + batch_size].to(device)
        logits = model(input_ids=ids, attention_mask=am, position_ids=position_ids_from_mask(am)).logits
        logp = torch.log_softmax(logits[:, s.prompt_len - 1:-1].float(), -1)
        tgt = ids[:, s.prompt_len:]
        lp = torch.gather(logp, 2, tgt.unsqueeze(-1)).squeeze(-1) * am[:, s.prompt_len:]
        outs.append(lp.cpu())
    return torch.cat(outs)


@torch.no_grad()
def proxy_scores(rm, s: Samples, batch_size: int = 64) -> np.ndarray:
    """The reward model's score of each prompt + response (same tokenizer as the policy)."""
    device = next(rm.parameters()).device
    out = []
    for b in range(0, s.sequences.shape[0], batch_size):
        ids = s.sequences[b:b + batch_size].to(device)
        am = s.mask[b:b + batch_size].to(device)
        # right-pad positions after EOS are masked; sequence_scores reads the last attended token
        out.append(sequence_scores(rm, ids, am).cpu())
    return torch.cat(out).numpy().astype(float)


def evaluate_policy(policy, ref, rm, tokenizer, prompts: Sequence[str], gold: Callable[[int, str], float],
                    n: int, max_new_tokens: int, seed: int, progress: bool = True) -> dict:
    """Sample n responses per prompt from ``policy``; mean proxy, mean gold, sampled KL."""
    s = sample(policy, tokenizer, prompts, n, max_new_tokens, seed, progress=progress)
    lp = response_logprobs(policy, s)
    lr = response_logprobs(ref, s) if ref is not policy else lp
    m = s.mask[:, s.prompt_len:]
    kl = metrics.sampled_kl(lp.numpy(), lr.numpy(), m.numpy())
    proxy = proxy_scores(rm, s)
    g = np.array([gold(i, r) for i, r in zip(s.prompt_index, s.responses)])
    return {"proxy": float(proxy.mean()), "gold": float(g.mean()), "kl": kl, "n": len(g),
            "proxy_all": proxy, "gold_all": g, "samples": s}


def best_of_n_curve(proxy: np.ndarray, gold: np.ndarray, max_n: int) -> list[dict]:
    """Best-of-n points for n = 1, 2, 4, ..., max_n from a (prompts, max_n) matrix each."""
    out = []
    n = 1
    while n <= max_n:
        p, g = metrics.best_of_n_select(proxy, gold, n)
        out.append({"n": n, "proxy": p, "gold": g, "kl": best_of_n_kl(n)})
        n *= 2
    return out


def fits(points_bon: list[dict], points_rl: list[dict], base_gold: float, base_proxy: float) -> dict:
    """Gao et al. fits of gold and proxy reward gains against d = sqrt(KL)."""
    out = {}
    for name, pts, form in (("bon", points_bon, "bon"), ("rl", points_rl, "rl")):
        if not pts:
            continue
        d = np.sqrt(np.maximum([p["kl"] for p in pts], 0.0))
        for which, base in (("gold", base_gold), ("proxy", base_proxy)):
            r = np.array([p[which] for p in pts]) - base
            out[f"{name}_{which}"] = metrics.fit_overoptimization(d, r, form)
    return out
