"""Stage 1: pretrain a small GPT-2 from scratch on the toy corpus (a nanoGPT-style loop)."""

from __future__ import annotations

import math
import sys
import time

import torch
from tqdm.auto import tqdm

from . import tracking
from .config import DataError, RunConfig, stage_seed
from .errors import check_finite
from .heldout import heldout_nll, heldout_text
from .losses import lm_loss
from .models import autocast, n_params, native_bf16, save_hf, scratch_model
from .rundir import RunDir
from .sampling import probe_world
from .world import World


def encode_corpus(tokenizer, docs: list[str]) -> torch.Tensor:
    """Documents concatenated into one token stream. The corpus never contains EOS: a
    pretrained model never ends its answer, the demonstrations teach it to."""
    text = " ".join(docs)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise DataError("the pretraining corpus is empty")
    return torch.tensor(ids, dtype=torch.long)


def random_windows(stream: torch.Tensor, batch_size: int, seq_len: int, gen: torch.Generator) -> torch.Tensor:
    if len(stream) <= seq_len:
        raise DataError(f"the corpus has {len(stream)} tokens, fewer than pretrain.seq_len={seq_len}")
    starts = torch.randint(0, len(stream) - seq_len, (batch_size,), generator=gen)
    return torch.stack([stream[s:s + seq_len] for s in starts.tolist()])


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up then cosine decay to 10% of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def run_pretrain(cfg: RunConfig, rd: RunDir, world: World, tokenizer, device: torch.device) -> dict:
    pc = cfg.pretrain
    out = rd.begin_stage("pretrain")
    torch.manual_seed(stage_seed(cfg.seed, "pretrain"))
    gen = torch.Generator().manual_seed(stage_seed(cfg.seed, "pretrain"))
    model = scratch_model(cfg.model, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id).to(device)
    train = encode_corpus(tokenizer, world.corpus())
    print(f"[pretrain] GPT-2 with {n_params(model):,} parameters, {len(train):,} corpus tokens, "
          f"{pc.steps} steps of {pc.batch_size}x{pc.seq_len}")
    if pc.autocast == "bf16" and native_bf16(device) is False:
        print(f"[pretrain] warning: pretrain.autocast=bf16 on a {device.type} without native bf16 arithmetic "
              "(no AVX512-BF16/AMX flag): slower than pretrain.autocast=none there", file=sys.stderr)
    opt = torch.optim.AdamW(model.parameters(), lr=pc.lr, weight_decay=pc.weight_decay, betas=(0.9, 0.95))
    t0 = time.time()
    model.train()
    bar = tqdm(range(pc.steps), desc="pretrain", mininterval=2.0)
    loss_ema = None
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, pc.steps, pc.warmup_steps, pc.lr)
        x = random_windows(train, pc.batch_size, pc.seq_len, gen).to(device)
        with autocast(device, pc.autocast):  # pretrain.autocast; the loss is float32 (lm_loss)
            logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits
        loss = lm_loss(logits, x)
        check_finite("pretrain loss", loss, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_ema = loss.item() if loss_ema is None else 0.9 * loss_ema + 0.1 * loss.item()
        if step % 50 == 0 or step == pc.steps - 1:
            bar.set_postfix(loss=f"{loss_ema:.3f}")
            row = {"step": step, "loss": loss.item(), "lr": opt.param_groups[0]["lr"], "time_s": time.time() - t0}
            tracking.metrics(out / "metrics.jsonl", row)
    model.config.rlhf_train_window = pc.seq_len  # the held-out loss never reads untrained positions
    hl = heldout_nll(model, tokenizer, heldout_text(world.heldout_corpus()))["loss"]
    probe = probe_world(model, tokenizer, world)
    save_hf(model, tokenizer, out)
    summary = {"heldout_loss": hl, "heldout_ppl": math.exp(hl), "train_loss_ema": loss_ema,
               "n_params": n_params(model), "time_s": time.time() - t0, "corpus_tokens": len(train), **probe}
    print(f"[pretrain] held-out loss {hl:.3f}; on myth facts the LM states the myth "
          f"{probe['myth_facts_states_myth']:.0%} and the truth {probe['myth_facts_states_truth']:.0%} of the time; "
          f"truth on other facts {probe['other_facts_states_truth']:.0%}; answers ended {probe['answers_ended']:.0%}")
    return summary
