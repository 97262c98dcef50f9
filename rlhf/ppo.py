"""Stage 4: PPO-ptx (InstructGPT eq. 2), one readable loop.

    maximise  E_(x,y)~π_RL [ r_θ(x,y) - β log(π_RL(y|x) / π_SFT(y|x)) ]  +  γ E_x~D_pretrain [ log π_RL(x) ]

Each iteration (``ppo.steps`` of them):

1. **Rollout**: sample one response per prompt from π_RL (temperature ``ppo.temperature``,
   ``ppo.max_new_tokens``, stop at EOS). The policy has dropout 0, so the first, on-policy
   minibatch has ratio exactly 1.
2. **Score**: ``rm_score`` = r_θ(x,y) from the frozen reward model (``rlhf.reward.score_texts``,
   the same token sequence as in RM training), and ``ppo_reward`` = rm_score plus
   ``ppo.no_eos_penalty`` when the response never ended (what PPO maximises before the KL
   term); log π_SFT from the frozen SFT policy; values from the critic. Every rollout
   (prompt, response, rm_score, ppo_reward, kl, gold_reward in the toy world) is appended
   to ``samples.jsonl.gz``, one gzip member per iteration.
3. **Per-token rewards**: -β(log π - log π_SFT) on every token, r_θ on the last
   (``losses.kl_penalised_rewards``); optional reward whitening; GAE (``ppo.gamma``,
   ``ppo.lam``); advantage whitening.
4. **Update**: ``ppo.epochs`` passes over shuffled minibatches; the clipped surrogate
   (``ppo.clip_eps``; none = unclipped), the clipped value loss (``ppo.value_clip``),
   gradient clipping (``ppo.grad_clip``). With ``ppo.ptx_coef`` = γ > 0 every update also
   takes a batch of pretraining sequences and adds γ·(LM loss) before the same backward
   pass (``ppo.ptx_ratio`` pretraining sequences per RL episode in each iteration, each
   used once). γ = 0 does no extra work.
5. **β**: fixed, or the adaptive controller (``ppo.adaptive_kl``, ``ppo.target_kl``,
   ``ppo.kl_horizon``).

Every ``ppo.checkpoint_every`` iterations the full state (policy, critic, optimisers, CPU and
CUDA RNG states, step, β controller) goes to ``ppo.tmp/checkpoints/step_N``, with a
``manifest.json`` of sizes and hashes written last and everything fsynced before the rename
that publishes it; a killed run resumes from the latest one to the same result, and a
checkpoint that fails its manifest or does not load is reported and the previous one used. A stop request (SIGTERM or SIGUSR1 to ``rlhf run``,
Slurm's preemption signal in a sweep; see ``rlhf/stop.py``) writes one more checkpoint at
the end of the iteration in flight and stops, so a preemption loses nothing. Policies are also saved the first time the KL
passes each of ``ppo.kl_levels`` (``kl/kl_<level>``) for the over-optimisation eval.
``ppo.rounds`` > 1 is iterated RLHF: at the start of each later round the labeler ranks K
samples of the current policy per prompt and the reward model is retrained on all
comparisons so far.
"""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .config import ConfigError, RunConfig
from .data import filter_prompts, load_prompts, load_text_lines
from .losses import (AdaptiveKLController, FixedKLController, entropy_from_logits, gae, kl_penalised_rewards,
                     lm_loss, logprobs_from_logits, masked_mean, masked_whiten, ppo_clip_loss, value_loss)
from .models import (load_causal_lm, load_reward_model, position_ids_from_mask, save_hf, sequence_scores)
from .rundir import (MANIFEST, RunDir, append_jsonl, atomic_write_json, fsync_dir, fsync_file, fsync_tree, read_json,
                     read_jsonl, verify_manifest, write_manifest)
from . import stop
from .dist import Dist, shard
from .heldout import heldout_nll, heldout_text
from .reward import rm_max_length, score_texts
from .rundir import append_jsonl_gz, truncate_jsonl_gz, write_jsonl_gz
from .sampling import sample
from .world import World


