"""Stage 3: the reward model, trained on K-wise rankings (InstructGPT eq. 1).

For each prompt, K distinct responses are sampled from the policy (at
``rm.sample_temperature``, for diverse contrasts) and ranked by the labeler. A batch
element is one prompt with its K responses: each response goes through the model once
and all C(K,2) pairs enter the loss (``rlhf.losses.kwise_ranking_loss``).

The reward model is the SFT model with a scalar head (``AutoModelForSequenceClassification``,
num_labels=1). After training, ``config.reward_offset`` is set so that the SFT
demonstrations score mean 0; ``rlhf.models.sequence_scores`` adds it.

``rm_score``, the reward model's score of a (prompt, response), is read through one pair of
functions everywhere (RM training, the offset, RM evaluation, PPO, the over-optimisation
eval and a gold reward model): :func:`encode_pairs` builds the token sequence and
:func:`score` reads the head; :func:`score_texts` is the two in batches.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import tracking
from .chat import comparison_rows, demonstrations, prompt_text, rm_text
from .config import ConfigError, DataError, RunConfig, stage_seed
from .errors import check_finite
from .losses import kwise_ranking_loss, pairwise_accuracy
from .models import (check_context, context_length, load_reward_model, save_hf, sequence_scores, set_gradient_checkpointing,
                     tokenizer_sides)
from .rundir import RunDir, read_jsonl
from .stats import bootstrap_ci
from .sampling import sample
from .data import load_pair_comparisons  # noqa: F401 - rm.data is read and checked in rlhf/data.py
from .world import World


def sample_comparisons(world: World, policy, tokenizer, k: int, n_prompts: int, temperature: float,
                       max_new_tokens: int, seed: int, round_: int = 0, split: str = "train") -> list[dict]:
    """K distinct policy samples for each of ``n_prompts`` prompts of ``split`` ("train", or
    "eval": facts held out from RM and PPO training, for the RM's test set), ranked by the
    labeler (best first). A prompt with fewer than K distinct samples after three draws
    is dropped; if most prompts are, ``rm.k`` is larger than what the policy can produce."""
    rng = random.Random(seed * 7919 + round_ + (0 if split == "train" else 104729))
    train = world.train_prompts() if split == "train" else world.eval_prompts()
    prompts = [train[rng.randrange(len(train))] for _ in range(n_prompts)]
    pool: list[list[str]] = [[] for _ in prompts]
    for attempt in range(3):
        need = [i for i, s in enumerate(pool) if len(set(s)) < k]
        if not need:
            break
        texts = [prompt_text(tokenizer, prompts[i].text) for i in need for _ in range(k + attempt * k)]
        s = sample(policy, tokenizer, texts, max_new_tokens=max_new_tokens, temperature=temperature,
                   seed=seed * 31 + round_ * 101 + attempt + (0 if split == "train" else 7))
        j = 0
        for i in need:
            n = k + attempt * k
            pool[i].extend(s.texts[j:j + n])
            j += n
    rows, dropped = [], 0
    for p, cand in zip(prompts, pool):
        distinct = list(dict.fromkeys(cand))
        if len(distinct) < k:
            dropped += 1
            continue
        chosen = distinct[:k]
        order = world.rank(p, chosen, rng)
        ranked = [chosen[i] for i in order]
        kinds = []
        for r in ranked:
            j = world.judge(p, r)
            kinds.append("correct" if j["correct"] else "myth" if j["myth"] else "other")
        rows.append({"prompt": prompt_text(tokenizer, p.text), "responses": ranked, "gold": [world.gold_reward(p, r) for r in ranked],
                     "kinds": kinds, "round": round_})
    if dropped > n_prompts // 2:
        raise DataError(
            f"rm.k={k} is larger than the number of distinct samples the policy produces for most prompts "
            f"({dropped} of {n_prompts} prompts had fewer than {k} distinct responses after 3 draws): "
            f"lower rm.k or raise rm.sample_temperature")
    return rows


def split_heldout(rows: list[dict], frac: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Split by prompt text, so that no held-out prompt was trained on."""
    prompts = sorted({r["prompt"] for r in rows})
    random.Random(seed).shuffle(prompts)
    held = set(prompts[: int(round(len(prompts) * frac))])
    return [r for r in rows if r["prompt"] not in held], [r for r in rows if r["prompt"] in held]


def freeze_lower_layers(model, train_layers: int) -> list:
    """``rm.train_layers``: the parameters that train. -1: all of them; N >= 0: the top N
    transformer blocks (``layers``, or GPT-2's ``h``), the final norm and the score head,
    every other weight frozen (``requires_grad`` False)."""
    params = list(model.parameters())
    if train_layers < 0:
        return params
    base = model.base_model
    blocks = getattr(base, "layers", None)
    if blocks is None:
        blocks = getattr(base, "h", None)
    if blocks is None:
        raise ConfigError(f"rm.train_layers={train_layers}: the reward model ({type(model).__name__}) has no "
                        f"'layers' or 'h' blocks to freeze; use rm.train_layers=-1")
    for p in params:
        p.requires_grad_(False)
    keep = [model.score] + list(blocks)[len(blocks) - min(train_layers, len(blocks)):]
    keep += [m for m in (getattr(base, "norm", None), getattr(base, "ln_f", None)) if m is not None]
    for m in keep:
        for p in m.parameters():
            p.requires_grad_(True)
    return [p for p in params if p.requires_grad]


def rm_max_length(model, max_length: int) -> int:
    """The longest sequence the reward model reads: ``rm.max_length``, capped by its context."""
    n_ctx = context_length(model)
    return min(n_ctx, max_length) if n_ctx else max_length


def encode_pairs(tokenizer, prompts: Sequence[str], responses: Sequence[str], max_len: int,
                 device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The token sequence the reward model reads for each (prompt text, response text):
    ``rlhf.chat.rm_text`` (with a chat template the templated conversation up to the
    end-of-turn token of an ended response; without one ``prompt + " " + response``)
    tokenized without added special tokens, cut from the left to ``max_len`` tokens (the
    end of the response, where the score is read, is kept) and left-padded. The
    tokenizer's sides are set for this call only."""
    texts = [rm_text(tokenizer, p, r) for p, r in zip(prompts, responses)]
    with tokenizer_sides(tokenizer, padding="left", truncation="left"):
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False, truncation=True,
                        max_length=max_len)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    return (ids.to(device), mask.to(device)) if device is not None else (ids, mask)


def score(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """rm_score: the reward model's head at the last attended token, plus its offset
    (``rlhf.models.sequence_scores``), for sequences from :func:`encode_pairs`."""
    return sequence_scores(model, ids, mask)


def _bar(it, name: Optional[str]):
    """A progress bar named ``name`` over ``it`` (like the training bars: TQDM_DISABLE hides
    it); no bar when ``name`` is None."""
    return tqdm(it, desc=name, mininterval=2.0) if name else it


@torch.no_grad()
def score_texts(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], max_len: int,
                batch_size: int = 64, progress: Optional[str] = None) -> torch.Tensor:
    """rm_score of each (prompt, response) (a float tensor on the model's device):
    :func:`encode_pairs` then :func:`score`, ``batch_size`` pairs per forward pass
    (``progress``: a progress bar of that name)."""
    device = next(model.parameters()).device
    out = []
    for i in _bar(range(0, len(prompts), batch_size), progress):
        ids, mask = encode_pairs(tokenizer, prompts[i:i + batch_size], responses[i:i + batch_size], max_len, device)
        out.append(score(model, ids, mask))
    return torch.cat(out) if out else torch.zeros(0, device=device)


def score_batch(model, tokenizer, rows: list[dict], device, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards (B, K) in each row's ranked order, one forward pass over all B*K responses."""
    K = max(len(r["responses"]) for r in rows)
    prompts, responses, valid = [], [], torch.zeros(len(rows), K, dtype=torch.bool)
    for i, r in enumerate(rows):
        for j in range(K):
            prompts.append(r["prompt"])
            if j < len(r["responses"]):
                responses.append(r["responses"][j])
                valid[i, j] = True
            else:
                responses.append("")
    ids, mask = encode_pairs(tokenizer, prompts, responses, max_len, device)
    return score(model, ids, mask).view(len(rows), K), valid.to(device)


@torch.no_grad()
def evaluate_rm(model, tokenizer, rows: list[dict], device, max_len: int, batch: int = 32,
                progress: Optional[str] = None) -> dict:
    """Held-out loss, ranking accuracy against the labeler's order with its 95% CI
    (``accuracy_ci_low``/``_high``: ``rlhf.stats.bootstrap_ci`` over prompts, each with its
    (correct, pairs) counts, seed 0), and (toy world) agreement with the noiseless gold
    labeler on pairs whose gold scores differ (``progress``: a progress bar of that name)."""
    model.eval()
    if not rows:
        return {}
    correct = total = agree = n_gold = tm_right = tm_n = 0
    losses, per_prompt = [], []
    for i in _bar(range(0, len(rows), batch), progress):
        chunk = rows[i:i + batch]
        r, valid = score_batch(model, tokenizer, chunk, device, max_len)
        losses.append(kwise_ranking_loss(r, valid).item() * len(chunk))
        c, t = pairwise_accuracy(r, valid)
        correct += c
        total += t
        per_prompt += [pairwise_accuracy(r[j:j + 1], valid[j:j + 1]) for j in range(len(chunk))]
        for row, rr in zip(chunk, r.tolist()):
            kinds = row.get("kinds") or []
            for a in range(len(kinds)):
                for b in range(len(kinds)):
                    if kinds[a] == "correct" and kinds[b] == "myth":
                        tm_n += 1
                        tm_right += rr[a] > rr[b]
            g = row.get("gold")
            if not g:
                continue
            for a in range(len(g)):
                for b in range(a + 1, len(g)):
                    if g[a] != g[b]:
                        n_gold += 1
                        agree += (rr[a] - rr[b]) * (g[a] - g[b]) > 0
    out = {"loss": sum(losses) / len(rows), "accuracy": correct / max(total, 1), "pairs": total}
    table = np.array([x for x in per_prompt if x[1] > 0], dtype=float).reshape(-1, 2)
    out["accuracy_ci_low"], out["accuracy_ci_high"] = bootstrap_ci(
        table, lambda x: float(x[:, 0].sum() / x[:, 1].sum()), n_boot=1000, seed=0)
    if n_gold:
        out["gold_agreement"] = agree / n_gold
        out["gold_pairs"] = n_gold
    if tm_n:  # does the RM prefer the truth to the myth (whatever else differs)?
        out["truth_over_myth"] = tm_right / tm_n
        out["truth_myth_pairs"] = tm_n
    return out


def ranking_batches(rows: list[dict], loss: str, batch_size: int, rng: random.Random) -> list[list[dict]]:
    """One epoch of reward-model batches (``rm.loss``), each a list of ranked rows (best first).

    * ``kwise`` (InstructGPT): the prompts are shuffled and ``batch_size`` of them make a
      batch; each row keeps all its K responses, so all C(K,2) pairs of a prompt sit in one
      batch element.
    * ``pairs``: every pair (y_i, y_j), i < j, of every prompt's ranking becomes its own
      row ``[y_i, y_j]``; all pairs are shuffled together across prompts, and a batch holds
      ``batch_size · P`` pairs, P = round(pairs / prompts) (C(K,2) when every prompt has K
      responses). So an epoch sees exactly the same pairs, and the same number of optimizer
      steps (ceil(prompts / batch_size) when P = C(K,2)), as ``kwise``; only the grouping
      differs. With a batch of one prompt's pairs, ``kwise_ranking_loss`` over the K = 2 rows
      equals the K-wise loss of that prompt (both are the mean of -log σ(r_w - r_l) over its
      pairs). Each pair is scored on its own (2 forward passes per pair, against K per
      prompt for ``kwise``: InstructGPT's efficiency argument).
    """
    if loss not in ("kwise", "pairs"):
        raise ValueError(f"rm.loss={loss!r}: expected 'kwise' or 'pairs'")
    if loss == "kwise":
        order = list(range(len(rows)))
        rng.shuffle(order)
        return [[rows[j] for j in order[i:i + batch_size]] for i in range(0, len(order), batch_size)]
    pairs = []
    for r in rows:
        resp = r["responses"]
        for a in range(len(resp)):
            for b in range(a + 1, len(resp)):
                pairs.append({**r, "responses": [resp[a], resp[b]],
                              "gold": [r["gold"][a], r["gold"][b]] if r.get("gold") else r.get("gold"),
                              **({"kinds": [r["kinds"][a], r["kinds"][b]]} if r.get("kinds") else {})})
    rng.shuffle(pairs)
    per_prompt = max(1, round(len(pairs) / max(1, len(rows))))
    size = batch_size * per_prompt
    return [pairs[i:i + size] for i in range(0, len(pairs), size)]


def train_reward_model(cfg: RunConfig, out: Path, init_path: str, tokenizer, comparisons: list[dict],
                       demos: list[tuple[str, str]], device, test: Optional[list[dict]] = None) -> dict:
    """Train on ``comparisons`` (a held-out share of their prompts is kept for
    ``heldout_*`` metrics); ``test`` comparisons (toy world: facts held out from RM and PPO
    training) are only evaluated, as ``test_*``."""
    rc = cfg.rm
    torch.manual_seed(stage_seed(cfg.seed, "rm"))
    model = load_reward_model(init_path, dtype=cfg.model.dtype, device=device,
                              attn_implementation=cfg.model.attn_implementation)
    model.config.pad_token_id = tokenizer.pad_token_id
    set_gradient_checkpointing(model, cfg.model.gradient_checkpointing)
    max_len = rm_max_length(model, rc.max_length)
    if not demos:  # no SFT demonstrations (e.g. an instruct model as the SFT policy): centre on the preferred responses
        demos = [(c["prompt"], c["responses"][0]) for c in comparisons[:256]]
    else:  # with a chat template: the templated prompt and the response as an ended turn
        demos = demonstrations(tokenizer, demos)
    if rc.data == "world":
        check_context(tokenizer, model, sorted({c["prompt"] for c in comparisons})[:2000], "reward-model prompts")
    train, held = split_heldout(comparisons, rc.heldout_frac, cfg.seed)
    if not train:
        raise DataError("no comparisons left to train the reward model on")
    opt = torch.optim.AdamW(freeze_lower_layers(model, rc.train_layers), lr=rc.lr, weight_decay=0.0)
    rng = random.Random(stage_seed(cfg.seed, "rm"))
    n_steps = rc.epochs * ((len(train) + rc.batch_size - 1) // rc.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.1, 1.0 - s / max(1, n_steps)))
    t0 = time.time()
    step = 0
    # iterated RLHF retrains the RM inside the PPO stage: its rows go to PPO's tracker as rm_round<r>/...
    round_name = out.name.removesuffix(".tmp")
    track_prefix = "" if round_name == "rm" else f"{round_name}/"
    bar = tqdm(total=n_steps, desc=f"reward model (K={comparisons[0] and len(comparisons[0]['responses'])}, "
                                   f"{rc.loss})", mininterval=2.0)
    for epoch in range(rc.epochs):
        for rows in ranking_batches(train, rc.loss, rc.batch_size, rng):
            model.train()
            r, valid = score_batch(model, tokenizer, rows, device, max_len)
            loss = kwise_ranking_loss(r, valid)
            check_finite("reward-model loss", loss, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            c, t = pairwise_accuracy(r.detach(), valid)
            row = {"step": step, "epoch": epoch, "loss": loss.item(), "accuracy": c / max(t, 1),
                   "time_s": time.time() - t0}
            tracking.metrics(out / "metrics.jsonl", row, prefix=track_prefix)
            step += 1
            bar.update(1)
    bar.close()
    # Normalise: SFT demonstrations score mean 0.
    model.eval()
    model.config.reward_offset = 0.0
    scores = score_texts(model, tokenizer, [p for p, _ in demos], [r for _, r in demos], max_len,
                         progress=f"rm offset ({len(demos)} demonstrations)")
    mean = scores.mean().item() if len(scores) else 0.0
    model.config.reward_offset = -mean
    n_train_eval = max(len(held), 64)
    held_m = evaluate_rm(model, tokenizer, held, device, max_len, progress=f"rm held-out eval ({len(held)} prompts)")
    train_m = evaluate_rm(model, tokenizer, train[:n_train_eval], device, max_len,
                          progress=f"rm train eval ({len(train[:n_train_eval])} prompts)")
    test_m = evaluate_rm(model, tokenizer, test, device, max_len,
                         progress=f"rm test eval ({len(test)} prompts)") if test else {}
    save_hf(model, tokenizer, out)
    summary = {"k": len(comparisons[0]["responses"]), "n_comparisons": len(comparisons), "n_train": len(train),
               "n_heldout": len(held), "steps": step, "time_s": time.time() - t0, "reward_offset": -mean,
               **{f"heldout_{k}": v for k, v in held_m.items()}, **{f"train_{k}": v for k, v in train_m.items()},
               **{f"test_{k}": v for k, v in test_m.items()}}
    print("[rm] " + _rm_line(summary["k"], held_m, train_m))
    if test_m:
        print("[rm] on facts held out from RM and PPO training: " + _rm_line(None, test_m, {}, "ranking accuracy"))
    return summary


def _rm_line(k: Optional[int], held: dict, train: dict, what: str = "held-out ranking accuracy") -> str:
    """The printed RM result: only the measurements that exist (the gold labeler and
    truth-vs-myth are toy-world fields, absent on real data)."""
    parts = [f"K={k}: " if k is not None else ""]
    if held:
        lo, hi = held.get("accuracy_ci_low", float("nan")), held.get("accuracy_ci_high", float("nan"))
        ci = f" [95% CI {lo:.3f}, {hi:.3f}]" if lo == lo else ""  # nan: fewer than 2 prompts
        parts.append(f"{what} {held['accuracy']:.3f}{ci} over {held['pairs']} pairs")
    else:
        parts.append("no held-out comparisons (rm.heldout_frac=0)")
    if "gold_agreement" in held:
        parts.append(f", agreement with the gold labeler {held['gold_agreement']:.3f}")
    if "truth_over_myth" in held:
        parts.append(f", prefers truth to myth {held['truth_over_myth']:.3f} ({held['truth_myth_pairs']} pairs)")
    if train:
        parts.append(f"; train accuracy {train['accuracy']:.3f}")
    return "".join(parts)


def run_reward_stage(cfg: RunConfig, rd: RunDir, sft_path: str, tokenizer, world: Optional[World], device,
                     demos: list[tuple[str, str]], round_: int = 0, policy=None, out_name: str = "rm") -> dict:
    """Sample + rank comparisons (toy world) or read pairs, then train; all comparisons
    collected so far (``comparisons.jsonl``) are used, so later rounds add to them."""
    from .models import load_causal_lm
    out = rd.begin_stage(out_name)
    rc = cfg.rm
    store = rd.path / "comparisons.jsonl"
    if rc.data == "world":
        if policy is None:
            policy = load_causal_lm(sft_path, dtype=cfg.model.dtype, device=device,
                                    attn_implementation=cfg.model.attn_implementation)
        t0 = time.time()
        new = sample_comparisons(world, policy, tokenizer, rc.k, rc.n_prompts, rc.sample_temperature,
                                 rc.max_new_tokens, cfg.seed, round_)
        print(f"[rm] round {round_}: {len(new)} prompts x K={rc.k} ranked responses in {time.time() - t0:.1f}s")
        old = [r for r in read_jsonl(store) if r.get("round", 0) < round_]
        from .rundir import atomic_write_text
        import json
        atomic_write_text(store, "".join(json.dumps(r) + "\n" for r in old + new))
        comparisons = old + new
        # the RM's test set: comparisons on facts held out from RM and PPO training, only evaluated
        test = sample_comparisons(world, policy, tokenizer, rc.k, rc.n_test_prompts, rc.sample_temperature,
                                  rc.max_new_tokens, cfg.seed, round_, split="eval") if rc.n_test_prompts else None
    else:
        comparisons = comparison_rows(tokenizer, load_pair_comparisons(rc.data, rc.max_examples))
        test = None
    summary = train_reward_model(cfg, out, sft_path, tokenizer, comparisons, demos, device, test)
    summary["round"] = round_
    return summary
