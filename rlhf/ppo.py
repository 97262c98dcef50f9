"""Stage 4: PPO-ptx (InstructGPT eq. 2), as named phases.

    maximise  E_(x,y)~π_RL [ r_θ(x,y) - β log(π_RL(y|x) / π_SFT(y|x)) ]  +  γ E_x~D_pretrain [ log π_RL(x) ]

:func:`run_ppo` builds the models or resumes them from the newest good checkpoint, once
(:func:`start_or_resume`; every optimiser comes from :func:`make_optimizer`), then runs
``ppo.steps`` iterations of :meth:`PPORun.step`, each one phase after another:

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
   gradient-norm clipping per model (``ppo.grad_clip``; 0: none). With ``ppo.ptx_coef`` = γ > 0
   every update also takes a batch of pretraining sequences and adds γ·(LM loss) before the same backward
   pass (``ppo.ptx_ratio`` pretraining sequences per RL episode in each iteration, each
   used once). γ = 0 does no extra work. A separate critic takes its own step on the value
   loss after the policy's, or with ``ppo.parallel_critic`` alongside it on a thread of its
   own (:class:`CriticThread`).
5. **β**: fixed, or the adaptive controller (``ppo.adaptive_kl``, ``ppo.target_kl``,
   ``ppo.kl_horizon``).

Every ``ppo.checkpoint_every`` iterations the full state (policy, critic, optimisers, CPU and
CUDA RNG states, step, β controller; with ``ppo.sharding=fsdp`` the optimisers' states one
shard per rank, ``rlhf/sharding.py``) goes to ``ppo.tmp/checkpoints/step_N``, with a
``manifest.json`` of sizes and hashes written last and everything fsynced before the rename
that publishes it; a killed run resumes from the latest one to the same result, and a
checkpoint that fails its manifest or does not load is reported and the previous one used. A stop request (SIGTERM or SIGUSR1 to ``rlhf run``,
Slurm's preemption signal in a sweep; see ``rlhf/stop.py``) writes one more checkpoint at
the end of the iteration in flight and stops, so a preemption loses nothing. Policies are also saved the first time the KL
passes each of ``ppo.kl_levels`` (``kl/kl_<level>``) for the over-optimisation eval.
``ppo.rounds`` > 1 is iterated RLHF: at the start of each later round the labeler ranks K
samples of the current policy per prompt and the reward model is retrained on all
comparisons so far, by the reward stage's own function (``rlhf.reward.run_reward_stage``).

Memory (``PERFORMANCE.md``): with ``ppo.lora_r`` > 0 the policy trains LoRA adapters
(``rlhf.models.add_lora``) and π_SFT is the same model with its adapters disabled
(:meth:`PPORun.reference`), not a second copy; ``ppo.critic_lora`` does the same for the
critic. Checkpoints then hold the trainable parameters only (``policy_lora.safetensors``,
``critic_lora.safetensors``) on top of the SFT model and the RM, and every saved policy is
merged into a plain model (``rlhf.models.save_hf``). ``model.autocast`` runs every forward
pass (rollout, scoring, update) under ``torch.autocast``, with log-probs, values and losses
in float32 and the rollout's log π from a forward pass of the same precision as the
update's; ``model.gradient_checkpointing`` recomputes activations in the backward passes.
Each optimiser's gradients are freed after its step.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .config import ConfigError, RunConfig, stage_seed
from .data import filter_prompts, load_prompts, load_text_lines
from .errors import Diverged
from .heap import long_lived
from .losses import (AdaptiveKLController, FixedKLController, entropy_from_logits, gae, kl_penalised_rewards,
                     lm_loss, logprobs_from_logits, masked_mean, masked_whiten, ppo_clip_loss, value_loss)
from .models import (adapters_disabled, add_lora, autocast, lm_forward, load_causal_lm, load_reward_model, save_hf,
                     sequence_scores, set_gradient_checkpointing, trainable_state_dict)
from .rundir import (MANIFEST, RunDir, atomic_write_json, fsync_dir, fsync_file, fsync_tree, read_json,
                     read_jsonl, verify_manifest, write_manifest)
from . import optim, stop
from .dist import Dist, shard
from . import sharding
from .heldout import heldout_nll, heldout_text
from .pretrain import encode_corpus, random_windows
from .threads import SideThread
from .chat import prompt_text
from .reward import rm_max_length, score_texts
from .rewards import RewardFn, RMReward, load_reward, parse_reward_spec
from . import tracking
from .rundir import append_jsonl_gz, atomic_write_text, truncate_jsonl_gz, write_jsonl_gz
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
    """Log-probs (B, T) of the response tokens at ``temperature`` (float32, without a
    full-vocabulary log-softmax copy: ``losses.logprobs_from_logits``), the logits behind
    them (before the temperature), and (with a value head) the values V(s_t) of the states
    before each response token (the head in float32, outside any autocast). The LM head runs
    on the T + 1 last positions only (``logits_to_keep``), not on the prompt's
    (:func:`lm_forward`)."""
    ids = torch.cat([prompt_ids, response_ids], 1)
    mask = torch.cat([prompt_mask, response_mask], 1)
    T = response_ids.shape[1]
    all_logits, last = lm_forward(model, ids, mask, keep=T + 1, hidden=value_head is not None)
    logits = all_logits[:, all_logits.shape[1] - T - 1:-1]
    logp = logprobs_from_logits(logits, response_ids, temperature)
    values = None
    if value_head is not None:
        h = last[:, last.shape[1] - T - 1:-1]  # the states before each response token
        with torch.autocast(h.device.type, enabled=False):
            values = value_head(h.float()).squeeze(-1)
    return logp, logits, values


def critic_values(critic, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """V(s_t) from a separate value model (a sequence classifier initialised from the RM)."""
    ids = torch.cat([prompt_ids, response_ids], 1)
    mask = torch.cat([prompt_mask, response_mask], 1)
    P, T = prompt_ids.shape[1], response_ids.shape[1]
    return sequence_scores(critic, ids, mask, all_positions=True, start=P - 1)[:, :T]


def rollout_seed(seed: int, step: int, rank: int = 0) -> int:
    """The sampler seed of PPO iteration ``step`` on data-parallel rank ``rank``: rollouts
    depend on (seed, step, rank) only, so a resumed run draws the same ones."""
    return (seed * 1_000_003 + step) * 7919 + rank


def score_rollout(rm, tokenizer, s, max_len: int, no_eos_penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rm_score, ppo_reward) of each rollout: rm_score through the one RM instrument
    (``rlhf.reward.score_texts`` on the prompt text the policy continued and the response
    text, ``rlhf.chat.rm_text``: the token sequence the RM was trained on; with a chat
    template the conversation up to the end-of-turn token of an ended response), or, when
    ``rm`` is a reward from outside the run (``ppo.reward``, a :class:`rlhf.rewards.RewardFn`),
    that reward of the samples; and ppo_reward = rm_score + ``no_eos_penalty`` when the
    response never ended (what PPO maximises before the KL term)."""
    if isinstance(rm, RewardFn):
        rm_score = rm.of_samples(s)
    else:
        rm_score = score_texts(rm, tokenizer, s.prompts, s.texts, max_len)
    return rm_score, rm_score + no_eos_penalty * (~s.ended).float().to(rm_score.device)


def rollout(policy, tokenizer, prompts: list[str], pc, seed: int):
    """One response per prompt from the policy, through the one sampler (``rlhf.sampling.sample``),
    with log π of each sampled token from the sampling pass itself."""
    return sample(policy, tokenizer, prompts, max_new_tokens=pc.max_new_tokens, temperature=pc.temperature,
                  top_p=pc.top_p, seed=seed, logprobs=True)