@dataclass
class Batch:
    """One iteration's rollouts; response tensors are (B, T), right padded."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    def index(self, idx: torch.Tensor) -> "Batch":
        return Batch(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


# ----------------------------------------------------------------------------- forward passes

def policy_forward(model, prompt_ids, prompt_mask, response_ids, response_mask, temperature: float = 1.0,
                   value_head: Optional[torch.nn.Module] = None):
    """Log-probs (B, T) of the response tokens, the logits behind them, and (with a value
    head) the values V(s_t) of the states before each response token."""
    ids = torch.cat([prompt_ids, response_ids], 1)
    mask = torch.cat([prompt_mask, response_mask], 1)
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                output_hidden_states=value_head is not None)
    P, T = prompt_ids.shape[1], response_ids.shape[1]
    logits = out.logits[:, P - 1:P - 1 + T] / temperature
    logp = logprobs_from_logits(logits, response_ids)
    values = None
    if value_head is not None:
        h = out.hidden_states[-1][:, P - 1:P - 1 + T]
        values = value_head(h.float()).squeeze(-1)
    return logp, logits, values


def critic_values(critic, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """V(s_t) from a separate value model (a sequence classifier initialised from the RM)."""
    ids = torch.cat([prompt_ids, response_ids], 1)
    mask = torch.cat([prompt_mask, response_mask], 1)
    v = sequence_scores(critic, ids, mask, all_positions=True)
    P, T = prompt_ids.shape[1], response_ids.shape[1]
    return v[:, P - 1:P - 1 + T]


def rollout_seed(seed: int, step: int, rank: int = 0) -> int:
    """The sampler seed of PPO iteration ``step`` on data-parallel rank ``rank``: rollouts
    depend on (seed, step, rank) only, so a resumed run draws the same ones."""
    return (seed * 1_000_003 + step) * 7919 + rank


def score_rollout(rm, tokenizer, s, max_len: int, no_eos_penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rm_score, ppo_reward) of each rollout: rm_score through the one RM instrument
    (``rlhf.reward.score_texts`` on the prompt and the decoded response, the token sequence
    the RM was trained on), and ppo_reward = rm_score + ``no_eos_penalty`` when the
    response never ended (what PPO maximises before the KL term)."""
    rm_score = score_texts(rm, tokenizer, s.prompts, s.texts, max_len)
    return rm_score, rm_score + no_eos_penalty * (~s.ended).float().to(rm_score.device)


def rollout(policy, tokenizer, prompts: list[str], pc, seed: int):
    """One response per prompt from the policy, through the one sampler (``rlhf.sampling.sample``)."""
    return sample(policy, tokenizer, prompts, max_new_tokens=pc.max_new_tokens, temperature=pc.temperature,
                  top_p=pc.top_p, seed=seed)


# ----------------------------------------------------------------------------- pretraining data

class PretrainStream:
    """Random windows of the pretraining corpus for the ptx term (own RNG, checkpointed)."""

    def __init__(self, tokenizer, docs: list[str], seq_len: int, seed: int):
        text = " ".join(docs)
        self.ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        self.seq_len = seq_len
        self.gen = torch.Generator().manual_seed(seed)

    def batch(self, n: int) -> torch.Tensor:
        starts = torch.randint(0, len(self.ids) - self.seq_len, (n,), generator=self.gen)
        return torch.stack([self.ids[s:s + self.seq_len] for s in starts.tolist()])


def pretrain_documents(cfg: RunConfig, world: Optional[World]) -> tuple[list[str], list[str]]:
    """(train, held-out) pretraining documents for ptx and the regression metric: the toy
    world's corpus, or a plain-text file (``ppo.ptx_data``, e.g. WikiText-2 raw; its last
    5% of lines are held out)."""
    src = cfg.ppo.ptx_data
    if src == "world":
        if world is None:
            raise ConfigError("ppo.ptx_data=world needs the toy world: give a text file for a real model")
        return world.corpus(), world.heldout_corpus()
    lines = load_text_lines(src, "ppo.ptx_data")
    cut = int(len(lines) * 0.95)
    return lines[:cut], lines[cut:]


# ----------------------------------------------------------------------------- checkpoints

