"""The quickstart's before/after line: the SFT and the final PPO policy on prompts held out
from RM and PPO training, measured with the eval suite's instruments (the one sampler,
the gold labeler, ``World.myth_answers``, ``world.toxicity_score`` and
``stats.expected_max_toxicity``), so that the printed figures are the ones ``rlhf eval``
would record with its default toxicity settings (``rlhf.stats.RTP_*``: k = 25 samples of 20
tokens, top-p 0.9)."""

from __future__ import annotations

import numpy as np

from .sampling import sample
from .stats import (RTP_K, RTP_MAX_NEW_TOKENS, RTP_TEMPERATURE, RTP_TOP_P, expected_max_toxicity,
                    stereotype_bias, stereotype_table)
from .world import World, toxicity_score


def heldout_summary(world: World, tokenizer, policy, max_new_tokens: int = 16, n: int = 8, k: int = RTP_K,
                    n_tox: int = 40, seed: int = 0) -> tuple[dict, list[dict]]:
    """gold_reward over ``n`` samples of every held-out eval prompt; myth_rate and truth_rate
    over those answering questions about myth facts; stereotype_bias over those answering
    questions (``World.stereotype_answers``, ``stats.stereotype_bias``); expected_max_toxicity over ``k``
    samples of ``n_tox`` held-out challenging chat prompts. Returns the figures and the
    sampled texts behind them (one row per sample)."""
    ev = world.eval_prompts()
    s = sample(policy, tokenizer, [p.text for p in ev], max_new_tokens, n=n, batch_size=64, seed=seed)
    ps = [ev[i] for i in s.prompt_index]
    gold = [world.gold_reward(p, t) for p, t in zip(ps, s.texts)]
    myth, truth, _ = world.myth_answers(ps, s.texts)
    hit, in_group, b_idx = world.stereotype_answers(ps, s.texts)
    bias = stereotype_bias(stereotype_table(hit, in_group, [s.prompt_index[j] for j in b_idx]))
    chal = world.toxicity_prompt_sets(n_tox, seed)["challenging"]
    t = sample(policy, tokenizer, [p.text for p in chal], RTP_MAX_NEW_TOKENS, temperature=RTP_TEMPERATURE,
               top_p=RTP_TOP_P, n=k, batch_size=4 * k,
               seed=seed, shared_prefix=True)
    scores = np.array([toxicity_score(x) for x in t.bodies], dtype=float).reshape(len(chal), k)
    rows = [{"prompt": p.text, "response": x, "gold_reward": g} for p, x, g in zip(ps, s.texts, gold)]
    rows += [{"prompt": chal[i // k].text, "response": x, "toxicity": float(v), "subset": "challenging"}
             for i, (x, v) in enumerate(zip(t.bodies, scores.reshape(-1)))]
    return {"gold_reward": float(np.mean(gold)), "myth_rate": float(np.mean(myth)) if myth else float("nan"),
            "truth_rate": float(np.mean(truth)) if truth else float("nan"), "stereotype_bias": bias,
            "expected_max_toxicity": expected_max_toxicity(scores), "n_samples": len(gold), "n_myth_answers": len(myth),
            "n_tox_prompts": len(chal), "tox_k": k}, rows


def before_after_line(before: dict, after: dict) -> str:
    f = lambda key: f"{before[key]:.2f} -> {after[key]:.2f}"  # noqa: E731
    g = lambda key: f"{before.get(key, float('nan')):+.2f} -> {after.get(key, float('nan')):+.2f}"  # noqa: E731
    return (f"held-out prompts, SFT -> PPO: gold reward {f('gold_reward')}, myth rate {f('myth_rate')}, "
            f"truth rate {f('truth_rate')}, stereotype bias {g('stereotype_bias')}, "
            f"expected max toxicity (challenging, k={after['tox_k']}) "
            f"{f('expected_max_toxicity')}")
