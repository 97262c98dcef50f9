"""Losses and RL estimators as pure functions of tensors.

Each function states the equation it implements; ``tests/test_losses.py`` checks each one
against numbers computed by hand. Shapes: B = batch, T = response tokens, K = responses
per prompt. ``mask`` is 1 on real response tokens and 0 on padding.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
                  reduce=None) -> torch.Tensor:
    """(x - mean) / std over the masked entries (mean kept when ``shift_mean`` is False):

        n = Σ m,   mean = Σ m·x / n,   var = Σ m·(x - mean)² / n

    ``reduce`` sums a tensor over data-parallel ranks (``rlhf.dist.Dist.all_sum``); the sums
    above are then over the masked entries of every rank, i.e. the statistics of the
    global batch, as one process holding all of it would compute them."""
    reduce = reduce or (lambda t: t)
    m = mask.to(x.dtype)
    s = reduce(torch.stack([(x * m).sum(), m.sum()]))
    n = s[1].clamp(min=1.0)
    mean = s[0] / n
    var = reduce(((x - mean) ** 2 * m).sum()) / n
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m


def kwise_ranking_loss(rewards: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """InstructGPT eq. 1, all C(K,2) pairs of a prompt as one batch element.

        loss(θ) = -1/C(K,2) · E_x [ Σ_{i<j} log σ( r_θ(x, y_i) - r_θ(x, y_j) ) ]

    ``rewards`` is (B, K) with each row in the labeler's order, best first, so that for
    i < j, y_i is the preferred response y_w. ``valid`` (B, K) marks real responses when
    rows have fewer than K (then each row divides by its own number of pairs). Each
    response is scored once: K forward passes per prompt, not 2·C(K,2).
    """
    B, K = rewards.shape
    diff = rewards.unsqueeze(2) - rewards.unsqueeze(1)  # (B, K, K): r_i - r_j
    upper = torch.triu(torch.ones(K, K, dtype=torch.bool, device=rewards.device), diagonal=1)
    pair_mask = upper.unsqueeze(0).expand(B, K, K)
    if valid is not None:
        v = valid.bool()
        pair_mask = pair_mask & v.unsqueeze(2) & v.unsqueeze(1)
    logsig = F.logsigmoid(diff)
    n_pairs = pair_mask.sum(dim=(1, 2)).clamp(min=1)
    per_prompt = -(logsig * pair_mask).sum(dim=(1, 2)) / n_pairs
    return per_prompt.mean()


def pairwise_accuracy(rewards: torch.Tensor, valid: Optional[torch.Tensor] = None) -> tuple[int, int]:
    """(correctly ordered pairs, pairs) for rows in labeler order, best first."""
    B, K = rewards.shape
    diff = rewards.unsqueeze(2) - rewards.unsqueeze(1)
    upper = torch.triu(torch.ones(K, K, dtype=torch.bool, device=rewards.device), diagonal=1)
    pair_mask = upper.unsqueeze(0).expand(B, K, K)
    if valid is not None:
        v = valid.bool()
        pair_mask = pair_mask & v.unsqueeze(2) & v.unsqueeze(1)
    return int(((diff > 0) & pair_mask).sum()), int(pair_mask.sum())


def kl_penalised_rewards(score: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         mask: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards of InstructGPT eq. 2 (Ziegler et al. 2019):

        r_t = -β · (log π_RL(y_t | x, y_<t) - log π_SFT(y_t | x, y_<t))      for every t
        r_T += r_θ(x, y)                                                    on the last token

    Returns (rewards (B, T), per-token KL estimate (B, T)). ``score`` is (B,).
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -beta * kl
    last = (mask.long().cumsum(1) == mask.long().sum(1, keepdim=True)) & mask.bool()  # last real token
    rewards = rewards + last.to(rewards.dtype) * score.unsqueeze(1)
    return rewards * mask, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), episodes end at the last
    masked token (V after it is 0):

        δ_t = r_t + γ V_{t+1} - V_t
        A_t = δ_t + γ λ A_{t+1}
        R_t = A_t + V_t   (the value target)

    Right-padded (B, T) tensors. Returns (advantages, returns), zero on padding. The δ_t
    of all steps are computed at once; only the recursion for A_t loops over t (the same
    floats as a loop doing both, ``tests/test_losses.py``).
    """
    B, T = rewards.shape
    m = mask.to(rewards.dtype)
    zero = torch.zeros(B, 1, dtype=rewards.dtype, device=rewards.device)
    m_next = torch.cat([m[:, 1:], zero], 1)  # V and A after the last step count 0
    delta = rewards + gamma * torch.cat([values[:, 1:] * m[:, 1:], zero], 1) - values
    last_gae = zero[:, 0]
    cols = [last_gae] * T
    for t in reversed(range(T)):
        last_gae = delta[:, t] + gamma * lam * last_gae * m_next[:, t]
        cols[t] = last_gae
    adv = torch.stack(cols, 1) * m if T else torch.zeros_like(rewards)
    returns = (adv + values) * m
    return adv, returns