def _rng_state() -> dict:
    """RNG states as plain tensors and numbers (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    out = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                     "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()  # one per device: bit-exact resume on a GPU
    return out


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    n = s["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    cuda = s.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            print(f"[ppo] warning: the checkpoint has CUDA RNG states for {len(cuda)} devices, this machine has "
                  f"{torch.cuda.device_count()}: CUDA sampling will not repeat the interrupted run exactly")


def save_checkpoint(path: Path, policy, tokenizer, critic, value_head, opt, critic_opt, ctl, step: int,
                    ptx: Optional[PretrainStream], extra: dict, d: Optional[Dist] = None) -> None:
    """Write ``path`` atomically (``.partial``, then renamed). Data-parallel: rank 0 writes the
    models, optimisers and its RNG states; every other rank adds ``rng_rank<r>.pt``."""
    d = d or Dist()
    tmp = path.with_name(path.name + ".partial")
    if d.is_main and tmp.exists():
        shutil.rmtree(tmp)
    if d.is_main:
        tmp.mkdir(parents=True)
    d.barrier()
    if not d.is_main:
        torch.save({"rng": _rng_state(), "ptx_rng": ptx.gen.get_state() if ptx else None},
                   tmp / f"rng_rank{d.rank}.pt")
    d.barrier()
    if not d.is_main:
        d.barrier()  # rank 0 renames the directory
        return
    save_hf(policy, tokenizer, tmp / "policy")
    if critic is not None:
        save_hf(critic, None, tmp / "critic")
    if value_head is not None:
        save_file(value_head.state_dict(), str(tmp / "value_head.safetensors"))
    state = {"opt": opt.state_dict(), "critic_opt": critic_opt.state_dict() if critic_opt else None,
             "rng": _rng_state(), "ptx_rng": ptx.gen.get_state() if ptx else None}
    torch.save(state, tmp / "trainer_state.pt")
    atomic_write_json(tmp / "state.json", {"step": step, "controller": ctl.state_dict(), "world_size": d.world,
                                           **extra})
    write_manifest(tmp)  # sizes and hashes, written last: a checkpoint without it is incomplete
    fsync_tree(tmp)  # every file and the directory on disk before the rename publishes them
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    fsync_dir(path.parent)
    d.barrier()


def checkpoints(ckdir: Path) -> list[Path]:
    """Complete-looking checkpoints (``step_N`` with a state.json), newest first."""
    return sorted((p for p in ckdir.glob("step_*") if p.is_dir() and (p / "state.json").exists()), reverse=True)


def _load_checkpoint(ck: Path, cfg: RunConfig, d: Dist, device, with_critic: bool, value_head):
    """Everything resumable from ``ck``, or an exception (nothing is changed until it all loads):
    (state.json, policy, critic, critic optimiser, value head, optimiser, trainer state)."""
    pc = cfg.ppo
    st = read_json(ck / "state.json")
    if not isinstance(st, dict) or "step" not in st or "controller" not in st:
        raise ValueError("state.json is unreadable")
    if st.get("world_size", 1) != d.world:
        raise ConfigError(f"{ck} was written by {st.get('world_size', 1)} data-parallel processes, this run has "
                          f"{d.world}: resume with the same number, or --force to start PPO again")
    policy = load_causal_lm(str(ck / "policy"), dtype=cfg.model.dtype, device=device)
    params = list(policy.parameters())
    critic = critic_opt = None
    if with_critic:
        critic = load_reward_model(str(ck / "critic"), dtype=cfg.model.dtype, device=device)
        critic_opt = torch.optim.AdamW(critic.parameters(), lr=pc.critic_lr, eps=1e-5, weight_decay=0.0, fused=True)
    if value_head is not None:
        value_head = copy.deepcopy(value_head)  # the caller's is untouched unless all of ck loads
        value_head.load_state_dict(load_file(str(ck / "value_head.safetensors")))
        params += list(value_head.parameters())
    opt = torch.optim.AdamW(params, lr=pc.lr, eps=1e-5, weight_decay=0.0, fused=True)
    state = torch.load(ck / "trainer_state.pt", weights_only=True)
    opt.load_state_dict(state["opt"])
    if critic_opt is not None:
        critic_opt.load_state_dict(state["critic_opt"])
    if d.rank > 0:  # every rank has its own random streams
        state.update(torch.load(ck / f"rng_rank{d.rank}.pt", weights_only=True))
    return st, policy, critic, critic_opt, value_head, opt, state


# ----------------------------------------------------------------------------- the stage

def check_tokenizers_match(policy_tok, rm_path: str) -> None:
    """A reward model must read the same token ids as the policy writes."""
    from transformers import AutoTokenizer
    try:
        rm_tok = AutoTokenizer.from_pretrained(rm_path)
    except (OSError, ValueError):
        return  # no tokenizer saved with the RM: the vocab-size check in run_ppo still applies
    if rm_tok.get_vocab() != policy_tok.get_vocab():
        raise ConfigError(
            f"the reward model's tokenizer ({rm_path}, {len(rm_tok)} tokens) does not match the policy's "
            f"({len(policy_tok)} tokens): train the reward model from the same base model")


def run_ppo(cfg: RunConfig, rd: RunDir, sft_path: str, rm_path: str, tokenizer, world: Optional[World],
            device: torch.device, d: Optional[Dist] = None) -> dict:
    pc = cfg.ppo
    d = d or Dist()  # data-parallel ranks (rlhf/dist.py); one process by default
    if pc.batch_size % d.world or pc.minibatch_size % d.world:
        raise ConfigError(f"ppo.batch_size ({pc.batch_size}) and ppo.minibatch_size ({pc.minibatch_size}) are "
                          f"global and must divide by the number of data-parallel processes ({d.world})")
    local_bs, local_mb = pc.batch_size // d.world, pc.minibatch_size // d.world
    out = rd.begin_stage("ppo", keep_partial=True)
    d.barrier()
    ckdir = out / "checkpoints"
    # every rollout: one gzip member per iteration (rank 0 here, rank r in samples.rank<r>.jsonl.gz)
    samples_path = out / ("samples.jsonl.gz" if d.rank == 0 else f"samples.rank{d.rank}.jsonl.gz")
    rank_seed = cfg.seed * 1000 + 4 + 7919 * d.rank  # each rank samples its own responses
    torch.manual_seed(rank_seed)
    random.seed(rank_seed)
    np.random.seed(rank_seed)

    # --- models -------------------------------------------------------------------------
    check_tokenizers_match(tokenizer, rm_path)
    policy = load_causal_lm(sft_path, dtype=cfg.model.dtype, device=device)
    ref = load_causal_lm(sft_path, dtype=cfg.model.dtype, device=device).eval().requires_grad_(False)
    rm = load_reward_model(rm_path, dtype=cfg.model.dtype, device=device).eval().requires_grad_(False)
    if rm.config.vocab_size != policy.config.vocab_size:
        raise ConfigError(f"reward model vocab {rm.config.vocab_size} != policy vocab {policy.config.vocab_size}")
    critic = value_head = critic_opt = None
    if pc.critic == "separate":
        critic = load_reward_model(rm_path, dtype=cfg.model.dtype, device=device)
        critic_opt = torch.optim.AdamW(critic.parameters(), lr=pc.critic_lr, eps=1e-5, weight_decay=0.0, fused=True)
    else:
        hidden = getattr(policy.config, "n_embd", None) or policy.config.hidden_size
        value_head = torch.nn.Linear(hidden, 1).to(device)
        torch.nn.init.zeros_(value_head.weight)
        torch.nn.init.zeros_(value_head.bias)
    params = list(policy.parameters()) + (list(value_head.parameters()) if value_head is not None else [])
    opt = torch.optim.AdamW(params, lr=pc.lr, eps=1e-5, weight_decay=0.0, fused=True)
    ctl = AdaptiveKLController(pc.beta, pc.target_kl, pc.kl_horizon) if pc.adaptive_kl else FixedKLController(pc.beta)

    # --- data ---------------------------------------------------------------------------
    if pc.data != "world":
        prompts = filter_prompts(load_prompts(pc.data), tokenizer, pc.max_prompt_tokens)
        prompt_meta = None
        print(f"[ppo] {len(prompts)} prompts of at most {pc.max_prompt_tokens} tokens from {pc.data}")
    else:
        prompt_meta = world.train_prompts()
        prompts = [p.text for p in prompt_meta]
    if not prompts:
        raise ConfigError("ppo.data: no prompts")
    ptx = held_text = None
    if world is not None or pc.ptx_coef > 0 or pc.ptx_data != "world":
        train_docs, held_docs = pretrain_documents(cfg, world)
        if pc.ptx_coef > 0:
            ptx = PretrainStream(tokenizer, train_docs, pc.ptx_seq_len, cfg.seed * 1000 + 5 + 7919 * d.rank)
        held_text = heldout_text(held_docs)
    rm_len = rm_max_length(rm, cfg.rm.max_length)
    n_updates = pc.epochs * (pc.batch_size // pc.minibatch_size)
    ptx_per_update = max(1, (pc.ptx_ratio * local_bs) // n_updates) if ptx else 0

    # --- resume ---------------------------------------------------------------------------
    start = 0
    kl_saved: list[float] = []
    rm_round = 0
    ck = None
    for cand in checkpoints(ckdir):
        problem = verify_manifest(cand) if (cand / MANIFEST).exists() else None  # older runs: no manifest
        if problem is None:
            try:
                loaded = _load_checkpoint(cand, cfg, d, device, critic is not None, value_head)
            except ConfigError:
                raise
            except Exception as e:  # noqa: BLE001 - a torn file of any kind: try the previous checkpoint
                problem = f"cannot be loaded ({type(e).__name__}: {str(e)[:200]})"
        if problem is not None:
            if d.is_main:
                print(f"[ppo] checkpoint {cand.name} is damaged: {problem}; falling back to the previous one",
                      flush=True)
            continue
        ck = cand
        st, policy, critic, critic_opt, value_head, opt, state = loaded
        start = st["step"]
        _set_rng_state(state["rng"])
        if ptx is not None and state["ptx_rng"] is not None:
            ptx.gen.set_state(state["ptx_rng"])
        ctl.load_state_dict(st["controller"])
        kl_saved = st.get("kl_saved", [])
        rm_round = st.get("rm_round", 0)
        if rm_round > 0:
            rm = load_reward_model(str(out / f"rm_round{rm_round}"), dtype=cfg.model.dtype,
                                   device=device).eval().requires_grad_(False)
        break
    if ck is None and checkpoints(ckdir) and d.is_main:
        print("[ppo] no usable checkpoint: PPO starts again from step 0", flush=True)
    if ck is not None:
        # drop metrics logged after the checkpoint: they will be logged again
        if d.is_main:
            rows = [r for r in read_jsonl(out / "metrics.jsonl") if r["step"] < start]
            from .rundir import atomic_write_text
            atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
            print(f"[ppo] resumed from {ck.name} (step {start})")
        truncate_jsonl_gz(samples_path, lambda r: r["step"] < start)  # each rank its own file
    else:
        if (out / "metrics.jsonl").exists() and d.is_main:
            (out / "metrics.jsonl").unlink()
        if samples_path.exists():
            samples_path.unlink()
    policy.train()

    steps_per_round = math.ceil(pc.steps / pc.rounds)
    t0 = time.time()
    gen_seed_base = cfg.seed * 1_000_003
    rng = random.Random()
    bar = tqdm(range(start, pc.steps), desc="ppo", initial=start, total=pc.steps, mininterval=2.0,
               disable=True if not d.is_main else None)
    last = {}
    last_status = -1e9
    with stop.listening():  # SIGTERM/USR2: checkpoint at the end of this iteration (rlhf/stop.py)
        for step in bar:
            # --- iterated RLHF: a new reward model at the start of each later round --------------
            this_round = step // steps_per_round
            if this_round > rm_round:
                rm = retrain_reward_model(cfg, rd, out, sft_path, tokenizer, world, device, policy, this_round)
                rm_round = this_round
            rng.seed(gen_seed_base + step)
            idx = shard([rng.randrange(len(prompts)) for _ in range(pc.batch_size)], d)  # this rank's share
            batch_prompts = [prompts[i] for i in idx]

            # --- 1-2. rollout and scoring ------------------------------------------------------------
            policy.eval()
            s = rollout(policy, tokenizer, batch_prompts, pc, rollout_seed(cfg.seed, step, d.rank))
            pi, pm, ri, rmask = (s.prompt_ids.to(device), s.prompt_mask.to(device), s.response_ids.to(device),
                                 s.response_mask.to(device))
            with torch.no_grad():
                logp, _, v_head = policy_forward(policy, pi, pm, ri, rmask, pc.temperature, value_head)
                ref_logp, _, _ = policy_forward(ref, pi, pm, ri, rmask, pc.temperature)
                score_raw, score = score_rollout(rm, tokenizer, s, rm_len, pc.no_eos_penalty)  # rm_score, ppo_reward
                values = v_head if value_head is not None else critic_values(critic, pi, pm, ri, rmask)
            maskf = rmask.float()
            # --- 3. per-token rewards, GAE ------------------------------------------------------------
            rewards, kl = kl_penalised_rewards(score, logp, ref_logp, maskf, ctl.value)
            if pc.whiten_rewards:
                rewards = masked_whiten(rewards, maskf, shift_mean=False)
            adv, ret = gae(rewards, values * maskf, maskf, pc.gamma, pc.lam)
            if pc.whiten_advantages:
                adv = masked_whiten(adv, maskf)
            check_finite(step, {"reward": score, "kl": kl.sum(1), "values": values, "advantages": adv}, d)
            batch = Batch(pi, pm, ri, maskf, logp, ref_logp, values * maskf, adv, ret)

            # held-out pretraining loss of the policy that made this batch (before its update)
            held_lm = None
            if held_text is not None and step % pc.checkpoint_every == 0 and d.is_main:
                held_lm = heldout_nll(policy, tokenizer, held_text)["loss"]

            # --- 4. PPO epochs over minibatches ------------------------------------------------------
            policy.train()
            stats: dict[str, list[float]] = {k: [] for k in ("pg_loss", "vf_loss", "clipfrac", "approx_kl", "entropy",
                                                             "ptx_loss", "vf_clipfrac")}
            for epoch in range(pc.epochs):
                perm = torch.randperm(local_bs)
                for i in range(0, local_bs, local_mb):
                    mb = batch.index(perm[i:i + local_mb])
                    ptx_x = ptx.batch(ptx_per_update).to(device) if ptx is not None else None
                    st = ppo_update(policy, mb, opt, pc, value_head, critic, critic_opt, ptx_x, d)
                    for k, v in st.items():
                        stats[k].append(v)
                    check_finite(step, {k: torch.tensor(v) for k, v in st.items()}, d)

            # --- 5. β controller, logging, checkpoints --------------------------------------------
            means = {"ppo_reward": score.mean().item(), "rm_score": score_raw.mean().item(),
                     "kl": kl.sum(1).mean().item(), "response_len": rmask.sum(1).float().mean().item(),
                     "ended": s.ended.float().mean().item(),
                     **{k: float(np.mean(v)) if v else 0.0 for k, v in stats.items()}}
            golds = None
            if world is not None and prompt_meta is not None:
                golds = [world.gold_reward(prompt_meta[i], t) for i, t in zip(idx, s.texts)]
                means["gold_reward"] = float(np.mean(golds))
            kl_rows = kl.sum(1).tolist()
            sample_rows = [{"step": step, "rank": d.rank, "prompt": pr, "response": t, "rm_score": float(a),
                            "ppo_reward": float(b), "kl": float(k),
                            **({"gold_reward": float(golds[j])} if golds is not None else {})}
                           for j, (pr, t, a, b, k) in enumerate(zip(s.prompts, s.texts, score_raw.tolist(),
                                                                    score.tolist(), kl_rows))]
            append_jsonl_gz(samples_path, sample_rows)  # one gzip member per iteration
            means = d.mean_dict(means)  # over all ranks' rollouts (equal shares)
            mean_kl = means["kl"]
            row = {"step": step, "round": rm_round, **means, "beta": ctl.value, "time_s": time.time() - t0}
            ctl.update(mean_kl, pc.batch_size)
            if held_lm is not None:
                row["heldout_lm_loss"] = held_lm
            if d.is_main:
                append_jsonl(out / "metrics.jsonl", row, fsync=False)  # fsynced at each checkpoint
            if time.time() - last_status >= 5.0 or step + 1 == pc.steps:  # an fsync'd write costs ~8 ms
                rd.set_status("running", stage="ppo", step=step + 1, total=pc.steps)
                last_status = time.time()
            last = row
            bar.set_postfix(r=f"{row['ppo_reward']:.2f}", kl=f"{mean_kl:.2f}",
                            gold=f"{row.get('gold_reward', float('nan')):.2f}")
            for level in pc.kl_levels:
                if mean_kl >= level and level not in kl_saved:
                    if d.is_main:
                        save_hf(policy, tokenizer, out / "kl" / f"kl_{level:g}")
                        atomic_write_json(out / "kl" / f"kl_{level:g}" / "kl.json",
                                          {"level": level, "kl": mean_kl, "step": step})
                    kl_saved.append(level)
            stop_reason = stop.requested()
            if d.any(stop_reason is not None):  # all ranks stop at the same iteration
                stop_reason = stop_reason or "stop requested on another rank"
            if step + 1 < pc.steps and ((step + 1) % pc.checkpoint_every == 0 or stop_reason):
                d.check_same_weights(list(policy.parameters()), f"PPO step {step + 1}")
                if d.is_main:
                    fsync_file(out / "metrics.jsonl")
                if samples_path.exists():
                    fsync_file(samples_path)
                ck = ckdir / f"step_{step + 1:06d}"
                save_checkpoint(ck, policy, tokenizer, critic, value_head, opt, critic_opt,
                                ctl, step + 1, ptx, {"kl_saved": kl_saved, "rm_round": rm_round}, d)
                if d.is_main:
                    for old in sorted(ckdir.glob("step_*"))[:-2]:
                        shutil.rmtree(old, ignore_errors=True)
                if stop_reason:
                    bar.close()
                    raise stop.StopRequested(stop_reason, "ppo", step + 1, str(ck))
    bar.close()
    policy.eval()
    if not d.is_main:
        return {}
    final_held = heldout_nll(policy, tokenizer, held_text)["loss"] if held_text is not None else None
    save_hf(policy, tokenizer, out)
    if value_head is not None:
        save_file(value_head.state_dict(), str(out / "value_head.safetensors"))
    if critic is not None:
        save_hf(critic, None, out / "critic")
    shutil.rmtree(ckdir, ignore_errors=True)
    rows = read_jsonl(out / "metrics.jsonl")
    summary = {"steps": pc.steps, "final": last, "time_s": time.time() - t0,
               "kl_checkpoints": sorted(kl_saved), "first": rows[0] if rows else {}}
    if rows:
        tail = rows[-max(1, len(rows) // 10):]
        for k in ("ppo_reward", "rm_score", "gold_reward", "kl"):
            if k in tail[0]:
                summary[f"final_{k}"] = float(np.mean([r[k] for r in tail]))
        held = [r["heldout_lm_loss"] for r in rows if "heldout_lm_loss" in r]
        if held and rows[0]["step"] == 0 and "heldout_lm_loss" in rows[0]:
            summary["heldout_lm_loss_sft"] = rows[0]["heldout_lm_loss"]
    if final_held is not None:
        summary["heldout_lm_loss_final"] = final_held
    print(f"[ppo] {pc.steps} iterations in {summary['time_s']:.1f}s: rm_score "
          f"{summary['first'].get('rm_score', float('nan')):.3f} -> {summary.get('final_rm_score', float('nan')):.3f}, "
          f"gold {summary['first'].get('gold_reward', float('nan')):.3f} -> {summary.get('final_gold_reward', float('nan')):.3f}, "
          f"KL {summary.get('final_kl', float('nan')):.2f}, held-out pretraining loss "
          f"{summary.get('heldout_lm_loss_sft', float('nan')):.3f} -> {summary.get('heldout_lm_loss_final', float('nan')):.3f}")
    if world is not None and pc.data == "world":  # the toy world's before/after on held-out prompts
        from .probes import before_after_line, heldout_summary
        seed = cfg.seed * 1000 + 6
        summary["heldout_sft"], rows_sft = heldout_summary(world, tokenizer, ref, pc.max_new_tokens, seed=seed)
        summary["heldout_ppo"], rows_ppo = heldout_summary(world, tokenizer, policy, pc.max_new_tokens, seed=seed)
        write_jsonl_gz(out / "heldout_samples.jsonl.gz", [{"policy": "sft", **r} for r in rows_sft] +
                       [{"policy": "ppo", **r} for r in rows_ppo])
        print("[ppo] " + before_after_line(summary["heldout_sft"], summary["heldout_ppo"]))
    return summary


def policy_ptx_forward(model, mb: Batch, ptx_x: torch.Tensor, temperature: float = 1.0,
                       value_head: Optional[torch.nn.Module] = None):
    """:func:`policy_forward` on the minibatch and the pretraining LM loss on ``ptx_x`` in
    ONE forward pass: the rows are padded on the right to a common length and stacked,
    so a ptx update costs one model call, not two. Returns (logp, logits, values, lm loss)."""
    rl_ids = torch.cat([mb.prompt_ids, mb.response_ids], 1)
    rl_mask = torch.cat([mb.prompt_mask, mb.response_mask.long()], 1)
    B, n = rl_ids.shape
    N, L = ptx_x.shape
    width = max(n, L)
    pad = lambda x, v: torch.nn.functional.pad(x, (0, width - x.shape[1]), value=v)  # noqa: E731
    ids = torch.cat([pad(rl_ids, 0), pad(ptx_x, 0)])
    mask = torch.cat([pad(rl_mask, 0), pad(torch.ones_like(ptx_x), 0)])
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                output_hidden_states=value_head is not None)
    P, T = mb.prompt_ids.shape[1], mb.response_ids.shape[1]
    logits = out.logits[:B, P - 1:P - 1 + T] / temperature
    logp = logprobs_from_logits(logits, mb.response_ids)
    values = None
    if value_head is not None:
        values = value_head(out.hidden_states[-1][:B, P - 1:P - 1 + T].float()).squeeze(-1)
    return logp, logits, values, lm_loss(out.logits[B:, :L], ptx_x)


def ppo_update(policy, mb: Batch, opt, pc, value_head=None, critic=None, critic_opt=None,
               ptx_x: Optional[torch.Tensor] = None, d: Optional[Dist] = None) -> dict[str, float]:
    """One gradient step on one minibatch: L = L_clip + c_v L_V (value head) + γ L_LM (ptx).
    With γ > 0 the ptx batch shares the policy's forward pass (see policy_ptx_forward).
    Data-parallel (``d``): each rank holds its share of the minibatch and the gradients are
    averaged over ranks before clipping and the step."""
    d = d or Dist()
    use_ptx = ptx_x is not None and pc.ptx_coef > 0
    if use_ptx:
        logp, logits, v, ptx_loss = policy_ptx_forward(policy, mb, ptx_x, pc.temperature, value_head)
    else:
        logp, logits, v = policy_forward(policy, mb.prompt_ids, mb.prompt_mask, mb.response_ids, mb.response_mask,
                                         pc.temperature, value_head)
    pg_loss, st = ppo_clip_loss(logp, mb.logprobs, mb.advantages, mb.response_mask, pc.clip_eps)
    loss = pg_loss
    out = {"pg_loss": pg_loss.item(), "clipfrac": float(st["clipfrac"]), "approx_kl": float(st["approx_kl"])}
    with torch.no_grad():
        out["entropy"] = float(masked_mean(entropy_from_logits(logits), mb.response_mask))
    if value_head is not None:
        vf_loss, vf_frac = value_loss(v, mb.values, mb.returns, mb.response_mask, pc.value_clip)
        loss = loss + pc.vf_coef * vf_loss
        out["vf_loss"], out["vf_clipfrac"] = vf_loss.item(), float(vf_frac)
    if use_ptx:
        loss = loss + pc.ptx_coef * ptx_loss
        out["ptx_loss"] = ptx_loss.item()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for g in opt.param_groups for p in g["params"]]
    d.average_gradients(params)
    torch.nn.utils.clip_grad_norm_(params, pc.grad_clip)
    opt.step()
    if critic is not None:
        v = critic_values(critic, mb.prompt_ids, mb.prompt_mask, mb.response_ids, mb.response_mask)
        vf_loss, vf_frac = value_loss(v, mb.values, mb.returns, mb.response_mask, pc.value_clip)
        critic_opt.zero_grad(set_to_none=True)
        vf_loss.backward()
        d.average_gradients(list(critic.parameters()))
        torch.nn.utils.clip_grad_norm_(critic.parameters(), pc.grad_clip)
        critic_opt.step()
        out["vf_loss"], out["vf_clipfrac"] = vf_loss.item(), float(vf_frac)
    return out


def check_finite(step: int, values: dict[str, torch.Tensor], d: Optional[Dist] = None) -> None:
    """Raise Diverged on NaN/inf; data-parallel, every rank raises when any rank has one (so
    no rank is left waiting in a collective and rank 0 records the divergence)."""
    from .pipeline import Diverged
    bad = {k: v.detach().float().flatten()[~torch.isfinite(v.detach().float().flatten())][:5].tolist()
           for k, v in values.items() if not torch.isfinite(v.detach().float()).all()}
    if d is not None and d.any(bool(bad)) and not bad:
        raise Diverged(f"non-finite values on another rank at PPO step {step}", step=step,
                       values={"other_rank": ["nan"]})
    if bad:
        raise Diverged(f"non-finite values at PPO step {step}: {bad}", step=step,
                       values={k: [str(x) for x in v] for k, v in bad.items()})


load_prompt_file = load_prompts  # the name eval/ imports; one loader: rlhf/data.py


def retrain_reward_model(cfg: RunConfig, rd: RunDir, out: Path, sft_path: str, tokenizer, world, device, policy,
                         round_: int):
    """Iterated RLHF: rank K samples of the current policy per prompt, add them to all
    comparisons so far, retrain the RM from the SFT model into ``ppo.tmp/rm_round<r>``."""
    from .reward import sample_comparisons, train_reward_model
    from .rundir import atomic_write_text
    from .sft import load_demonstrations
    target = out / f"rm_round{round_}"
    if not (target / "DONE").exists():
        rc = cfg.rm
        new = sample_comparisons(world, policy, tokenizer, rc.k, rc.n_prompts, rc.sample_temperature,
                                 rc.max_new_tokens, cfg.seed, round_)
        store = rd.path / "comparisons.jsonl"
        old = [r for r in read_jsonl(store) if r.get("round", 0) < round_]
        atomic_write_text(store, "".join(json.dumps(r) + "\n" for r in old + new))
        tmp = out / f"rm_round{round_}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        summary = train_reward_model(cfg, tmp, sft_path, tokenizer, old + new, load_demonstrations(cfg, world), device)
        atomic_write_json(tmp / "summary.json", summary)
        (tmp / "DONE").write_text("done\n")
        fsync_tree(tmp)  # on disk before the rename publishes it (a checkpoint may point at it)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
        fsync_dir(out)
    return load_reward_model(str(target), dtype=cfg.model.dtype, device=device).eval().requires_grad_(False)
