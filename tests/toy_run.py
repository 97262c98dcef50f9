"""A tiny toy-world run directory for tests and benches (real components, untrained weights).
A test fixture: it lives in tests/, outside the installed packages.

Layout as rlhf/rundir.py describes: world/ (world.json, tokenizer/), pretrain/, sft/,
rm/, ppo/ and ppo/kl/kl_X/ (the SFT weights plus growing noise, so KL grows with X).
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlhf.config import ModelConfig, RunConfig, WorldConfig, dump_yaml
from rlhf.models import save_hf, scratch_model
from rlhf.rundir import atomic_write_text
from rlhf.tokenizer import save_tokenizer, train_world_tokenizer
from rlhf.world import World


def tiny_world(seed: int = 0) -> World:
    return World(WorldConfig(seed=seed, n_entities=20, corpus_docs=200))


def make_toy_run(directory: str | Path, seed: int = 0, kl_levels=(0.5, 2.0), n_layer: int = 2,
                 n_embd: int = 64) -> Path:
    from transformers import GPT2ForSequenceClassification

    d = Path(directory)
    torch.manual_seed(seed)
    world = tiny_world(seed)
    world.save(d / "world")
    tok = train_world_tokenizer(world)
    save_tokenizer(tok, d / "world" / "tokenizer")
    mc = ModelConfig(n_layer=n_layer, n_embd=n_embd, n_head=2, n_positions=128)
    cfg = RunConfig(name=d.name, world=world.cfg, model=mc)
    atomic_write_text(d / "config.yaml", dump_yaml(cfg))
    base = scratch_model(mc, len(tok), tok.pad_token_id, tok.eos_token_id)
    save_hf(base, tok, d / "pretrain")
    sft = scratch_model(mc, len(tok), tok.pad_token_id, tok.eos_token_id)
    sft.load_state_dict(base.state_dict())
    with torch.no_grad():
        for p in sft.parameters():
            p.add_(0.02 * torch.randn_like(p))
    save_hf(sft, tok, d / "sft")
    for i, lvl in enumerate(kl_levels):
        pol = scratch_model(mc, len(tok), tok.pad_token_id, tok.eos_token_id)
        pol.load_state_dict(sft.state_dict())
        with torch.no_grad():
            for p in pol.parameters():
                p.add_(0.05 * (i + 1) * torch.randn_like(p))
        save_hf(pol, tok, d / "ppo" / "kl" / f"kl_{lvl}")
    save_hf(pol, tok, d / "ppo")
    rm_cfg = sft.config.to_dict()
    rm_cfg["num_labels"] = 1
    from transformers import GPT2Config
    rm = GPT2ForSequenceClassification(GPT2Config.from_dict(rm_cfg))
    save_hf(rm, tok, d / "rm")
    for stage in ("pretrain", "sft", "rm", "ppo"):
        atomic_write_text(d / stage / "DONE", "test\n")
    return d