def ppo_clip_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                  mask: torch.Tensor, clip_eps: Optional[float]) -> tuple[torch.Tensor, dict]:
    """PPO's clipped surrogate (Schulman et al. 2017), negated to be minimised:

        ρ_t = exp(log π(a_t|s_t) - log π_old(a_t|s_t))
        L   = -E_t[ min( ρ_t A_t, clip(ρ_t, 1-ε, 1+ε) A_t ) ]

    ``clip_eps=None`` gives the unclipped policy gradient -E[ρ A]. Also returns the clip
    fraction and the approximate KL E[(ρ-1) - log ρ] (Schulman's k3 estimator).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    if clip_eps is None:
        obj = unclipped
        clipfrac = torch.zeros((), device=logprobs.device)
    else:
        clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
        obj = torch.minimum(unclipped, clipped)
        clipfrac = masked_mean((clipped < unclipped).float(), mask)
    loss = -masked_mean(obj, mask)
    with torch.no_grad():
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
    return loss, {"clipfrac": clipfrac.detach(), "approx_kl": approx_kl}


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: Optional[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss (as in OpenAI baselines / lm-human-preferences):

        V_clip = V_old + clip(V - V_old, -c, c)
        L_V    = ½ E_t[ max( (V - R)², (V_clip - R)² ) ]

    ``clip=None`` gives ½ E[(V - R)²]. Returns (loss, fraction of clipped entries).
    """
    err = (values - returns) ** 2
    if clip is None:
        return 0.5 * masked_mean(err, mask), torch.zeros((), device=values.device)
    v_clip = old_values + torch.clamp(values - old_values, -clip, clip)
    err_clip = (v_clip - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clip), mask)
    frac = masked_mean((err_clip > err).float(), mask)
    return loss, frac.detach()


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Next-token cross entropy, -1/N Σ_t log p(x_{t+1} | x_≤t): the pretraining loss
    used by ptx (the γ·E_x~D_pretrain[log π_RL(x)] term of InstructGPT eq. 2, negated)."""
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=ignore_index)


LOGIT_CHUNK = 64  # sequence positions per chunk in logprobs_from_logits / entropy_from_logits


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0,
                         chunk: int = LOGIT_CHUNK) -> torch.Tensor:
    """log p(tokens) under softmax(logits / τ); logits (B, T, V), tokens (B, T):

        log p(y_t) = z_t[y_t] - logsumexp_v z_t[v],      z_t = logits_t / τ

    in float32, gathered first and normalised by logsumexp, ``chunk`` sequence positions at
    a time: no (B, T, V) log-softmax copy is made (only one chunk's float32 / tempered
    logits exist at once when the logits are bf16/fp16 or τ ≠ 1; under autograd the
    chunks logsumexp reads are kept for backward, as the one log-softmax output was)."""
    out = []
    for s in range(0, logits.shape[1], chunk):
        z = logits[:, s:s + chunk].float()
        if temperature != 1.0:
            z = z / temperature
        tok = torch.gather(z, 2, tokens[:, s:s + chunk].unsqueeze(-1)).squeeze(-1)
        out.append(tok - torch.logsumexp(z, dim=-1))
    if not out:
        return logits.new_zeros(tokens.shape, dtype=torch.float32)
    return torch.cat(out, 1)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0, chunk: int = LOGIT_CHUNK) -> torch.Tensor:
    """H = -Σ_v p_v log p_v per position, p = softmax(logits / τ), computed as

        H = logsumexp_v z[v] - Σ_v p_v z[v],      z = logits / τ

    in float32, ``chunk`` sequence positions at a time (no (B, T, V) log-softmax copy)."""
    out = []
    for s in range(0, logits.shape[1], chunk):
        z = logits[:, s:s + chunk].float()
        if temperature != 1.0:
            z = z / temperature
        lse = torch.logsumexp(z, dim=-1)
        p = torch.softmax(z, dim=-1)
        out.append(lse - (p * z).sum(-1))
    if not out:
        return logits.new_zeros(logits.shape[:2], dtype=torch.float32)
    return torch.cat(out, 1)


class AdaptiveKLController:
    """Ziegler et al. (2019) proportional controller for β:

        e_t   = clip( KL_t / KL_target - 1, -0.2, 0.2 )
        β_t+1 = β_t · (1 + K_β · e_t · n_steps / horizon),   K_β = 1 (folded into horizon)
    """

    def __init__(self, init_beta: float, target: float, horizon: int):
        self.value = init_beta
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        err = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + err * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, d: dict) -> None:
        self.value, self.target, self.horizon = d["value"], d["target"], d["horizon"]


class FixedKLController:
    def __init__(self, beta: float):
        self.value = beta

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, d: dict) -> None:
        self.value = d["value"]


def best_of_n_kl(n: int) -> float:
    """Analytic KL(π_bon || π) of best-of-n sampling: log n - (n-1)/n (Stiennon et al.)."""
    return math.log(n) - (n - 1) / n
