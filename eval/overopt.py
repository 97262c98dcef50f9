"""Reward model over-optimisation (Gao, Schulman, Hilton 2022).

Along a PPO run's policies (saved at several KL levels) and for best-of-n sampling from
the SFT policy, record ``rm_score`` (the run's reward model, through
``rlhf.reward.score_texts``), ``gold_reward`` (the toy world's labeler, or a configurable
gold reward model through the same scoring function) and ``kl`` = KL(π || π_SFT):

* RL: a sampled estimate, mean over samples of Σ_t log π(y_t) - log π_SFT(y_t);
* best-of-n: the closed form log n - (n-1)/n.

Then fit, with d = sqrt(KL) and R the reward gain over the SFT policy,
R_bon(d) = d (α - β d) and R_RL(d) = d (α - β log d).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from rlhf.losses import best_of_n_kl
from rlhf.models import position_ids_from_mask
from rlhf.reward import score_texts
from rlhf.rewards import RewardFn
from rlhf.sampling import Samples, sample

from . import metrics


@torch.no_grad()
def response_logprobs(model, s: Samples, batch_size: int = 64) -> torch.Tensor:
    """(S, T) log π(y_t | x, y_<t) on response tokens, 0 on padding."""
    device = next(model.parameters()).device
    seqs, masks = s.full()
    P = s.prompt_ids.shape[1]
    outs = []
    for b in range(0, seqs.shape[0], batch_size):
        ids = seqs[b:b + batch_size].to(device)
        am = masks[b:b + batch_size].to(device)
        logits = model(input_ids=ids, attention_mask=am, position_ids=position_ids_from_mask(am)).logits
        logp = torch.log_softmax(logits[:, P - 1:-1].float(), -1)
        tgt = ids[:, P:]
        lp = torch.gather(logp, 2, tgt.unsqueeze(-1)).squeeze(-1) * am[:, P:]
        outs.append(lp.cpu())
    return torch.cat(outs)


def sample_policy(policy, tokenizer, prompts: Sequence[str], n: int, max_new_tokens: int, seed: int,
                  progress: bool = True) -> Samples:
    """n samples per prompt at temperature 1, no top-p/top-k truncation (so that the
    sampled KL estimates KL(π || π_SFT) of the policy itself), from the one sampler."""
    return sample(policy, tokenizer, list(prompts), max_new_tokens, temperature=1.0, top_p=1.0, n=n,
                  batch_size=64, seed=seed, progress=progress)


def evaluate_policy(policy, ref, rm, tokenizer, prompts: Sequence[str], gold: Callable[[int, str], float] | RewardFn,
                    n: int, max_new_tokens: int, seed: int, rm_max_len: int, progress: bool = True) -> dict:
    """Sample n responses per prompt from ``policy``; mean rm_score (``rlhf.reward.score_texts``,
    as in RM training and PPO), mean gold reward (the toy world's ``gold(i, response)``, or a
    reward spec's :class:`rlhf.rewards.RewardFn` scored on the samples as PPO scores them),
    sampled KL against ``ref``."""
    s = sample_policy(policy, tokenizer, prompts, n, max_new_tokens, seed, progress)
    lp = response_logprobs(policy, s)
    lr = response_logprobs(ref, s) if ref is not policy else lp
    m = s.response_mask
    kl_rows = ((lp - lr) * m.cpu()).sum(1).numpy().astype(float)
    kl = metrics.sampled_kl(lp.numpy(), lr.numpy(), m.cpu().numpy())
    rm_score = score_texts(rm, tokenizer, s.prompts, s.texts, rm_max_len).cpu().numpy().astype(float)
    if isinstance(gold, RewardFn):
        g = gold.of_samples(s).numpy().astype(float)
    else:
        g = np.array([gold(i, r) for i, r in zip(s.prompt_index, s.texts)])
    return {"rm_score": float(rm_score.mean()), "gold_reward": float(g.mean()), "kl": kl, "n": len(g),
            "rm_score_all": rm_score, "gold_reward_all": g, "kl_all": kl_rows, "samples": s}


def best_of_n_curve(rm_score: np.ndarray, gold: np.ndarray, max_n: int) -> list[dict]:
    """Best-of-n points for n = 1, 2, 4, ..., max_n from a (prompts, max_n) matrix each:
    the sample with the highest rm_score in each group of n."""
    out = []
    n = 1
    while n <= max_n:
        p, g = metrics.best_of_n_select(rm_score, gold, n)
        out.append({"n": n, "rm_score": p, "gold_reward": g, "kl": best_of_n_kl(n)})
        n *= 2
    return out


def fits(points_bon: list[dict], points_rl: list[dict], base_gold: float, base_rm: float) -> dict:
    """Gao et al. fits of the gold_reward and rm_score gains against d = sqrt(KL); keys
    ``<bon|rl>_<gold_reward|rm_score>``."""
    out = {}
    for name, pts, form in (("bon", points_bon, "bon"), ("rl", points_rl, "rl")):
        if not pts:
            continue
        d = np.sqrt(np.maximum([p["kl"] for p in pts], 0.0))
        for which, base in (("gold_reward", base_gold), ("rm_score", base_rm)):
            r = np.array([p[which] for p in pts]) - base
            out[f"{name}_{which}"] = metrics.fit_overoptimization(d, r, form)
    return out