# ----------------------------------------------------------------------------- pretraining data

class PretrainStream:
    """Random windows of the pretraining corpus for the ptx term: the corpus tokenized and
    windowed as pretraining does (``rlhf.pretrain.encode_corpus`` / ``random_windows``),
    with its own RNG (checkpointed)."""

    def __init__(self, tokenizer, docs: list[str], seq_len: int, seed: int):
        self.ids = encode_corpus(tokenizer, docs)
        self.seq_len = seq_len
        self.gen = torch.Generator().manual_seed(seed)

    def batch(self, n: int) -> torch.Tensor:
        return random_windows(self.ids, n, self.seq_len, self.gen)


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
    """RNG states as plain tensors and numbers (loadable with ``weights_only=True``): Python's,
    NumPy's, torch's CPU generator and, on a machine with CUDA, every device's CUDA generator
    (``torch.cuda.get_rng_state_all``: PPO's sampler has its own seeded generator, but a model
    or a library drawing on the GPU uses the global one). A process that has
    not initialised CUDA has drawn nothing from it (its generators are still as
    ``torch.manual_seed`` left them, which a resume repeats), so nothing is saved then."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    out = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                     "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()  # one per device: bit-exact resume on a GPU
    return out


def _set_rng_state(s: dict) -> None:
    """Put back what :func:`_rng_state` saved; a record without CUDA states (a CPU run, an
    older checkpoint) leaves CUDA alone, and another device count is a warning."""
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
                    ptx: Optional[PretrainStream], extra: dict, d: Optional[Dist] = None, lora: bool = False,
                    critic_lora: bool = False) -> None:
    """Write ``path`` atomically (``.partial``, then renamed). Data-parallel: rank 0 writes the
    models, optimisers and its RNG states; every other rank adds ``rng_rank<r>.pt``.
    Sharded (``ppo.sharding=fsdp``, :mod:`rlhf.sharding`): the models are gathered to rank 0
    and written as the same full folders, and every rank writes its shard of the
    optimisers' states (``optim_rank<r>.pt``; ``trainer_state.pt`` then holds none). With
    ``lora`` (``ppo.lora_r`` > 0; never sharded) the policy is saved as its adapters
    (``policy_lora.safetensors``), and so is the critic with ``critic_lora``
    (``critic_lora.safetensors``, adapters and head)."""
    d = d or Dist()
    sharded = sharding.is_sharded(policy)
    tmp = path.with_name(path.name + ".partial")
    if d.is_main and tmp.exists():
        shutil.rmtree(tmp)
    if d.is_main:
        tmp.mkdir(parents=True)
    d.barrier(f"rank 0 creating {tmp}")
    if sharded:  # collectives: every rank takes part, rank 0 writes the full models
        sharding.save_full_hf(policy, tokenizer, tmp / "policy", d)
        if critic is not None:
            sharding.save_full_hf(critic, None, tmp / "critic", d)
        if value_head is not None:
            head_sd = sharding.full_state_dict(value_head, d)
            if d.is_main:
                save_file(head_sd, str(tmp / "value_head.safetensors"))
        torch.save({"opt": sharding.local_optimizer_state(opt),
                    "critic_opt": sharding.local_optimizer_state(critic_opt) if critic_opt else None},
                   tmp / f"optim_rank{d.rank}.pt")
    if not d.is_main:
        torch.save({"rng": _rng_state(), "ptx_rng": ptx.gen.get_state() if ptx else None},
                   tmp / f"rng_rank{d.rank}.pt")
    d.barrier(f"the ranks writing their RNG states into {tmp}")
    if not d.is_main:
        d.barrier(f"rank 0 writing and publishing {path}")  # rank 0 renames the directory
        return
    if sharded:
        pass  # the models were gathered and written above
    elif lora:  # the adapters (and a LoRA critic's head) only: the base models are the SFT policy and the RM
        save_file(trainable_state_dict(policy), str(tmp / "policy_lora.safetensors"))
    else:
        save_hf(policy, tokenizer, tmp / "policy")
    if sharded:
        pass
    elif critic is not None and lora and critic_lora:
        save_file(trainable_state_dict(critic), str(tmp / "critic_lora.safetensors"))
    elif critic is not None:
        save_hf(critic, None, tmp / "critic")
    if value_head is not None and not sharded:
        save_file(value_head.state_dict(), str(tmp / "value_head.safetensors"))
    state = {"opt": None if sharded else opt.state_dict(),
             "critic_opt": critic_opt.state_dict() if critic_opt and not sharded else None,
             "rng": _rng_state(), "ptx_rng": ptx.gen.get_state() if ptx else None}
    torch.save(state, tmp / "trainer_state.pt")
    atomic_write_json(tmp / "state.json", {"step": step, "controller": ctl.state_dict(), "world_size": d.world,
                                           "sharding": "fsdp" if sharded else "replicate", **extra})
    write_manifest(tmp)  # sizes and hashes, written last: a checkpoint without it is incomplete
    fsync_tree(tmp)  # every file and the directory on disk before the rename publishes them
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    fsync_dir(path.parent)
    d.barrier(f"rank 0 writing and publishing {path}")


def checkpoints(ckdir: Path) -> list[Path]:
    """Complete-looking checkpoints (``step_N`` with a state.json), newest first."""
    return sorted((p for p in ckdir.glob("step_*") if p.is_dir() and (p / "state.json").exists()), reverse=True)


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


def make_optimizer(params, lr: float) -> torch.optim.AdamW:
    """The one PPO optimiser (the policy with its value head, and the separate critic):
    AdamW, eps 1e-5, no weight decay, the fused kernel, stepped directly (``rlhf.optim``:
    torch's fused AdamW, bit for bit). A fresh start and a resume both build through here,
    so a resumed optimiser steps exactly as the uninterrupted one."""
    return optim.AdamW(params, lr=lr, eps=1e-5, weight_decay=0.0)


def kl_controller(pc):
    """β: Ziegler et al.'s adaptive controller (``ppo.adaptive_kl``) or a fixed value."""
    return AdaptiveKLController(pc.beta, pc.target_kl, pc.kl_horizon) if pc.adaptive_kl else FixedKLController(pc.beta)


@dataclass
class Learner:
    """What PPO trains: the policy (with its value head for ``ppo.critic=head``) or a
    separate critic (``ppo.critic=separate``), and their optimisers."""

    policy: torch.nn.Module
    opt: torch.optim.Optimizer
    critic: Optional[torch.nn.Module] = None
    critic_opt: Optional[torch.optim.Optimizer] = None
    value_head: Optional[torch.nn.Module] = None


def _load_trainable(model: torch.nn.Module, path: Path) -> None:
    """Load the trainable parameters a LoRA checkpoint saved (``trainable_state_dict``), all of them."""
    saved = load_file(str(path))
    own = dict(model.named_parameters())
    want = {n for n, p in own.items() if p.requires_grad}
    if set(saved) != want:
        raise ValueError(f"{path.name}: saved parameters do not match the model's trainable ones "
                         f"({len(set(saved) - want)} unexpected, {len(want - set(saved))} missing)")
    with torch.no_grad():
        for n, t in saved.items():
            own[n].copy_(t)


def build_learner(cfg: RunConfig, policy_path: str, critic_path: str, device,
                  value_head_file: Optional[str] = None, d: Optional[Dist] = None,
                  lora_dir: Optional[Path] = None, fresh_critic_head: bool = False) -> Learner:
    """The policy from ``policy_path`` and the critic from ``critic_path`` (a sequence
    classifier), or a value head (zero, or loaded from ``value_head_file``), with their
    optimisers over the parameters that train. A fresh start passes the SFT model and the
    reward model (with a reward from outside the run: the SFT model again, and
    ``fresh_critic_head`` zeroes the critic's new scalar head); a resume passes a
    checkpoint's folders, or with LoRA (``ppo.lora_r`` > 0) the same bases as a fresh start
    and the checkpoint as ``lora_dir``, whose adapters are loaded into the freshly injected
    ones. ``model.gradient_checkpointing`` applies to the policy and the critic. With
    ``ppo.sharding=fsdp`` under a launcher (``d``) each model is loaded on the CPU and
    sharded onto ``device`` (``rlhf.sharding``) before its optimiser is built."""
    pc = cfg.ppo
    fsdp = sharding.active(pc.sharding, d)
    load_to = None if fsdp else device  # sharded: full weights on the CPU only, shards on the device
    policy = load_causal_lm(policy_path, dtype=cfg.model.dtype, device=load_to,
                            attn_implementation=cfg.model.attn_implementation)
    set_gradient_checkpointing(policy, cfg.model.gradient_checkpointing)
    if pc.lora_r:
        add_lora(policy, pc.lora_r, pc.lora_alpha, pc.lora_target_modules, seed=stage_seed(cfg.seed, "ppo"))
        if lora_dir is not None:
            _load_trainable(policy, lora_dir / "policy_lora.safetensors")
    critic = critic_opt = value_head = None
    if pc.critic == "separate":
        critic = load_reward_model(critic_path, dtype=cfg.model.dtype, device=load_to,
                                   attn_implementation=cfg.model.attn_implementation)
        if fresh_critic_head:
            with torch.no_grad():
                for p in critic.score.parameters():
                    p.zero_()
        set_gradient_checkpointing(critic, cfg.model.gradient_checkpointing)
        if pc.critic_lora:
            add_lora(critic, pc.lora_r, pc.lora_alpha, pc.lora_target_modules, train_head=True,
                     seed=stage_seed(cfg.seed, "ppo") + 1)
            if lora_dir is not None:
                _load_trainable(critic, lora_dir / "critic_lora.safetensors")
    else:
        hidden = getattr(policy.config, "n_embd", None) or policy.config.hidden_size
        value_head = torch.nn.Linear(hidden, 1).to(load_to or "cpu")
        torch.nn.init.zeros_(value_head.weight)
        torch.nn.init.zeros_(value_head.bias)
        if value_head_file is not None:
            value_head.load_state_dict(load_file(value_head_file))
    if fsdp:
        sharding.shard_model(policy, device)
        if critic is not None:
            sharding.shard_classifier(critic, device)
        if value_head is not None:
            sharding.shard_model(value_head, device)
    if critic is not None:
        critic_opt = make_optimizer([p for p in critic.parameters() if p.requires_grad], pc.critic_lr)
    params = [p for p in policy.parameters() if p.requires_grad] + \
        (list(value_head.parameters()) if value_head is not None else [])
    return Learner(policy, make_optimizer(params, pc.lr), critic, critic_opt, value_head)


@dataclass
class Progress:
    """Where PPO stands: the next iteration, β's controller, the KL levels saved so far
    and the reward model's round (iterated RLHF)."""

    step: int
    ctl: object
    kl_saved: list
    rm_round: int = 0


def load_checkpoint(ck: Path, cfg: RunConfig, d: Dist, device, sft_path: Optional[str] = None,
                    rm_path: Optional[str] = None) -> tuple[Learner, Progress, dict]:
    """Everything resumable from ``ck`` (the learner with its optimisers' states, the
    progress, the trainer state with the RNG states), or an exception. With LoRA the base
    models come from ``sft_path`` and ``rm_path`` (a full-fine-tuned critic from ``ck``)."""
    st = read_json(ck / "state.json")
    if not isinstance(st, dict) or "step" not in st or "controller" not in st:
        raise ValueError("state.json is unreadable")
    if st.get("world_size", 1) != d.world:
        raise ConfigError(f"{ck} was written by {st.get('world_size', 1)} data-parallel processes, this run has "
                          f"{d.world}: resume with the same number, or --force to start PPO again")
    head = str(ck / "value_head.safetensors") if cfg.ppo.critic == "head" else None
    if st.get("sharding", "replicate") != ("fsdp" if sharding.active(cfg.ppo.sharding, d) else "replicate"):
        raise ConfigError(f"{ck} was written with ppo.sharding={st.get('sharding', 'replicate')}, this run has "
                          f"ppo.sharding={cfg.ppo.sharding} on {d.world} process(es): resume with the same, or "
                          f"--force to start PPO again")
    if cfg.ppo.lora_r:  # the bases of a fresh start, then the saved adapters (and a LoRA critic's head)
        outside = parse_reward_spec(cfg.ppo.reward).outside
        critic = (sft_path if outside else rm_path) if cfg.ppo.critic_lora else str(ck / "critic")
        learner = build_learner(cfg, sft_path, critic, device, value_head_file=head, d=d, lora_dir=ck)
    else:
        learner = build_learner(cfg, str(ck / "policy"), str(ck / "critic"), device, value_head_file=head, d=d)
    state = torch.load(ck / "trainer_state.pt", weights_only=True)
    if sharding.is_sharded(learner.policy):  # each rank its own shard of the optimisers' states
        local = torch.load(ck / f"optim_rank{d.rank}.pt", weights_only=True)
        sharding.load_local_optimizer_state(learner.opt, local["opt"])
        if learner.critic_opt is not None:
            sharding.load_local_optimizer_state(learner.critic_opt, local["critic_opt"])
    else:
        learner.opt.load_state_dict(state["opt"])
        if learner.critic_opt is not None:
            learner.critic_opt.load_state_dict(state["critic_opt"])
    if d.rank > 0:  # every rank has its own random streams
        state.update(torch.load(ck / f"rng_rank{d.rank}.pt", weights_only=True))
    ctl = kl_controller(cfg.ppo)
    ctl.load_state_dict(st["controller"])
    return learner, Progress(st["step"], ctl, st.get("kl_saved", []), st.get("rm_round", 0)), state


def start_or_resume(cfg: RunConfig, ckdir: Path, sft_path: str, rm_path: str, device,
                    d: Dist) -> tuple[Learner, Progress, Optional[dict], Optional[Path]]:
    """The one place PPO's trainable state comes from, each model loaded once: the newest
    checkpoint in ``ckdir`` that passes its manifest and loads (a damaged one is reported
    and the previous one tried), else a fresh start from the SFT policy and the reward
    model. Returns (learner, progress, trainer state or None, checkpoint or None)."""
    found = checkpoints(ckdir)
    for cand in found:
        problem = verify_manifest(cand) if (cand / MANIFEST).exists() else None  # older runs: no manifest
        if problem is None:
            try:
                return (*load_checkpoint(cand, cfg, d, device, sft_path, rm_path), cand)
            except ConfigError:
                raise
            except Exception as e:  # noqa: BLE001 - a torn file of any kind: try the previous checkpoint
                problem = f"cannot be loaded ({type(e).__name__}: {str(e)[:200]})"
        if d.is_main:
            print(f"[ppo] checkpoint {cand.name} is damaged: {problem}; falling back to the previous one", flush=True)
    if found and d.is_main:
        print("[ppo] no usable checkpoint: PPO starts again from step 0", flush=True)
    # a reward from outside the run (ppo.reward): the separate critic starts from the SFT policy
    outside = parse_reward_spec(cfg.ppo.reward).outside
    learner = build_learner(cfg, sft_path, sft_path if outside else rm_path, device, d=d, fresh_critic_head=outside)
    return learner, Progress(0, kl_controller(cfg.ppo), []), None, None


@dataclass
class PPOData:
    """What PPO reads: its prompts (with the toy world's prompt objects, for the gold
    reward), the ptx stream and the held-out pretraining text."""

    prompts: list[str]
    prompt_meta: Optional[list]
    ptx: Optional[PretrainStream]
    held_text: Optional[str]
    raw_prompts: dict = field(default_factory=dict)  # prompt text -> the prompt as read (before a chat template)


def load_ppo_data(cfg: RunConfig, tokenizer, world: Optional[World], d: Dist) -> PPOData:
    pc = cfg.ppo
    if pc.data != "world":
        # with a chat template, the templated conversations (rlhf.chat.prompt_text) are what is filtered and sampled
        raw = load_prompts(pc.data, split=pc.data_split, words=pc.prompt_words)
        texts = [prompt_text(tokenizer, p) for p in raw]
        raw_of = dict(zip(texts, raw))
        prompts = filter_prompts(texts, tokenizer, pc.max_prompt_tokens)
        prompt_meta = None
        print(f"[ppo] {len(prompts)} prompts of at most {pc.max_prompt_tokens} tokens from {pc.data}")
    else:
        prompt_meta = world.train_prompts()
        prompts = [prompt_text(tokenizer, p.text) for p in prompt_meta]
        raw_of = dict(zip(prompts, (p.text for p in prompt_meta)))
    if not prompts:
        raise ConfigError("ppo.data: no prompts")
    ptx = held_text = None
    if world is not None or pc.ptx_coef > 0 or pc.ptx_data != "world":
        train_docs, held_docs = pretrain_documents(cfg, world)
        if pc.ptx_coef > 0:
            ptx = PretrainStream(tokenizer, train_docs, pc.ptx_seq_len, stage_seed(cfg.seed, "ptx", d.rank))
        held_text = heldout_text(held_docs)
    return PPOData(prompts, prompt_meta, ptx, held_text, raw_of)


@dataclass
class Scored:
    """A rollout's scores: log π and log π_SFT of its tokens, V(s_t), rm_score and ppo_reward;
    ``values_graph``: V(s_t) with the critic's autograd graph, when the first update reuses
    this forward (:attr:`PPORun.reuse_values`)."""

    logp: torch.Tensor
    ref_logp: torch.Tensor
    values: torch.Tensor
    rm_score: torch.Tensor
    ppo_reward: torch.Tensor
    values_graph: Optional[torch.Tensor] = None


class PPORun:
    """One PPO stage: the models, the data, the progress, and the phases of an iteration
    (:meth:`step`). Built or resumed once, in :func:`run_ppo`."""

    def __init__(self, cfg: RunConfig, rd: RunDir, out: Path, sft_path: str, rm_path: str, tokenizer,
                 world: Optional[World], device, d: Dist):
        pc = self.pc = cfg.ppo
        self.cfg, self.rd, self.out, self.sft_path, self.tok, self.world, self.device, self.d = \
            cfg, rd, out, sft_path, tokenizer, world, device, d
        self.ckdir = out / "checkpoints"
        # every rollout: one gzip member per iteration (rank 0 here, rank r in samples.rank<r>.jsonl.gz)
        self.samples_path = out / ("samples.jsonl.gz" if d.rank == 0 else f"samples.rank{d.rank}.jsonl.gz")
        self.local_bs, self.local_mb = pc.batch_size // d.world, pc.minibatch_size // d.world
        spec = parse_reward_spec(pc.reward)
        if not spec.outside:  # an outside reward re-tokenises the text with its own tokenizer
            check_tokenizers_match(tokenizer, rm_path)
        self.data = load_ppo_data(cfg, tokenizer, world, d)
        self.amp = functools.partial(autocast, device, cfg.model.autocast)  # model.autocast, every forward
        # π_SFT: its own frozen copy (sharded with the policy under ppo.sharding=fsdp; the reward
        # model is not), or with LoRA none (the policy with its adapters disabled: self.reference())
        fsdp = sharding.active(pc.sharding, d)
        self.ref = None if pc.lora_r else load_causal_lm(
            sft_path, dtype=cfg.model.dtype, device=None if fsdp else device,
            attn_implementation=cfg.model.attn_implementation).eval().requires_grad_(False)
        if fsdp and self.ref is not None:
            sharding.shard_model(self.ref, device)
        self.learner, self.progress, state, ck = start_or_resume(cfg, self.ckdir, sft_path, rm_path, device, d)
        self.policy = self.learner.policy
        r = self.progress.rm_round
        self.reward: Optional[RewardFn] = None  # ppo.reward from outside the run (rlhf/rewards.py)
        if spec.outside:
            self.rm = None
            self.reward = load_reward(spec, rd.path, pc.reward_label, pc.reward_input, cfg.model.dtype, device,
                                      cfg.classifier.max_length if spec.kind == "classifier" else cfg.rm.max_length)
            if isinstance(self.reward, RMReward):  # its own tokenizer and template: the samples re-written for it
                self.reward.for_policy(tokenizer, self.data.raw_prompts)
            if d.is_main:
                print(f"[ppo] reward: {spec}" + (f" ({pc.reward_input}, label {pc.reward_label or 'its only logit'})"
                                                 if spec.kind in ("hf", "classifier") else ""), flush=True)
        else:
            self.rm = load_reward_model(rm_path if r == 0 else str(out / f"rm_round{r}"), dtype=cfg.model.dtype,
                                        device=device, attn_implementation=cfg.model.attn_implementation
                                        ).eval().requires_grad_(False)
            if self.rm.config.vocab_size != self.policy.config.vocab_size:
                raise ConfigError(f"reward model vocab {self.rm.config.vocab_size} != policy vocab "
                                  f"{self.policy.config.vocab_size}")
        if state is not None:
            _set_rng_state(state["rng"])
            if self.data.ptx is not None and state["ptx_rng"] is not None:
                self.data.ptx.gen.set_state(state["ptx_rng"])
        self.start_logs(ck)
        self.rm_len = rm_max_length(self.rm, cfg.rm.max_length) if self.rm is not None else cfg.rm.max_length
        n_updates = pc.epochs * (pc.batch_size // pc.minibatch_size)
        self.ptx_per_update = max(1, (pc.ptx_ratio * self.local_bs) // n_updates) if self.data.ptx else 0
        self.steps_per_round = math.ceil(pc.steps / pc.rounds)
        self.t0, self.last_status, self.last_row = time.time(), -1e9, {}
        # ppo.parallel_critic: the critic's updates on a thread of their own (one process, >= 2 threads)
        self.critic_thread = (CriticThread(torch.get_num_threads()) if pc.parallel_critic and self.learner.critic is not None
                              and not d.active and device.type == "cpu" and torch.get_num_threads() >= 2 else None)
        # One minibatch per epoch: the separate critic's rollout forward (the old values) is the
        # forward of its first update, whose weights it shares; it keeps its graph for that
        # update instead of running twice (not sharded: FSDP regathers per forward).
        self.reuse_values = self.learner.critic is not None and self.local_mb == self.local_bs and not fsdp
        self.bar = tqdm(range(self.progress.step, pc.steps), desc="ppo", initial=self.progress.step, total=pc.steps,
                        mininterval=2.0, disable=True if not d.is_main else None)

    @contextlib.contextmanager
    def reference(self):
        """The frozen SFT policy π_SFT inside the block: its own copy, or with LoRA
        (``ppo.lora_r`` > 0) the policy itself with its adapters disabled."""
        if self.ref is not None:
            yield self.ref
        else:
            with adapters_disabled(self.policy):
                yield self.policy

    def start_logs(self, ck: Optional[Path]) -> None:
        """Resumed: drop what was logged after the checkpoint (it is logged again); fresh: start empty."""
        out, start = self.out, self.progress.step
        if ck is not None:
            if self.d.is_main:
                rows = [r for r in read_jsonl(out / "metrics.jsonl") if r["step"] < start]
                atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
                print(f"[ppo] resumed from {ck.name} (step {start})")
            truncate_jsonl_gz(self.samples_path, lambda r: r["step"] < start)  # each rank its own file
            if self.cfg.ppo.rounds == 1:  # rounds > 1: the RM rounds' own steps would be purged too
                tracking.resume_from(start)  # TensorBoard hides the earlier attempt's events from there on
            return
        tracking.fresh_start()  # no usable checkpoint: the tracker's earlier-attempt files go aside
        if (out / "metrics.jsonl").exists() and self.d.is_main:
            (out / "metrics.jsonl").unlink()
        if self.samples_path.exists():
            self.samples_path.unlink()

    # ------------------------------------------------------------------------- one iteration
    def step(self, step: int) -> None:
        """One PPO iteration: rollout -> minibatch orders -> score -> advantages -> update epochs
        -> log and checkpoint."""
        self.next_reward_model(step)
        idx, s = self.rollout(step)
        orders = self.minibatch_orders()
        sc = self.score(s, orders[0])
        batch, kl = self.advantages(step, s, sc)
        held_lm = self.heldout_loss(step)  # of the policy that made this batch, before its update
        stats = self.update_epochs(step, batch, orders, sc.values_graph)
        row = self.log(step, idx, s, sc, kl, stats, held_lm)
        self.save_kl_levels(step, row["kl"])
        self.checkpoint(step)

    def next_reward_model(self, step: int) -> None:
        """Iterated RLHF (``ppo.rounds``): at the start of each later round the labeler ranks
        K samples of the current policy per prompt and the reward model is retrained on all
        comparisons so far, by the reward stage itself (``rlhf.reward.run_reward_stage``),
        into ``ppo.tmp/rm_round<r>`` (a checkpoint may point at it)."""
        this_round = step // self.steps_per_round
        if this_round <= self.progress.rm_round:
            return
        from .reward import run_reward_stage
        from .sft import load_demonstrations
        name = f"{self.out.name}/rm_round{this_round}"
        if not self.rd.stage_done(name):
            summary = run_reward_stage(self.cfg, self.rd, self.sft_path, self.tok, self.world, self.device,
                                       load_demonstrations(self.cfg, self.world), round_=this_round,
                                       policy=self.policy, out_name=name)
            self.rd.finish_stage(name, summary)
        self.rm = load_reward_model(str(self.rd.stage(name)), dtype=self.cfg.model.dtype, device=self.device,
                                    attn_implementation=self.cfg.model.attn_implementation).eval().requires_grad_(False)
        self.progress.rm_round = this_round

    def rollout(self, step: int):
        """This rank's share of the iteration's prompts (drawn from (seed, step) only) and one
        sampled response each."""
        rng = random.Random(self.cfg.seed * 1_000_003 + step)
        idx = shard([rng.randrange(len(self.data.prompts)) for _ in range(self.pc.batch_size)], self.d)
        self.policy.eval()
        with sharding.gathered(self.policy), self.amp():  # sharded: full weights for the decode loop
            s = rollout(self.policy, self.tok, [self.data.prompts[i] for i in idx], self.pc,
                        rollout_seed(self.cfg.seed, step, self.d.rank))
        return idx, s

    def minibatch_orders(self) -> list[torch.Tensor]:
        """The row order of each update epoch (``torch.randperm`` of the local batch, from the
        global RNG, which nothing else draws from between here and the update: the same
        orders as drawn epoch by epoch), drawn before scoring for :attr:`reuse_values`."""
        return [torch.randperm(self.local_bs) for _ in range(self.pc.epochs)]

    @torch.no_grad()
    def score(self, s, first_order: Optional[torch.Tensor] = None) -> Scored:
        """log π and log π_SFT of the sampled tokens, V(s_t), rm_score and ppo_reward, under
        ``model.autocast``. log π comes from the sampling pass (no policy forward) unless the
        value head needs one or autocast is on: then from a forward pass, the precision path
        of the update's (the sampler's cached low-precision steps round differently). With
        :attr:`reuse_values` the critic's forward runs on the rows in the first update's order
        (``first_order``) and keeps its graph for that update: the same numbers as a second
        forward there, bit for bit (its gradient sums the rows in the same order)."""
        dev, pc, lr = self.device, self.pc, self.learner
        pi, pm, ri, rmask = (s.prompt_ids.to(dev), s.prompt_mask.to(dev), s.response_ids.to(dev),
                             s.response_mask.to(dev))
        with self.amp():
            if lr.value_head is None and s.logprobs is not None and self.cfg.model.autocast == "none":
                logp, v_head = s.logprobs.to(dev), None
            else:
                logp, _, v_head = policy_forward(self.policy, pi, pm, ri, rmask, pc.temperature, lr.value_head)
            with self.reference() as ref:
                ref_logp, _, _ = policy_forward(ref, pi, pm, ri, rmask, pc.temperature)
            rm_score, ppo_reward = (x.to(dev) for x in score_rollout(self.reward or self.rm, self.tok, s, self.rm_len,
                                                                     pc.no_eos_penalty))
            graph = None
            if lr.value_head is not None:
                values = v_head
            elif self.reuse_values:
                o = first_order.to(dev)
                lr.critic.train()  # as in the update (dropout is 0 either way)
                with torch.enable_grad():
                    graph = critic_values(lr.critic, pi[o], pm[o], ri[o], rmask[o])
                values = torch.empty_like(graph, requires_grad=False)
                values[o] = graph.detach()  # back to the rollout's order
            else:
                lr.critic.eval()
                values = critic_values(lr.critic, pi, pm, ri, rmask)
        return Scored(logp, ref_logp, values, rm_score, ppo_reward, graph)

    def advantages(self, step: int, s, sc: Scored) -> tuple[Batch, torch.Tensor]:
        """Per-token KL-penalised rewards, GAE and whitening (:func:`compute_advantages`);
        returns the batch to learn from and the per-token KL."""
        maskf = s.response_mask.to(self.device).float()
        adv, ret, kl = compute_advantages(sc.ppo_reward, sc.logp, sc.ref_logp, sc.values, maskf,
                                          self.progress.ctl.value, self.pc, self.d)
        check_finite(step, {"reward": sc.ppo_reward, "kl": kl.sum(1), "values": sc.values, "advantages": adv}, self.d)
        dev = self.device
        batch = Batch(s.prompt_ids.to(dev), s.prompt_mask.to(dev), s.response_ids.to(dev), maskf, sc.logp,
                      sc.ref_logp, sc.values * maskf, adv, ret)
        return batch, kl

    def heldout_loss(self, step: int) -> Optional[float]:
        if self.data.held_text is None or step % self.pc.checkpoint_every != 0:
            return None
        with sharding.gathered(self.policy):  # sharded: every rank gathers, rank 0 computes
            return heldout_nll(self.policy, self.tok, self.data.held_text)["loss"] if self.d.is_main else None

    def update_epochs(self, step: int, batch: Batch, orders: list[torch.Tensor],
                      values_graph: Optional[torch.Tensor] = None) -> dict[str, float]:
        """``ppo.epochs`` passes over minibatches, the rows of epoch e in ``orders[e]``
        (:meth:`minibatch_orders`), one :func:`ppo_update` each (with a fresh ptx batch when
        γ > 0); returns the mean of each update statistic. ``values_graph``
        (:attr:`reuse_values`): the critic's rollout forward on the first minibatch, which is
        the whole batch, used as its first update's forward."""
        pc, lr, ptx = self.pc, self.learner, self.data.ptx
        self.policy.train()  # dropout is 0; train mode turns model.gradient_checkpointing on
        if lr.critic is not None:
            lr.critic.train()
        stats: dict[str, list[float]] = {k: [] for k in ("pg_loss", "vf_loss", "clipfrac", "approx_kl", "entropy",
                                                         "ptx_loss", "vf_clipfrac")}
        for epoch, perm in enumerate(orders):
            for i in range(0, self.local_bs, self.local_mb):
                mb = batch.index(perm[i:i + self.local_mb])
                ptx_x = ptx.batch(self.ptx_per_update).to(self.device) if ptx is not None else None
                first = epoch == 0 and i == 0
                st = ppo_update(self.policy, mb, lr.opt, pc, lr.value_head, lr.critic, lr.critic_opt, ptx_x, self.d,
                                on_policy=first, amp=self.amp, free_grads=True, critic_thread=self.critic_thread,
                                critic_v=values_graph if first else None)
                for k, v in st.items():
                    stats[k].append(v)
                if self.d.active or not all(map(math.isfinite, st.values())):  # (data-parallel: every rank checks)
                    check_finite(step, {k: torch.tensor(v) for k, v in st.items()}, self.d)
        return {k: float(np.mean(v)) if v else 0.0 for k, v in stats.items()}

    def log(self, step: int, idx: list[int], s, sc: Scored, kl: torch.Tensor, stats: dict,
            held_lm: Optional[float]) -> dict:
        """The iteration's samples (``samples.jsonl.gz``) and its metrics row (means over all
        ranks' rollouts); β's controller sees the global mean KL."""
        d, world, meta = self.d, self.world, self.data.prompt_meta
        kl_rows = kl.sum(1)
        means = {"ppo_reward": sc.ppo_reward.mean().item(), "rm_score": sc.rm_score.mean().item(),
                 "kl": kl_rows.mean().item(), "response_len": s.response_mask.sum(1).float().mean().item(),
                 "ended": s.ended.float().mean().item(), **stats}
        golds = None
        if world is not None and meta is not None:
            golds = [world.gold_reward(meta[i], t) for i, t in zip(idx, s.texts)]
            means["gold_reward"] = float(np.mean(golds))
        rows = [{"step": step, "rank": d.rank, "prompt": pr, "response": t, "rm_score": float(a), "ppo_reward": float(b),
                 "kl": float(k), **({"gold_reward": float(golds[j])} if golds is not None else {})}
                for j, (pr, t, a, b, k) in enumerate(zip(s.prompts, s.texts, sc.rm_score.tolist(),
                                                          sc.ppo_reward.tolist(), kl_rows.tolist()))]
        append_jsonl_gz(self.samples_path, rows)  # one gzip member per iteration
        means = d.mean_dict(means)  # over all ranks' rollouts (equal shares)
        ctl = self.progress.ctl
        row = {"step": step, "round": self.progress.rm_round, **means, "beta": ctl.value,
               "time_s": time.time() - self.t0}
        ctl.update(means["kl"], self.pc.batch_size)
        if held_lm is not None:
            row["heldout_lm_loss"] = held_lm
        if d.is_main:
            tracking.metrics(self.out / "metrics.jsonl", row, fsync=False)  # fsynced at each checkpoint
            tracking.samples(step, rows)  # every logging.sample_every-th iteration
        if time.time() - self.last_status >= 5.0 or step + 1 == self.pc.steps:  # an fsync'd write costs ~8 ms
            self.rd.set_status("running", stage="ppo", step=step + 1, total=self.pc.steps)
            self.last_status = time.time()
        self.last_row = row
        shown = {"r": row["ppo_reward"], "kl": row["kl"], "gold": row.get("gold_reward")}
        self.bar.set_postfix({k: f"{v:.2f}" for k, v in shown.items() if v is not None})
        return row

    def save_kl_levels(self, step: int, mean_kl: float) -> None:
        """The policy, the first time the KL passes each of ``ppo.kl_levels``."""
        for level in self.pc.kl_levels:
            if mean_kl >= level and level not in self.progress.kl_saved:
                where = self.out / "kl" / f"kl_{level:g}"
                if sharding.is_sharded(self.policy):  # every rank gathers, rank 0 writes
                    sharding.save_full_hf(self.policy, self.tok, where, self.d)
                if self.d.is_main:
                    if not sharding.is_sharded(self.policy):
                        save_hf(self.policy, self.tok, where)
                    atomic_write_json(where / "kl.json", {"level": level, "kl": mean_kl, "step": step})
                self.progress.kl_saved.append(level)

    def checkpoint(self, step: int) -> None:
        """Every ``ppo.checkpoint_every`` iterations, and when a stop was requested on any rank
        (then raise :class:`stop.StopRequested` once it is written)."""
        d, lr = self.d, self.learner
        self.progress.step = step + 1
        reason = stop.requested()
        if d.any(reason is not None):  # all ranks stop at the same iteration
            reason = reason or "stop requested on another rank"
        if step + 1 >= self.pc.steps or ((step + 1) % self.pc.checkpoint_every and not reason):
            return
        d.check_same_weights(list(self.policy.parameters()), f"PPO step {step + 1}")
        if d.is_main:
            fsync_file(self.out / "metrics.jsonl")
        if self.samples_path.exists():
            fsync_file(self.samples_path)
        ck = self.ckdir / f"step_{step + 1:06d}"
        save_checkpoint(ck, self.policy, self.tok, lr.critic, lr.value_head, lr.opt, lr.critic_opt, self.progress.ctl,
                        step + 1, self.data.ptx, {"kl_saved": self.progress.kl_saved,
                                                  "rm_round": self.progress.rm_round}, d,
                        lora=self.pc.lora_r > 0, critic_lora=self.pc.critic_lora)
        if d.is_main:
            for old in sorted(self.ckdir.glob("step_*"))[:-2]:
                shutil.rmtree(old, ignore_errors=True)
        if reason:
            self.bar.close()
            raise stop.StopRequested(reason, "ppo", step + 1, str(ck))

    # ------------------------------------------------------------------------- the end
    def finish(self) -> dict:
        """Save the final policy (and critic), summarise, and (toy world) the before/after line."""
        self.bar.close()
        self.policy.eval()
        out, lr = self.out, self.learner
        if sharding.is_sharded(self.policy):  # every rank gathers, rank 0 writes the full models
            sharding.save_full_hf(self.policy, self.tok, out, self.d)
            if lr.value_head is not None:
                head_sd = sharding.full_state_dict(lr.value_head, self.d)
                if self.d.is_main:
                    save_file(head_sd, str(out / "value_head.safetensors"))
            if lr.critic is not None:
                sharding.save_full_hf(lr.critic, None, out / "critic", self.d)
            with sharding.gathered(self.policy, self.ref):  # rank 0 alone samples and scores below
                return self._finish_main() if self.d.is_main else {}
        if not self.d.is_main:
            return {}
        save_hf(self.policy, self.tok, out)
        if lr.value_head is not None:
            save_file(lr.value_head.state_dict(), str(out / "value_head.safetensors"))
        if lr.critic is not None:
            save_hf(lr.critic, None, out / "critic")
        return self._finish_main()

    def _finish_main(self) -> dict:
        """Rank 0, the models saved: the held-out loss, the newest checkpoint kept, the summary."""
        out, held_text = self.out, self.data.held_text
        final_held = heldout_nll(self.policy, self.tok, held_text)["loss"] if held_text is not None else None
        keep = checkpoints(self.ckdir)[:1]  # the newest stays: raising ppo.steps continues from it (rlhf/pipeline.py)
        for old in (p for p in self.ckdir.glob("*") if p not in keep):
            shutil.rmtree(old, ignore_errors=True)
        summary = summarise(read_jsonl(out / "metrics.jsonl"), self.pc.steps, self.last_row, time.time() - self.t0,
                            self.progress.kl_saved, final_held)
        if self.world is not None and self.pc.data == "world":  # the toy world's before/after on held-out prompts
            from .probes import before_after_line, heldout_summary
            seed = stage_seed(self.cfg.seed, "heldout_probe")
            mx = self.pc.max_new_tokens
            with self.reference() as ref:
                summary["heldout_sft"], rows_sft = heldout_summary(self.world, self.tok, ref, mx, seed=seed)
            summary["heldout_ppo"], rows_ppo = heldout_summary(self.world, self.tok, self.policy, mx, seed=seed)
            write_jsonl_gz(out / "heldout_samples.jsonl.gz", [{"policy": "sft", **r} for r in rows_sft] +
                           [{"policy": "ppo", **r} for r in rows_ppo])
            print("[ppo] " + before_after_line(summary["heldout_sft"], summary["heldout_ppo"]))
        return summary


def summarise(rows: list[dict], steps: int, last: dict, time_s: float, kl_saved: list,
              final_held: Optional[float]) -> dict:
    """The stage summary: first and last rows, ``final_*`` = mean of the last 10% of
    iterations, the held-out pretraining loss before and after; prints one line."""
    summary = {"steps": steps, "final": last, "time_s": time_s, "kl_checkpoints": sorted(kl_saved),
               "first": rows[0] if rows else {}}
    if rows:
        tail = rows[-max(1, len(rows) // 10):]
        for k in ("ppo_reward", "rm_score", "gold_reward", "kl"):
            if k in tail[0]:
                summary[f"final_{k}"] = float(np.mean([r[k] for r in tail]))
        if rows[0]["step"] == 0 and "heldout_lm_loss" in rows[0]:
            summary["heldout_lm_loss_sft"] = rows[0]["heldout_lm_loss"]
    if final_held is not None:
        summary["heldout_lm_loss_final"] = final_held
    print(f"[ppo] {steps} iterations in {time_s:.1f}s: " + ", ".join(_summary_parts(summary)))
    return summary


def _summary_parts(summary: dict) -> list[str]:
    """The summary line's figures that exist: a real-model run has no gold reward and may
    have no held-out pretraining loss, and prints neither (no "nan")."""
    first, parts = summary["first"], []
    for name, key in (("rm_score", "rm_score"), ("gold", "gold_reward")):
        if key in first and f"final_{key}" in summary:
            parts.append(f"{name} {first[key]:.3f} -> {summary[f'final_{key}']:.3f}")
    if "final_kl" in summary:
        parts.append(f"KL {summary['final_kl']:.2f}")
    if "heldout_lm_loss_sft" in summary and "heldout_lm_loss_final" in summary:
        parts.append(f"held-out pretraining loss {summary['heldout_lm_loss_sft']:.3f} -> "
                     f"{summary['heldout_lm_loss_final']:.3f}")
    return parts


def compute_advantages(score: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, values: torch.Tensor,
                       mask: torch.Tensor, beta: float, pc, d: Optional[Dist] = None):
    """Per-token rewards -β(log π - log π_SFT) with the score on the last token
    (``losses.kl_penalised_rewards``), optional reward whitening (``ppo.whiten_rewards``),
    GAE (``ppo.gamma``, ``ppo.lam``) and advantage whitening (``ppo.whiten_advantages``).
    Data-parallel (``d``), each rank holds its share of the batch and both whitenings use
    the statistics of the global batch, as one process would. Returns (advantages,
    returns, per-token KL)."""
    reduce = d.all_sum if d is not None and d.active else None
    rewards, kl = kl_penalised_rewards(score, logp, ref_logp, mask, beta)
    if pc.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False, reduce=reduce)
    adv, ret = gae(rewards, values * mask, mask, pc.gamma, pc.lam)
    if pc.whiten_advantages:
        adv = masked_whiten(adv, mask, reduce=reduce)
    return adv, ret, kl


def run_ppo(cfg: RunConfig, rd: RunDir, sft_path: str, rm_path: str, tokenizer, world: Optional[World],
            device: torch.device, d: Optional[Dist] = None) -> dict:
    """Stage 4 (see the module docstring): build or resume once, then ``ppo.steps`` iterations
    of :meth:`PPORun.step`; returns the stage summary (rank 0; ``{}`` on other ranks)."""
    pc = cfg.ppo
    d = d or Dist()  # data-parallel ranks (rlhf/dist.py); one process by default
    if pc.batch_size % d.world or pc.minibatch_size % d.world:
        raise ConfigError(f"ppo.batch_size ({pc.batch_size}) and ppo.minibatch_size ({pc.minibatch_size}) are "
                          f"global and must divide by the number of data-parallel processes ({d.world})")
    out = rd.begin_stage("ppo", keep_partial=True)
    d.barrier("rank 0 opening the PPO stage directory")
    rank_seed = stage_seed(cfg.seed, "ppo", d.rank)  # each rank samples its own responses
    torch.manual_seed(rank_seed)
    random.seed(rank_seed)
    np.random.seed(rank_seed)
    run = PPORun(cfg, rd, out, sft_path, rm_path, tokenizer, world, device, d)
    try:
        with long_lived():  # the models and libraries stay for the whole stage: the collector skips them meanwhile
            with stop.listening():  # SIGTERM/USR2: checkpoint at the end of this iteration (rlhf/stop.py)
                for step in run.bar:
                    run.step(step)
            return run.finish()
    finally:
        if run.critic_thread is not None:
            run.critic_thread.close()


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
    all_logits, last = lm_forward(model, ids, mask, hidden=value_head is not None)
    P, T = mb.prompt_ids.shape[1], mb.response_ids.shape[1]
    logits = all_logits[:B, P - 1:P - 1 + T]
    logp = logprobs_from_logits(logits, mb.response_ids, temperature)
    values = None
    if value_head is not None:
        with torch.autocast(ids.device.type, enabled=False):
            values = value_head(last[:B, P - 1:P - 1 + T].float()).squeeze(-1)
    return logp, logits, values, lm_loss(all_logits[B:, :L], ptx_x)


def ppo_update(policy, mb: Batch, opt, pc, value_head=None, critic=None, critic_opt=None,
               ptx_x: Optional[torch.Tensor] = None, d: Optional[Dist] = None,
               on_policy: bool = False, amp=None, free_grads: bool = False,
               critic_thread: Optional["CriticThread"] = None,
               critic_v: Optional[torch.Tensor] = None) -> dict[str, float]:
    """One gradient step on one minibatch: L = L_clip + c_v L_V (value head) + γ L_LM (ptx),
    and with a separate ``critic`` its own step on L_V (:func:`critic_update`): after the
    policy's, or with a ``critic_thread`` (``ppo.parallel_critic``) alongside it.
    With γ > 0 the ptx batch shares the policy's forward pass (see policy_ptx_forward).
    ``on_policy``: the first update of an iteration, before any step, so π_old = π: the old
    log-probs are this forward's own (detached) and the ratio is exactly 1, whatever float
    rounding separates them from the sampling pass's log-probs in ``mb.logprobs``.

    Data-parallel (``d``): each rank holds its share of the minibatch. Its token means (the
    surrogate, the value loss and the logged token statistics) are weighted by its share of
    the minibatch's response tokens (``Dist.token_share``) and the gradients are then
    averaged over ranks before clipping and the step, so every rank steps with the gradient
    of the global minibatch's loss, as one process would; the ptx batches are the same size
    on every rank, so their mean needs no weight. The returned statistics, averaged over
    ranks, are the global minibatch's.

    ``amp``: a function returning the forward passes' context (``model.autocast``); the
    log-probs, values and losses are float32 and the backward pass runs outside it.
    ``free_grads`` (run_ppo): each optimiser's gradients are freed right after its step, so
    no model's gradients are held through the next rollout, nor (serial critic) through the
    other model's backward (one full set of fp32 gradients less at the peak); off, they stay
    for the caller to read.

    ``critic_v``: the critic's values of this minibatch with their graph, from a forward at
    the critic's current weights (the rollout's, :attr:`PPORun.reuse_values`), used instead of
    another forward; the serial critic then steps first, so that graph is not held through
    the policy's update (the two updates share nothing: the order changes no number)."""
    d = d or Dist()
    w = d.token_share(mb.response_mask)
    if critic is None:
        return policy_update(policy, mb, opt, pc, w, value_head, ptx_x, d, on_policy, amp, free_grads)
    if critic_thread is None:
        if critic_v is not None:
            crit = critic_update(critic, mb, critic_opt, pc, w, d, amp, free_grads, critic_v)
            return {**policy_update(policy, mb, opt, pc, w, value_head, ptx_x, d, on_policy, amp, free_grads), **crit}
        out = policy_update(policy, mb, opt, pc, w, value_head, ptx_x, d, on_policy, amp, free_grads)
        return {**out, **critic_update(critic, mb, critic_opt, pc, w, d, amp, free_grads)}
    with critic_thread.alongside(critic_update, critic, mb, critic_opt, pc, w, d, amp, free_grads,
                                 critic_v) as critic_result:
        out = policy_update(policy, mb, opt, pc, w, value_head, ptx_x, d, on_policy, amp, free_grads)
        return {**out, **critic_result()}


def policy_update(policy, mb: Batch, opt, pc, w: float, value_head=None, ptx_x: Optional[torch.Tensor] = None,
                  d: Optional[Dist] = None, on_policy: bool = False, amp=None,
                  free_grads: bool = False) -> dict[str, float]:
    """The policy's gradient step of :func:`ppo_update` (with a value head, the head's too),
    its token means weighted by this rank's token share ``w``; returns its statistics."""
    d = d or Dist()
    amp = amp or contextlib.nullcontext
    use_ptx = ptx_x is not None and pc.ptx_coef > 0
    with amp():
        if use_ptx:
            logp, logits, v, ptx_loss = policy_ptx_forward(policy, mb, ptx_x, pc.temperature, value_head)
        else:
            logp, logits, v = policy_forward(policy, mb.prompt_ids, mb.prompt_mask, mb.response_ids,
                                             mb.response_mask, pc.temperature, value_head)
    old = logp.detach() if on_policy else mb.logprobs
    pg_loss, st = ppo_clip_loss(logp, old, mb.advantages, mb.response_mask, pc.clip_eps)
    loss = w * pg_loss
    out = {"pg_loss": w * pg_loss.item(), "clipfrac": w * float(st["clipfrac"]),
           "approx_kl": w * float(st["approx_kl"])}
    with torch.no_grad():
        out["entropy"] = w * float(masked_mean(entropy_from_logits(logits, pc.temperature), mb.response_mask))
    del logits
    if value_head is not None:
        vf_loss, vf_frac = value_loss(v, mb.values, mb.returns, mb.response_mask, pc.value_clip)
        loss = loss + pc.vf_coef * w * vf_loss
        out["vf_loss"], out["vf_clipfrac"] = w * vf_loss.item(), w * float(vf_frac)
    if use_ptx:
        loss = loss + pc.ptx_coef * ptx_loss
        out["ptx_loss"] = ptx_loss.item()
    optimizer_step(loss, opt, pc, d, free_grads)
    return out


def critic_update(critic, mb: Batch, critic_opt, pc, w: float = 1.0, d: Optional[Dist] = None, amp=None,
                  free_grads: bool = False, v: Optional[torch.Tensor] = None) -> dict[str, float]:
    """The separate critic's gradient step on one minibatch: the clipped value loss
    (``losses.value_loss``) weighted by this rank's token share ``w``, gradients averaged over
    ranks, clipped (``ppo.grad_clip``), one step of ``critic_opt``; returns its statistics.
    ``v``: the minibatch's values with their graph, at the critic's current weights (no
    forward here; see :func:`ppo_update`)."""
    d = d or Dist()
    amp = amp or contextlib.nullcontext
    if v is None:
        with amp():
            v = critic_values(critic, mb.prompt_ids, mb.prompt_mask, mb.response_ids, mb.response_mask)
    vf_loss, vf_frac = value_loss(v, mb.values, mb.returns, mb.response_mask, pc.value_clip)
    optimizer_step(w * vf_loss, critic_opt, pc, d, free_grads)
    return {"vf_loss": w * vf_loss.item(), "vf_clipfrac": w * float(vf_frac)}


def optimizer_step(loss: torch.Tensor, opt, pc, d: Dist, free_grads: bool = False) -> None:
    """One model's step on ``loss``: backward, gradients averaged over ranks (``d``), their
    norm clipped to ``ppo.grad_clip`` (0: none), ``opt``'s step; with ``free_grads`` the
    gradients are freed after it (see :func:`ppo_update`)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for g in opt.param_groups for p in g["params"]]
    d.average_gradients(params)
    if pc.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, pc.grad_clip)
    opt.step()
    if free_grads:
        opt.zero_grad(set_to_none=True)


class CriticThread(SideThread):
    """``ppo.parallel_critic``: the separate critic's update (:func:`critic_update`) on a
    thread of its own (``rlhf/threads.py``) while the policy's runs on the calling thread, the
    ``threads`` intra-op threads split between them (the critic ``threads // 2``, the policy
    the rest). The two models share no parameter, gradient or optimiser state (both read the
    minibatch). Both models' activations and gradients are held at once. One process only:
    ranks must issue their collectives in one order.

    Nothing in either update draws from the global RNG (dropout is 0; the minibatch order and
    the ptx batch are drawn before). With ``model.gradient_checkpointing`` both threads'
    recomputed forwards save and restore the global RNG state, which is the same state
    throughout."""

    def __init__(self, threads: int):
        super().__init__(threads, name="ppo-critic")
        self.critic_threads, self.policy_threads = self.side_threads, self.main_threads


def check_finite(step: int, values: dict[str, torch.Tensor], d: Optional[Dist] = None) -> None:
    """Raise Diverged on NaN/inf; data-parallel, every rank raises when any rank has one (so
    no rank is left waiting in a collective and rank 0 records the divergence)."""
    bad = {k: v.detach().float().flatten()[~torch.isfinite(v.detach().float().flatten())][:5].tolist()
           for k, v in values.items() if not torch.isfinite(v.detach().float()).all()}
    if d is not None and d.any(bool(bad)) and not bad:
        raise Diverged(f"non-finite values on another rank at PPO step {step}", step=step,
                       values={"other_rank": ["nan"]})
    if bad:
        raise Diverged(f"non-finite values at PPO step {step}: {bad}", step=step,
                       values={k: [str(x) for x in v] for k, v in bad.items()})


load_prompt_file = load_prompts  # the name eval/ imports; one loader: rlhf/data.py
